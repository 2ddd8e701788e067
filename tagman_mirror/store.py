"""Writing entities to the mirror: upserts that skip identical content, deletions, retention, change log.

Every function here runs inside the caller's transaction (``atomic``); none commits.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from datetime import datetime

from tagman_base.sqlite_util import atomic, chunks, json_functions, rows_where_in
from tagman_base.timestamps import instant_or_none, now_text
from tagman_mirror.cursor import CursorStore
from tagman_mirror.entities import ENTITY_TYPES, EntitySpec, references_to
from tagman_mirror.schema import GUARD_LIFT_MIN_ROWS, GUARDED_EVENTS, guard_lifted
from tagman_mirror.rows import Content, content_diff, load_contents, mirrored_content, owned_tables


@dataclass
class ChangeCounts:
    """What writes did to the entities of one type."""

    created: int = 0
    updated: int = 0      # fetched with a different mirrored content (fields or links)
    unchanged: int = 0    # fetched with identical mirrored content: not rewritten
    deleted: int = 0      # vanished from Stash (removed, or soft-deleted)
    revived: int = 0      # soft-deleted entities Stash has again
    purged: int = 0       # soft-deleted entities removed for good

    def add(self, other: ChangeCounts) -> None:
        """Add another tally to this one."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def written(self) -> int:
        """Entities (re)written: created + updated + revived."""
        return self.created + self.updated + self.revived


@dataclass
class ChangeRecorder:
    """Counts what writes did per type and, with a ``run_id``, logs each change in ``sync_changes``.

    Pass one to ``write_items`` / ``delete_entities`` to get change accounting; ``soft_delete``
    makes ``delete_entities`` keep entities with ``deleted_at`` set instead of removing them.
    """

    run_id: int | None = None
    soft_delete: bool = False
    now_text: Callable[[], str] = field(default=now_text)
    counts: dict[str, ChangeCounts] = field(default_factory=dict)

    def tally(self, table: str) -> ChangeCounts:
        """The (mutable) counts of one type."""
        return self.counts.setdefault(table, ChangeCounts())

    def log(self, conn: sqlite3.Connection, rows: list[tuple]) -> None:
        """Insert (entity_type, entity_id, change, field, old, new) rows for this run.

        Rows of a whole entity (created, deleted, revived, purged: no field) go in one statement per
        type and change, their ids as one JSON array (binding a row at a time costs three times
        more than SQLite storing it); the rows of changed fields follow them.
        """
        if self.run_id is None or not rows:
            return
        as_json = json_functions()
        entities: dict[tuple[str, str], list[int]] = {}
        fields = []
        for row in rows:
            if as_json and row[3] is None:
                entities.setdefault((row[0], row[2]), []).append(row[1])
            else:
                fields.append((self.run_id, *row))
        for (table, change), ids in entities.items():
            conn.execute("INSERT INTO sync_changes (run_id, entity_type, entity_id, change) "
                         "SELECT ?, ?, value, ? FROM json_each(?)", (self.run_id, table, change, json.dumps(ids)))
        if fields:
            conn.executemany("INSERT INTO sync_changes (run_id, entity_type, entity_id, change, field, old_value, "
                             "new_value) VALUES (?, ?, ?, ?, ?, ?, ?)", fields)


def mark_dirty(conn: sqlite3.Connection, table: str, ids: Iterable[int]) -> None:
    """Queue entities for the derived-data refresh."""
    conn.executemany("INSERT OR IGNORE INTO dirty VALUES (?, ?)", [(table, i) for i in dict.fromkeys(ids)])


def forget_rereads(conn: sqlite3.Connection, table: str, ids: Iterable[int]) -> None:
    """Drop entities from the re-read queue."""
    conn.executemany("DELETE FROM pending_reread WHERE entity_type = ? AND entity_id = ?", [(table, i) for i in ids])


@functools.cache
def _upsert_sql(spec: EntitySpec) -> str:
    """INSERT ... ON CONFLICT(id) DO UPDATE for the entity table (an upsert also revives the row)."""
    cols = (*spec.columns, "created_at", "updated_at", "content_hash")
    sets = ", ".join(f"{c} = excluded.{c}" for c in cols[1:])
    return (f"INSERT INTO {spec.table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT(id) DO UPDATE SET {sets}, deleted_at = NULL")


def _existing_states(conn: sqlite3.Connection, table: str, ids: Sequence[int]) -> dict[int, tuple[str, str | None]]:
    """id -> (content_hash, deleted_at) of the mirror rows among ``ids``.

    Ids close together (a page of a full read is a run of ids) are read as one id range, which
    costs only the rows found, instead of binding every id.
    """
    low, high = min(ids), max(ids)
    if high - low < 2 * len(ids):
        wanted = set(ids)
        rows = conn.execute(f"SELECT id, content_hash, deleted_at FROM {table} WHERE id BETWEEN ? AND ?", (low, high))
        return {r[0]: (r[1], r[2]) for r in rows if r[0] in wanted}
    sql = f"SELECT id, content_hash, deleted_at FROM {table} WHERE id IN ({{marks}})"
    return {r[0]: (r[1], r[2]) for r in rows_where_in(conn, sql, ids)}


@dataclass
class _WritePlan:
    """What ``write_items`` decided for a batch of fetched entities."""

    rewrite: list[Content] = field(default_factory=list)       # created, or content changed
    touch: list[tuple[str, int]] = field(default_factory=list)  # equal: store the digest / clear deleted_at
    revived: list[int] = field(default_factory=list)
    changes: list[tuple] = field(default_factory=list)
    counts: ChangeCounts = field(default_factory=ChangeCounts)


def _plan_writes(conn: sqlite3.Connection, spec: EntitySpec, contents: list[Content]) -> tuple[_WritePlan, set[int]]:
    """Compare fetched contents with the mirror: what to rewrite, what only to touch, what changed."""
    existing = _existing_states(conn, spec.table, [c.id for c in contents])
    compare = [c.id for c in contents if c.id in existing and existing[c.id][0] != c.digest]
    old = load_contents(conn, spec, compare) if compare else {}
    plan = _WritePlan()
    for c in contents:
        state = existing.get(c.id)
        if state is None:
            plan.rewrite.append(c)
            plan.counts.created += 1
            plan.changes.append((spec.table, c.id, "created", None, None, None))
            continue
        revived = state[1] is not None
        diff = content_diff(spec, old[c.id], c) if state[0] != c.digest else []
        if revived:
            plan.revived.append(c.id)
            plan.counts.revived += 1
            plan.changes.append((spec.table, c.id, "revived", None, None, None))
        elif diff:
            plan.counts.updated += 1
        else:
            plan.counts.unchanged += 1
        if diff:
            plan.rewrite.append(c)
            plan.changes.extend((spec.table, c.id, "updated", f, a, b) for f, a, b in diff)
        elif revived or state[0] != c.digest:
            plan.touch.append((c.digest, c.id))
    return plan, set(existing)


def page_contents(spec: EntitySpec, items: Iterable[dict]) -> list[Content]:
    """The mirrored contents of fetched items, one per id (the last wins); pure, so it may run ahead in another thread."""
    return list({c.id: c for c in (mirrored_content(spec, item) for item in items)}.values())


def write_items(conn: sqlite3.Connection, spec: EntitySpec, items: Iterable[dict], mark_dirty_rows: bool = True,
                recorder: ChangeRecorder | None = None) -> int:
    """Write the items whose mirrored content changed, replacing their links, files and stash ids.

    An item whose fields and links equal the mirror's is not rewritten (a soft-deleted one only has
    its ``deleted_at`` cleared). Returns how many entities were created, updated or revived.
    ``mark_dirty_rows`` queues them for the derived-data refresh; ``recorder`` counts
    created/updated/unchanged/revived and logs the changes.
    """
    return write_contents(conn, spec, page_contents(spec, items), mark_dirty_rows, recorder)


def write_contents(conn: sqlite3.Connection, spec: EntitySpec, contents: list[Content], mark_dirty_rows: bool = True,
                   recorder: ChangeRecorder | None = None) -> int:
    """``write_items`` for contents already mapped (``page_contents``)."""
    if not contents:
        return 0
    plan, existing = _plan_writes(conn, spec, contents)
    bulk = conn.in_transaction and _rows_to_write(plan) >= GUARD_LIFT_MIN_ROWS
    with guard_lifted(conn, _written_tables(spec), _written_events(plan, existing)) if bulk else nullcontext():
        if recorder is not None:
            recorder.tally(spec.table).add(plan.counts)
            recorder.log(conn, plan.changes)
        if plan.touch:
            conn.executemany(f"UPDATE {spec.table} SET content_hash = ?, deleted_at = NULL WHERE id = ?", plan.touch)
        if plan.rewrite:
            _rewrite(conn, spec, plan.rewrite, [c.id for c in plan.rewrite if c.id in existing])
        if mark_dirty_rows:
            mark_dirty(conn, spec.table, [c.id for c in plan.rewrite] + plan.revived)
        if plan.touch or plan.rewrite:
            _forget_counts(conn, spec.table)
    return plan.counts.written


def _forget_counts(conn: sqlite3.Connection, table: str) -> None:
    """Rows of ``table`` changed: forget the cursor's confirmation (they were read at a time it does not
    cover), the type's stored live count and, for scenes, the stored count of scenes missing a phash."""
    cursors = CursorStore(conn)
    cursors.forget_for_written_rows(table)
    if table == "scenes":
        cursors.forget_phash_missing()


def _rows_to_write(plan: _WritePlan) -> int:
    """Rows a plan writes: entity rows and the rows they own, digests touched, change-log rows
    (the owned rows are counted only when the others fall short of a bulk write)."""
    rows = len(plan.touch) + len(plan.changes) + len(plan.rewrite)
    if rows >= GUARD_LIFT_MIN_ROWS:
        return rows
    return rows + sum(sum(map(len, c.sets.values())) for c in plan.rewrite)


def content_tables(spec: EntitySpec) -> list[str]:
    """The tables that hold a type's mirrored content: its own, its links and files, stash ids."""
    return [spec.table, *(t for t, _owner in owned_tables(spec)), *(["stash_ids"] if spec.has_stash_ids else [])]


def _written_tables(spec: EntitySpec) -> list[str]:
    """Every table ``write_contents`` may write for a type."""
    return [*content_tables(spec), "sync_changes", "dirty"]


def _written_events(plan: _WritePlan, existing: set[int]) -> tuple[str, ...]:
    """The statements a plan runs: INSERTs only when it creates every entity it writes (a first full sync)."""
    if plan.touch or any(c.id in existing for c in plan.rewrite):
        return GUARDED_EVENTS
    return ("INSERT",)


def _delete_owned(conn: sqlite3.Connection, spec: EntitySpec, ids: Sequence[int]) -> None:
    """Delete the link, file and stash-id rows the entities own."""
    params = [(i,) for i in ids]
    for table, owner in owned_tables(spec):
        conn.executemany(f"DELETE FROM {table} WHERE {owner} = ?", params)
    if spec.has_stash_ids:
        conn.executemany("DELETE FROM stash_ids WHERE entity_type = ? AND entity_id = ?", [(spec.kind, i) for i in ids])


def _rewrite(conn: sqlite3.Connection, spec: EntitySpec, contents: list[Content], old_ids: list[int]) -> None:
    """Upsert rows and replace everything they own."""
    conn.executemany(_upsert_sql(spec), [(*c.row, c.digest) for c in contents])
    if old_ids:
        _delete_owned(conn, spec, old_ids)
    for table in content_tables(spec)[1:]:
        rows = [r for c in contents for r in c.sets[table]]
        if rows:
            marks = ",".join("?" * len(rows[0]))
            verb = "INSERT" if spec.files and table == spec.files.table else "INSERT OR IGNORE"
            conn.executemany(f"{verb} INTO {table} VALUES ({marks})", rows)


def _remove_rows(conn: sqlite3.Connection, spec: EntitySpec, ids: Sequence[int]) -> int:
    """Delete entity rows with their own links, files and stash ids; returns how many rows went."""
    _delete_owned(conn, spec, ids)
    before = conn.total_changes
    conn.executemany(f"DELETE FROM {spec.table} WHERE id = ?", [(i,) for i in ids])
    return conn.total_changes - before


def present_ids(conn: sqlite3.Connection, spec: EntitySpec, ids: Sequence[int], live_only: bool) -> list[int]:
    """The ids among ``ids`` the mirror holds (only those not soft-deleted when ``live_only``)."""
    where = " AND deleted_at IS NULL" if live_only else ""
    sql = f"SELECT id FROM {spec.table} WHERE id IN ({{marks}}){where}"
    return sorted(r[0] for r in rows_where_in(conn, sql, ids))


def queue_referrers(conn: sqlite3.Connection, spec: EntitySpec, ids: Sequence[int]) -> None:
    """Queue for re-reading whatever links to the entities (Stash rewrites such links silently)."""
    gone = set(ids)
    for table, column, owner, owner_type in references_to(spec.table):
        rows = rows_where_in(conn, f"SELECT DISTINCT {owner} FROM {table} WHERE {column} IN ({{marks}})", ids)
        queued = [(owner_type, r[0]) for r in rows if not (owner_type == spec.table and r[0] in gone)]
        conn.executemany("INSERT OR IGNORE INTO pending_reread VALUES (?, ?)", queued)
    forget_rereads(conn, spec.table, ids)


def delete_entities(conn: sqlite3.Connection, spec: EntitySpec, ids: Sequence[int],
                    recorder: ChangeRecorder | None = None) -> int:
    """Remove entities Stash no longer has (with their own links, files and stash ids); queue whatever linked to them.

    With a recorder whose ``soft_delete`` is set, the entities are kept with ``deleted_at`` set
    (links included) instead. Returns how many entities went.
    """
    if not ids:
        return 0
    queue_referrers(conn, spec, ids)
    present = present_ids(conn, spec, ids, live_only=True) if recorder is not None else []
    if recorder is not None and recorder.soft_delete:
        stamp = recorder.now_text()
        conn.executemany(f"UPDATE {spec.table} SET deleted_at = ? WHERE id = ?", [(stamp, i) for i in present])
        removed = len(present)
    else:
        removed = _remove_rows(conn, spec, ids)
    mark_dirty(conn, spec.table, ids)
    _forget_counts(conn, spec.table)
    if recorder is not None:
        recorder.tally(spec.table).deleted += len(present)
        recorder.log(conn, [(spec.table, i, "deleted", None, None, None) for i in present])
    return removed


def purge_soft_deleted(conn: sqlite3.Connection, spec: EntitySpec, older_than: datetime | None,
                       recorder: ChangeRecorder | None = None) -> int:
    """Remove for good the type's soft-deleted entities (deleted before ``older_than``; all when None)."""
    rows = conn.execute(f"SELECT id, deleted_at FROM {spec.table} WHERE deleted_at IS NOT NULL").fetchall()
    ids = [eid for eid, stamp in rows
           if older_than is None or (instant_or_none(stamp) or older_than) < older_than]
    if not ids:
        return 0
    removed = _remove_rows(conn, spec, ids)
    forget_rereads(conn, spec.table, ids)
    if recorder is not None:
        recorder.tally(spec.table).purged += removed
        recorder.log(conn, [(spec.table, i, "purged", None, None, None) for i in ids])
    return removed


def soft_deleted_count(conn: sqlite3.Connection, table: str) -> int:
    """How many soft-deleted entities of one type the mirror keeps."""
    return conn.execute(f"SELECT count(*) FROM {table} WHERE deleted_at IS NOT NULL").fetchone()[0]


def soft_deleted_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """How many soft-deleted entities the mirror keeps, per type."""
    return {t: soft_deleted_count(conn, t) for t in ENTITY_TYPES}


def live_stamps_since(conn: sqlite3.Connection, table: str, earliest: int) -> dict[int, str]:
    """``updated_at`` texts of the type's live entities at or after the instant ``earliest``, by id.

    Read from the update-time index alone (it holds the text and the deletion mark): comparing a
    listed window with the mirror touches no table row, however far apart the listed ids lie.
    """
    return dict(conn.execute(f"SELECT id, updated_at FROM {table} WHERE updated_epoch >= ? AND deleted_at IS NULL",
                             (earliest,)))


def mirror_count(conn: sqlite3.Connection, table: str) -> int:
    """How many entities of the type the mirror holds (soft-deleted ones not counted)."""
    return conn.execute(f"SELECT (SELECT count(*) FROM {table}) - "
                        f"(SELECT count(*) FROM {table} WHERE deleted_at IS NOT NULL)").fetchone()[0]


def live_count(conn: sqlite3.Connection, table: str) -> int:
    """``mirror_count``, stored in ``sync_state`` until rows of the type are written (``_forget_counts``).

    For the writer's connection (it may store the count): an idle sync compares Stash's totals
    with the mirror's without counting a table whose pages grow with the library.
    """
    cursors = CursorStore(conn)
    stored = cursors.get(table).live_count
    if stored is not None:
        return stored
    with atomic(conn):
        counted = mirror_count(conn, table)
        cursors.set(table, live_count=counted)
    return counted


def prune_change_log(conn: sqlite3.Connection, cutoff: datetime, keep_run: int | None) -> None:
    """Drop sync_changes rows of runs that started before ``cutoff`` (never those of ``keep_run``)."""
    first = conn.execute("SELECT min(run_id) FROM sync_changes").fetchone()[0]
    if first is None:
        return
    old = [rid for rid, started in conn.execute("SELECT id, started FROM sync_runs WHERE id >= ?", (first,))
           if rid != keep_run and (instant_or_none(started) or cutoff) < cutoff]
    if not old:
        return
    with atomic(conn):
        for chunk in chunks(old, 500):
            conn.execute(f"DELETE FROM sync_changes WHERE run_id IN ({','.join('?' * len(chunk))})", chunk)
