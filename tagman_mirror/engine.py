"""The sync engine: one run of full, incremental or smart sync over an open, locked cache.

How a type is synced (studios, tags, performers, groups, galleries, scenes, images, in that order):

* Full: pages of every entity sorted by id; each page commits with its links and the page
  marker, so a killed run resumes at its last committed page. The type's cursor becomes the
  newest ``updated_at`` Stash held when the pass started.
* Incremental / smart: one *probe* request (total count, count of the cursor window, and the
  full content of the "recheck" entities), then one *listing* request (ids + ``updated_at`` of
  the window). Entities whose ``updated_at`` differs from the mirror are fetched by id, oldest
  first, each chunk committed with the advanced cursor. Smart skips the type when the window
  is empty; an idle smart sync thus makes two requests per type and writes no entity rows.
* After the types: ``signals.check`` (one more request) for what Stash changes without a new
  ``updated_at`` — moved or modified files, generated phashes, a rolling re-verification.
* Before them, one small request for Stash's clock when the client has not had it yet (see below).

Why no update is missed (the cursor is always a text Stash returned, never this machine's clock):

* Stash compares ``updated_at`` as text in the offset the row was written in. The window's lower
  bound is the cursor instant minus one second rendered at UTC-12:00, the smallest offset in use:
  any row written at or after the cursor instant, in any offset from -12:00 to +14:00, has a
  larger local date-time part and therefore a larger text (DST and time-zone moves included).
* An entity edited again in the same second after it was fetched keeps its ``updated_at``.
  That can only happen to entities whose ``updated_at`` is at or after the cursor instant,
  because the cursor never exceeds Stash's clock at the time of fetching; those "recheck"
  entities are re-read in full and compared by content hash, until Stash's clock (its ``Date``
  header) shows it had left their second before they were last read; 26 h later the window
  starts at the cursor's own text (``cursor.py``: settled and quiet cursors).
* Deletions leave no trace: when Stash's count differs from the mirror's, the id sets are
  compared and vanished entities removed; whatever linked to them is queued for re-reading,
  which also repairs links rewritten by tag merges (which do not touch ``updated_at``); removed
  tags also queue every remaining tag (``signals.queue_absorbers``: a merge destination).
  A full pass always compares the id sets at its end (LIMIT/OFFSET paging can skip a row while
  the counts agree).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from tagman_base import plugin_log
from tagman_base.prefetch import PagePrefetch
from tagman_base.sqlite_util import atomic, chunks
from tagman_base.stash_client import StashClient
from tagman_base.timestamps import epoch_of, local_text, utc_now
from tagman_mirror import queries, schema, signals
from tagman_mirror.cursor import CursorStore, TypeCursor, after_text_filter, earliest_instant, window_filter
from tagman_mirror.derived import refresh_derived
from tagman_mirror.entities import ENTITY_TYPES, SPEC_BY_TABLE, SPECS, EntitySpec, parse_entities
from tagman_mirror.id_compare import compare_ids
from tagman_mirror.results import FULL, SMART, CacheOptions, TypeStats, TypeTally
from tagman_mirror.store import (
    ChangeRecorder, content_tables, delete_entities, forget_rereads, live_count, live_stamps_since,
    prune_change_log, purge_soft_deleted, page_contents, soft_deleted_count, write_contents, write_items,
)
from tagman_mirror.rows import Content

log = logging.getLogger(plugin_log.LOGGER_NAME + ".mirror")

DEFAULT_PER_PAGE = 1000
Progress = Callable[[float], None]


def no_progress(_fraction: float) -> None:
    """Default progress callback."""


@dataclass(frozen=True)
class FetchedPage:
    """One page of a full read, mapped: Stash's total count, how many items came, their mirrored contents."""

    count: int
    items: int
    contents: list[Content]


class CacheSync:
    """One sync run over an open, locked cache connection.

    ``entities`` limits the run to those types (all when empty); ``options`` sets soft retention
    and change-log pruning; ``clock`` (aware datetimes) stamps bookkeeping, never cursors.
    """

    def __init__(self, stash: StashClient, conn: sqlite3.Connection, mode: str, since: int | None = None,
                 per_page: int = DEFAULT_PER_PAGE, progress: Progress = no_progress,
                 entities: Sequence[str] = (), options: CacheOptions | None = None,
                 clock: Callable[[], datetime] | None = None, run_id: int | None = None) -> None:
        self.stash = stash
        self.conn = conn
        self.cursors = CursorStore(conn)
        self.mode = mode
        self.since = since
        self.per_page = max(1, int(per_page))  # Stash has no cap on per_page
        self.progress = progress
        self.warnings: list[str] = []
        self.stats: dict[str, TypeTally] = {}
        scope = parse_entities(entities) if entities else ()
        self.scoped = bool(scope) and len(scope) < len(SPECS)
        self.specs: tuple[EntitySpec, ...] = tuple(SPEC_BY_TABLE[t] for t in scope) if self.scoped else SPECS
        self.options = options or CacheOptions()
        self.clock = clock or utc_now
        self.recorder = ChangeRecorder(run_id=run_id, soft_delete=self.options.soft_delete, now_text=self._now_text)
        self.confirmed: dict[str, int] = {}  # type -> Stash's clock before its pass (all its reads came later)

    def _now_text(self) -> str:
        """The run's clock as local ISO text (bookkeeping only)."""
        return local_text(self.clock())

    def type_stats(self) -> dict[str, TypeStats]:
        """Per-type summary of the run so far."""
        soft = dict.fromkeys(self.stats, 0)
        try:
            soft.update({t: soft_deleted_count(self.conn, t) for t in self.stats})
        except sqlite3.Error:
            pass
        return {t: s.frozen(self.recorder.counts.get(t), soft[t]) for t, s in self.stats.items()}

    # -- run -------------------------------------------------------------------------------

    def run(self) -> None:
        """Sync the run's types in dependency order, then retention, change-log pruning and derived data."""
        schema.restore_indexes(self.conn)  # a killed first fill left them for the end it never reached
        self._read_stash_clock()
        if self.mode == FULL:
            self._start_full_run()
        count = len(self.specs)
        for index, spec in enumerate(self.specs):
            self.stats[spec.table] = TypeTally()
            base, share = index / count, 0.95 / count
            self._sync_type(spec, lambda f, b=base, s=share: self.progress(min(1.0, b * 0.95 + f * s)))
            self.progress((index + 1) / count * 0.95)
        signals.check(self)  # changes no updated_at reveals: file moves, phashes, re-verification
        for spec in self.specs:
            # deletions found in later types (e.g. a merged tag) queue earlier ones (e.g. studios);
            # types outside the run's scope keep their queue for a later run
            self._process_rereads(spec)
        self._reconfirm()
        self._apply_retention()
        self._store_live_counts()
        derived = refresh_derived(self.conn)
        log.debug(f"derived data refreshed: {derived}")
        if self.mode == FULL:
            self._finish_full_run()
        if self.options.change_log_days:
            prune_change_log(self.conn, self.clock() - timedelta(days=self.options.change_log_days),
                             keep_run=self.recorder.run_id)
        for table, stats in self.type_stats().items():
            log.info(f"cache {table}: {stats.summary()}")
        self.progress(1.0)

    def _read_stash_clock(self) -> None:
        """Learn Stash's clock before the first pass when no answer to this client has shown it yet.

        Each pass records the clock of an answer received before its first read (``checked``);
        without one, the first type's cursor would never be confirmed, and every run would
        re-read the entities of its second and list 26 h of offsets below it. (Behind a proxy
        that drops the ``Date`` header this request is spent in vain; nothing is skipped then.)
        """
        if self.stash.server_epoch is None:
            self.stash.call(queries.CLOCK)

    def _start_full_run(self) -> None:
        """Mark the run's types for a full read, except those an interrupted full run is resuming."""
        with atomic(self.conn):
            if not self.scoped:  # a full run rebuilds all derived data; a scoped one refreshes what changed
                self.conn.execute("INSERT OR REPLACE INTO cache_meta VALUES ('derived_full', '1')")
            pending = self.cursors.pending_full()
            resumed = [s.table for s in self.specs if s.table in pending]
            if resumed:
                log.info(f"resuming the interrupted full sync of {', '.join(resumed)}")
            for spec in self.specs:
                if spec.table not in pending:
                    self.cursors.set(spec.table, full_next_page=1, full_cursor=None)
                self.cursors.set(spec.table, full_run_pending=1)

    def _finish_full_run(self) -> None:
        """Forget the pending full run, keeping types of an interrupted one this run did not cover."""
        scope = {spec.table for spec in self.specs}
        with atomic(self.conn):
            for table in ENTITY_TYPES:
                state = self.cursors.get(table)
                if state.full_run_pending and (table in scope or state.full_next_page is None):
                    self.cursors.set(table, full_run_pending=0)

    def _store_live_counts(self) -> None:
        """Count the types whose rows this run wrote and store the counts: the next sync, if idle, counts nothing."""
        for spec in self.specs:
            live_count(self.conn, spec.table)

    def _apply_retention(self) -> None:
        """Purge soft-deleted entities of the run's types: older than cacheSoftDeleteDays, or all when it is off."""
        days = self.options.soft_delete_days
        if self.options.soft_delete and not days:
            return
        cutoff = self.clock() - timedelta(days=days) if self.options.soft_delete else None
        for spec in self.specs:
            with atomic(self.conn):
                purged = purge_soft_deleted(self.conn, spec, cutoff, self.recorder)
            if purged:
                log.info(f"cache {spec.table}: purged {purged} soft-deleted entities")

    def _sync_type(self, spec: EntitySpec, progress: Progress) -> None:
        """Sync one entity type according to the mode."""
        state = self.cursors.get(spec.table)
        stats = self.stats[spec.table]
        if self.mode == FULL and state.full_next_page is None:
            stats.skipped = True
            stats.notes.append("read completely by the interrupted full sync.")
        elif self.mode == FULL or (state.cursor is None and self.since is None):
            if self.mode != FULL:
                stats.notes.append("no cursor yet: read in full.")
            self._full_pass(spec, state, progress)
        else:
            self._window_pass(spec, state, progress)
        self._process_rereads(spec)

    # -- full ------------------------------------------------------------------------------

    def _full_pass(self, spec: EntitySpec, state: TypeCursor, progress: Progress) -> None:
        """Read every entity page by page (resuming a killed full pass), then reconcile deletions."""
        stats = self.stats[spec.table]
        page, target = state.full_next_page or 1, state.full_cursor
        resumed = page > 1
        if resumed:
            log.info(f"cache {spec.table}: resuming the full read at page {page}")
        checked = None if resumed else self.stash.server_epoch  # every page below is read at this time or later
        if target is None:
            newest = self.stash.call(queries.LATEST[spec.table])[spec.find][spec.list_key]
            target = newest[0]["updated_at"] if newest else None
            with atomic(self.conn):
                self.cursors.set(spec.table, full_next_page=page, full_cursor=target)
                if not resumed and self._first_fill(spec):
                    deferred = schema.defer_indexes(self.conn, content_tables(spec))
                    log.debug(f"cache {spec.table}: first fill, indexes built at the end: {', '.join(deferred)}")
        mark_dirty = self.mode != FULL or self.scoped
        with self._pages(spec, page) as pages:
            for page, fetched in pages:
                with atomic(self.conn):
                    stats.upserted += write_contents(self.conn, spec, fetched.contents, mark_dirty,
                                                     recorder=self.recorder)
                    self.cursors.set(spec.table, full_next_page=page + 1)
                stats.fetched += fetched.items
                log.debug(f"cache {spec.table}: page {page} ({fetched.items} items)")
                progress(min(1.0, page * self.per_page / max(fetched.count, 1)))
        schema.restore_indexes(self.conn)
        # Stash pages with LIMIT/OFFSET: a row deleted below the offset while paging hides the next
        # one, and a creation meanwhile keeps the counts equal, so the id sets are always compared.
        self._reconcile(spec, allow_mass_delete=True)
        if resumed and target is not None:
            # pages read before the interruption may have changed since: catch up from the start
            self._window_pass(spec, TypeCursor(spec.table, cursor=target), progress)
        with atomic(self.conn):
            self.cursors.set(spec.table, full_next_page=None, full_cursor=None, last_full_sync=self._now_text())
            if target is not None and not resumed:
                self.cursors.set(spec.table, cursor=target, checked_epoch=checked)
                if checked is not None:
                    self.confirmed[spec.table] = checked

    def _first_fill(self, spec: EntitySpec) -> bool:
        """Whether the type's table is empty: its full read may build the indexes once at its end."""
        return self.conn.execute(f"SELECT 1 FROM {spec.table} LIMIT 1").fetchone() is None

    def _pages(self, spec: EntitySpec, first: int) -> PagePrefetch[FetchedPage]:
        """Pages from ``first`` on, each fetched and mapped to mirror rows in a thread while the previous one is written.

        The one place full-sync pages are fetched. At most one page is read ahead, so memory
        holds two pages whatever the library's size; only mapped rows are kept, not Stash's answer.
        """
        def fetch(number: int) -> FetchedPage:
            find_filter = {"page": number, "per_page": self.per_page, "sort": "id", "direction": "ASC"}
            result = self.stash.call(queries.PAGE[spec.table], {"filter": find_filter})[spec.find]
            items = result[spec.list_key]
            return FetchedPage(result["count"], len(items), page_contents(spec, items))

        def more(number: int, fetched: FetchedPage) -> bool:
            return fetched.items == self.per_page and number * self.per_page < fetched.count

        return PagePrefetch(fetch, first, more, ahead=1, name="cache-prefetch")

    # -- incremental / smart ---------------------------------------------------------------

    def _probe(self, spec: EntitySpec, window: dict, recheck: list[int]) -> tuple[dict, set[int]]:
        """The probe answer, after writing its recheck entities; with the recheck ids Stash no longer has."""
        probe = self.stash.call_by_ids(
            queries.PROBE[spec.table], {"window": window, "recheck": [str(i) for i in recheck],
                                        "withRecheck": bool(recheck)},
            ids_key="recheck", empty=lambda variables: {**variables, "withRecheck": False})
        stats = self.stats[spec.table]
        recheck_items = (probe.get("recheck") or {}).get(spec.list_key) or []
        stats.fetched += len(recheck_items)
        if recheck_items:
            with atomic(self.conn):
                stats.upserted += write_items(self.conn, spec, recheck_items, recorder=self.recorder)
        return probe, set(recheck) - {int(i["id"]) for i in recheck_items}

    def _window_pass(self, spec: EntitySpec, state: TypeCursor, progress: Progress) -> None:
        """Probe, list the window, fetch what differs, reconcile deletions, advance the cursor."""
        stats = self.stats[spec.table]
        checked = self.stash.server_epoch  # Stash reads everything below at this time or later
        cursor_epoch = epoch_of(state.cursor) if state.cursor else None
        if self.since is None and state.quiet():
            window = after_text_filter(state.cursor)
        else:
            window = window_filter(self.since if self.since is not None else cursor_epoch)
        probe, missing_recheck = self._probe(spec, window, self.cursors.recheck_ids(state))
        stash_total, window_count = probe["total"]["count"], probe["window"]["count"]
        pending = self.conn.execute("SELECT count(*) FROM pending_reread WHERE entity_type = ?",
                                    (spec.table,)).fetchone()[0]
        in_step = stash_total == live_count(self.conn, spec.table) and not pending
        if self.mode == SMART and window_count == 0 and not missing_recheck and in_step:
            stats.skipped = stats.upserted == 0
            self._finish_window(spec, None, checked if self.since is None else None)
            return
        listing: list[dict] = []
        if window_count:
            listing = self.stash.call(queries.LISTING[spec.table],
                                      {"window": window, "filter": {"per_page": -1, "sort": "id", "direction": "ASC"}}
                                      )[spec.find][spec.list_key]
        to_fetch = self._changed(spec, listing)
        newest = max({i["updated_at"] for i in listing}, key=epoch_of) if listing else None  # each text parsed once
        may_advance = self.since is None or (cursor_epoch is not None and self.since <= cursor_epoch)
        if to_fetch:
            self._fetch_ids(spec, to_fetch, progress, advance_cursor=may_advance)
        elif self.mode == SMART and not stats.upserted and in_step:
            stats.skipped = True
        if stash_total != live_count(self.conn, spec.table) or missing_recheck:
            self._reconcile(spec, allow_mass_delete=False)
        self._finish_window(spec, newest if may_advance else None,
                            checked if self.since is None and cursor_epoch is not None else None)

    def _finish_window(self, spec: EntitySpec, newest: str | None, checked: int | None) -> None:
        """Advance the cursor to the newest listed instant, record the pass time and when Stash's clock confirmed it.

        A smart pass that found the type unchanged writes nothing at all (its check is recorded
        in the run's sync_runs row only), so an idle smart sync leaves every table untouched.
        """
        with atomic(self.conn):
            self.cursors.advance(spec.table, newest)
            if not self.stats[spec.table].skipped:
                self.cursors.set(spec.table, last_incremental_sync=self._now_text())
            if checked is not None:
                self.confirmed[spec.table] = checked
                self.cursors.confirm(spec.table, checked)

    def _reconfirm(self) -> None:
        """Confirm again what this run's own later reads (re-reads, signals) unconfirmed: they came after its clock too."""
        with atomic(self.conn):
            for table, checked in self.confirmed.items():
                self.cursors.confirm(table, checked)

    def _changed(self, spec: EntitySpec, listing: list[dict]) -> list[tuple[int, str]]:
        """(id, updated_at) of listed entities to fetch, oldest first: new, changed, or forced by ``since``.

        The mirror's texts come from the update-time index, from the earliest instant a listed
        text can stand for: only the entities to fetch have their texts parsed.
        """
        if not listing:
            return []
        known = live_stamps_since(self.conn, spec.table, earliest_instant(i["updated_at"] for i in listing))
        out = []
        for item in listing:
            eid, updated = int(item["id"]), item["updated_at"]
            if known.get(eid) != updated or (self.since is not None and epoch_of(updated) >= self.since):
                out.append((eid, updated))
        out.sort(key=lambda p: (epoch_of(p[1]), p[0]))
        return out

    def _fetch_ids(self, spec: EntitySpec, wanted: list[tuple[int, str | None]], progress: Progress,
                   advance_cursor: bool) -> None:
        """Fetch entities by id in chunks; each chunk commits with its links and the advanced cursor."""
        stats = self.stats[spec.table]
        done = 0
        for chunk in chunks(wanted, self.per_page):
            ids = [eid for eid, _ in chunk]
            data = self.stash.call_by_ids(queries.PAGE[spec.table], {"ids": [str(i) for i in ids],
                                                                     "filter": {"per_page": -1}})
            items = data[spec.find][spec.list_key] if data else []  # ids Stash no longer has are left out
            stamps = [u for _, u in chunk if u is not None]
            with atomic(self.conn):
                stats.upserted += write_items(self.conn, spec, items, recorder=self.recorder)
                forget_rereads(self.conn, spec.table, ids)
                if advance_cursor and stamps:
                    self.cursors.advance(spec.table, max(stamps, key=epoch_of))
            stats.fetched += len(items)
            done += len(chunk)
            progress(done / len(wanted))
            log.debug(f"cache {spec.table}: fetched {len(items)} by id")

    def _process_rereads(self, spec: EntitySpec) -> None:
        """Re-read entities whose links Stash may have rewritten silently (after deletions and merges)."""
        ids = [r[0] for r in self.conn.execute(
            "SELECT entity_id FROM pending_reread WHERE entity_type = ? ORDER BY entity_id", (spec.table,))]
        if not ids:
            return
        self.stats[spec.table].skipped = False
        self._fetch_ids(spec, [(i, None) for i in ids], no_progress, advance_cursor=False)
        # entities that vanished meanwhile are found by the next count comparison
        with atomic(self.conn):
            forget_rereads(self.conn, spec.table, ids)

    def _reconcile(self, spec: EntitySpec, allow_mass_delete: bool) -> None:
        """Compare the id sets: delete what Stash no longer has (with its links), fetch what the mirror lacks."""
        stats = self.stats[spec.table]
        found = compare_ids(self.conn, self.stash, spec)
        gone = found.gone
        stats.skipped = False
        if gone and not allow_mass_delete and len(gone) * 2 > found.mirrored:
            self._refuse_mass_deletion(spec, len(gone), found.mirrored)
            gone = []
        for chunk in chunks(gone, 1000):
            with atomic(self.conn):
                delete_entities(self.conn, spec, chunk, recorder=self.recorder)
                signals.queue_absorbers(self.conn, spec, chunk)  # a tag merge's destination
        if gone:
            how = "marked deleted" if self.options.soft_delete else "removed"
            log.info(f"cache {spec.table}: {how} {len(gone)} entities Stash no longer has")
        if found.missing:
            self._fetch_ids(spec, [(i, None) for i in found.missing], no_progress, advance_cursor=False)

    def _refuse_mass_deletion(self, spec: EntitySpec, gone: int, mirrored: int) -> None:
        """Warn instead of deleting more than half of a type outside a full sync."""
        message = (f"{spec.table}: Stash lacks {gone} of the mirror's {mirrored} entries; "
                   "refusing to delete more than half of a type outside a full sync. "
                   "Run 'Cache: Full Sync' if this is intended.")
        log.warning(message)
        self.warnings.append(message)
        self.stats[spec.table].notes.append("mass deletion refused.")
