"""The ``cache_status`` mode: per type the mirror against Stash, the last runs and the watch service."""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from tagman_base import file_lock
from tagman_base.run_context import RunContext
from tagman_base.sqlite_util import rows_where_in
from tagman_base.timestamps import epoch_of
from tagman_mirror import schema
from tagman_mirror.cache_file import cache_path, read_only, table_exists
from tagman_mirror.cursor import window_filter
from tagman_mirror.entities import SPECS, EntitySpec
from tagman_mirror.queries import status_counts_query, status_listing_query
from tagman_mirror.runs import last_run_type_counts
from tagman_mirror.store import mirror_count, soft_deleted_count
from tagman_mirror.schema import WATCH_TABLES_SINCE

STATUS_LISTING_LIMIT = 10000         # larger windows are counted, not compared with the mirror
STATUS_RUNS = 10
_RUN_KEYS = ("id", "mode", "started", "finished", "status", "fetched", "upserted", "deleted", "stash_requests",
             "error", "created_by")
_HEARTBEAT_KEYS = ("pid", "host", "started", "last_heartbeat", "last_heartbeat_epoch", "last_run", "last_run_id",
                   "last_run_status", "state", "interval_s", "heartbeat_s", "next_full_sync")


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

    def line(self, table: str) -> str:
        """This type's row of the status table."""
        # "~" after a pending figure: the window was too large to compare with the mirror, it is Stash's count
        pending = f"{self.pending}" + ("" if self.pending_exact else "~")
        counts = self.last_run
        last = (f"  last run: {counts.get('created') or 0} created, {counts.get('updated') or 0} updated, "
                f"{counts.get('unchanged') or 0} unchanged, {counts.get('deleted') or 0} deleted"
                if counts.get("run_id") else "")
        return (f"{table:<11}{self.mirrored:>9}{self.stash:>9}{pending:>9}  {self.cursor or '-':<26}"
                f"{self.last_full_sync or '-':<26}{self.last_incremental_sync or '-':<26}"
                + (f"  (+{self.soft_deleted} soft-deleted kept)" if self.soft_deleted else "") + last)


def _run_line(r: dict[str, Any]) -> str:
    """One run of the status's run list."""
    return (f"  #{r['id']:<5} {r['mode']:<23} {r['status']:<11} {r['started']:<26} "
            f"{r['upserted']:>6} written {r['deleted']:>5} deleted {r['stash_requests']:>5} requests"
            + (f"  by {r['created_by']}" if r.get("created_by") else "")
            + (f"  ({r['error']})" if r.get("error") else ""))


def _watch_line(w: dict[str, Any]) -> str:
    """The watch service's line of the status."""
    if w.get("alive"):
        return (f"Watch: alive (pid {w['pid']} on {w['host']}, heartbeat {w['heartbeat_age_s']:.0f} s ago, "
                f"{w['state']}, last run {w.get('last_run') or '-'}"
                + (f", next full sync {w['next_full_sync']}" if w.get("next_full_sync") else "") + ").")
    if w.get("pid"):
        return (f"Watch: not running (last heartbeat {w['heartbeat_age_s']:.0f} s ago from pid {w['pid']} "
                f"on {w['host']}, state {w['state']}).")
    return "Watch: never ran on this cache."


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
        """Entities changed in Stash and not mirrored yet, over all types."""
        return sum(t.pending for t in self.types.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form with the total pending."""
        out = asdict(self)
        out["pending"] = self.pending
        return out

    def __str__(self) -> str:
        lines = [f"Cache status of {self.db_path}" + ("" if self.cache_exists else " (no cache yet)")
                 + f"; liveCache {'on' if self.live_cache else 'off'}."]
        header = f"{'type':<11}{'mirrored':>9}{'stash':>9}{'pending':>9}  {'cursor':<26}{'last full':<26}{'last incremental':<26}"
        lines += [header, "-" * len(header)]
        lines += [t.line(table) for table, t in self.types.items()]
        lines.append(f"Last {len(self.runs)} runs:" if self.runs else "No sync runs yet.")
        lines += [_run_line(r) for r in self.runs]
        lines.append(_watch_line(self.watch))
        return "\n".join(lines)


def _watch_status(conn: sqlite3.Connection) -> dict[str, Any]:
    """The most recent watch heartbeat, with its age and whether that process is alive."""
    if schema.schema_version(conn) < WATCH_TABLES_SINCE:
        return {"alive": False}
    row = conn.execute(f"SELECT {', '.join(_HEARTBEAT_KEYS)} FROM watch_heartbeat "
                       "ORDER BY last_heartbeat_epoch DESC LIMIT 1").fetchone()
    if not row:
        return {"alive": False}
    out = dict(zip(_HEARTBEAT_KEYS, row))
    age = max(0.0, time.time() - float(out.pop("last_heartbeat_epoch")))
    out["heartbeat_age_s"] = round(age, 1)
    fresh = age <= max(2.5 * float(out["heartbeat_s"]), float(out["heartbeat_s"]) + 5.0)
    alive = fresh and out["state"] not in ("stopped", "failed")
    if alive and out["host"] == socket.gethostname():
        alive = file_lock.process_alive(int(out["pid"]))
    out["alive"] = alive
    return out


def _recent_runs(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """The last runs, newest first, with who started them."""
    origin = table_exists(conn, "sync_run_origin")
    runs = conn.execute(
        "SELECT r.id, r.mode, r.started, r.finished, r.status, r.fetched, r.upserted, r.deleted, "
        "r.stash_requests, r.error, " + ("o.created_by" if origin else "NULL") + " FROM sync_runs r "
        + ("LEFT JOIN sync_run_origin o ON o.run_id = r.id " if origin else "")
        + f"ORDER BY r.id DESC LIMIT {STATUS_RUNS}").fetchall()
    return [dict(zip(_RUN_KEYS, r)) for r in runs]


@dataclass
class _MirrorState:
    """What status reads from the cache file."""

    counts: dict[str, tuple[int, int]] = field(default_factory=dict)   # table -> (present, soft-deleted)
    states: dict[str, tuple] = field(default_factory=dict)             # table -> (cursor, last full, last incr.)
    last_runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def cursor(self, table: str) -> str | None:
        """The type's cursor, None when never synced."""
        return self.states.get(table, (None,))[0]


def _read_mirror(conn: sqlite3.Connection, status: CacheStatus) -> _MirrorState:
    """Counts, cursors and run history from the cache (fills the status's runs and watch)."""
    mirror = _MirrorState()
    status.schema_version = schema.schema_version(conn)
    soft = "deleted_at" in {r[1] for r in conn.execute("PRAGMA table_info(scenes)")}
    for spec in SPECS:
        kept = soft_deleted_count(conn, spec.table) if soft else 0
        present = mirror_count(conn, spec.table) if soft else conn.execute(
            f"SELECT count(*) FROM {spec.table}").fetchone()[0]
        mirror.counts[spec.table] = (present, kept)
    for row in conn.execute("SELECT entity_type, cursor, last_full_sync, last_incremental_sync FROM sync_state"):
        mirror.states[row[0]] = row[1:]
    status.runs = _recent_runs(conn)
    status.watch = _watch_status(conn)
    mirror.last_runs = last_run_type_counts(conn)
    return mirror


def _count_differing(conn: sqlite3.Connection, table: str, listing: Iterable[dict]) -> int:
    """How many listed (id, updated_at) pairs the mirror does not hold as they are."""
    pairs = [(int(i["id"]), i["updated_at"]) for i in listing]
    sql = f"SELECT id, updated_at FROM {table} WHERE id IN ({{marks}})"
    known: dict[int, str] = dict(rows_where_in(conn, sql, [p[0] for p in pairs]))
    return sum(1 for eid, updated in pairs if known.get(eid) != updated)


def _type_status(spec: EntitySpec, mirror: _MirrorState, counts: dict, listing: dict,
                 listable: list[EntitySpec], conn: sqlite3.Connection | None) -> TypeStatus:
    """One type's status from the mirror's state and Stash's counts (and window listing)."""
    cursor, last_full, last_incremental = mirror.states.get(spec.table, (None, None, None))
    present, kept = mirror.counts.get(spec.table, (0, 0))
    last_run = {k: v for k, v in mirror.last_runs.get(spec.table, {}).items()
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
    return t


def run_cache_status(ctx: RunContext) -> CacheStatus:
    """Mode ``cache_status``: mirror vs Stash per type, the last runs and the watch heartbeat."""
    db_path = cache_path(ctx.settings, ctx.plugin_dir)
    requests_before = getattr(ctx.stash, "requests_sent", 0)
    status = CacheStatus(str(db_path), db_path.exists(), bool(ctx.settings.live_cache))
    conn = read_only(db_path) if status.cache_exists else None
    try:
        mirror = _read_mirror(conn, status) if conn is not None and table_exists(conn, "sync_state") else _MirrorState()
        windows = {f"{s.table}Window": window_filter(epoch_of(mirror.cursor(s.table))) if mirror.cursor(s.table)
                   else None for s in SPECS}
        counts = ctx.stash.call(status_counts_query(SPECS), windows)
        listable = [s for s in SPECS if mirror.cursor(s.table)
                    and 0 < counts[f"{s.table}Pending"]["count"] <= STATUS_LISTING_LIMIT and conn is not None]
        listing = ctx.stash.call(status_listing_query(listable),
                                 {f"{s.table}Window": windows[f"{s.table}Window"] for s in listable}) if listable else {}
        status.types = {s.table: _type_status(s, mirror, counts, listing, listable, conn) for s in SPECS}
    finally:
        if conn is not None:
            conn.close()
    status.stash_requests = getattr(ctx.stash, "requests_sent", 0) - requests_before
    return status
