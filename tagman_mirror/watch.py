"""The ``cache_watch`` mode: a smart sync every ``interval`` seconds with a heartbeat, until SIGTERM/SIGINT.

Each run is recorded as started by the watch (``sync_run_origin``); the heartbeat row
(``watch_heartbeat``) tells ``cache_status`` whether the service is alive and what it does.
``--full-every`` turns a run into a full sync once the oldest last full sync is that old.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tagman_base import plugin_log
from tagman_base.errors import CacheError, CacheLockedError, SettingsError, StashError, TagManagerError
from tagman_base.run_context import RunContext
from tagman_base.timestamps import now_text, parse_duration, utc_now
from tagman_mirror.cache_file import cache_path, open_cache, read_cache
from tagman_mirror.schema import WATCH_TABLES_SINCE
from tagman_mirror.entities import parse_entities
from tagman_mirror.results import CacheOptions, CacheSyncResult
from tagman_mirror.runs import cache_full_sync, cache_smart_sync, full_sync_due, next_full_sync_at, run_id_of

log = logging.getLogger(plugin_log.LOGGER_NAME + ".live")

WATCH_CLIENT_BACKOFF = (1.0, 2.0, 4.0)
WATCH_DEFAULT_INTERVAL_S = 300.0
WATCH_DEFAULT_HEARTBEAT_S = 30.0

CREATED_BY_WATCH = "watch"


class StopRequested(BaseException):
    """Raised between two pages of a watch sync after SIGTERM/SIGINT (a BaseException, so that
    nothing on the way treats it as an ordinary failure)."""


@dataclass
class WatchSummary:
    """What a watch process did before it stopped (printed when it exits)."""

    db_path: str
    started: str
    stopped: str = ""
    interval_s: float = WATCH_DEFAULT_INTERVAL_S
    heartbeat_s: float = WATCH_DEFAULT_HEARTBEAT_S
    runs: int = 0
    full_runs: int = 0
    runs_with_changes: int = 0
    failed_runs: int = 0
    heartbeats: int = 0
    entities_changed: int = 0
    stop_reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    def __str__(self) -> str:
        return (f"Cache watch stopped ({self.stop_reason or 'done'}) after {self.runs} syncs "
                f"({self.full_runs} full, the rest smart; "
                f"{self.runs_with_changes} with changes, {self.failed_runs} failed), "
                f"{self.entities_changed} entities brought up to date.")


class Heartbeat:
    """Writes the watch process's heartbeat row every ``period`` seconds from its own thread."""

    def __init__(self, db_path: Path, period: float, interval: float, stop: threading.Event) -> None:
        self.db_path = Path(db_path)
        self.period = period
        self.interval = interval
        self.stop = stop
        self.key = (socket.gethostname(), os.getpid())
        self.started = now_text()
        self.state = "starting"
        self.last_run: str | None = None
        self.last_run_id: int | None = None
        self.last_run_status: str | None = None
        self.next_full_sync: str | None = None
        self.beats = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    def _connect(self) -> sqlite3.Connection:
        """A connection to the existing cache file (never creates one: only the sync does that)."""
        conn = sqlite3.connect(f"file:{self.db_path}?mode=rw", uri=True, timeout=5.0, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn

    def _row(self) -> tuple:
        """The values of the heartbeat row as of now."""
        with self._lock:
            return (self.key[1], self.key[0], self.started, now_text(), time.time(), self.last_run,
                    self.last_run_id, self.last_run_status, self.state, self.interval, self.period,
                    self.next_full_sync)

    def write(self) -> bool:
        """Write the row now; False when the cache was busy or unusable (tried again next period)."""
        values = self._row()
        try:
            conn = self._connect()
            try:
                if conn.execute("PRAGMA user_version").fetchone()[0] < WATCH_TABLES_SINCE:
                    return False  # not migrated yet: the first sync upgrades it
                conn.execute("INSERT OR REPLACE INTO watch_heartbeat (pid, host, started, last_heartbeat, "
                             "last_heartbeat_epoch, last_run, last_run_id, last_run_status, state, interval_s, "
                             "heartbeat_s, next_full_sync) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
                # rows of watch processes that stopped or died more than a day ago
                conn.execute("DELETE FROM watch_heartbeat WHERE last_heartbeat_epoch < ?", (time.time() - 86400,))
            finally:
                conn.close()
        except sqlite3.Error as exc:
            log.debug(f"heartbeat not written ({exc}); trying again in {self.period:g} s")
            return False
        self.beats += 1
        return True

    def update(self, **values: Any) -> None:
        """Change what the next heartbeat reports."""
        with self._lock:
            for key, value in values.items():
                setattr(self, key, value)

    def start(self) -> None:
        """Write the first beat and keep beating from a daemon thread."""
        self.write()
        self._thread = threading.Thread(target=self._loop, name="cache-watch-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        """Beat every period until ``close()``."""
        while not self._done.wait(self.period):
            self.write()

    def close(self, state: str = "stopped") -> None:
        """Stop beating and write the final state."""
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.update(state=state)
        self.write()


def record_origin(db_path: Path, run_id: int, interrupted: bool) -> None:
    """Record the run as started by the watch (and as interrupted when the stop cut it short)."""
    if not run_id:
        return
    try:
        conn = open_cache(db_path)
    except TagManagerError as exc:
        log.debug(f"could not mark run {run_id}: {exc}")
        return
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("INSERT OR REPLACE INTO sync_run_origin (run_id, created_by) VALUES (?, ?)",
                     (run_id, CREATED_BY_WATCH))
        if interrupted:
            conn.execute("UPDATE sync_runs SET status = 'interrupted' WHERE id = ? AND status = 'failed'", (run_id,))
    except sqlite3.Error as exc:
        log.debug(f"could not mark run {run_id}: {exc}")
    finally:
        conn.close()


class CacheWatcher:
    """A smart sync every ``interval`` seconds (one at a time), with a heartbeat, until ``stop`` is set."""

    def __init__(self, stash: Any, db_path: Path, interval: float = WATCH_DEFAULT_INTERVAL_S,
                 heartbeat: float = WATCH_DEFAULT_HEARTBEAT_S, stop: threading.Event | None = None,
                 clock: Callable[[], float] = time.monotonic, wait: Callable[[float], bool] | None = None,
                 sync: Callable[..., CacheSyncResult] = cache_smart_sync, max_runs: int | None = None,
                 sync_options: Mapping[str, Any] | None = None, full_every: timedelta | None = None,
                 full_sync: Callable[..., CacheSyncResult] = cache_full_sync,
                 wall_clock: Callable[[], datetime] = utc_now) -> None:
        self.stash = stash
        self.db_path = Path(db_path)
        self.interval = float(interval)
        self.stop = stop or threading.Event()
        self.clock = clock
        self.wait = wait or self.stop.wait
        self.sync = sync
        self.max_runs = max_runs
        self.sync_options = dict(sync_options or {})  # options=CacheOptions(...), entities=... for the sync
        self.full_every = full_every  # a full sync instead of a smart one once the last full is this old
        self.full_sync = full_sync
        self.wall_clock = wall_clock
        self.heartbeat = Heartbeat(self.db_path, float(heartbeat), self.interval, self.stop)
        self.summary = WatchSummary(str(self.db_path), now_text(), interval_s=self.interval, heartbeat_s=float(heartbeat))

    def _progress(self, _fraction: float) -> None:
        """Called by the sync between pages (outside transactions): the place to stop cleanly."""
        if self.stop.is_set():
            raise StopRequested("stop requested")

    def run(self) -> WatchSummary:
        """The loop; returns when ``stop`` is set (or after ``max_runs`` runs)."""
        open_cache(self.db_path).close()  # creates and migrates it; an unusable path fails here
        log.info(f"Watching the cache {self.db_path}: a smart sync every {self.interval:g} s, "
                 f"heartbeat every {self.heartbeat.period:g} s"
                 + (f", a full sync once the last one is {self.full_every} old" if self.full_every else ""))
        self.heartbeat.start()
        state = "stopped"
        try:
            self._loop()
        except BaseException:
            state = "failed"
            raise
        finally:
            self.heartbeat.close(state)
            self.summary.heartbeats = self.heartbeat.beats
            self.summary.stopped = now_text()
        return self.summary

    def _loop(self) -> None:
        """Run, wait out the interval, run again, until stopped."""
        next_run = self.clock()
        while not self.stop.is_set():
            if self.max_runs is not None and self.summary.runs >= self.max_runs:
                self.summary.stop_reason = f"{self.max_runs} runs done"
                return
            delay = next_run - self.clock()
            if delay > 0:
                self.heartbeat.update(state="idle")
                if self.wait(delay) or self.stop.is_set():
                    break
            started = self.clock()
            self.run_once()
            next_run = started + self.interval
        if self.stop.is_set() and not self.summary.stop_reason:
            self.summary.stop_reason = "stop requested"

    def run_once(self) -> None:
        """One sync, its log line and bookkeeping; Stash or the cache being unavailable is only logged."""
        full = self.full_sync_due()
        sync = self.full_sync if full else self.sync
        self.heartbeat.update(state="syncing")
        self.summary.runs += 1
        self.summary.full_runs += full
        try:
            result = sync(self.stash, self.db_path, progress=self._progress, **self.sync_options)
        except StopRequested as stopped:
            self._after_failure(run_id_of(stopped), "interrupted", state="stopping")
            log.info("Stopped in the middle of a sync, after a committed page; the next sync carries on from there.")
            return
        except CacheLockedError:
            log.info(f"Another cache sync is running; the watch tries again in {self.interval:g} s.")
            self._after_failure(0, "skipped")  # the run in progress is not this process's
            return
        except StashError as exc:
            log.warning(f"Stash is not reachable or refused the sync ({plugin_log.redactor.redact(str(exc))}); "
                        f"retrying in {self.interval:g} s.")
            self._after_failure(run_id_of(exc), "failed")
            return
        except CacheError as exc:
            log.error(f"The cache sync failed: {exc} Retrying in {self.interval:g} s.")
            self._after_failure(run_id_of(exc), "failed")
            return
        self._after_success(result, "full" if full else "smart")

    def _after_success(self, result: CacheSyncResult, kind: str) -> None:
        """Record the run, update the heartbeat and log what the run changed."""
        record_origin(self.db_path, result.run_id, interrupted=False)
        self.heartbeat.update(state="idle", last_run=result.finished, last_run_id=result.run_id,
                              last_run_status=result.status, next_full_sync=self.next_full_sync_text())
        scenes = result.per_type.get("scenes")
        scene_changes = (scenes.upserted + scenes.deleted) if scenes else 0
        other_changes = result.upserted + result.deleted - scene_changes
        self.summary.entities_changed += scene_changes + other_changes
        if scene_changes or other_changes:
            self.summary.runs_with_changes += 1
            extra = f" (and {other_changes} other entities)" if other_changes else ""
            log.info(f"Executed {kind} sync due to {scene_changes} scenes that needed to be resynced{extra}")
        else:
            log.debug("No scenes pending sync")

    def _after_failure(self, run_id: int, status: str, state: str = "idle") -> None:
        """Record a run that did not finish (when there was one) and count the failure."""
        record_origin(self.db_path, run_id, interrupted=status == "interrupted")
        self.summary.failed_runs += status in ("failed", "interrupted")
        self.heartbeat.update(state=state, last_run=now_text(), last_run_id=run_id or None, last_run_status=status)

    def full_sync_due(self) -> bool:
        """True when ``--full-every`` is set and the oldest last full sync of the watched types is that old."""
        if self.full_every is None:
            return False
        try:
            with read_cache(self.db_path) as conn:
                return full_sync_due(conn, self.full_every, self.wall_clock(), self.sync_options.get("entities"))
        except (TagManagerError, sqlite3.Error):
            return True  # no usable mirror yet: the full sync creates it (or reports why it cannot)

    def next_full_sync_text(self) -> str | None:
        """When the next scheduled full sync is due, for the heartbeat ("now" when it is due already)."""
        if self.full_every is None:
            return None
        try:
            with read_cache(self.db_path) as conn:
                due = next_full_sync_at(conn, self.full_every, self.sync_options.get("entities"))
        except (TagManagerError, sqlite3.Error):
            return "now"
        return "now" if due is None or due <= self.wall_clock() else due.isoformat(timespec="seconds")


def _positive_seconds(args: Mapping[str, Any], key: str, default: float) -> float:
    """A positive number of seconds from the task arguments (``default`` when absent)."""
    raw = args.get(key)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"--{key} must be a positive number of seconds (got {raw!r}).")
    return value


def run_cache_watch(ctx: RunContext) -> WatchSummary:
    """Mode ``cache_watch``: run the watch loop in this process until SIGTERM/SIGINT."""
    interval = _positive_seconds(ctx.args, "interval", WATCH_DEFAULT_INTERVAL_S)
    heartbeat = _positive_seconds(ctx.args, "heartbeat", WATCH_DEFAULT_HEARTBEAT_S)
    stop = threading.Event()
    stash = ctx.stash
    if hasattr(stash, "backoff"):
        stash.backoff = WATCH_CLIENT_BACKOFF
        stash.sleep = stop.wait  # retries end at once when a stop is requested
    full_every = parse_duration(ctx.args["full_every"]) if ctx.args.get("full_every") else None
    sync_options = {"options": CacheOptions.from_settings(ctx.settings),
                    "entities": parse_entities(ctx.args.get("entities")) or None}
    watcher = CacheWatcher(stash, cache_path(ctx.settings, ctx.plugin_dir), interval, heartbeat, stop,
                           sync_options=sync_options, full_every=full_every)
    with stop_on_signals(stop):
        try:
            return watcher.run()
        except KeyboardInterrupt:  # a second signal: the page in progress was rolled back
            watcher.summary.stop_reason = "second signal: abandoned the page in progress"
            return watcher.summary


class stop_on_signals:  # noqa: N801 - used as a context manager
    """SIGTERM/SIGINT set ``stop`` (the sync stops after its current page); a second one abandons the page."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        """First signal: stop after the page; second: abandon it."""
        if self.stop.is_set():
            raise KeyboardInterrupt(f"signal {signum} again: abandoning the current page")
        log.info(f"Received {signal.Signals(signum).name}: stopping after the current page.")
        self.stop.set()

    def __enter__(self) -> stop_on_signals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
