"""Checks that catch what Stash changes without moving any entity's ``updated_at``.

The cursor windows of an incremental or smart sync (``local_cache``) see every edit that moves
an entity's ``updated_at``, and the count comparison sees deletions. Stash also changes mirrored
content silently; each such change has a check here, run once per incremental or smart sync, in
one extra request for the whole run (``SIGNALS_QUERY``) plus requests only when a check fires:

* **Tag merge** (``tagsMerge``): the destination gains the sources' names as aliases, their
  stash ids and parents, with no timestamp. The sources vanish, so the tag count drops; whenever
  the count comparison removes tags, every remaining tag is queued for re-reading
  (``queue_absorbers``, in the same transaction as the removal), which refreshes the destination.
* **File moved, renamed or modified** (scan, ``moveFiles``): only the file row changes, with the
  scan's time as the file's ``updated_at``. Per file-owning type (scenes, images, galleries) a
  *files cursor* (the newest file ``updated_at`` covered) opens a window
  ``files_filter: {updated_at > cursor - 1 s}``; the owners in it are read in full and compared
  by content hash, like the recheck entities of the type windows.
* **Phash generated** (no hook, no timestamp): Stash's count of scenes ``is_missing: "phash"``
  is compared with the mirror's; when they differ, the ids are compared and the scenes that
  gained or lost a phash are re-read.
* **Anything else** (``sceneAssignFile``, a phash regenerated over an existing one, and whatever
  no check covers): a rolling re-verification re-reads a slice of scenes, images and galleries
  on every run, after a persisted id position, and compares it with the mirror (content hashes,
  and ids the mirror holds in that id range but Stash no longer has). ``verify_slice`` sets the
  slice: a full cycle takes at most ``VERIFY_RUNS`` runs up to 100,000 entities of a type
  (``ceil(n / 1000)`` runs above that).
* ``sceneMerge`` and ``performerMerge`` need no check of their own: both move the destination's
  ``updated_at``, and the sources' removal is found by the count comparison, which re-reads
  whatever linked to them (scenes, galleries and images of a merged performer).

Stash's filters for the id range and the files exist only for scenes, images and galleries, so
the file window and the re-verification cover those three types; every change Stash makes to
studios, tags, performers and groups moves an ``updated_at`` or a count.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import local_cache
from cache_schema import atomic
from local_cache import SPEC_BY_TABLE, EntitySpec, epoch_of, window_lower_bound

if TYPE_CHECKING:
    from local_cache import CacheSync

log = logging.getLogger(__name__)

SIGNAL_TYPES: tuple[str, ...] = ("scenes", "images", "galleries")  # types with files and an id filter
WINDOW_PAGE = 1000      # owners read per request from a file-change window
VERIFY_RUNS = 100       # a type of up to 100,000 entities is re-verified within this many runs
VERIFY_MIN, VERIFY_MAX = 100, 1000  # entities re-verified per type and run
_FILE_TIMES = {
    "scenes": "files { updated_at }",
    "images": "visual_files { ... on ImageFile { updated_at } ... on VideoFile { updated_at } }",
    "galleries": "files { updated_at }",
}


# ---------------------------------------------------------------------------------------------
# queries


def _signal_fields(spec: EntitySpec) -> str:
    """The file-change window and the re-verification slice of one type, as aliased fields."""
    t = spec.table
    return (f"  {t}Files: {spec.find}({spec.filter_arg}: ${t}Files, filter: {{per_page: {WINDOW_PAGE}, "
            f"sort: \"id\", direction: ASC}}) @include(if: ${t}FilesOn) "
            f"{{ count {spec.list_key} {{ {spec.fields} {_FILE_TIMES[t]} }} }}\n"
            f"  {t}Verify: {spec.find}({spec.filter_arg}: ${t}Verify, filter: ${t}VerifyPage) "
            f"@include(if: ${t}VerifyOn) {{ count {spec.list_key} {{ {spec.fields} }} }}\n"
            f"  {t}Total: {spec.find}(filter: {{per_page: 0}}) @include(if: ${t}VerifyOn) {{ count }}\n")


def _signals_query() -> str:
    """One request with every check of a run (each type's part switched by its variables)."""
    params, body = [], ""
    for t in SIGNAL_TYPES:
        spec = SPEC_BY_TABLE[t]
        params += [f"${t}Files: {spec.filter_type}", f"${t}FilesOn: Boolean!", f"${t}Verify: {spec.filter_type}",
                   f"${t}VerifyPage: FindFilterType", f"${t}VerifyOn: Boolean!"]
        body += _signal_fields(spec)
    body += ("  phashMissing: findScenes(scene_filter: {is_missing: \"phash\"}, filter: {per_page: 0}) "
             "@include(if: $phashOn) { count }\n")
    return f"query TagManagerCacheSignals({', '.join(params)}, $phashOn: Boolean!) {{\n{body}}}"


def _window_page_query(spec: EntitySpec) -> str:
    """Further owners of a file-change window (keyset: ids above the last one read)."""
    return (f"query TagManagerCache{spec.operation}FilesPage($filter: {spec.filter_type}) {{\n"
            f"  {spec.find}({spec.filter_arg}: $filter, filter: {{per_page: {WINDOW_PAGE}, sort: \"id\", "
            f"direction: ASC}}) {{ count {spec.list_key} {{ {spec.fields} {_FILE_TIMES[spec.table]} }} }}\n}}")


SIGNALS_QUERY = _signals_query()
SCENES_FILES_PAGE_QUERY = _window_page_query(SPEC_BY_TABLE["scenes"])
IMAGES_FILES_PAGE_QUERY = _window_page_query(SPEC_BY_TABLE["images"])
GALLERIES_FILES_PAGE_QUERY = _window_page_query(SPEC_BY_TABLE["galleries"])
WINDOW_PAGE_QUERIES = {"scenes": SCENES_FILES_PAGE_QUERY, "images": IMAGES_FILES_PAGE_QUERY,
                       "galleries": GALLERIES_FILES_PAGE_QUERY}
PHASH_MISSING_IDS_QUERY = """query TagManagerCachePhashMissing {
  findScenes(scene_filter: {is_missing: "phash"}, filter: {per_page: -1, sort: "id", direction: ASC}) { scenes { id } }
}"""
ALL_QUERIES: tuple[str, ...] = (SIGNALS_QUERY, *WINDOW_PAGE_QUERIES.values(), PHASH_MISSING_IDS_QUERY)


# ---------------------------------------------------------------------------------------------
# state


@dataclass(frozen=True)
class SignalState:
    """Where the checks of one type stand: the files cursor and the re-verification position."""

    entity_type: str
    files_cursor: str | None = None
    verify_after: int = 0


def load_state(conn: sqlite3.Connection, table: str) -> SignalState:
    """The stored state of a type (the initial one when none is stored)."""
    row = conn.execute("SELECT files_cursor, verify_after FROM mirror_signals WHERE entity_type = ?",
                       (table,)).fetchone()
    return SignalState(table, *row) if row else SignalState(table)


def save_state(conn: sqlite3.Connection, state: SignalState) -> None:
    """Store a type's state when it changed (inside the caller's transaction)."""
    if load_state(conn, state.entity_type) == state:
        return
    conn.execute("INSERT INTO mirror_signals (entity_type, files_cursor, verify_after) VALUES (?, ?, ?) "
                 "ON CONFLICT(entity_type) DO UPDATE SET files_cursor = excluded.files_cursor, "
                 "verify_after = excluded.verify_after", (state.entity_type, state.files_cursor, state.verify_after))


def forget_files_cursors(conn: sqlite3.Connection, tables: Iterable[str]) -> None:
    """After a full read the files window starts again from each type's own cursor."""
    with atomic(conn):
        for table in tables:
            if table in SIGNAL_TYPES:
                save_state(conn, SignalState(table, None, load_state(conn, table).verify_after))


# ---------------------------------------------------------------------------------------------
# small pure helpers


def verify_slice(mirror_count: int) -> int:
    """Entities of a type re-verified per run: 1/VERIFY_RUNS of the type, within [VERIFY_MIN, VERIFY_MAX]."""
    return min(VERIFY_MAX, max(VERIFY_MIN, math.ceil(mirror_count / VERIFY_RUNS)))


def runs_to_verify_all(count: int) -> int:
    """How many runs one full re-verification cycle of a type with ``count`` entities takes."""
    return max(1, math.ceil(count / verify_slice(count)))


def files_window(cursor_text: str) -> dict[str, Any]:
    """The filter of owners with a file updated at or after the cursor's instant (any UTC offset)."""
    bound = window_lower_bound(epoch_of(cursor_text))
    return {"files_filter": {"updated_at": {"value": bound, "modifier": "GREATER_THAN"}}}


def file_times(table: str, item: dict) -> list[str]:
    """The ``updated_at`` of every file of an item."""
    files = item.get("visual_files" if table == "images" else "files") or []
    return [f["updated_at"] for f in files if f and f.get("updated_at")]


def newest(texts: Iterable[str | None]) -> str | None:
    """The latest instant among Stash timestamps (None when there is none)."""
    present = [t for t in texts if t]
    return max(present, key=epoch_of) if present else None


def verified_range_gone(mirror_ids: Sequence[int], returned: Sequence[int], after: int,
                        upper: int | None) -> list[int]:
    """Mirror ids in (after, upper] (unbounded when None) that Stash did not return."""
    seen = set(returned)
    return sorted(i for i in mirror_ids if i > after and (upper is None or i <= upper) and i not in seen)


# ---------------------------------------------------------------------------------------------
# the checks of a run


def queue_absorbers(conn: sqlite3.Connection, spec: EntitySpec, removed: Sequence[int]) -> None:
    """After tags vanished, queue every remaining tag for re-reading: a merge destination took the
    sources' names, stash ids and parents without a new updated_at (inside the caller's transaction)."""
    if spec.table != "tags" or not removed:
        return
    conn.execute("INSERT OR IGNORE INTO pending_reread (entity_type, entity_id) "
                 "SELECT 'tags', id FROM tags WHERE deleted_at IS NULL")


def check(sync: CacheSync) -> None:
    """Run this run's checks (see the module docstring) for its scenes, images and galleries."""
    specs = [s for s in sync.specs if s.table in SIGNAL_TYPES]
    if not specs:
        return
    if sync.mode == local_cache.FULL:
        forget_files_cursors(sync.conn, [s.table for s in specs])
        return
    states = {s.table: load_state(sync.conn, s.table) for s in specs}
    windows = {s.table: _window_start(sync, s, states[s.table]) for s in specs}
    data = sync.stash.call(SIGNALS_QUERY, _signal_variables(sync, specs, states, windows))
    for spec in specs:
        cursor = states[spec.table].files_cursor
        if windows[spec.table] is not None:
            cursor = _apply_files_window(sync, spec, data[f"{spec.table}Files"], windows[spec.table])
        after = _apply_verification(sync, spec, data[f"{spec.table}Verify"], data[f"{spec.table}Total"]["count"],
                                    states[spec.table].verify_after)
        with atomic(sync.conn):
            save_state(sync.conn, SignalState(spec.table, cursor, after))
    if "scenes" in states:
        _apply_phash_check(sync, data["phashMissing"]["count"])


def _window_start(sync: CacheSync, spec: EntitySpec, state: SignalState) -> str | None:
    """The files cursor to open the window at: the stored one, else the type's own cursor (None: no window)."""
    return state.files_cursor or sync._state(spec)["cursor"]


def _signal_variables(sync: CacheSync, specs: Sequence[EntitySpec], states: dict[str, SignalState],
                      windows: dict[str, str | None]) -> dict[str, Any]:
    """Variables of SIGNALS_QUERY: the parts of the run's types switched on."""
    variables: dict[str, Any] = {"phashOn": "scenes" in states}
    for t in SIGNAL_TYPES:
        variables.update({f"{t}FilesOn": False, f"{t}VerifyOn": False})
    for spec in specs:
        t, state = spec.table, states[spec.table]
        if windows[t] is not None:
            variables.update({f"{t}Files": files_window(windows[t]), f"{t}FilesOn": True})
        size = verify_slice(sync._mirror_count(spec))
        variables.update({f"{t}Verify": {"id": {"value": state.verify_after, "modifier": "GREATER_THAN"}},
                          f"{t}VerifyPage": {"per_page": size, "sort": "id", "direction": "ASC"},
                          f"{t}VerifyOn": True})
    return variables


def _write(sync: CacheSync, spec: EntitySpec, items: list[dict]) -> None:
    """Write fetched items through a recorder of their own; only real changes reach the run's counts."""
    recorder = local_cache.ChangeRecorder(run_id=sync.recorder.run_id, soft_delete=sync.recorder.soft_delete,
                                          now_text=sync.recorder.now_text)
    with atomic(sync.conn):
        written = local_cache.write_items(sync.conn, spec, items, recorder=recorder)
    _merge_counts(sync, spec, recorder)
    if written:
        sync.stats[spec.table].upserted += written
        sync.stats[spec.table].fetched += len(items)


def _merge_counts(sync: CacheSync, spec: EntitySpec, recorder: local_cache.ChangeRecorder) -> None:
    """Add a check's created/updated/deleted/revived counts to the run's, and mark the type not idle."""
    counts = recorder.counts.get(spec.table, {})
    changed = False
    for what in ("created", "updated", "deleted", "revived"):
        if counts.get(what):
            sync.recorder.count(spec.table, what, counts[what])
            changed = True
    if changed:
        sync.stats[spec.table].skipped = False


def _apply_files_window(sync: CacheSync, spec: EntitySpec, first: dict, start: str) -> str:
    """Write the owners of files updated since ``start`` (all pages); returns the advanced files cursor."""
    page, cursor = first, start
    while True:
        items = page[spec.list_key]
        if items:
            _write(sync, spec, items)
            cursor = newest([cursor, *(t for item in items for t in file_times(spec.table, item))]) or cursor
        if len(items) < WINDOW_PAGE:
            return cursor
        last = max(int(i["id"]) for i in items)
        window = {**files_window(start), "id": {"value": last, "modifier": "GREATER_THAN"}}
        page = sync.stash.call(WINDOW_PAGE_QUERIES[spec.table], {"filter": window})[spec.find]


def _apply_verification(sync: CacheSync, spec: EntitySpec, found: dict, stash_total: int, after: int) -> int:
    """Compare a slice of ids above ``after`` with the mirror; returns where the next run goes on."""
    items = found[spec.list_key]
    returned = [int(i["id"]) for i in items]
    wrapped = len(items) >= found["count"]  # the slice reached the highest id
    upper = None if wrapped else max(returned)
    count_before = sync._mirror_count(spec)
    if items:
        _write(sync, spec, items)
    mirror_ids = [r[0] for r in sync.conn.execute(
        f"SELECT id FROM {spec.table} WHERE id > ? AND deleted_at IS NULL", (after,))]
    gone = verified_range_gone(mirror_ids, returned, after, upper)
    # Removed here only when the counts agreed: then some other entity was missing too (a paging
    # hole). Differing counts are the count comparison's to settle (it guards against mass deletion).
    if gone and stash_total == count_before:
        recorder = local_cache.ChangeRecorder(run_id=sync.recorder.run_id, soft_delete=sync.recorder.soft_delete,
                                              now_text=sync.recorder.now_text)
        with atomic(sync.conn):
            local_cache.delete_entities(sync.conn, spec, gone, recorder=recorder)
        _merge_counts(sync, spec, recorder)
        log.info(f"cache {spec.table}: re-verification found {len(gone)} entities Stash no longer has")
    count_after = sync._mirror_count(spec)
    if count_after != count_before and count_after != stash_total:
        sync._reconcile(spec, allow_mass_delete=False)
    return 0 if wrapped else max(returned)


def _mirror_phash_missing(conn: sqlite3.Connection) -> set[int]:
    """Live scenes of the mirror without files or with a file lacking a phash (Stash's is_missing)."""
    return {r[0] for r in conn.execute(
        "SELECT s.id FROM scenes s WHERE s.deleted_at IS NULL AND (NOT EXISTS "
        "(SELECT 1 FROM scene_files f WHERE f.scene_id = s.id) OR EXISTS "
        "(SELECT 1 FROM scene_files f WHERE f.scene_id = s.id AND f.phash IS NULL))")}


def _apply_phash_check(sync: CacheSync, stash_missing: int) -> None:
    """When Stash's count of scenes missing a phash differs, re-read the scenes whose phash state differs."""
    mirror_missing = _mirror_phash_missing(sync.conn)
    if stash_missing == len(mirror_missing):
        return
    listed = sync.stash.call(PHASH_MISSING_IDS_QUERY)["findScenes"]["scenes"]
    stash_set = {int(s["id"]) for s in listed}
    differing = sorted(stash_set ^ mirror_missing)
    spec = SPEC_BY_TABLE["scenes"]
    for chunk in local_cache._chunks(differing, sync.per_page):
        data = sync.stash.call_by_ids(local_cache.PAGE_QUERIES["scenes"],
                                      {"ids": [str(i) for i in chunk], "filter": {"per_page": -1}})
        if data:
            _write(sync, spec, data[spec.find][spec.list_key])
    log.info(f"cache scenes: {len(differing)} scenes gained or lost a phash")
