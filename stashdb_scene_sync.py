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
"""

from __future__ import annotations

import csv
import json
import logging
import os
import string
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path

from tagman_base.settings import Settings, TagBlacklist
from tagman_base.stash_client import StashBox, StashClient, select_stash_box
from stashdb_api import (
    MAX_FINGERPRINT_LISTS,
    Fingerprint,
    StashDBClient,
    StashDBScene,
    StashDBTag,
    TokenBucket,
    effective_rate_per_minute,
    fingerprints_from_stash_files,
)
from tagman_tagsync.change_feed import FeedPolicy, FeedRead, full_path_cost, full_reason, read_feed, utc_text
from tagman_tagsync.history import (
    ADDED,
    DELETED,
    LIVE,
    MISSING,
    PRESENT,
    BoxState,
    ResetResult,
    SceneRecord,
    SettledTag,
    StoredAnswer,
    SyncHistory,
    decode_remote_tags,
    history_endpoints,
    history_path,
    open_history,
    reset_history,
)
from tagman_base.errors import (
    AuthError,
    GraphQLQueryError,
    SettingsError,
    StashAuthError,
    StashDBError,
    StashDBUnavailable,
    StashError,
    StashQueryError,
    StashUnavailable,
)

log = logging.getLogger(__name__)

PREVIEW_LIMIT = 200
SCENE_ID_PAGE_SIZE = 5000  # ids and timestamps only: measured, see README › Page sizes
TAG_PAGE_SIZE = 1000
# Groups are written when full or at the end of the run, so every tag set costs one mutation
# (per 1000 scenes); a cancelled run loses only undecided writes, which the next run redoes.
MUTATION_CHUNK = 1000
BATCH_FIELDS = 50
MAX_CONSECUTIVE_STASHDB_FAILURES = 5
UNMATCHED_NAMES_KEPT = 100
MERGES_KEPT = 100
# Aim 2 % under the stash-box limit: scheduling jitter must never make two requests look too close.
RATE_SAFETY_FACTOR = 0.98
REPORT_HEADER = ["scene_id", "title", "stashdb_id", "matched_by", "tags_to_add", "tags_unmatched",
                 "skipped_by_history", "note", "endpoint"]
FAILED = object()  # a StashDB request that failed for good and was skipped
UNCERTAIN = object()  # a scene the stored answers cannot settle: look it up as a full run would
HISTORY_CHUNK = 500  # scenes whose stored answers are read per history query
ASCII_FOLD = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)

ALL_TAGS_QUERY = """
query TagSyncTags($filter: FindFilterType) {
  findTags(filter: $filter) { count tags { id name aliases stash_ids { endpoint stash_id } } }
}"""

LINKED_SCENE_IDS_QUERY = """
query TagSyncLinkedSceneIds($scene_filter: SceneFilterType, $filter: FindFilterType) {
  findScenes(scene_filter: $scene_filter, filter: $filter) { count scenes { id updated_at stash_ids { endpoint stash_id } } }
}"""

SCENE_DETAILS_QUERY = """
query TagSyncScenes($ids: [ID!], $filter: FindFilterType) {
  findScenes(ids: $ids, filter: $filter) {
    scenes { id title tags { id } stash_ids { endpoint stash_id } files { fingerprints { type value } } }
  }
}"""

ADD_TAGS_MUTATION = """
mutation TagSyncAddTags($input: BulkSceneUpdateInput!) {
  bulkSceneUpdate(input: $input) { id }
}"""


def fold_case(text: str) -> str:
    """Lower-case ASCII letters only, as SQLite's NOCASE/LIKE do in Stash."""
    return text.translate(ASCII_FOLD)


@dataclass(frozen=True)
class LocalTag:
    """A Stash tag as the matcher needs it."""

    id: int
    name: str


class TagMatcher:
    """Matches StashDB tags to local tags the way Stash's Tagger does."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.by_stash_id: dict[str, LocalTag] = {}
        self.by_name: dict[str, LocalTag] = {}
        self.by_alias: dict[str, LocalTag] = {}

    @classmethod
    def from_local_tags(cls, tags: Iterable[dict], endpoint: str) -> TagMatcher:
        """Index local tags (dicts with id, name, aliases, stash_ids) for one endpoint."""
        matcher = cls(endpoint)
        for tag in tags:
            matcher.add(tag)
        return matcher

    def add(self, tag: dict) -> None:
        """Index one local tag, keeping the lowest id for every key."""
        local = LocalTag(int(tag["id"]), tag["name"])
        for stash_id in tag.get("stash_ids") or []:
            if stash_id.get("endpoint") == self.endpoint:
                keep_lowest(self.by_stash_id, stash_id["stash_id"], local)
        keep_lowest(self.by_name, fold_case(local.name), local)
        for alias in tag.get("aliases") or []:
            keep_lowest(self.by_alias, fold_case(alias), local)

    def match(self, remote: StashDBTag) -> LocalTag | None:
        """Return the local tag for a StashDB tag: StashID link, then name, then alias."""
        linked = self.by_stash_id.get(remote.id)
        if linked is not None:
            return linked
        key = fold_case(remote.name)
        return self.by_name.get(key) or self.by_alias.get(key)


def keep_lowest(index: dict[str, LocalTag], key: str, tag: LocalTag) -> None:
    """Store ``tag`` under ``key`` unless a tag with a lower id is there already."""
    current = index.get(key)
    if current is None or tag.id < current.id:
        index[key] = tag


@dataclass(frozen=True)
class TagSyncResult:
    """What one scene tag sync run did (or, in a dry run, would do)."""

    dry_run: bool
    endpoint: str
    scenes_seen: int = 0
    matched_by_fingerprint: int = 0
    matched_by_id: int = 0
    not_found: int = 0
    deleted_on_stashdb: int = 0
    scenes_updated: int = 0
    tags_added: int = 0
    tags_unmatched: int = 0
    tags_blacklisted: int = 0
    tags_deleted_on_stashdb: int = 0
    tags_skipped_by_history: int = 0
    probable_merges: int = 0
    scenes_from_feed: int = 0  # linked scenes whose StashDB answer came from the change feed
    scenes_rematched: int = 0  # linked scenes re-read from Stash to apply a stored or fed answer
    errors: int = 0
    stashdb_requests: int = 0
    stash_mutations: int = 0
    elapsed_s: float = 0.0
    report_path: str | None = None
    unmatched_tag_names: tuple[str, ...] = ()
    merged_scenes: tuple[tuple[int, str, str], ...] = ()  # (scene id, linked StashDB id, probably merged into)
    strategy: str = "full"  # "full": fingerprint batches for every scene; "feed": StashDB's change feed
    strategy_reason: str = ""
    boxes: tuple[TagSyncResult, ...] = ()  # per stash-box results (in the run's total only)

    def __str__(self) -> str:
        text = self.summary_line()
        if len(self.boxes) > 1:
            text += " Per stash-box: " + " ".join(box.summary_line() for box in self.boxes)
        if self.report_path:
            text += f" Report: {self.report_path}"
        return text

    def summary_line(self) -> str:
        """The figures of this result as one sentence."""
        verb = "would update" if self.dry_run else "updated"
        return (
            f"Scene tag sync ({'preview' if self.dry_run else 'applied'}) against {self.endpoint}: "
            f"{self.scenes_seen} linked scenes, {self.matched_by_fingerprint} matched by fingerprint, "
            f"{self.matched_by_id} by id, {self.not_found} not found, {self.deleted_on_stashdb} deleted on StashDB, "
            f"{self.probable_merges} probably merged on StashDB; "
            f"{self.strategy} run{f' ({self.strategy_reason})' if self.strategy_reason else ''}, "
            f"{self.scenes_from_feed} scenes changed on StashDB, {self.scenes_rematched} re-matched; "
            f"{verb} {self.scenes_updated} scenes with {self.tags_added} tags; "
            f"{self.tags_skipped_by_history} tags not re-added (removed since an earlier sync), "
            f"{self.tags_unmatched} unmatched, {self.tags_blacklisted} blacklisted, "
            f"{self.tags_deleted_on_stashdb} deleted on StashDB; {self.errors} errors; "
            f"{self.stashdb_requests} StashDB requests, {self.stash_mutations} Stash mutations in {self.elapsed_s:.1f} s."
        )


COUNTER_FIELDS = tuple(f.name for f in fields(TagSyncResult) if f.type in ("int", int))


def combine_results(results: Sequence[TagSyncResult], dry_run: bool, elapsed_s: float,
                    report_path: str | None) -> TagSyncResult:
    """The run's total over every stash-box, keeping each box's own result in ``boxes``."""
    totals = {name: sum(getattr(r, name) for r in results) for name in COUNTER_FIELDS}
    unmatched = tuple(dict.fromkeys(n for r in results for n in r.unmatched_tag_names))[:UNMATCHED_NAMES_KEPT]
    merged = tuple(m for r in results for m in r.merged_scenes)[:MERGES_KEPT]
    strategy = "+".join(dict.fromkeys(r.strategy for r in results)) or "full"
    return TagSyncResult(dry_run=dry_run, endpoint=", ".join(r.endpoint for r in results), **totals,
                         elapsed_s=round(elapsed_s, 3), report_path=report_path, unmatched_tag_names=unmatched,
                         merged_scenes=merged, strategy=strategy, boxes=tuple(results))


@dataclass
class SceneWork:
    """One local scene on its way through the passes."""

    id: int
    title: str
    linked_ids: tuple[str, ...]
    tag_ids: frozenset[int]
    fingerprints: tuple[Fingerprint, ...]
    settled: dict[str, dict[str, SettledTag]] = field(default_factory=dict)  # StashDB scene id -> tag id -> entry
    fingerprint_hits: tuple[str, ...] = ()  # other live StashDB scenes that carry its fingerprints


@dataclass
class SceneOutcome:
    """Tags one scene gains, StashDB tag names without a local match, tags held back by the history,
    and the StashDB tags this answer settles (recorded once Stash confirmed the scene's writes)."""

    add: tuple[LocalTag, ...]
    unmatched: tuple[str, ...]
    skipped: tuple[LocalTag, ...] = ()
    settled: tuple[SettledTag, ...] = ()


def add_tags_input(tag_ids: frozenset[int], scene_ids: Sequence[int]) -> dict:
    """The ``BulkSceneUpdateInput`` that adds ``tag_ids`` to ``scene_ids`` (never removes)."""
    return {"ids": [str(i) for i in scene_ids], "tag_ids": {"ids": [str(t) for t in sorted(tag_ids)], "mode": "ADD"}}


def add_tags_batch_document(size: int) -> str:
    """One mutation document with ``size`` aliased ``bulkSceneUpdate`` fields (one per tag set)."""
    params = ", ".join(f"$u{i}: BulkSceneUpdateInput!" for i in range(size))
    fields = " ".join(f"u{i}: bulkSceneUpdate(input: $u{i}) {{ id }}" for i in range(size))
    return f"mutation TagSyncAddTagsBatch({params}) {{ {fields} }}"


class TagWriter:
    """Groups scenes by the tag set they gain and writes each group with an ADD-mode bulk update.

    At the end of a run the groups go out ``BATCH_FIELDS`` to a request, as aliased fields of one
    mutation document: Stash runs each field as its own update, and the request costs one round trip.
    """

    def __init__(self, stash: StashClient, counters: Counter, chunk: int = MUTATION_CHUNK,
                 batch_fields: int = BATCH_FIELDS,
                 on_written: Callable[[list[int]], None] = lambda scene_ids: None) -> None:
        self.stash = stash
        self.counters = counters
        self.on_written = on_written
        self.chunk = chunk
        self.batch_fields = batch_fields
        self.pending: dict[frozenset[int], list[int]] = {}

    def add(self, scene_id: int, tag_ids: frozenset[int]) -> None:
        """Queue ``tag_ids`` for a scene; write its group as soon as it fills one mutation."""
        group = self.pending.setdefault(tag_ids, [])
        group.append(scene_id)
        if len(group) >= self.chunk:
            self.write(tag_ids, self.pending.pop(tag_ids))

    def flush(self) -> None:
        """Write every pending group, several groups (at most ``chunk`` scenes) per request.

        Stash runs plugin hooks for every scene of a bulk update before it answers, so the scene
        count per request, not only the field count, bounds how long one request may take.
        """
        while self.pending:
            batch = [self.pending.popitem()]
            scenes = len(batch[0][1])
            while self.pending and len(batch) < self.batch_fields:
                tag_ids, scene_ids = next(iter(self.pending.items()))
                if scenes + len(scene_ids) > self.chunk:
                    break
                batch.append((tag_ids, self.pending.pop(tag_ids)))
                scenes += len(scene_ids)
            self.write_batch(batch)

    def write_batch(self, batch: list[tuple[frozenset[int], list[int]]]) -> None:
        """Send groups as aliased fields of one mutation; a field Stash rejects is retried on its own."""
        if len(batch) == 1:
            self.write(*batch[0])
            return
        variables = {f"u{i}": add_tags_input(tag_ids, scene_ids) for i, (tag_ids, scene_ids) in enumerate(batch)}
        try:
            data = self.stash.call(add_tags_batch_document(len(batch)), variables)
            failed: set[int] = set()
        except (StashAuthError, StashUnavailable):
            raise
        except StashQueryError as exc:
            data = exc.data or {}
            failed = {i for i in range(len(batch)) if data.get(f"u{i}") is None}
        self.counters["stash_mutations"] += len(batch) - len(failed)
        for index, (tag_ids, scene_ids) in enumerate(batch):
            if index in failed:
                self.write(tag_ids, scene_ids)
            else:
                self.count_written(tag_ids, scene_ids)

    def write(self, tag_ids: frozenset[int], scene_ids: list[int]) -> None:
        """Add ``tag_ids`` to ``scene_ids`` in one mutation; a rejected group is retried scene by scene."""
        try:
            self.stash.call(ADD_TAGS_MUTATION, {"input": add_tags_input(tag_ids, scene_ids)})
        except (StashAuthError, StashUnavailable):
            raise
        except StashError as exc:
            if len(scene_ids) > 1:
                # One scene deleted meanwhile fails the whole bulk update: isolate it.
                log.warning(f"Stash rejected a bulk update of {len(scene_ids)} scenes ({exc}); retrying one by one")
                for scene_id in scene_ids:
                    self.write(tag_ids, [scene_id])
                return
            self.counters["errors"] += 1
            log.error(f"Stash rejected adding {len(tag_ids)} tags to scene {scene_ids[0]}, skipped: {exc}")
            return
        finally:
            self.counters["stash_mutations"] += 1
        self.count_written(tag_ids, scene_ids)

    def count_written(self, tag_ids: frozenset[int], scene_ids: list[int]) -> None:
        """Tally one group that Stash accepted."""
        self.counters["scenes_updated"] += len(scene_ids)
        self.counters["tags_added"] += len(tag_ids) * len(scene_ids)
        log.debug(f"Added {len(tag_ids)} tags to {len(scene_ids)} scenes")
        self.on_written(scene_ids)


class HistoryRecorder:
    """Writes what scenes settled to the history, each only once Stash confirmed the scene's writes.

    A scene that gains nothing is recorded at the next checkpoint; one that gains tags waits until
    the writer reports its group written. A run killed in between loses only unrecorded entries,
    which the next run settles again (re-adding a tag at worst, never withholding one).
    """

    def __init__(self, history: SyncHistory | None) -> None:
        self.history = history
        self.ready: list[SceneRecord] = []
        self.waiting: dict[int, SceneRecord] = {}

    def settle(self, record: SceneRecord, needs_write: bool) -> None:
        """Queue one scene's record: at once when nothing is written, else until its write is confirmed."""
        if self.history is None:
            return
        if needs_write:
            self.waiting[record.scene_id] = record
        else:
            self.ready.append(record)

    def confirm(self, scene_ids: list[int]) -> None:
        """Stash accepted the writes of these scenes: record them now."""
        if self.history is None:
            return
        self.history.record(self.waiting.pop(i) for i in scene_ids if i in self.waiting)

    def checkpoint(self) -> None:
        """Record the scenes that needed no write."""
        if self.history is not None and self.ready:
            records, self.ready = self.ready, []
            self.history.record(records)


class SceneTagSync:
    """One run of the scene tag sync; ``run()`` returns its ``TagSyncResult``."""

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
        self.matcher = TagMatcher(self.endpoint)
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

    def full_pass(self, scene_ids: Sequence[int]) -> None:
        """Look every scene up: fingerprint batches, then by id."""
        fallbacks = self.fingerprint_pass(scene_ids)
        self.full_fallbacks = len(fallbacks)
        self.id_pass(fallbacks)

    def read_mark(self) -> str | None:
        """StashDB's newest ``updated`` before this run reads anything (the next run's feed starts there)."""
        answer = self.ask_stashdb(lambda: self.stashdb.scenes_by_updated(1, 1))
        if answer is FAILED:
            return None
        _count, newest = answer
        return newest[0].updated if newest else None

    def feed_pass(self, scene_ids: list[int], links: dict[int, tuple[str, ...]], feed: FeedRead) -> None:
        """Re-match stored answers (fed ones replaced); look up scenes without one as a full run would."""
        uncertain: list[int] = []
        candidates: dict[int, StashDBScene] = {}
        for chunk in chunked(scene_ids, HISTORY_CHUNK):
            answers, settled = self.history.answers_for(chunk), self.history.settled_ids_for(chunk)
            for scene_id in chunk:
                linked = links[scene_id]
                stored = next((a for a in answers.get(scene_id, ()) if len(linked) == 1 and a.stashdb_id == linked[0]),
                              None)
                if stored is None:
                    uncertain.append(scene_id)
                    continue
                verdict = self.settle_from_answer(scene_id, linked, stored, feed, settled.get((scene_id, linked[0]), set()))
                if verdict is UNCERTAIN:
                    uncertain.append(scene_id)
                elif verdict is not None:
                    candidates[scene_id] = verdict
            self.recorder.checkpoint()
            self.counters["scenes_seen"] += len(chunk)
        self.counters["scenes_seen"] -= len(uncertain)  # counted again when they are looked up
        self.total_units = len(uncertain) + len(candidates)
        log.info(f"{len(uncertain)} scenes have no usable stored answer (new or changed link) and are looked up; "
                 f"{len(candidates)} scenes have StashDB tags to settle")
        self.full_pass(uncertain)
        self.rematch_pass(candidates, feed)

    def settle_from_answer(self, scene_id: int, linked: tuple[str, ...], stored: StoredAnswer, feed: FeedRead,
                           settled_ids: set[str]):
        """The answer to apply when the scene has StashDB tags to settle; None: nothing to do; UNCERTAIN: look it up.

        Stored answers stay JSON until a scene needs them; a fed answer that leaves nothing to settle
        still replaces the stored one.
        """
        fed = feed.items.get(stored.stashdb_id)
        if fed is not None:
            self.counters["scenes_from_feed"] += 1
            if any(tag.id not in settled_ids and self.usable_match(tag) is not None for tag in fed.tags):
                return fed
            self.recorder.settle(SceneRecord(scene_id, fed.id, linked, fed.updated, fed.tags, ()), needs_write=False)
            return None
        if stored.answer_state != LIVE:
            return None
        try:
            is_open = self.raw_tags_open(json.loads(stored.remote_tags_json), settled_ids)
        except (ValueError, TypeError):
            return UNCERTAIN
        if not is_open:
            return None
        return StashDBScene(stored.stashdb_id, False, decode_remote_tags(stored.remote_tags_json), stored.stashdb_updated)

    def raw_tags_open(self, raw_tags: list, settled_ids: set[str]) -> bool:
        """``has a tag to settle`` for stored ``[[id, name, deleted], ...]`` without building tag objects."""
        cache = self.match_cache
        for tag_id, name, deleted in raw_tags:
            if tag_id in settled_ids:
                continue
            key = (tag_id, name, bool(deleted))
            local = cache[key] if key in cache else self.usable_match(StashDBTag(str(tag_id), str(name), (), bool(deleted)))
            if local is not None:
                return True
        return False

    def usable_match(self, tag: StashDBTag) -> LocalTag | None:
        """The local tag a StashDB tag would add (None: deleted, blacklisted or unmatched), cached per run."""
        key = (tag.id, tag.name, tag.deleted)
        if key not in self.match_cache:
            local = None
            if not tag.deleted and not self.blacklist.matches(tag.name):
                local = self.matcher.match(tag)
                if local is not None and self.blacklist.matches(local.name):
                    local = None
            self.match_cache[key] = local
        return self.match_cache[key]

    def rematch_pass(self, candidates: dict[int, StashDBScene], feed: FeedRead) -> None:
        """Read the scenes with tags to settle from Stash and apply their answers (no StashDB request)."""
        for batch_ids in chunked(list(candidates), MAX_FINGERPRINT_LISTS):
            for scene in self.fetch_scenes(batch_ids):
                answer = candidates.get(scene.id)
                if answer is None or scene.linked_ids != (answer.id,):
                    continue  # re-linked since the listing: the next run looks it up
                self.counters["scenes_rematched"] += 1
                self.apply(scene, answer, "feed" if answer.id in feed.items else "stored answer")
            self.recorder.checkpoint()
            self.advance(len(batch_ids))

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

    def fingerprint_pass(self, scene_ids: Sequence[int]) -> list[SceneWork]:
        """Pass 1: look scenes up 40 at a time by fingerprint; return those needing pass 2."""
        fallbacks: list[SceneWork] = []
        for batch_ids in chunked(scene_ids, MAX_FINGERPRINT_LISTS):
            scenes = self.fetch_scenes(batch_ids)
            self.counters["scenes_seen"] += len(scenes)
            with_prints = [s for s in scenes if s.fingerprints and s.linked_ids]
            fallbacks.extend(s for s in scenes if not s.fingerprints and s.linked_ids)
            fallbacks.extend(self.match_batch(with_prints))
            self.recorder.checkpoint()
            self.total_units = len(scene_ids) + len(fallbacks)
            self.advance(len(batch_ids))
        log.info(f"Fingerprint pass done: {self.counters['matched_by_fingerprint']} matched, "
                 f"{len(fallbacks)} left for lookup by id")
        self.total_units = len(scene_ids) + len(fallbacks)
        return fallbacks

    def fetch_scenes(self, batch_ids: Sequence[int]) -> list[SceneWork]:
        """Read one batch of scenes from Stash; a failed read is logged, counted and skipped."""
        variables = {"ids": [str(i) for i in batch_ids], "filter": {"per_page": -1}}
        try:
            data = self.stash.call_by_ids(SCENE_DETAILS_QUERY, variables)
        except (StashAuthError, StashUnavailable):
            raise
        except StashError as exc:
            self.counters["errors"] += 1
            log.error(f"Could not read scenes {batch_ids[0]}..{batch_ids[-1]} from Stash, skipped: {exc}")
            return []
        scenes = [scene_work(s, self.endpoint) for s in (data or {"findScenes": {"scenes": []}})["findScenes"]["scenes"]]
        if self.history is not None and scenes:
            settled = self.history.settled_for([s.id for s in scenes])
            for scene in scenes:
                scene.settled = {stashdb_id: settled.get((scene.id, stashdb_id), {}) for stashdb_id in scene.linked_ids}
        return scenes

    def match_batch(self, scenes: list[SceneWork]) -> list[SceneWork]:
        """Send one fingerprint request; apply hits on the linked id and return the rest."""
        if not scenes:
            return []
        results = self.ask_stashdb(lambda: self.stashdb.find_scenes_by_fingerprints([s.fingerprints for s in scenes]))
        if results is FAILED:
            return []
        rest = []
        for scene, candidates in zip(scenes, results):
            hit = next((c for c in candidates if c is not None and c.id in scene.linked_ids), None)
            if hit is None:
                scene.fingerprint_hits = tuple(dict.fromkeys(c.id for c in candidates if c is not None and not c.deleted))
                rest.append(scene)
            elif hit.deleted:
                self.report_gone(scene, hit)
            else:
                self.counters["matched_by_fingerprint"] += 1
                self.apply(scene, hit, "fingerprint")
        return rest

    def id_pass(self, fallbacks: list[SceneWork]) -> None:
        """Pass 2: look each remaining scene up by its linked StashDB id."""
        for scene in fallbacks:
            remote = self.find_linked(scene)
            self.advance(1)
            if remote is FAILED:
                continue
            if remote is None or remote.deleted:
                self.report_gone(scene, remote)
                continue
            self.counters["matched_by_id"] += 1
            self.apply(scene, remote, "id")
        self.recorder.checkpoint()

    def report_gone(self, scene: SceneWork, remote: StashDBScene | None) -> None:
        """Report and count a scene whose StashDB scene is deleted (``remote``) or missing (None); left alone.

        When pass 1 found the scene's fingerprints on another live StashDB scene, the linked one was
        probably merged into it: both ids are reported, and the scene is never re-linked automatically.
        """
        linked = remote.id if remote is not None else ", ".join(scene.linked_ids)
        self.counters["deleted_on_stashdb" if remote is not None else "not_found"] += 1
        state = "deleted on StashDB" if remote is not None else "not on StashDB"
        if scene.fingerprint_hits:
            target = scene.fingerprint_hits[0]
            self.counters["probable_merges"] += 1
            if len(self.merged) < MERGES_KEPT:
                self.merged.append((scene.id, linked, target))
            note = f"probable merge: linked StashDB scene {linked} is {state}; its fingerprints are on {target}"
            log.warning(f"Scene {scene.id} ({scene.title!r}) is linked to StashDB scene {linked}, which is {state}; "
                        f"its fingerprints are on StashDB scene {target}, so it was probably merged into that one. "
                        "Re-link the scene (e.g. with the Tagger) to sync that scene's tags; left alone")
        else:
            note = f"linked StashDB scene {linked} is {state}"
            log.warning(f"Scene {scene.id} ({scene.title!r}) is linked to {linked}, which is {state}; left alone")
        if self.dry_run:
            self.preview_rows.append([str(scene.id), scene.title, linked, "", "", "", "", note, self.endpoint])
        elif len(scene.linked_ids) == 1:
            self.recorder.settle(SceneRecord(scene.id, scene.linked_ids[0], scene.linked_ids,
                                             remote.updated if remote is not None else None, (), (),
                                             DELETED if remote is not None else MISSING), needs_write=False)

    def find_linked(self, scene: SceneWork):
        """The first StashDB scene found among the scene's linked ids, None when StashDB has none, or FAILED."""
        failed = False
        for stashdb_id in scene.linked_ids:
            remote = self.ask_stashdb(lambda: self.stashdb.find_scene(stashdb_id))
            if remote is FAILED:
                failed = True
            elif remote is not None:
                return remote
        return FAILED if failed else None

    def ask_stashdb(self, request: Callable[[], object]):
        """Run one StashDB request; a failure is logged, counted and answered with FAILED."""
        try:
            answer = request()
        except AuthError:
            raise
        except StashDBError as exc:
            self.counters["errors"] += 1
            log.error(f"StashDB request failed, skipped: {exc}")
            if isinstance(exc, GraphQLQueryError):
                return FAILED  # StashDB answered (e.g. a malformed linked id): not a sign that it is down
            self.stashdb_failures_in_a_row += 1
            if self.stashdb_failures_in_a_row >= MAX_CONSECUTIVE_STASHDB_FAILURES:
                raise StashDBUnavailable(f"StashDB failed {self.stashdb_failures_in_a_row} times in a row ({exc}). "
                                         "Check that StashDB is reachable and run the task again.") from None
            return FAILED
        self.stashdb_failures_in_a_row = 0
        return answer

    def apply(self, scene: SceneWork, remote: StashDBScene, how: str) -> None:
        """Work out the tags a matched scene gains and queue (or preview) them; queue its history record."""
        outcome = self.outcome(scene, remote)
        self.counters["tags_skipped_by_history"] += len(outcome.skipped)
        if outcome.skipped:
            log.debug(f"Scene {scene.id}: not re-adding {', '.join(t.name for t in outcome.skipped)} "
                      "(settled by an earlier sync and removed since)")
        if outcome.add:
            names = ", ".join(t.name for t in outcome.add)
            if self.dry_run:
                log.info(f"Scene {scene.id} ({scene.title!r}) would gain: {names}")
                self.counters["scenes_updated"] += 1
                self.counters["tags_added"] += len(outcome.add)
            else:
                log.debug(f"Scene {scene.id} gains {names} (matched by {how})")
                self.writer.add(scene.id, frozenset(t.id for t in outcome.add))
        if self.dry_run and outcome.skipped:
            log.info(f"Scene {scene.id} ({scene.title!r}) skips (removed since an earlier sync): "
                     + ", ".join(t.name for t in outcome.skipped))
        record = SceneRecord(scene.id, remote.id, scene.linked_ids, remote.updated, remote.tags, outcome.settled)
        self.recorder.settle(record, needs_write=bool(outcome.add))
        if self.dry_run and (outcome.add or outcome.unmatched or outcome.skipped):
            self.preview_rows.append([str(scene.id), scene.title, remote.id, how,
                                      "; ".join(t.name for t in outcome.add), "; ".join(outcome.unmatched),
                                      "; ".join(t.name for t in outcome.skipped), "", self.endpoint])

    def outcome(self, scene: SceneWork, remote: StashDBScene) -> SceneOutcome:
        """Classify each StashDB tag of a scene: to add, already there, settled before, unmatched, blacklisted, deleted.

        A StashDB tag settled by an earlier run (see ``tagman_tagsync.history``) is never added again,
        whatever it matches now: if the scene lacks it, the user removed it.
        """
        add: dict[int, LocalTag] = {}
        unmatched: list[str] = []
        skipped: dict[int, LocalTag] = {}
        settled: list[SettledTag] = []
        history = scene.settled.get(remote.id, {})
        blacklisted = deleted = 0
        for remote_tag in remote.tags:
            if remote_tag.deleted:
                deleted += 1
                continue
            if self.blacklist.matches(remote_tag.name):
                blacklisted += 1
                continue
            local = self.matcher.match(remote_tag)
            if local is None:
                unmatched.append(remote_tag.name)
            elif self.blacklist.matches(local.name):
                blacklisted += 1
            elif remote_tag.id in history:
                if local.id not in scene.tag_ids:
                    skipped[local.id] = local
            elif local.id in scene.tag_ids:
                settled.append(SettledTag(remote_tag.id, local.id, PRESENT))
            else:
                add[local.id] = local
                settled.append(SettledTag(remote_tag.id, local.id, ADDED))
        self.count_outcome(unmatched, blacklisted, deleted)
        skipped = {i: t for i, t in skipped.items() if i not in add}
        return SceneOutcome(tuple(add.values()), tuple(unmatched), tuple(skipped.values()), tuple(settled))

    def count_outcome(self, unmatched: list[str], blacklisted: int, deleted: int) -> None:
        """Add one scene's skipped tags to the run's tallies."""
        self.counters["tags_unmatched"] += len(unmatched)
        self.unmatched_names.update(unmatched)
        self.counters["tags_blacklisted"] += blacklisted
        self.counters["tags_deleted_on_stashdb"] += deleted

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


def try_write_report(report_dir: Path, when: datetime, rows: list[list[str]]) -> str | None:
    """Write the preview report; an unwritable folder costs the file, not the preview."""
    try:
        return write_preview_report(report_dir, when, rows)
    except OSError as exc:
        log.warning(f"Could not write the preview report under {report_dir} ({exc.strerror or exc}); "
                    "the would-be tags are in this log")
        return None


def write_preview_report(report_dir: Path, when: datetime, rows: list[list[str]]) -> str:
    """Write the preview as CSV under the report folder (atomically) and return its path."""
    report_dir.mkdir(parents=True, exist_ok=True)
    stamp = when.astimezone().strftime("%Y%m%d-%H%M%S")
    path = unique_path(report_dir / f"scene_tag_preview_{stamp}.csv")
    partial = path.with_suffix(".csv.partial")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(REPORT_HEADER)
        writer.writerows(rows)
    os.replace(partial, path)
    log.info(f"Preview report written to {path}")
    return str(path)


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


def scene_work(scene: dict, endpoint: str) -> SceneWork:
    """Turn a Stash scene into the pieces the passes need."""
    linked = tuple(dict.fromkeys(s["stash_id"] for s in scene.get("stash_ids") or [] if s.get("endpoint") == endpoint))
    return SceneWork(
        id=int(scene["id"]),
        title=scene.get("title") or "",
        linked_ids=linked,
        tag_ids=frozenset(int(t["id"]) for t in scene.get("tags") or []),
        fingerprints=tuple(fingerprints_from_stash_files(scene.get("files") or [])),
    )


def load_tag_matcher(stash: StashClient, endpoint: str) -> TagMatcher:
    """Read every local tag once, page by page, into a matcher."""
    matcher = TagMatcher(endpoint)
    count = 0
    for page in stash.paginate(ALL_TAGS_QUERY, {"filter": {"sort": "id", "direction": "ASC"}},
                               "findTags", "tags", per_page=TAG_PAGE_SIZE):
        for tag in page:
            matcher.add(tag)
        count += len(page)
    log.info(f"Indexed {count} local tags for matching")
    return matcher


def linked_scenes(stash: StashClient, endpoint: str) -> dict[int, tuple[str, ...]]:
    """Snapshot the scenes linked to ``endpoint`` with their StashDB ids there, least recently updated first.

    Pages are read in id order, which edits do not change (in ``updated_at`` order a scene edited
    while we page would move and push another across a page boundary unseen), then sorted here by
    the instant of ``updated_at``. Only ids are kept: the sync's own writes reorder scenes too.
    """
    variables = {
        "scene_filter": {"stash_id_endpoint": {"endpoint": endpoint, "modifier": "NOT_NULL"}},
        "filter": {"sort": "id", "direction": "ASC"},
    }
    stamped: dict[int, float] = {}
    links: dict[int, tuple[str, ...]] = {}
    for page in stash.paginate(LINKED_SCENE_IDS_QUERY, variables, "findScenes", "scenes", per_page=SCENE_ID_PAGE_SIZE):
        for scene in page:
            scene_id = int(scene["id"])
            stamped[scene_id] = updated_instant(scene.get("updated_at"))
            links[scene_id] = tuple(dict.fromkeys(s["stash_id"] for s in scene.get("stash_ids") or []
                                                  if s.get("endpoint") == endpoint))
    return {scene_id: links[scene_id] for scene_id in sorted(stamped, key=lambda i: (stamped[i], i))}


def updated_instant(text: str | None) -> float:
    """Seconds since the epoch of a Stash timestamp (any offset); unknown sorts first."""
    try:
        return datetime.fromisoformat((text or "").replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("-inf")


def chunked(items: Sequence, size: int) -> Iterator[Sequence]:
    """Yield consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def unique_path(path: Path) -> Path:
    """Return ``path``, or the same name with a counter when it exists already."""
    candidate, counter = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{counter}{path.suffix}")
        counter += 1
    return candidate
