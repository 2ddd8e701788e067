"""StashDB's change feed: which StashDB scenes changed since the last run, and whether to trust it.

stash-box sets a scene's ``updated`` on every applied edit (tags-only edits too) and lists live
scenes by ``queryScenes(sort: UPDATED_AT, direction: DESC)``. A re-run pages that list from the
newest down to the last run's high-water mark (minus ``FEED_OVERLAP``: ``updated`` is the edit
transaction's start, so an edit can commit after a reader saw a newer one) and re-reads nothing
else from StashDB; every other linked scene is re-matched from its stored answer.

The feed cannot see StashDB tag merges, renames or deletions (they rewrite scene tags without
moving ``updated``), nor scenes deleted or merged upstream (``queryScenes`` never lists them). So a
full re-check runs on the first run of a box, when forced, when the last one is older than the
configured number of days, when a clock went backwards, and when the feed would cost more than
the fingerprint batches.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from stashdb_api import StashDBClient, StashDBScene
from tagman_tagsync.history import BoxState

log = logging.getLogger(__name__)

FEED_PAGE_SIZE = 100
FEED_OVERLAP = timedelta(minutes=10)
MAX_OVERLAP_EXTRA = 2000  # per_page never grows beyond FEED_PAGE_SIZE + this
# A first page spanning less than this says nothing about StashDB's pace (a bulk edit lands in a
# burst): the feed is then paged on and abandoned only when it reaches the fingerprint batches' cost.
MIN_ESTIMATE_SPAN = timedelta(minutes=1)
FINGERPRINT_BATCH = 40
UNBOUNDED = 10**9  # pages estimated when the first page spans no time at all


@dataclass(frozen=True)
class FeedPolicy:
    """When a run may use the change feed."""

    force_full: bool = False
    full_every_days: float = 30.0  # 0: every run is a full re-check
    overlap: timedelta = FEED_OVERLAP
    page_size: int = FEED_PAGE_SIZE


@dataclass
class FeedRead:
    """StashDB scenes changed since the mark (newest answer per id) and the new mark."""

    new_mark: str | None
    items: dict[str, StashDBScene] = field(default_factory=dict)
    requests: int = 0
    refused: str = ""  # why the feed was abandoned for the full path ("" when it was read)

    def overlap_items(self, overlap: timedelta) -> int:
        """Items the next run re-reads: those at or after (new mark - overlap)."""
        floor = parse_instant(self.new_mark)
        if floor is None:
            return 0
        floor -= overlap
        return sum(1 for scene in self.items.values() if (parse_instant(scene.updated) or floor) >= floor)


def parse_instant(text: str | None) -> datetime | None:
    """An RFC 3339 text (stash-box ``updated`` or our own UTC stamps) as an aware datetime; None if unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def full_reason(state: BoxState | None, policy: FeedPolicy, now: datetime) -> str:
    """Why this run must be a full re-check before asking StashDB anything ("" when the feed may be tried)."""
    if policy.force_full:
        return "a full re-check was requested"
    if state is None or parse_instant(state.feed_mark) is None:
        return "no completed run of this stash-box yet (or its history was reset)"
    if policy.full_every_days <= 0:
        return "full re-checks run every time (tagSyncFullRecheckDays is 0)"
    last_full, last_started = parse_instant(state.last_full_check), parse_instant(state.last_run_started)
    if last_full is None or last_started is None:
        return "the history has no readable time of the last full re-check"
    if now < last_started:
        return f"the clock went backwards (the last run started at {state.last_run_started})"
    age = now - last_full
    if age > timedelta(days=policy.full_every_days):
        return f"the last full re-check is {age.days} days old (every {policy.full_every_days:g} days)"
    return ""


def read_feed(stashdb: StashDBClient, state: BoxState, policy: FeedPolicy, budget: int) -> FeedRead:
    """Page the feed down to the mark - overlap; give up (``refused``) when it would cost more than ``budget``.

    Pages are ``page_size`` plus the items the last run saw inside the overlap, so re-reading the
    overlap costs bytes, not requests.
    """
    mark = state.feed_mark
    stop_at = parse_instant(mark) - policy.overlap
    per_page = policy.page_size + min(max(0, state.overlap_items), MAX_OVERLAP_EXTRA)
    read = FeedRead(new_mark=mark)
    page = 1
    while True:
        _count, scenes = stashdb.scenes_by_updated(page, per_page)
        read.requests += 1
        if page == 1:
            refusal = check_first_page(scenes, mark, stop_at, per_page, budget)
            if refusal:
                read.refused = refusal
                return read
            if scenes:
                read.new_mark = scenes[0].updated
        reached_mark = add_items(read, scenes, stop_at)
        if reached_mark or len(scenes) < per_page:
            return read
        if read.requests >= budget:
            read.refused = f"the feed passed {budget} requests, the cost of the fingerprint batches"
            return read
        page += 1


def add_items(read: FeedRead, scenes: list[StashDBScene], stop_at: datetime) -> bool:
    """Keep the page's scenes updated at or after ``stop_at``; True once an older one shows up."""
    for scene in scenes:
        moment = parse_instant(scene.updated)
        if moment is None or moment < stop_at:
            return True
        known = read.items.get(scene.id)
        if known is None or parse_instant(known.updated) < moment:
            read.items[scene.id] = scene
    return False


def check_first_page(scenes: list[StashDBScene], mark: str, stop_at: datetime, per_page: int, budget: int) -> str:
    """Refuse the feed when StashDB's newest update predates the mark or the feed looks costlier than the batches."""
    if not scenes:
        return ""
    newest, oldest = parse_instant(scenes[0].updated), parse_instant(scenes[-1].updated)
    if newest is None or oldest is None:
        return "StashDB's feed has unreadable update times"
    if newest < parse_instant(mark):
        return f"StashDB's newest update ({scenes[0].updated}) is older than the last run's mark ({mark})"
    if len(scenes) < per_page or oldest < stop_at or newest - oldest < MIN_ESTIMATE_SPAN:
        return ""
    estimate = estimated_pages(len(scenes), newest, oldest, stop_at, per_page)
    if estimate > budget:
        return f"the feed would take about {estimate} requests, the fingerprint batches {budget}"
    return ""


def estimated_pages(on_page: int, newest: datetime, oldest: datetime, stop_at: datetime, page_size: int) -> int:
    """Pages down to ``stop_at`` if StashDB keeps editing at the first page's pace."""
    span = (newest - oldest).total_seconds()
    if span <= 0:
        return UNBOUNDED
    return math.ceil(on_page * (newest - stop_at).total_seconds() / span / page_size)


def full_path_cost(linked_scenes: int, fallbacks: int) -> int:
    """StashDB requests of the fingerprint path: one batch per 40 scenes plus the by-id look-ups."""
    return math.ceil(linked_scenes / FINGERPRINT_BATCH) + fallbacks


def utc_text(moment: datetime) -> str:
    """Our own bookkeeping stamps: UTC ISO text to the microsecond."""
    return moment.astimezone(timezone.utc).isoformat()

