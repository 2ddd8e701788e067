"""Keeping the sidecar cache current: Stash hooks, the watch service, one-scene resync and status.

Modes (wired in ``tag_manager.MODES``):

* ``cache_hook`` runs inside the user's own edit request in Stash (hooks are synchronous), once per
  edited entity. It re-reads that entity by id and upserts it with its links and derived data, or
  removes it when Stash no longer has it; on ``Tag.Merge.Post`` it also removes the merged tags and
  points their links at the destination. It never fails the edit: every error is logged and the
  hook still prints ``{"output": ...}`` and exits 0; the next smart sync repairs whatever a hook
  missed. With the setting ``liveCache`` off, or before the first completed full sync, it does
  nothing.
* ``cache_sync_scene`` (task argument ``id``, ``--id`` on the command line): the same for one scene,
  on request, with errors reported.
* ``cache_status``: per type the mirrored count, Stash's count, the entities changed in Stash since
  the cursor and not yet mirrored, the cursor and the last syncs; the last runs; the watch service.
* ``cache_watch`` (command line only): a smart sync every ``interval`` seconds with a heartbeat,
  until SIGTERM/SIGINT.

Why a hook may write while no sync holds the cache lock, and never while one runs:

A sync keeps every mirrored entity equal to Stash's version of it at some moment after that type's
last listing, and its cursor never passes Stash's clock at that listing; anything edited later has
an ``updated_at`` at or after the cursor, so the next sync's window (or its same-second recheck)
finds it. A hook's re-read is the same kind of fetch by id, without moving any cursor. It keeps that
property as long as no sync lists or writes between the hook's read and its write: the hook notes
the newest ``sync_runs`` row before reading and, inside its write transaction (which a sync's
start has to wait for), writes only if that row is unchanged and no sync is running. Otherwise it
drops its write, leaving the entity to the sync. Two hooks on one entity writing in the wrong
order leave a version read after the last listing, which the next sync corrects the same way. So
hooks never take the sync's lock (a sync never waits for or is refused because of a hook), every
wait is bounded (SQLite ``busy_timeout`` of 2 s), and a hook that cannot write in time just
leaves the work to the next sync.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from tagman_base import plugin_log
from tagman_base.errors import CacheError, CacheLockedError, SettingsError, StashError, TagManagerError

log = logging.getLogger(plugin_log.LOGGER_NAME + ".live")

# Stash's hook trigger entity -> mirror table (Movie is Stash's deprecated name of Group)
HOOK_ENTITY_TABLES = {"Scene": "scenes", "Image": "images", "Gallery": "galleries", "Group": "groups",
                      "Movie": "groups", "Performer": "performers", "Studio": "studios", "Tag": "tags"}
HOOK_ACTIONS = ("Create", "Update", "Destroy", "Merge")
HOOK_BUSY_TIMEOUT_MS = 2000          # longest a hook waits for SQLite's write lock
HOOK_REREAD_LIMIT = 500              # entities a hook re-reads after a deletion or merge; more are left to the sync
# Image counts are recomputed over the whole library whenever an image or gallery changed; above
# this many images that is too slow for a hook, so the hook leaves it (and the rest of that
# refresh) to the next sync, whose derived-data refresh picks the queued entities up.
HOOK_IMAGE_DERIVED_LIMIT = 5000
HOOK_CLIENT_BACKOFF = (0.25,)        # one quick retry: the user's edit is waiting
HOOK_CLIENT_TIMEOUT = (2.0, 15.0)    # connect, read (seconds)
TASK_BUSY_TIMEOUT_MS = 30000
WATCH_CLIENT_BACKOFF = (1.0, 2.0, 4.0)
WATCH_DEFAULT_INTERVAL_S = 300.0
WATCH_DEFAULT_HEARTBEAT_S = 30.0
STATUS_LISTING_LIMIT = 10000         # larger windows are counted, not compared with the mirror
STATUS_RUNS = 10
CREATED_BY_WATCH = "watch"

# Bookkeeping tables of this module; they live outside the mirror's write-guarded tables.
LIVE_TABLES_DDL = (
    """CREATE TABLE IF NOT EXISTS watch_heartbeat (
        pid INTEGER NOT NULL, host TEXT NOT NULL, started TEXT NOT NULL, last_heartbeat TEXT NOT NULL,
        last_heartbeat_epoch REAL NOT NULL, last_run TEXT, last_run_id INTEGER, last_run_status TEXT,
        state TEXT NOT NULL, interval_s REAL NOT NULL, heartbeat_s REAL NOT NULL, next_full_sync TEXT,
        PRIMARY KEY (host, pid))""",
    """CREATE TABLE IF NOT EXISTS sync_run_origin (
        run_id INTEGER PRIMARY KEY, created_by TEXT NOT NULL)""",
)


class HookInputError(TagManagerError):
    """The hook context Stash passed cannot be understood."""


class StopRequested(BaseException):
    """Raised between two pages of a watch sync after SIGTERM/SIGINT (a BaseException, so that
    nothing on the way treats it as an ordinary failure)."""


def _now_text() -> str:
    """This machine's time with its offset (bookkeeping only, never a cursor)."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def cache_path(ctx: Any) -> Path:
    """The cache file of a run: the ``cacheDbPath`` setting or the default in the plugin folder."""
    import local_cache

    return local_cache.cache_path(ctx.settings, ctx.plugin_dir)


# ---------------------------------------------------------------------------------------------
# the hook context


@dataclass(frozen=True)
class HookEvent:
    """One hook call as Stash describes it in ``args.hookContext``."""

    trigger: str                    # e.g. "Scene.Update.Post"
    entity: str                     # "Scene"
    action: str                     # Create | Update | Destroy | Merge
    table: str | None               # mirror table, None for entities the mirror does not hold
    ids: tuple[int, ...]            # the entity (one per call, even for bulk mutations)
    sources: tuple[int, ...] = ()   # Tag.Merge.Post: the merged (now deleted) tags
    input_fields: tuple[str, ...] = ()
    bulk: bool = False              # the input addressed several entities (``ids``)
    scan: bool = False              # no input at all: a library scan touched the entity


def _int_ids(values: Any) -> list[int]:
    """Ids from a JSON number, a numeric string or a list of them."""
    if values is None:
        return []
    if not isinstance(values, (list, tuple)):
        values = [values]
    out = []
    for value in values:
        if isinstance(value, bool) or value in (None, ""):
            raise HookInputError(f"hookContext has an invalid id {value!r}")
        try:
            number = int(str(value).strip()) if not isinstance(value, float) else int(value)
        except ValueError:
            raise HookInputError(f"hookContext has an invalid id {value!r}") from None
        if number <= 0:
            raise HookInputError(f"hookContext has an invalid id {value!r}")
        out.append(number)
    return list(dict.fromkeys(out))


def parse_hook_context(args: Mapping[str, Any]) -> HookEvent:
    """Read ``args.hookContext`` = ``{id, type, input, inputFields}`` exactly as Stash passes it."""
    context = args.get("hookContext")
    if isinstance(context, str):
        try:
            context = json.loads(context)
        except ValueError:
            raise HookInputError("hookContext is not valid JSON") from None
    if not isinstance(context, Mapping):
        raise HookInputError("cache_hook runs from Stash's hooks only: the input has no hookContext")
    trigger = str(context.get("type") or "")
    parts = trigger.split(".")
    if len(parts) != 3 or parts[2] != "Post" or parts[1] not in HOOK_ACTIONS:
        raise HookInputError(f"unknown hook trigger {trigger!r}")
    entity, action = parts[0], parts[1]
    raw_input = context.get("input")
    payload = raw_input if isinstance(raw_input, Mapping) else {}
    fields = tuple(str(f) for f in context.get("inputFields") or ())
    ids = _int_ids(context.get("id")) if context.get("id") not in (None, 0, "0", "") else []
    bulk = isinstance(payload.get("ids"), list) and len(payload["ids"]) > 1
    if not ids:  # Stash always sets id; fall back on the input for older or unusual callers
        ids = _int_ids(payload.get("destination") if action == "Merge" else payload.get("id"))
        ids = ids or _int_ids(payload.get("ids"))
    if not ids:
        raise HookInputError(f"{trigger} hook without an entity id")
    sources: list[int] = []
    if action == "Merge":
        sources = [s for s in _int_ids(payload.get("source")) if s not in ids]
    return HookEvent(trigger, entity, action, HOOK_ENTITY_TABLES.get(entity), tuple(ids), tuple(sources),
                     fields, bulk, raw_input is None)


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class HookResult:
    """What one ``cache_hook`` call did (the hook's JSON output)."""

    trigger: str = ""
    ids: tuple[int, ...] = ()
    status: str = "error"   # applied | off | not_ready | ignored | sync_running | busy | error
    reason: str = ""
    upserted: int = 0
    deleted: int = 0
    reread: int = 0
    derived_refreshed: bool = False
    seconds: float = 0.0

    @property
    def log_level(self) -> int:
        """Hooks run for every edited entity: only problems go above DEBUG."""
        return {"error": logging.WARNING, "busy": logging.INFO}.get(self.status, logging.DEBUG)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["ids"] = list(self.ids)
        return out

    def __str__(self) -> str:
        what = f"{self.trigger} {','.join(map(str, self.ids))}".strip()
        if self.status == "applied":
            return (f"Cache hook {what}: {self.upserted} written, {self.deleted} deleted, {self.reread} re-read"
                    f"{', derived data refreshed' if self.derived_refreshed else ''} in {self.seconds * 1000:.0f} ms.")
        if self.status == "error":
            return (f"Cache hook {what} failed: {self.reason}. Your change in Stash is saved; "
                    "the next cache sync brings the mirror up to date.")
        return f"Cache hook {what}: {self.status}" + (f" ({self.reason})" if self.reason else "") + "."


@dataclass
class ApplyStats:
    """What re-reading a few entities did to the mirror."""

    status: str = "applied"   # applied | sync_running | busy
    reason: str = ""
    upserted: int = 0
    deleted: int = 0
    reread: int = 0
    left_for_sync: int = 0
    derived_refreshed: bool = False
    found: tuple[int, ...] = ()
    requests: int = 0


# ---------------------------------------------------------------------------------------------
# reading the cache's state without writing


def _read_only(db_path: Path) -> sqlite3.Connection:
    """A read-only connection that never creates, migrates or waits long."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=2.0, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 2000")
    return conn


def _table_exists(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


def not_ready_reason(db_path: Path) -> str | None:
    """Why a hook must leave this cache alone (None when it may write)."""
    import cache_schema
    import local_cache

    if not Path(db_path).exists():
        return f"no cache at {db_path} yet"
    try:
        conn = _read_only(db_path)
    except sqlite3.Error as exc:
        return f"cannot open the cache ({exc})"
    try:
        version = cache_schema.schema_version(conn)
        if version != cache_schema.SCHEMA_VERSION:
            return f"cache schema {version} differs from {cache_schema.SCHEMA_VERSION}; the next sync upgrades it"
        done = dict(conn.execute("SELECT entity_type, last_full_sync FROM sync_state").fetchall())
        if any(not done.get(spec.table) for spec in local_cache.SPECS):
            return "the cache has never completed a full sync"
        pending = conn.execute("SELECT value FROM cache_meta WHERE key = 'full_run_pending'").fetchone()
        if pending and pending[0]:
            return "an interrupted full sync has to finish first"
    except sqlite3.Error as exc:
        return f"cannot read the cache ({exc})"
    finally:
        conn.close()
    return None


def _lock_holder_alive(db_path: Path) -> bool:
    """Whether a sync holds the cache's lock right now (the OS lock itself, so a reused pid cannot fool it)."""
    from tagman_base import file_lock as run_lock

    return run_lock.is_held(Path(str(db_path) + ".lock"))


def sync_marker(conn: sqlite3.Connection, db_path: Path) -> tuple[int, str] | None:
    """The newest sync run as (id, status), or None while a sync is running."""
    row = conn.execute("SELECT id, status FROM sync_runs ORDER BY id DESC LIMIT 1").fetchone()
    marker = (int(row[0]), str(row[1])) if row else (0, "")
    if marker[1] == "running" and _lock_holder_alive(db_path):
        return None
    return marker


def _meta_set(conn: sqlite3.Connection, key: str) -> bool:
    """Whether cache_meta holds a non-empty value for ``key``."""
    row = conn.execute("SELECT value FROM cache_meta WHERE key = ?", (key,)).fetchone()
    return bool(row and row[0])


# ---------------------------------------------------------------------------------------------
# applying entities to the mirror


class SyncStarted(Exception):
    """A sync started (or is running) between the hook's read and its write."""


class LiveWriter:
    """Re-reads entities by id and writes them to the mirror when no sync is running (see module doc)."""

    def __init__(self, stash: Any, db_path: Path, busy_timeout_ms: int | None = None,
                 reread_limit: int | None = None, soft_delete: bool = False) -> None:
        self.stash = stash
        self.soft_delete = soft_delete
        self.db_path = Path(db_path)
        self.busy_timeout_ms = int(HOOK_BUSY_TIMEOUT_MS if busy_timeout_ms is None else busy_timeout_ms)
        self.reread_limit = int(HOOK_REREAD_LIMIT if reread_limit is None else reread_limit)
        self.image_derived_limit = HOOK_IMAGE_DERIVED_LIMIT

    def _fetch(self, table: str, ids: Sequence[int]) -> list[dict]:
        """Full content of the entities with these ids (those Stash still has)."""
        import local_cache

        if not ids:
            return []
        spec = local_cache.SPEC_BY_TABLE[table]
        data = self.stash.call_by_ids(local_cache.PAGE_QUERIES[table], {"ids": [str(i) for i in ids], "filter": {"per_page": -1}})
        return data[spec.find][spec.list_key] if data else []

    def _check(self, conn: sqlite3.Connection, marker: tuple[int, str]) -> None:
        """Inside the write transaction: refuse when a sync started since ``marker`` or is running."""
        now = sync_marker(conn, self.db_path)
        if now != marker:
            raise SyncStarted()

    def apply(self, table: str, ids: Sequence[int], merge_sources: Sequence[int] = ()) -> ApplyStats:
        """Upsert the entities Stash has, delete those it no longer has, re-link merged tags, refresh derived data."""
        import local_cache
        from cache_schema import atomic

        stats = ApplyStats()
        spec = local_cache.SPEC_BY_TABLE[table]
        # counts only: hook writes are not sync runs, so they add nothing to the change log
        recorder = local_cache.ChangeRecorder(run_id=None, soft_delete=self.soft_delete)
        requests_before = getattr(self.stash, "requests_sent", 0)
        conn = local_cache.open_cache(self.db_path)
        try:
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            marker = sync_marker(conn, self.db_path)
            if marker is None:
                return ApplyStats(status="sync_running", reason="a cache sync is running; it or the next one picks this up")
            wanted = list(dict.fromkeys([*ids, *merge_sources]))
            items = self._fetch(table, wanted)
            present = {int(item["id"]) for item in items}
            stats.found = tuple(i for i in ids if i in present)
            with atomic(conn):
                self._check(conn, marker)
                stats.upserted += local_cache.write_items(conn, spec, items, recorder=recorder)
                gone = [i for i in wanted if i not in present and conn.execute(
                    f"SELECT 1 FROM {table} WHERE id = ? AND deleted_at IS NULL", (i,)).fetchone()]
                if gone:
                    stats.deleted += local_cache.delete_entities(conn, spec, gone, recorder=recorder)
                if table == "tags" and merge_sources and stats.found:
                    _relink_merged_tags(conn, [s for s in merge_sources if s not in present], stats.found[0])
            self._reread_pending(conn, marker, stats)
            if conn.execute("SELECT 1 FROM dirty LIMIT 1").fetchone():
                reason = self._derived_left_to_sync(conn)
                if reason:
                    stats.reason = reason
                else:
                    with atomic(conn):
                        self._check(conn, marker)
                        local_cache.refresh_derived(conn)
                    stats.derived_refreshed = True
        except SyncStarted:
            stats.status, stats.reason = "sync_running", "a cache sync started meanwhile; it or the next one picks this up"
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            stats.status = "busy"
            stats.reason = (f"the cache stayed locked for {self.busy_timeout_ms / 1000:g} s; "
                            "the next sync picks this up")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            stats.requests = getattr(self.stash, "requests_sent", 0) - requests_before
        return stats

    def _derived_left_to_sync(self, conn: sqlite3.Connection) -> str:
        """Why the derived-data refresh is better left to the next sync ('' when the hook may do it)."""
        if _meta_set(conn, "derived_full") or _meta_set(conn, "full_run_pending"):
            return "derived data is rebuilt by the next sync"
        images_dirty = conn.execute("SELECT 1 FROM dirty WHERE entity_type IN ('images', 'galleries') LIMIT 1").fetchone()
        if images_dirty:
            size = conn.execute("SELECT max(id) FROM images").fetchone()[0] or 0
            if size > self.image_derived_limit:
                return "image derived data (inheritance, counts) is refreshed by the next sync"
        return ""

    def _reread_pending(self, conn: sqlite3.Connection, marker: tuple[int, str], stats: ApplyStats) -> None:
        """Re-read what a deletion or merge queued (whatever linked to the removed entities), when few."""
        import local_cache
        from cache_schema import atomic

        queued = conn.execute("SELECT entity_type, entity_id FROM pending_reread ORDER BY entity_type, entity_id").fetchall()
        if not queued:
            return
        if len(queued) > self.reread_limit:
            stats.left_for_sync = len(queued)
            log.info(f"{len(queued)} linked entities to re-read: left to the next sync")
            return
        by_type: dict[str, list[int]] = {}
        for etype, eid in queued:
            by_type.setdefault(etype, []).append(int(eid))
        fetched = {etype: self._fetch(etype, ids) for etype, ids in by_type.items() if etype in local_cache.SPEC_BY_TABLE}
        with atomic(conn):
            self._check(conn, marker)
            for etype, items in fetched.items():
                stats.upserted += local_cache.write_items(conn, local_cache.SPEC_BY_TABLE[etype], items)
                stats.reread += len(items)
                # one that vanished meanwhile stays queued: the sync's count comparison finds it
                found = [(etype, int(i["id"])) for i in items]
                conn.executemany("DELETE FROM pending_reread WHERE entity_type = ? AND entity_id = ?", found)


def _relink_merged_tags(conn: sqlite3.Connection, sources: Sequence[int], destination: int) -> None:
    """Point every mirrored link to a merged tag at the destination, as Stash's merge does.

    Must run inside a transaction, after the sources were deleted (which queued their linked
    entities for re-reading; the re-read then confirms exactly what Stash holds).
    """
    import local_cache

    if not sources:
        return
    marks = ",".join("?" * len(sources))
    for table, column, owner, owner_type in local_cache.REFERENCES["tags"]:
        rows = conn.execute(f"SELECT DISTINCT {owner} FROM {table} WHERE {column} IN ({marks})", list(sources)).fetchall()
        conn.executemany("INSERT OR IGNORE INTO dirty VALUES (?, ?)", [(owner_type, r[0]) for r in rows])
        conn.execute(f"UPDATE OR IGNORE {table} SET {column} = ? WHERE {column} IN ({marks})", [destination, *sources])
        conn.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", list(sources))
    conn.execute("DELETE FROM tag_parents WHERE tag_id = parent_id")


# ---------------------------------------------------------------------------------------------
# cache_hook


def prepare_hook_client(stash: Any) -> None:
    """Short timeouts and one quick retry: the user's edit in Stash waits for the hook."""
    if hasattr(stash, "backoff"):
        stash.backoff = HOOK_CLIENT_BACKOFF
    if hasattr(stash, "timeout"):
        stash.timeout = HOOK_CLIENT_TIMEOUT


def run_hook_safely(run: Callable[[], HookResult], args: Mapping[str, Any] | None = None) -> HookResult:
    """Run the hook and turn every failure into a logged warning and an ``error`` result (exit 0)."""
    started = time.monotonic()
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - a hook must never fail the user's edit
        message = plugin_log.redactor.redact(f"{type(exc).__name__}: {exc}" if not isinstance(exc, TagManagerError)
                                             else str(exc))
        trigger, ids = "", ()
        try:
            event = parse_hook_context(args or {})
            trigger, ids = event.trigger, event.ids
        except Exception:  # noqa: BLE001 - the input itself was the problem
            pass
        return HookResult(trigger=trigger, ids=ids, status="error", reason=message,
                          seconds=round(time.monotonic() - started, 3))


def run_cache_hook(ctx: Any) -> HookResult:
    """Mode ``cache_hook``: apply the one entity of this hook call to the mirror."""
    started = time.monotonic()
    event = parse_hook_context(ctx.args)
    result = HookResult(trigger=event.trigger, ids=event.ids)
    if not ctx.settings.live_cache:
        result.status, result.reason = "off", "setting liveCache is off"
    elif event.table is None:
        result.status, result.reason = "ignored", f"{event.entity} is not mirrored"
    else:
        db_path = cache_path(ctx)
        reason = not_ready_reason(db_path)
        if reason:
            result.status, result.reason = "not_ready", reason
        else:
            writer = LiveWriter(ctx.stash, db_path, soft_delete=ctx.settings.cache_soft_delete)
            stats = writer.apply(event.table, event.ids, event.sources)
            result.status, result.reason = stats.status, stats.reason
            result.upserted, result.deleted, result.reread = stats.upserted, stats.deleted, stats.reread
            result.derived_refreshed = stats.derived_refreshed
    result.seconds = round(time.monotonic() - started, 3)
    return result


# ---------------------------------------------------------------------------------------------
# cache_sync_scene


@dataclass(frozen=True)
class SceneSyncResult:
    """What ``cache_sync_scene`` did."""

    scene_id: int
    status: str          # updated | unchanged | deleted | not_found
    upserted: int
    deleted: int
    reread: int
    derived_refreshed: bool
    stash_requests: int
    seconds: float
    db_path: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        text = {"updated": "re-read and written", "unchanged": "re-read, already up to date",
                "deleted": "no longer in Stash: removed from the cache",
                "not_found": "not in Stash (nor in the cache)"}[self.status]
        return f"Scene {self.scene_id}: {text} ({self.stash_requests} Stash requests, {self.seconds * 1000:.0f} ms)."


def run_cache_sync_scene(ctx: Any) -> SceneSyncResult:
    """Mode ``cache_sync_scene``: resync one scene with its links and derived data now."""
    raw = ctx.args.get("id")
    try:
        ids = _int_ids(raw)
    except HookInputError:
        ids = []
    if len(ids) != 1:
        raise SettingsError("cache_sync_scene needs one scene id: task argument id, or --id on the command line "
                            f"(got {raw!r}).")
    scene_id = ids[0]
    db_path = cache_path(ctx)
    if not db_path.exists():
        raise CacheError(f"There is no cache at {db_path} yet: run 'Cache: Full Sync' first.")
    started = time.monotonic()
    writer = LiveWriter(ctx.stash, db_path, busy_timeout_ms=TASK_BUSY_TIMEOUT_MS,
                        soft_delete=ctx.settings.cache_soft_delete)
    stats = writer.apply("scenes", [scene_id])
    if stats.status != "applied":
        raise CacheLockedError(f"Scene {scene_id} was not written: {stats.reason}.")
    if stats.found:
        status = "updated" if stats.upserted else "unchanged"
    elif stats.deleted:
        status = "deleted"
    else:
        raise SettingsError(f"Scene {scene_id} does not exist in Stash (nor in the cache): check the id.")
    return SceneSyncResult(scene_id, status, stats.upserted, stats.deleted, stats.reread, stats.derived_refreshed,
                           stats.requests, round(time.monotonic() - started, 3), str(db_path))


# ---------------------------------------------------------------------------------------------
# own bookkeeping tables


def ensure_live_tables(conn: sqlite3.Connection) -> None:
    """Create this module's tables when missing (outside any transaction)."""
    existing = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for ddl in LIVE_TABLES_DDL:
        name = ddl.split("EXISTS", 1)[1].split("(", 1)[0].strip()
        if name not in existing:
            conn.execute(ddl)
    if "watch_heartbeat" in existing and "next_full_sync" not in {
            r[1] for r in conn.execute("PRAGMA table_info(watch_heartbeat)")}:
        conn.execute("ALTER TABLE watch_heartbeat ADD COLUMN next_full_sync TEXT")


def record_origin(conn: sqlite3.Connection, run_id: int, created_by: str) -> None:
    """Remember who started a sync run."""
    if run_id:
        conn.execute("INSERT OR REPLACE INTO sync_run_origin (run_id, created_by) VALUES (?, ?)", (run_id, created_by))


# ---------------------------------------------------------------------------------------------
# cache_watch


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
        self.started = _now_text()
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

    def write(self) -> bool:
        """Write the row now; False when the cache was busy or unusable (tried again next period)."""
        with self._lock:
            values = (self.key[1], self.key[0], self.started, _now_text(), time.time(), self.last_run,
                      self.last_run_id, self.last_run_status, self.state, self.interval, self.period,
                      self.next_full_sync)
        try:
            conn = self._connect()
            try:
                if conn.execute("PRAGMA user_version").fetchone()[0] < 1:
                    return False  # not a migrated cache yet: the first sync creates it
                ensure_live_tables(conn)
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
        self.write()
        self._thread = threading.Thread(target=self._loop, name="cache-watch-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(self.period):  # ends when close() sets _done
            self.write()

    def close(self, state: str = "stopped") -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.update(state=state)
        self.write()


class CacheWatcher:
    """A smart sync every ``interval`` seconds (one at a time), with a heartbeat, until ``stop`` is set."""

    def __init__(self, stash: Any, db_path: Path, interval: float = WATCH_DEFAULT_INTERVAL_S,
                 heartbeat: float = WATCH_DEFAULT_HEARTBEAT_S, stop: threading.Event | None = None,
                 clock: Callable[[], float] = time.monotonic, wait: Callable[[float], bool] | None = None,
                 sync: Callable[..., Any] | None = None, max_runs: int | None = None,
                 sync_options: Mapping[str, Any] | None = None, full_every: timedelta | None = None,
                 full_sync: Callable[..., Any] | None = None,
                 wall_clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
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
        self.summary = WatchSummary(str(self.db_path), _now_text(), interval_s=self.interval, heartbeat_s=float(heartbeat))

    def _progress(self, _fraction: float) -> None:
        """Called by the sync between pages (outside transactions): the place to stop cleanly."""
        if self.stop.is_set():
            raise StopRequested("stop requested")

    def run(self) -> WatchSummary:
        """The loop; returns when ``stop`` is set (or after ``max_runs`` runs)."""
        import local_cache

        self.sync = self.sync or local_cache.cache_smart_sync
        self.full_sync = self.full_sync or local_cache.cache_full_sync
        local_cache.open_cache(self.db_path).close()  # creates and migrates it; an unusable path fails here
        log.info(f"Watching the cache {self.db_path}: a smart sync every {self.interval:g} s, "
                 f"heartbeat every {self.heartbeat.period:g} s"
                 + (f", a full sync once the last one is {self.full_every} old" if self.full_every else ""))
        self.heartbeat.start()
        state = "stopped"
        try:
            next_run = self.clock()
            while not self.stop.is_set():
                if self.max_runs is not None and self.summary.runs >= self.max_runs:
                    self.summary.stop_reason = f"{self.max_runs} runs done"
                    break
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
        except BaseException:
            state = "failed"
            raise
        finally:
            self.heartbeat.close(state)
            self.summary.heartbeats = self.heartbeat.beats
            self.summary.stopped = _now_text()
        return self.summary

    def _newest_run_id(self) -> int:
        try:
            conn = _read_only(self.db_path)
        except sqlite3.Error:
            return 0
        try:
            row = conn.execute("SELECT max(id) FROM sync_runs").fetchone() if _table_exists(conn, "sync_runs") else None
            return int(row[0] or 0) if row else 0
        except sqlite3.Error:
            return 0
        finally:
            conn.close()

    def _mark_run(self, run_id: int, interrupted: bool) -> None:
        """Record the run as started by the watch (and as interrupted when the stop cut it short)."""
        import local_cache

        try:
            conn = local_cache.open_cache(self.db_path)
        except TagManagerError as exc:
            log.debug(f"could not mark run {run_id}: {exc}")
            return
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            ensure_live_tables(conn)
            record_origin(conn, run_id, CREATED_BY_WATCH)
            if interrupted:
                conn.execute("UPDATE sync_runs SET status = 'interrupted' WHERE id = ? AND status = 'failed'", (run_id,))
        except sqlite3.Error as exc:
            log.debug(f"could not mark run {run_id}: {exc}")
        finally:
            conn.close()

    def _run_after(self, before: int) -> int:
        """The id of the run this process started after run ``before`` (0 if none; the lock keeps others out)."""
        try:
            conn = _read_only(self.db_path)
            try:
                row = conn.execute("SELECT min(id) FROM sync_runs WHERE id > ?", (before,)).fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return 0
        return int(row[0] or 0) if row else 0

    def run_once(self) -> None:
        """One smart sync, its log line and bookkeeping; Stash or the cache being unavailable is only logged."""
        before = self._newest_run_id()
        sync = self.full_sync if self.full_sync_due() else self.sync
        self.heartbeat.update(state="syncing")
        self.summary.runs += 1
        self.summary.full_runs += sync is self.full_sync
        try:
            result = sync(self.stash, self.db_path, progress=self._progress, **self.sync_options)
        except StopRequested:
            run_id = self._run_after(before)
            self._mark_run(run_id, interrupted=True)
            self.heartbeat.update(state="stopping", last_run=_now_text(), last_run_id=run_id,
                                  last_run_status="interrupted")
            self.summary.failed_runs += 1
            log.info("Stopped in the middle of a sync, after a committed page; the next sync carries on from there.")
            return
        except CacheLockedError:
            log.info(f"Another cache sync is running; the watch tries again in {self.interval:g} s.")
            self._after_failure(None, "skipped")  # the run in progress is not this process's
            return
        except StashError as exc:
            log.warning(f"Stash is not reachable or refused the sync ({plugin_log.redactor.redact(str(exc))}); "
                        f"retrying in {self.interval:g} s.")
            self._after_failure(before, "failed")
            return
        except CacheError as exc:
            log.error(f"The cache sync failed: {exc} Retrying in {self.interval:g} s.")
            self._after_failure(before, "failed")
            return
        self._mark_run(result.run_id, interrupted=False)
        self.heartbeat.update(state="idle", last_run=result.finished, last_run_id=result.run_id,
                              last_run_status=result.status, next_full_sync=self.next_full_sync_text())
        scenes = result.per_type.get("scenes")
        scene_changes = (scenes.upserted + scenes.deleted) if scenes else 0
        other_changes = result.upserted + result.deleted - scene_changes
        self.summary.entities_changed += scene_changes + other_changes
        if scene_changes or other_changes:
            self.summary.runs_with_changes += 1
            extra = f" (and {other_changes} other entities)" if other_changes else ""
            log.info(f"Executed incremental sync due to {scene_changes} scenes that needed to be resynced{extra}")
        else:
            log.debug("No scenes pending sync")

    def full_sync_due(self) -> bool:
        """True when ``--full-every`` is set and the oldest last full sync of the watched types is that old."""
        if self.full_every is None:
            return False
        import local_cache

        try:
            with local_cache.read_cache(self.db_path) as conn:
                return local_cache.full_sync_due(conn, self.full_every, self.wall_clock(),
                                                 self.sync_options.get("entities"))
        except (TagManagerError, sqlite3.Error):
            return True  # no usable mirror yet: the full sync creates it (or reports why it cannot)

    def next_full_sync_text(self) -> str | None:
        """When the next scheduled full sync is due, for the heartbeat ("now" when it is due already)."""
        if self.full_every is None:
            return None
        import local_cache

        try:
            with local_cache.read_cache(self.db_path) as conn:
                due = local_cache.next_full_sync_at(conn, self.full_every, self.sync_options.get("entities"))
        except (TagManagerError, sqlite3.Error):
            return "now"
        return "now" if due is None or due <= self.wall_clock() else due.isoformat(timespec="seconds")

    def _after_failure(self, before: int | None, status: str) -> None:
        run_id = self._run_after(before) if before is not None else 0
        if run_id:
            self._mark_run(run_id, interrupted=False)
        self.summary.failed_runs += status == "failed"
        self.heartbeat.update(state="idle", last_run=_now_text(), last_run_id=run_id or None, last_run_status=status)


def _positive_seconds(args: Mapping[str, Any], key: str, default: float) -> float:
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


def run_cache_watch(ctx: Any) -> WatchSummary:
    """Mode ``cache_watch``: run the watch loop in this process until SIGTERM/SIGINT."""
    interval = _positive_seconds(ctx.args, "interval", WATCH_DEFAULT_INTERVAL_S)
    heartbeat = _positive_seconds(ctx.args, "heartbeat", WATCH_DEFAULT_HEARTBEAT_S)
    stop = threading.Event()
    stash = ctx.stash
    if hasattr(stash, "backoff"):
        stash.backoff = WATCH_CLIENT_BACKOFF
        stash.sleep = stop.wait  # retries end at once when a stop is requested
    import local_cache

    full_every = local_cache.parse_duration(ctx.args["full_every"]) if ctx.args.get("full_every") else None
    sync_options = {"options": local_cache.CacheOptions.from_settings(ctx.settings),
                    "entities": local_cache.parse_entities(ctx.args.get("entities")) or None}
    watcher = CacheWatcher(stash, cache_path(ctx), interval, heartbeat, stop, sync_options=sync_options,
                           full_every=full_every)
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


# ---------------------------------------------------------------------------------------------
# cache_status


def _status_counts_query(specs: Sequence[Any]) -> str:
    """Stash's total and cursor-window count of every type, in one request."""
    params = ", ".join(f"${s.table}Window: {s.filter_type}" for s in specs)
    body = "\n".join(
        f"  {s.table}Total: {s.find}(filter: {{per_page: 0}}) {{ count }}\n"
        f"  {s.table}Pending: {s.find}({s.filter_arg}: ${s.table}Window, filter: {{per_page: 0}}) {{ count }}"
        for s in specs)
    return f"query TagManagerCacheStatusCounts({params}) {{\n{body}\n}}"


def _status_listing_query(specs: Sequence[Any]) -> str:
    """Ids and updated_at of every type's cursor window, in one request."""
    params = ", ".join(f"${s.table}Window: {s.filter_type}" for s in specs)
    body = "\n".join(f"  {s.table}: {s.find}({s.filter_arg}: ${s.table}Window, filter: {{per_page: -1}}) "
                     f"{{ {s.list_key} {{ id updated_at }} }}" for s in specs)
    return f"query TagManagerCacheStatusListing({params}) {{\n{body}\n}}"


def status_queries() -> tuple[str, ...]:
    """Every query this module sends besides the cache's own page queries (for conformance tests)."""
    import local_cache

    return (_status_counts_query(local_cache.SPECS), _status_listing_query(local_cache.SPECS[:1]))


@dataclass
class TypeStatus:
    """One entity type in ``cache_status``."""

    mirrored: int = 0         # present entities (soft-deleted ones not counted)
    soft_deleted: int = 0
    stash: int = 0
    pending: int = 0          # changed or new in Stash since the cursor, not yet in the mirror
    pending_exact: bool = True
    cursor: str | None = None
    last_full_sync: str | None = None
    last_incremental_sync: str | None = None
    last_run: dict[str, Any] = field(default_factory=dict)  # created/updated/unchanged/deleted of the last run


@dataclass
class CacheStatus:
    """The task output of ``cache_status``."""

    db_path: str
    cache_exists: bool
    live_cache: bool
    schema_version: int = 0
    types: dict[str, TypeStatus] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    watch: dict[str, Any] = field(default_factory=dict)
    stash_requests: int = 0

    @property
    def pending(self) -> int:
        return sum(t.pending for t in self.types.values())

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["pending"] = self.pending
        return out

    def __str__(self) -> str:
        lines = [f"Cache status of {self.db_path}" + ("" if self.cache_exists else " (no cache yet)")
                 + f"; liveCache {'on' if self.live_cache else 'off'}."]
        header = f"{'type':<11}{'mirrored':>9}{'stash':>9}{'pending':>9}  {'cursor':<26}{'last full':<26}{'last incremental':<26}"
        lines += [header, "-" * len(header)]
        # "~" after a pending figure: the window was too large to compare with the mirror, it is Stash's count
        for table, t in self.types.items():
            pending = f"{t.pending}" + ("" if t.pending_exact else "~")
            counts = t.last_run
            last = (f"  last run: {counts.get('created') or 0} created, {counts.get('updated') or 0} updated, "
                    f"{counts.get('unchanged') or 0} unchanged, {counts.get('deleted') or 0} deleted"
                    if counts.get("run_id") else "")
            lines.append(f"{table:<11}{t.mirrored:>9}{t.stash:>9}{pending:>9}  {t.cursor or '-':<26}"
                         f"{t.last_full_sync or '-':<26}{t.last_incremental_sync or '-':<26}"
                         + (f"  (+{t.soft_deleted} soft-deleted kept)" if t.soft_deleted else "") + last)
        lines.append(f"Last {len(self.runs)} runs:" if self.runs else "No sync runs yet.")
        for r in self.runs:
            lines.append(f"  #{r['id']:<5} {r['mode']:<23} {r['status']:<11} {r['started']:<26} "
                         f"{r['upserted']:>6} written {r['deleted']:>5} deleted {r['stash_requests']:>5} requests"
                         + (f"  by {r['created_by']}" if r.get("created_by") else "")
                         + (f"  ({r['error']})" if r.get("error") else ""))
        w = self.watch
        if w.get("alive"):
            lines.append(f"Watch: alive (pid {w['pid']} on {w['host']}, heartbeat {w['heartbeat_age_s']:.0f} s ago, "
                         f"{w['state']}, last run {w.get('last_run') or '-'}"
                         + (f", next full sync {w['next_full_sync']}" if w.get("next_full_sync") else "") + ").")
        elif w.get("pid"):
            lines.append(f"Watch: not running (last heartbeat {w['heartbeat_age_s']:.0f} s ago from pid {w['pid']} "
                         f"on {w['host']}, state {w['state']}).")
        else:
            lines.append("Watch: never ran on this cache.")
        return "\n".join(lines)


def _watch_status(conn: sqlite3.Connection) -> dict[str, Any]:
    """The most recent watch heartbeat, with its age and whether that process is alive."""
    if not _table_exists(conn, "watch_heartbeat"):
        return {"alive": False}
    has_next = "next_full_sync" in {r[1] for r in conn.execute("PRAGMA table_info(watch_heartbeat)")}
    row = conn.execute("SELECT pid, host, started, last_heartbeat, last_heartbeat_epoch, last_run, last_run_id, "
                       "last_run_status, state, interval_s, heartbeat_s, "
                       + ("next_full_sync" if has_next else "NULL") + " FROM watch_heartbeat "
                       "ORDER BY last_heartbeat_epoch DESC LIMIT 1").fetchone()
    if not row:
        return {"alive": False}
    keys = ("pid", "host", "started", "last_heartbeat", "last_heartbeat_epoch", "last_run", "last_run_id",
            "last_run_status", "state", "interval_s", "heartbeat_s", "next_full_sync")
    out = dict(zip(keys, row))
    age = max(0.0, time.time() - float(out.pop("last_heartbeat_epoch")))
    out["heartbeat_age_s"] = round(age, 1)
    fresh = age <= max(2.5 * float(out["heartbeat_s"]), float(out["heartbeat_s"]) + 5.0)
    alive = fresh and out["state"] not in ("stopped", "failed")
    if alive and out["host"] == socket.gethostname():
        from tagman_base import file_lock as run_lock

        alive = run_lock.process_alive(int(out["pid"]))
    out["alive"] = alive
    return out


def run_cache_status(ctx: Any) -> CacheStatus:
    """Mode ``cache_status``: mirror vs Stash per type, the last runs and the watch heartbeat."""
    import local_cache

    db_path = cache_path(ctx)
    requests_before = getattr(ctx.stash, "requests_sent", 0)
    status = CacheStatus(str(db_path), db_path.exists(), bool(ctx.settings.live_cache))
    mirror: dict[str, int] = {}
    states: dict[str, tuple] = {}
    last_runs: dict[str, dict[str, Any]] = {}
    conn = None
    if status.cache_exists:
        conn = _read_only(db_path)
    try:
        if conn is not None and _table_exists(conn, "sync_state"):
            import cache_schema

            status.schema_version = cache_schema.schema_version(conn)
            columns = {r[1] for r in conn.execute("PRAGMA table_info(scenes)")}
            for spec in local_cache.SPECS:
                total = conn.execute(f"SELECT count(*) FROM {spec.table}").fetchone()[0]
                kept = conn.execute(f"SELECT count(*) FROM {spec.table} WHERE deleted_at IS NOT NULL").fetchone()[0] \
                    if "deleted_at" in columns else 0
                mirror[spec.table] = (total - kept, kept)
            for row in conn.execute("SELECT entity_type, cursor, last_full_sync, last_incremental_sync FROM sync_state"):
                states[row[0]] = row[1:]
            origin = _table_exists(conn, "sync_run_origin")
            runs = conn.execute(
                "SELECT r.id, r.mode, r.started, r.finished, r.status, r.fetched, r.upserted, r.deleted, "
                "r.stash_requests, r.error, " + ("o.created_by" if origin else "NULL") + " FROM sync_runs r "
                + ("LEFT JOIN sync_run_origin o ON o.run_id = r.id " if origin else "")
                + f"ORDER BY r.id DESC LIMIT {STATUS_RUNS}").fetchall()
            keys = ("id", "mode", "started", "finished", "status", "fetched", "upserted", "deleted", "stash_requests",
                    "error", "created_by")
            status.runs = [dict(zip(keys, r)) for r in runs]
            status.watch = _watch_status(conn)
            last_runs = local_cache.last_run_type_counts(conn)
        windows: dict[str, Any] = {}
        for spec in local_cache.SPECS:
            cursor = states.get(spec.table, (None,))[0]
            windows[f"{spec.table}Window"] = (
                {"updated_at": {"value": local_cache.window_lower_bound(local_cache.epoch_of(cursor)),
                                "modifier": "GREATER_THAN"}} if cursor else None)
        counts = ctx.stash.call(_status_counts_query(local_cache.SPECS), windows)
        listable = [s for s in local_cache.SPECS if states.get(s.table, (None,))[0]
                    and 0 < counts[f"{s.table}Pending"]["count"] <= STATUS_LISTING_LIMIT and conn is not None]
        listing = ctx.stash.call(_status_listing_query(listable),
                                 {f"{s.table}Window": windows[f"{s.table}Window"] for s in listable}) if listable else {}
        for spec in local_cache.SPECS:
            cursor, last_full, last_incremental = states.get(spec.table, (None, None, None))
            present, kept = mirror.get(spec.table, (0, 0))
            last_run = {k: v for k, v in last_runs.get(spec.table, {}).items()
                        if k in ("run_id", "mode", "created", "updated", "unchanged", "deleted")}
            t = TypeStatus(mirrored=present, soft_deleted=kept, stash=counts[f"{spec.table}Total"]["count"],
                           cursor=cursor, last_full_sync=last_full, last_incremental_sync=last_incremental,
                           last_run=last_run)
            if not cursor:
                t.pending = t.stash
            elif spec in listable:
                t.pending = _count_differing(conn, spec.table, listing[spec.table][spec.list_key])
            else:
                t.pending = counts[f"{spec.table}Pending"]["count"]
                t.pending_exact = t.pending == 0
            status.types[spec.table] = t
    finally:
        if conn is not None:
            conn.close()
    status.stash_requests = getattr(ctx.stash, "requests_sent", 0) - requests_before
    return status


def _count_differing(conn: sqlite3.Connection, table: str, listing: Iterable[dict]) -> int:
    """How many listed (id, updated_at) pairs the mirror does not hold as they are."""
    pairs = [(int(i["id"]), i["updated_at"]) for i in listing]
    known: dict[int, str] = {}
    for start in range(0, len(pairs), 900):
        chunk = [p[0] for p in pairs[start:start + 900]]
        marks = ",".join("?" * len(chunk))
        known.update(conn.execute(f"SELECT id, updated_at FROM {table} WHERE id IN ({marks})", chunk).fetchall())
    return sum(1 for eid, updated in pairs if known.get(eid) != updated)
