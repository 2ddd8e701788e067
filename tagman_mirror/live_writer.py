"""Re-reading a few entities by id and writing them while no sync runs (hooks and one-scene resync).

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

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tagman_base import plugin_log
from tagman_base.sqlite_util import atomic
from tagman_mirror import queries
from tagman_mirror.cache_file import open_cache, sync_running
from tagman_mirror.derived import meta_value, refresh_derived
from tagman_mirror.entities import SPEC_BY_TABLE, references_to
from tagman_mirror.store import ChangeRecorder, delete_entities, forget_rereads, mark_dirty, write_items

log = logging.getLogger(plugin_log.LOGGER_NAME + ".live")

HOOK_BUSY_TIMEOUT_MS = 2000          # longest a hook waits for SQLite's write lock
HOOK_REREAD_LIMIT = 500              # entities a hook re-reads after a deletion or merge; more are left to the sync
# Image counts are recomputed over the whole library whenever an image or gallery changed; above
# this many images that is too slow for a hook, so the hook leaves it (and the rest of that
# refresh) to the next sync, whose derived-data refresh picks the queued entities up.
HOOK_IMAGE_DERIVED_LIMIT = 5000


@dataclass
class ApplyStats:
    """What re-reading a few entities did to the mirror."""

    status: str = "applied"   # applied | sync_running | busy
    reason: str = ""
    upserted: int = 0
    deleted: int = 0
    reread: int = 0
    derived_refreshed: bool = False
    found: tuple[int, ...] = ()
    requests: int = 0


class SyncStarted(Exception):
    """A sync started (or is running) between the hook's read and its write."""


def full_run_pending(conn: sqlite3.Connection) -> bool:
    """Whether a full sync was interrupted and has to finish first."""
    return conn.execute("SELECT 1 FROM sync_state WHERE full_run_pending LIMIT 1").fetchone() is not None


def sync_marker(conn: sqlite3.Connection, db_path: Path) -> tuple[int, str] | None:
    """The newest sync run as (id, status), or None while a sync is running."""
    row = conn.execute("SELECT id, status FROM sync_runs ORDER BY id DESC LIMIT 1").fetchone()
    marker = (int(row[0]), str(row[1])) if row else (0, "")
    if marker[1] == "running" and sync_running(db_path):
        return None
    return marker


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
        if not ids:
            return []
        spec = SPEC_BY_TABLE[table]
        data = self.stash.call_by_ids(queries.PAGE[table], {"ids": [str(i) for i in ids], "filter": {"per_page": -1}})
        return data[spec.find][spec.list_key] if data else []

    def _check(self, conn: sqlite3.Connection, marker: tuple[int, str]) -> None:
        """Inside the write transaction: refuse when a sync started since ``marker`` or is running."""
        if sync_marker(conn, self.db_path) != marker:
            raise SyncStarted()

    def apply(self, table: str, ids: Sequence[int], merge_sources: Sequence[int] = ()) -> ApplyStats:
        """Upsert the entities Stash has, delete those it no longer has, re-link merged tags, refresh derived data."""
        stats = ApplyStats()
        requests_before = getattr(self.stash, "requests_sent", 0)
        conn = open_cache(self.db_path)
        try:
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            marker = sync_marker(conn, self.db_path)
            if marker is None:
                return ApplyStats(status="sync_running", reason="a cache sync is running; it or the next one picks this up")
            self._write_entities(conn, marker, table, ids, merge_sources, stats)
            self._reread_pending(conn, marker, stats)
            self._refresh_derived(conn, marker, stats)
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

    def _write_entities(self, conn: sqlite3.Connection, marker: tuple[int, str], table: str, ids: Sequence[int],
                        merge_sources: Sequence[int], stats: ApplyStats) -> None:
        """Fetch the entities (and merge sources), then write or delete them in one checked transaction."""
        spec = SPEC_BY_TABLE[table]
        # counts only: hook writes are not sync runs, so they add nothing to the change log
        recorder = ChangeRecorder(run_id=None, soft_delete=self.soft_delete)
        wanted = list(dict.fromkeys([*ids, *merge_sources]))
        items = self._fetch(table, wanted)
        present = {int(item["id"]) for item in items}
        stats.found = tuple(i for i in ids if i in present)
        with atomic(conn):
            self._check(conn, marker)
            stats.upserted += write_items(conn, spec, items, recorder=recorder)
            gone = [i for i in wanted if i not in present and conn.execute(
                f"SELECT 1 FROM {table} WHERE id = ? AND deleted_at IS NULL", (i,)).fetchone()]
            if gone:
                stats.deleted += delete_entities(conn, spec, gone, recorder=recorder)
            if table == "tags" and merge_sources and stats.found:
                relink_merged_tags(conn, [s for s in merge_sources if s not in present], stats.found[0])

    def _refresh_derived(self, conn: sqlite3.Connection, marker: tuple[int, str], stats: ApplyStats) -> None:
        """Refresh derived data of what the hook wrote, unless that is better left to the next sync."""
        if not conn.execute("SELECT 1 FROM dirty LIMIT 1").fetchone():
            return
        reason = self._derived_left_to_sync(conn)
        if reason:
            stats.reason = reason
            return
        with atomic(conn):
            self._check(conn, marker)
            refresh_derived(conn)
        stats.derived_refreshed = True

    def _derived_left_to_sync(self, conn: sqlite3.Connection) -> str:
        """Why the derived-data refresh is better left to the next sync ('' when the hook may do it)."""
        if meta_value(conn, "derived_full") or full_run_pending(conn):
            return "derived data is rebuilt by the next sync"
        images_dirty = conn.execute("SELECT 1 FROM dirty WHERE entity_type IN ('images', 'galleries') LIMIT 1").fetchone()
        if images_dirty:
            size = conn.execute("SELECT max(id) FROM images").fetchone()[0] or 0
            if size > self.image_derived_limit:
                return "image derived data (inheritance, counts) is refreshed by the next sync"
        return ""

    def _reread_pending(self, conn: sqlite3.Connection, marker: tuple[int, str], stats: ApplyStats) -> None:
        """Re-read what a deletion or merge queued (whatever linked to the removed entities), when few."""
        queued = conn.execute("SELECT entity_type, entity_id FROM pending_reread ORDER BY entity_type, entity_id").fetchall()
        if not queued:
            return
        if len(queued) > self.reread_limit:
            log.info(f"{len(queued)} linked entities to re-read: left to the next sync")
            return
        by_type: dict[str, list[int]] = {}
        for etype, eid in queued:
            by_type.setdefault(etype, []).append(int(eid))
        fetched = {etype: self._fetch(etype, ids) for etype, ids in by_type.items() if etype in SPEC_BY_TABLE}
        with atomic(conn):
            self._check(conn, marker)
            for etype, items in fetched.items():
                stats.upserted += write_items(conn, SPEC_BY_TABLE[etype], items)
                stats.reread += len(items)
                # one that vanished meanwhile stays queued: the sync's count comparison finds it
                forget_rereads(conn, etype, [int(i["id"]) for i in items])


def relink_merged_tags(conn: sqlite3.Connection, sources: Sequence[int], destination: int) -> None:
    """Point every mirrored link to a merged tag at the destination, as Stash's merge does.

    Must run inside a transaction, after the sources were deleted (which queued their linked
    entities for re-reading; the re-read then confirms exactly what Stash holds).
    """
    if not sources:
        return
    marks = ",".join("?" * len(sources))
    for table, column, owner, owner_type in references_to("tags"):
        rows = conn.execute(f"SELECT DISTINCT {owner} FROM {table} WHERE {column} IN ({marks})", list(sources)).fetchall()
        mark_dirty(conn, owner_type, [r[0] for r in rows])
        conn.execute(f"UPDATE OR IGNORE {table} SET {column} = ? WHERE {column} IN ({marks})", [destination, *sources])
        conn.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", list(sources))
    conn.execute("DELETE FROM tag_parents WHERE tag_id = parent_id")
