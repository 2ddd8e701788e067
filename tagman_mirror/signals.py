"""Checks that catch what Stash changes without moving any entity's ``updated_at``.

The cursor windows of an incremental or smart sync (``engine``) see every edit that moves
an entity's ``updated_at``, and the count comparison sees deletions. Stash also changes mirrored
content silently; each such change has a check here, run once per incremental or smart sync, in
one extra request for the whole run (``queries.SIGNALS``) plus requests only when a check fires:

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
  and ids the mirror holds in that id range but Stash no longer has). The slice is
  ``VERIFY_SLICE`` entities of each type whatever the library's size, so an idle run costs the
  same in any library; a full cycle takes ``ceil(n / VERIFY_SLICE)`` runs.
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
from typing import TYPE_CHECKING, Any

from tagman_base import plugin_log
from tagman_base.sqlite_util import atomic, chunks
from tagman_base.timestamps import epoch_of
from tagman_mirror import queries
from tagman_mirror.cursor import SignalState, window_lower_bound
from tagman_mirror.entities import SPEC_BY_TABLE, EntitySpec
from tagman_mirror.queries import SIGNAL_TYPES, WINDOW_PAGE
from tagman_mirror.results import FULL
from tagman_mirror.store import ChangeRecorder, delete_entities, live_count, write_items

if TYPE_CHECKING:
    from tagman_mirror.engine import CacheSync

log = logging.getLogger(plugin_log.LOGGER_NAME + ".mirror")

VERIFY_SLICE = 1000  # entities re-verified per type and run


def forget_files_cursors(sync: CacheSync, tables: Iterable[str]) -> None:
    """After a full read the files window starts again from each type's own cursor."""
    with atomic(sync.conn):
        for table in tables:
            if table in SIGNAL_TYPES:
                sync.cursors.set_signals(SignalState(table, None, sync.cursors.signals(table).verify_after))


# ---------------------------------------------------------------------------------------------
# small pure helpers


def runs_to_verify_all(count: int) -> int:
    """How many runs one full re-verification cycle of a type with ``count`` entities takes."""
    return max(1, math.ceil(count / VERIFY_SLICE))


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
    if sync.mode == FULL:
        forget_files_cursors(sync, [s.table for s in specs])
        return
    states = {s.table: sync.cursors.signals(s.table) for s in specs}
    windows = {s.table: _window_start(sync, s, states[s.table]) for s in specs}
    data = sync.stash.call(queries.SIGNALS, _signal_variables(sync, specs, states, windows))
    for spec in specs:
        cursor = states[spec.table].files_cursor
        if windows[spec.table] is not None:
            cursor = _apply_files_window(sync, spec, data[f"{spec.table}Files"], windows[spec.table])
        after = _apply_verification(sync, spec, data[f"{spec.table}Verify"], data[f"{spec.table}Total"]["count"],
                                    states[spec.table].verify_after)
        with atomic(sync.conn):
            sync.cursors.set_signals(SignalState(spec.table, cursor, after))
    if "scenes" in states:
        _apply_phash_check(sync, data["phashMissing"]["count"])


def _window_start(sync: CacheSync, spec: EntitySpec, state: SignalState) -> str | None:
    """The files cursor to open the window at: the stored one, else the type's own cursor (None: no window)."""
    return state.files_cursor or sync.cursors.get(spec.table).cursor


def _signal_variables(sync: CacheSync, specs: Sequence[EntitySpec], states: dict[str, SignalState],
                      windows: dict[str, str | None]) -> dict[str, Any]:
    """Variables of ``queries.SIGNALS``: the parts of the run's types switched on."""
    variables: dict[str, Any] = {"phashOn": "scenes" in states}
    for t in SIGNAL_TYPES:
        variables.update({f"{t}FilesOn": False, f"{t}VerifyOn": False})
    for spec in specs:
        t, state = spec.table, states[spec.table]
        if windows[t] is not None:
            variables.update({f"{t}Files": files_window(windows[t]), f"{t}FilesOn": True})
        variables.update({f"{t}Verify": {"id": {"value": state.verify_after, "modifier": "GREATER_THAN"}},
                          f"{t}VerifyPage": {"per_page": VERIFY_SLICE, "sort": "id", "direction": "ASC"},
                          f"{t}VerifyOn": True})
    return variables


def _write(sync: CacheSync, spec: EntitySpec, items: list[dict]) -> None:
    """Write fetched items through a recorder of their own; only real changes reach the run's counts."""
    recorder = ChangeRecorder(run_id=sync.recorder.run_id, soft_delete=sync.recorder.soft_delete,
                                          now_text=sync.recorder.now_text)
    with atomic(sync.conn):
        written = write_items(sync.conn, spec, items, recorder=recorder)
    _merge_counts(sync, spec, recorder)
    if written:
        sync.stats[spec.table].upserted += written
        sync.stats[spec.table].fetched += len(items)


def _merge_counts(sync: CacheSync, spec: EntitySpec, recorder: ChangeRecorder) -> None:
    """Add a check's created/updated/deleted/revived counts to the run's, and mark the type not idle."""
    counts = recorder.counts.get(spec.table)
    if counts is None:
        return
    changed = False
    run = sync.recorder.tally(spec.table)
    for what in ("created", "updated", "deleted", "revived"):  # re-read unchanged entities are not news
        if getattr(counts, what):
            setattr(run, what, getattr(run, what) + getattr(counts, what))
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
        page = sync.stash.call(queries.FILES_PAGE[spec.table], {"filter": window})[spec.find]


def _apply_verification(sync: CacheSync, spec: EntitySpec, found: dict, stash_total: int, after: int) -> int:
    """Compare a slice of ids above ``after`` with the mirror; returns where the next run goes on."""
    items = found[spec.list_key]
    returned = [int(i["id"]) for i in items]
    wrapped = len(items) >= found["count"]  # the slice reached the highest id
    upper = None if wrapped else max(returned)
    count_before = live_count(sync.conn, spec.table)
    if items:
        _write(sync, spec, items)
    # only the slice's own range: reading every id above it made an idle run grow with the library
    mirror_ids = [r[0] for r in sync.conn.execute(
        f"SELECT id FROM {spec.table} WHERE id > ? AND id <= ? AND deleted_at IS NULL",
        (after, upper if upper is not None else 2**63 - 1))]
    gone = verified_range_gone(mirror_ids, returned, after, upper)
    # Removed here only when the counts agreed: then some other entity was missing too (a paging
    # hole). Differing counts are the count comparison's to settle (it guards against mass deletion).
    if gone and stash_total == count_before:
        recorder = ChangeRecorder(run_id=sync.recorder.run_id, soft_delete=sync.recorder.soft_delete,
                                              now_text=sync.recorder.now_text)
        with atomic(sync.conn):
            delete_entities(sync.conn, spec, gone, recorder=recorder)
        _merge_counts(sync, spec, recorder)
        log.info(f"cache {spec.table}: re-verification found {len(gone)} entities Stash no longer has")
    count_after = live_count(sync.conn, spec.table)
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
    """When Stash's count of scenes missing a phash differs, re-read the scenes whose phash state differs.

    The mirror's count is stored until scenes are written again, so an idle run does not count.
    """
    stored = sync.cursors.phash_missing()
    if stored is not None and stored == stash_missing:
        return
    mirror_missing = _mirror_phash_missing(sync.conn)
    if stash_missing == len(mirror_missing):
        with atomic(sync.conn):
            sync.cursors.set_phash_missing(len(mirror_missing))
        return
    listed = sync.stash.call(queries.PHASH_MISSING_IDS)["findScenes"]["scenes"]
    stash_set = {int(s["id"]) for s in listed}
    differing = sorted(stash_set ^ mirror_missing)
    spec = SPEC_BY_TABLE["scenes"]
    for chunk in chunks(differing, sync.per_page):
        data = sync.stash.call_by_ids(queries.PAGE["scenes"],
                                      {"ids": [str(i) for i in chunk], "filter": {"per_page": -1}})
        if data:
            _write(sync, spec, data[spec.find][spec.list_key])
    log.info(f"cache scenes: {len(differing)} scenes gained or lost a phash")
