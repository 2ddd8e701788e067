"""Cache sync runs: lock, open, run the engine, record the run in ``sync_runs``; schedules and run history.

``run_sync`` returns the run's ``CacheSyncResult`` (with its ``run_id``); when the run fails, the
error it raises carries the id too (``run_id_of``), so callers never have to guess which run was
theirs.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tagman_base import plugin_log
from tagman_base.errors import CacheError
from tagman_base.gc_tuning import fewer_collections
from tagman_base.sqlite_util import atomic
from tagman_base.stash_client import StashClient
from tagman_base.timestamps import instant_or_none, local_text, utc_now
from tagman_mirror.cache_file import open_cache, sync_lock, use_sync_page_cache
from tagman_mirror.cursor import parse_since
from tagman_mirror.engine import DEFAULT_PER_PAGE, CacheSync, Progress, no_progress
from tagman_mirror.entities import ENTITY_TYPES, SPEC_BY_TABLE, parse_entities
from tagman_mirror.results import FULL, INCREMENTAL, SMART, CacheOptions, CacheSyncResult
from tagman_mirror.store import soft_deleted_counts

log = logging.getLogger(plugin_log.LOGGER_NAME + ".mirror")

Clock = Callable[[], datetime]


def run_id_of(error: BaseException) -> int:
    """The ``sync_runs`` id of the run that failed with ``error`` (0 when it failed before recording one)."""
    return int(getattr(error, "sync_run_id", 0) or 0)


def _start_run(conn: sqlite3.Connection, mode: str, started: str, entities: Sequence[str] = ()) -> int:
    """Record a new run (and mark runs left 'running' by killed processes)."""
    with atomic(conn):
        conn.execute("UPDATE sync_runs SET status = 'interrupted' WHERE status = 'running'")
        cur = conn.execute("INSERT INTO sync_runs (mode, started, status, entities) VALUES (?, ?, 'running', ?)",
                           (mode, started, ",".join(entities) or None))
        return int(cur.lastrowid)


def _finish_run(conn: sqlite3.Connection, run_id: int, result: CacheSyncResult, error: str | None) -> None:
    """Store the run's outcome with its per-type counts."""
    per_type = {t: asdict(s) for t, s in result.per_type.items()}
    skipped = sum(1 for s in result.per_type.values() if s.skipped)
    with atomic(conn):
        conn.execute(
            "UPDATE sync_runs SET finished = ?, status = ?, fetched = ?, upserted = ?, deleted = ?, skipped = ?, "
            "stash_requests = ?, per_type = ?, error = ?, created = ?, updated = ?, unchanged = ?, rows_written = ? "
            "WHERE id = ?",
            (result.finished, result.status, result.fetched, result.upserted, result.deleted, skipped,
             result.stash_requests, json.dumps(per_type), error, result.created, result.updated, result.unchanged,
             result.rows_written, run_id))


def _record_outcome(conn: sqlite3.Connection, result: CacheSyncResult, error: BaseException | None) -> None:
    """Roll back what the failure left open and store the outcome (a failure to store is only logged)."""
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        _finish_run(conn, result.run_id, result, None if error is None
                    else plugin_log.redactor.redact(f"{type(error).__name__}: {error}"))
    except sqlite3.Error as exc:
        log.warning(f"could not record the sync run: {exc}")


def _failure(error: BaseException, db_path: Path, run_id: int) -> BaseException:
    """The error to raise for a failed run, carrying its run id (SQLite errors become a CacheError)."""
    if isinstance(error, sqlite3.Error):
        wrapped = CacheError(f"The cache at {db_path} failed during the sync ({error}). "
                             "Run 'Cache: Full Sync'; if it fails again, delete the file.")
        wrapped.__cause__ = error
        error = wrapped
    error.sync_run_id = run_id  # type: ignore[attr-defined]
    return error


def _run_locked(stash: StashClient, conn: sqlite3.Connection, db_path: Path, sync: CacheSync,
                clock: Clock, started: str) -> CacheSyncResult:
    """Run the engine on an open, locked cache and record the run; raise its error with the run id."""
    started_at = time.monotonic()
    requests_before = stash.requests_sent
    changes_before = conn.total_changes  # this run's own sync_runs record is not counted
    error: BaseException | None = None
    try:
        sync.run()
    except BaseException as exc:  # recorded, then re-raised
        error = exc
    result = CacheSyncResult(
        mode=sync.mode, status="failed" if error else "ok", db_path=str(db_path), started=started,
        finished=local_text(clock()), seconds=round(time.monotonic() - started_at, 3),
        stash_requests=stash.requests_sent - requests_before, per_type=sync.type_stats(),
        warnings=tuple(sync.warnings), run_id=sync.recorder.run_id or 0,
        entities=tuple(s.table for s in sync.specs), rows_written=conn.total_changes - changes_before)
    _record_outcome(conn, result, error)
    if error is not None:
        failure = _failure(error, db_path, result.run_id)
        if failure is error:
            raise error
        raise failure from error
    log.info(str(result))
    return result


def run_sync(stash: StashClient, db_path: Path, mode: str, since: str | None = None,
             progress: Progress = no_progress, per_page: int = DEFAULT_PER_PAGE, *,
             entities: str | Sequence[str] | None = None, options: CacheOptions | None = None,
             clock: Clock | None = None) -> CacheSyncResult:
    """Lock the cache, run one sync of ``mode`` and record it in sync_runs.

    ``entities`` limits the run to those types (see ``parse_entities``; None or empty: all),
    ``options`` carries the retention settings, ``clock`` replaces this machine's clock for
    bookkeeping (tests).
    """
    since_epoch = parse_since(since) if mode == INCREMENTAL else None
    scope = parse_entities(entities)
    db_path = Path(db_path)
    clock = clock or utc_now
    started = local_text(clock())
    with sync_lock(db_path), fewer_collections():
        conn = open_cache(db_path)
        use_sync_page_cache(conn)
        try:
            run_id = _start_run(conn, mode, started, scope)
            sync = CacheSync(stash, conn, mode, since_epoch, per_page, progress, entities=scope, options=options,
                             clock=clock, run_id=run_id)
            return _run_locked(stash, conn, db_path, sync, clock, started)
        finally:
            conn.close()


def cache_full_sync(stash: StashClient, db_path: Path, progress: Progress = no_progress,
                    per_page: int = DEFAULT_PER_PAGE, *, entities: str | Sequence[str] | None = None,
                    options: CacheOptions | None = None, clock: Clock | None = None) -> CacheSyncResult:
    """Read every entity of Stash (of ``entities`` only, when given) into the cache ("Cache: Full Sync")."""
    return run_sync(stash, db_path, FULL, progress=progress, per_page=per_page, entities=entities, options=options,
                    clock=clock)


def cache_incremental_sync(stash: StashClient, db_path: Path, since: str | None = None,
                           progress: Progress = no_progress, per_page: int = DEFAULT_PER_PAGE, *,
                           entities: str | Sequence[str] | None = None, options: CacheOptions | None = None,
                           clock: Clock | None = None) -> CacheSyncResult:
    """Read what changed since each type's cursor, or since ``since`` ("Cache: Incremental Sync")."""
    return run_sync(stash, db_path, INCREMENTAL, since=since, progress=progress, per_page=per_page,
                    entities=entities, options=options, clock=clock)


def cache_smart_sync(stash: StashClient, db_path: Path, progress: Progress = no_progress,
                     per_page: int = DEFAULT_PER_PAGE, *, entities: str | Sequence[str] | None = None,
                     options: CacheOptions | None = None, clock: Clock | None = None) -> CacheSyncResult:
    """Like incremental, but skip types Stash reports unchanged ("Cache: Smart Sync")."""
    return run_sync(stash, db_path, SMART, progress=progress, per_page=per_page, entities=entities, options=options,
                    clock=clock)


# ---------------------------------------------------------------------------------------------
# schedules and history


def next_full_sync_at(conn: sqlite3.Connection, full_every: timedelta,
                      entities: str | Sequence[str] | None = None) -> datetime | None:
    """When the next scheduled full sync is due: the oldest last full sync of the types plus ``full_every``.

    None when some type was never fully synced (a full sync is due now).
    """
    types = parse_entities(entities) or ENTITY_TYPES
    stamps = dict(conn.execute("SELECT entity_type, last_full_sync FROM sync_state"))
    instants = [instant_or_none(stamps.get(t)) for t in types]
    if any(i is None for i in instants):
        return None
    return min(instants) + full_every


def full_sync_due(conn: sqlite3.Connection, full_every: timedelta, now: datetime | None = None,
                  entities: str | Sequence[str] | None = None) -> bool:
    """True when the last full sync of any of the types is older than ``full_every`` (or never happened)."""
    due = next_full_sync_at(conn, full_every, entities)
    return due is None or (now or utc_now()) >= due


_COUNT_KEYS = ("created", "updated", "unchanged", "deleted", "revived", "purged", "fetched", "skipped")


def last_run_type_counts(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Per type: the counts of the last finished run that covered it, and the soft-deleted entities kept.

    ``{"scenes": {"run_id", "mode", "status", "finished", "created", "updated", "unchanged", "deleted",
    "revived", "purged", "fetched", "skipped", "soft_deleted"}, ...}``; created/updated/unchanged are
    None for runs of versions without change accounting, and every value but soft_deleted is None
    for a type no run has covered yet.
    """
    out: dict[str, dict[str, Any]] = {}
    rows = conn.execute("SELECT id, mode, status, finished, per_type FROM sync_runs "
                        "WHERE finished IS NOT NULL ORDER BY id DESC")
    for run_id, mode, status, finished, per_type in rows:
        for table, stats in json.loads(per_type or "{}").items():
            if table in SPEC_BY_TABLE and table not in out:
                counts = {k: stats.get(k) for k in _COUNT_KEYS}
                out[table] = {"run_id": run_id, "mode": mode, "status": status, "finished": finished, **counts}
        if len(out) == len(ENTITY_TYPES):
            break
    soft = soft_deleted_counts(conn)
    blank = dict.fromkeys(("run_id", "mode", "status", "finished", *_COUNT_KEYS))
    return {t: {**out.get(t, blank), "soft_deleted": soft[t]} for t in ENTITY_TYPES}
