"""StashDB scene tag sync: give linked scenes the tags StashDB has for them, merge-only.

The run, in order:
  1. Build a ``TagMatcher`` once from every local tag (StashID link, then name, then alias).
  2. Snapshot the ids of the scenes linked to the endpoint, oldest ``updated_at`` first.
  3. Pass 1 asks StashDB 40 scenes per request by fingerprint; a hit counts only when its id
     is the scene's linked id. Pass 2 looks the rest up by id, one request each.
  4. Tags to add are grouped by identical tag set and written with ``bulkSceneUpdate`` in
     ``ADD`` mode, so a tag that someone adds while the sync runs is never lost.
  5. Once Stash confirmed a scene's writes, the StashDB tags it settled go into the sync history
     (``tagman_tagsync.history``); a settled tag is never added again, so a removal by the user sticks.
Every stash-box with an API key is synced in turn (``sync_boxes``), each with its own limiter,
matcher and history. A dry run sends no mutation, writes no history, stops after
``PREVIEW_LIMIT`` scenes per box and writes one CSV report.

The steps live in ``tagman_tagsync``: ``matcher``, ``stash_scenes``, ``passes`` (pass 1 and 2),
``feed_passes`` (change-feed re-runs), ``outcomes``, ``writes``, ``history``, ``report``, ``results``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from stashdb_api import StashDBClient, TokenBucket, effective_rate_per_minute
from tagman_base.errors import SettingsError, StashDBError
from tagman_base.settings import Settings, TagBlacklist
from tagman_base.stash_boxes import StashBox, select_stash_box
from tagman_base.stash_client import StashClient
from tagman_tagsync.change_feed import FeedPolicy, full_path_cost, full_reason, read_feed, utc_text
from tagman_tagsync.feed_passes import FeedPasses
from tagman_tagsync.history import (
    BoxState,
    ResetResult,
    SyncHistory,
    history_endpoints,
    history_path,
    open_history,
    reset_history,
)
from tagman_tagsync.matcher import LocalTag, TagMatcher, load_tag_matcher
from tagman_tagsync.outcomes import TagOutcomes
from tagman_tagsync.passes import FAILED, LookupPasses
from tagman_tagsync.report import try_write_report
from tagman_tagsync.results import UNMATCHED_NAMES_KEPT, TagSyncResult, combine_results
from tagman_tagsync.stash_scenes import linked_scenes
from tagman_tagsync.writes import HistoryRecorder, TagWriter

log = logging.getLogger(__name__)

PREVIEW_LIMIT = 200
# Aim 2 % under the stash-box limit: scheduling jitter must never make two requests look too close.
RATE_SAFETY_FACTOR = 0.98


class SceneTagSync(LookupPasses, FeedPasses, TagOutcomes):
    """One run of the scene tag sync against one stash-box; ``run()`` returns its ``TagSyncResult``.

    The look-ups of a full run are in ``tagman_tagsync.passes``, the change-feed re-run in
    ``tagman_tagsync.feed_passes``, the tags a matched scene gains in ``tagman_tagsync.outcomes``.
    """

    def __init__(self, stash: StashClient, stashdb: StashDBClient, box: StashBox, blacklist: TagBlacklist,
                 dry_run: bool, progress: Callable[[float], None] = lambda f: None,
                 clock: Callable[[], float] = time.monotonic, history: SyncHistory | None = None,
                 policy: FeedPolicy = FeedPolicy(),
                 wall_clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.stash = stash
        self.stashdb = stashdb
        self.endpoint = box.endpoint
        self.blacklist = blacklist
        self.dry_run = dry_run
        self.progress = progress
        self.clock = clock
        self.history = history
        self.policy = policy
        self.wall_clock = wall_clock
        self.strategy, self.strategy_reason = "full", ""
        self.state: BoxState | None = None
        self.new_mark: str | None = None
        self.overlap_items = 0
        self.full_fallbacks = 0
        self.match_cache: dict[tuple[str, str, bool], LocalTag | None] = {}
        self.recorder = HistoryRecorder(None if dry_run else history)
        self.counters: Counter = Counter()  # TagSyncResult field name -> count
        self.unmatched_names: Counter = Counter()
        self.merged: list[tuple[int, str, str]] = []
        self.writer = TagWriter(stash, self.counters, on_written=self.recorder.confirm)
        self.preview_rows: list[list[str]] = []
        self.matcher: TagMatcher | None = None  # read from Stash when the run starts
        self.total_units = 0
        self.done_units = 0
        self.reported = 0.0
        self.stashdb_failures_in_a_row = 0

    def run(self) -> TagSyncResult:
        """Match, look up and write; flush pending writes even when StashDB fails for good."""
        started, run_started = self.clock(), self.wall_clock()
        self.matcher = load_tag_matcher(self.stash, self.endpoint)
        links = linked_scenes(self.stash, self.endpoint)
        scene_ids = list(links)
        if self.dry_run:
            scene_ids = scene_ids[:PREVIEW_LIMIT]
        log.info(f"{len(scene_ids)} scenes linked to {self.endpoint} to check"
                 + (f" (preview limited to {PREVIEW_LIMIT})" if self.dry_run else ""))
        self.total_units = len(scene_ids)
        try:
            self.sync_scenes(scene_ids, links, run_started)
        except StashDBError:
            self.flush()  # the writes already decided still land when StashDB gives out
            raise
        self.flush()
        self.save_state(run_started)
        self.progress(1.0)
        return self.result(self.clock() - started)

    def sync_scenes(self, scene_ids: list[int], links: dict[int, tuple[str, ...]], run_started: datetime) -> None:
        """Use the change feed when the history allows it and it is cheaper; else check every scene."""
        if self.dry_run or self.history is None:
            self.strategy_reason = "a preview looks up every scene it shows"
            self.full_pass(scene_ids)
            return
        self.state = self.history.box_state()
        reason = full_reason(self.state, self.policy, run_started)
        budget = full_path_cost(len(scene_ids), self.state.full_fallbacks if self.state else 0)
        if not reason:
            feed = self.ask_stashdb(lambda: read_feed(self.stashdb, self.state, self.policy, budget))
            reason = "the change feed could not be read" if feed is FAILED else feed.refused
            if not reason:
                log.info(f"Change feed of {self.endpoint}: {len(feed.items)} StashDB scenes changed since "
                         f"{self.state.feed_mark} ({feed.requests} requests instead of about {budget} for fingerprint "
                         "batches); the other scenes are re-matched from their stored answers")
                self.strategy, self.new_mark = "feed", feed.new_mark
                self.overlap_items = feed.overlap_items(self.policy.overlap)
                self.feed_pass(scene_ids, links, feed)
                return
        log.info(f"Full re-check of {len(scene_ids)} scenes linked to {self.endpoint}: {reason}")
        self.strategy, self.strategy_reason = "full", reason
        self.new_mark = self.read_mark()
        self.full_pass(scene_ids)

    def read_mark(self) -> str | None:
        """StashDB's newest ``updated`` before this run reads anything (the next run's feed starts there)."""
        answer = self.ask_stashdb(lambda: self.stashdb.scenes_by_updated(1, 1))
        if answer is FAILED:
            return None
        _count, newest = answer
        return newest[0].updated if newest else None

    def save_state(self, run_started: datetime) -> None:
        """Store the feed mark after a run without errors (a killed or failed run keeps the old one)."""
        if self.dry_run or self.history is None or self.counters["errors"]:
            return
        if self.strategy == "feed":
            state = replace(self.state, feed_mark=self.new_mark, last_run_started=utc_text(run_started),
                            overlap_items=self.overlap_items)
        else:
            state = BoxState(self.new_mark, utc_text(run_started), utc_text(run_started), self.full_fallbacks, 0)
        self.history.save_box_state(state)

    def flush(self) -> None:
        """Write the pending tag groups and record what they settled (nothing in a dry run)."""
        if not self.dry_run:
            self.writer.flush()
            self.recorder.checkpoint()

    def advance(self, units: int) -> None:
        """Move the progress bar over both passes; it never goes back when pass 2 grows."""
        self.done_units += units
        if self.total_units:
            self.reported = max(self.reported, min(self.done_units / self.total_units, 0.999))
            self.progress(self.reported)

    def result(self, elapsed_s: float) -> TagSyncResult:
        """Freeze the tallies into this box's result."""
        return TagSyncResult(
            dry_run=self.dry_run, endpoint=self.endpoint, **self.counters,
            stashdb_requests=self.stashdb.requests_sent, elapsed_s=round(elapsed_s, 3),
            unmatched_tag_names=tuple(name for name, _ in self.unmatched_names.most_common(UNMATCHED_NAMES_KEPT)),
            merged_scenes=tuple(self.merged), strategy=self.strategy, strategy_reason=self.strategy_reason,
        )


def stashdb_client_for(box: StashBox, settings: Settings, sleep: Callable[[float], None]) -> StashDBClient:
    """A StashDB client with its own limiter at the box's rate (lowered by ``maxRequestsPerMinute``)."""
    rate_per_minute = effective_rate_per_minute(box.max_requests_per_minute, settings.max_requests_per_minute)
    limiter = TokenBucket(rate_per_minute * RATE_SAFETY_FACTOR / 60.0)
    return StashDBClient(box.endpoint, box.api_key, limiter, sleep=sleep)


def sync_boxes(stash: StashClient, boxes: Sequence[StashBox], blacklist: TagBlacklist, settings: Settings,
               dry_run: bool, plugin_dir: Path, progress: Callable[[float], None] = lambda f: None,
               sleep: Callable[[float], None] = time.sleep,
               wall_clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
               policy: FeedPolicy = FeedPolicy()) -> TagSyncResult:
    """Sync (or preview) every box in turn; one box's StashDB failure does not stop the others.

    When every box failed, the first failure is raised; otherwise failed boxes count in ``errors``.
    """
    started = time.monotonic()
    results: list[TagSyncResult] = []
    rows: list[list[str]] = []
    failures: list[StashDBError] = []
    conn = open_history(plugin_dir)
    try:
        for index, box in enumerate(boxes):
            box_progress = scaled_progress(progress, index, len(boxes))
            result, box_rows, failure = sync_one_box(stash, box, blacklist, settings, dry_run, conn, box_progress,
                                                     sleep, policy)
            results.append(result)
            rows.extend(box_rows)
            if failure is not None:
                failures.append(failure)
    finally:
        conn.close()
    if failures and len(failures) == len(boxes):
        raise failures[0]
    report_path = try_write_report(plugin_dir / "reports", wall_clock(), rows) if dry_run else None
    progress(1.0)
    return combine_results(results, dry_run, time.monotonic() - started, report_path)


def sync_one_box(stash: StashClient, box: StashBox, blacklist: TagBlacklist, settings: Settings, dry_run: bool,
                 conn, progress: Callable[[float], None], sleep: Callable[[float], None], policy: FeedPolicy
                 ) -> tuple[TagSyncResult, list[list[str]], StashDBError | None]:
    """Run one box: its result, its preview rows, and the StashDB error that stopped it (if any)."""
    stashdb = stashdb_client_for(box, settings, sleep)
    rate = stashdb.limiter.rate_per_s * 60.0 / RATE_SAFETY_FACTOR
    log.info(f"Syncing scene tags from {box.name or box.endpoint} ({box.endpoint}) at up to {rate:g} requests/min"
             + (" (dry run)" if dry_run else ""))
    started = time.monotonic()
    sync = SceneTagSync(stash, stashdb, box, blacklist, dry_run, progress=progress,
                        history=SyncHistory(conn, box.endpoint), policy=policy)
    try:
        return sync.run(), sync.preview_rows, None
    except StashDBError as exc:
        log.error(f"Scene tag sync from {box.endpoint} stopped: {exc}")
        sync.counters["errors"] += 1
        return sync.result(time.monotonic() - started), sync.preview_rows, exc


def reset_sync_history(stash: StashClient, plugin_dir: Path, wanted: str = "") -> ResetResult:
    """Forget the sync history of every box, or of the one ``wanted`` names (endpoint URL or box name)."""
    if not wanted:
        return reset_history(plugin_dir)
    boxes, _ = stash.stash_boxes_and_exclusions()
    try:
        endpoint = select_stash_box(boxes, wanted).endpoint
    except SettingsError:
        endpoint = wanted  # a box removed from Stash can still have a history
        known = [b.endpoint for b in boxes]
        if endpoint not in known and endpoint not in known_history_endpoints(plugin_dir):
            raise SettingsError(f"Argument endpoint is {wanted!r}, which is neither a stash-box configured in Stash "
                                f"({', '.join(known) or 'none'}) nor one in the sync history.") from None
    return reset_history(plugin_dir, endpoint)


def known_history_endpoints(plugin_dir: Path) -> list[str]:
    """Endpoints the history file knows (none when there is no readable file)."""
    if not history_path(plugin_dir).exists():
        return []
    conn = open_history(plugin_dir)
    try:
        return history_endpoints(conn)
    finally:
        conn.close()


def scaled_progress(progress: Callable[[float], None], index: int, total: int) -> Callable[[float], None]:
    """Map one box's progress (0..1) onto its share of the whole run."""
    return lambda fraction: progress((index + fraction) / total)
