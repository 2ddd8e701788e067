"""StashDB scene tag sync: give linked scenes the tags StashDB has for them, merge-only.

The run, in order:
  1. Build a ``TagMatcher`` once from every local tag (StashID link, then name, then alias).
  2. Snapshot the ids of the scenes linked to the endpoint, oldest ``updated_at`` first.
  3. Pass 1 asks StashDB 40 scenes per request by fingerprint; a hit counts only when its id
     is the scene's linked id. Pass 2 looks the rest up by id, one request each.
  4. Tags to add are grouped by identical tag set and written with ``bulkSceneUpdate`` in
     ``ADD`` mode, so a tag that someone adds while the sync runs is never lost.
A dry run sends no mutation, stops after ``PREVIEW_LIMIT`` scenes and writes a CSV report.
"""

from __future__ import annotations

import csv
import logging
import os
import string
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tagman_base.settings import TagBlacklist
from tagman_base.stash_client import StashBox, StashClient
from stashdb_api import (
    MAX_FINGERPRINT_LISTS,
    Fingerprint,
    StashDBClient,
    StashDBScene,
    StashDBTag,
    fingerprints_from_stash_files,
)
from tagman_base.errors import (
    AuthError,
    GraphQLQueryError,
    StashAuthError,
    StashDBError,
    StashDBUnavailable,
    StashError,
    StashQueryError,
    StashUnavailable,
)

log = logging.getLogger(__name__)

PREVIEW_LIMIT = 200
SCENE_ID_PAGE_SIZE = 1000
TAG_PAGE_SIZE = 1000
# Groups are written when full or at the end of the run, so every tag set costs one mutation
# (per 1000 scenes); a cancelled run loses only undecided writes, which the next run redoes.
MUTATION_CHUNK = 1000
BATCH_FIELDS = 50
MAX_CONSECUTIVE_STASHDB_FAILURES = 5
UNMATCHED_NAMES_KEPT = 100
FAILED = object()  # a StashDB request that failed for good and was skipped
ASCII_FOLD = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)

ALL_TAGS_QUERY = """
query TagSyncTags($filter: FindFilterType) {
  findTags(filter: $filter) { count tags { id name aliases stash_ids { endpoint stash_id } } }
}"""

LINKED_SCENE_IDS_QUERY = """
query TagSyncLinkedSceneIds($scene_filter: SceneFilterType, $filter: FindFilterType) {
  findScenes(scene_filter: $scene_filter, filter: $filter) { count scenes { id updated_at } }
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
    errors: int = 0
    stashdb_requests: int = 0
    stash_mutations: int = 0
    elapsed_s: float = 0.0
    report_path: str | None = None
    unmatched_tag_names: tuple[str, ...] = ()

    def __str__(self) -> str:
        verb = "would update" if self.dry_run else "updated"
        text = (
            f"Scene tag sync ({'preview' if self.dry_run else 'applied'}) against {self.endpoint}: "
            f"{self.scenes_seen} linked scenes, {self.matched_by_fingerprint} matched by fingerprint, "
            f"{self.matched_by_id} by id, {self.not_found} not found, {self.deleted_on_stashdb} deleted on StashDB; "
            f"{verb} {self.scenes_updated} scenes with {self.tags_added} tags; "
            f"{self.tags_unmatched} tags unmatched, {self.tags_blacklisted} blacklisted, "
            f"{self.tags_deleted_on_stashdb} deleted on StashDB; {self.errors} errors; "
            f"{self.stashdb_requests} StashDB requests, {self.stash_mutations} Stash mutations in {self.elapsed_s:.1f} s."
        )
        if self.report_path:
            text += f" Report: {self.report_path}"
        return text


@dataclass
class SceneWork:
    """One local scene on its way through the passes."""

    id: int
    title: str
    linked_ids: tuple[str, ...]
    tag_ids: frozenset[int]
    fingerprints: tuple[Fingerprint, ...]


@dataclass
class SceneOutcome:
    """Tags one scene gains and the StashDB tag names without a local match (for the log and report)."""

    add: tuple[LocalTag, ...]
    unmatched: tuple[str, ...]


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
                 batch_fields: int = BATCH_FIELDS) -> None:
        self.stash = stash
        self.counters = counters
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


class SceneTagSync:
    """One run of the scene tag sync; ``run()`` returns its ``TagSyncResult``."""

    def __init__(self, stash: StashClient, stashdb: StashDBClient, box: StashBox, blacklist: TagBlacklist,
                 dry_run: bool, report_dir: Path, progress: Callable[[float], None] = lambda f: None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.stash = stash
        self.stashdb = stashdb
        self.endpoint = box.endpoint
        self.blacklist = blacklist
        self.dry_run = dry_run
        self.report_dir = report_dir
        self.progress = progress
        self.clock = clock
        self.wall_clock = wall_clock
        self.counters: Counter = Counter()  # TagSyncResult field name -> count
        self.unmatched_names: Counter = Counter()
        self.writer = TagWriter(stash, self.counters)
        self.preview_rows: list[list[str]] = []
        self.matcher = TagMatcher(self.endpoint)
        self.total_units = 0
        self.done_units = 0
        self.reported = 0.0
        self.stashdb_failures_in_a_row = 0

    def run(self) -> TagSyncResult:
        """Match, look up and write; flush pending writes even when StashDB fails for good."""
        started = self.clock()
        self.matcher = load_tag_matcher(self.stash, self.endpoint)
        scene_ids = linked_scene_ids(self.stash, self.endpoint)
        if self.dry_run:
            scene_ids = scene_ids[:PREVIEW_LIMIT]
        log.info(f"{len(scene_ids)} scenes linked to {self.endpoint} to check"
                 + (f" (preview limited to {PREVIEW_LIMIT})" if self.dry_run else ""))
        self.total_units = len(scene_ids)
        try:
            fallbacks = self.fingerprint_pass(scene_ids)
            self.id_pass(fallbacks)
        except StashDBError:
            self.flush()  # the writes already decided still land when StashDB gives out
            raise
        self.flush()
        report_path = self.try_write_report() if self.dry_run else None
        self.progress(1.0)
        return self.result(self.clock() - started, report_path)

    def flush(self) -> None:
        """Write the pending tag groups (nothing in a dry run)."""
        if not self.dry_run:
            self.writer.flush()

    def fingerprint_pass(self, scene_ids: Sequence[int]) -> list[SceneWork]:
        """Pass 1: look scenes up 40 at a time by fingerprint; return those needing pass 2."""
        fallbacks: list[SceneWork] = []
        for batch_ids in chunked(scene_ids, MAX_FINGERPRINT_LISTS):
            scenes = self.fetch_scenes(batch_ids)
            self.counters["scenes_seen"] += len(scenes)
            with_prints = [s for s in scenes if s.fingerprints and s.linked_ids]
            fallbacks.extend(s for s in scenes if not s.fingerprints and s.linked_ids)
            fallbacks.extend(self.match_batch(with_prints))
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
        return [scene_work(s, self.endpoint) for s in (data or {"findScenes": {"scenes": []}})["findScenes"]["scenes"]]

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
                rest.append(scene)
            elif hit.deleted:
                self.skip_deleted(scene, hit)
            else:
                self.counters["matched_by_fingerprint"] += 1
                self.apply(scene, hit, "fingerprint")
        return rest

    def id_pass(self, fallbacks: list[SceneWork]) -> None:
        """Pass 2: look each remaining scene up by its linked StashDB id."""
        for scene in fallbacks:
            remote = self.find_linked(scene)
            self.advance(1)
            if remote is None:
                continue
            if remote.deleted:
                self.skip_deleted(scene, remote)
                continue
            self.counters["matched_by_id"] += 1
            self.apply(scene, remote, "id")

    def skip_deleted(self, scene: SceneWork, remote: StashDBScene) -> None:
        """Report and count a scene whose StashDB scene is deleted; it is left alone."""
        self.counters["deleted_on_stashdb"] += 1
        log.warning(f"Scene {scene.id} ({scene.title!r}) is linked to StashDB scene {remote.id}, "
                    "which is deleted on StashDB; left alone")

    def find_linked(self, scene: SceneWork) -> StashDBScene | None:
        """Return the first StashDB scene found among the scene's linked ids (counts misses)."""
        failed = False
        for stashdb_id in scene.linked_ids:
            remote = self.ask_stashdb(lambda: self.stashdb.find_scene(stashdb_id))
            if remote is FAILED:
                failed = True
            elif remote is not None:
                return remote
        if not failed:
            self.counters["not_found"] += 1
            log.warning(f"Scene {scene.id} ({scene.title!r}) is linked to {', '.join(scene.linked_ids)}, "
                        "which StashDB does not have; left alone")
        return None

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
        """Work out the tags a matched scene gains and queue (or preview) them."""
        outcome = self.outcome(scene, remote)
        if outcome.add:
            names = ", ".join(t.name for t in outcome.add)
            if self.dry_run:
                log.info(f"Scene {scene.id} ({scene.title!r}) would gain: {names}")
                self.counters["scenes_updated"] += 1
                self.counters["tags_added"] += len(outcome.add)
            else:
                log.debug(f"Scene {scene.id} gains {names} (matched by {how})")
                self.writer.add(scene.id, frozenset(t.id for t in outcome.add))
        if self.dry_run and (outcome.add or outcome.unmatched):
            self.preview_rows.append([str(scene.id), scene.title, remote.id, how,
                                      "; ".join(t.name for t in outcome.add), "; ".join(outcome.unmatched)])

    def outcome(self, scene: SceneWork, remote: StashDBScene) -> SceneOutcome:
        """Classify each StashDB tag of a scene: to add, already there, unmatched, blacklisted, deleted."""
        add: dict[int, LocalTag] = {}
        unmatched: list[str] = []
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
            elif local.id not in scene.tag_ids:
                add[local.id] = local
        self.count_outcome(unmatched, blacklisted, deleted)
        return SceneOutcome(tuple(add.values()), tuple(unmatched))

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

    def try_write_report(self) -> str | None:
        """Write the preview report; an unwritable folder costs the file, not the preview."""
        try:
            return self.write_report()
        except OSError as exc:
            log.warning(f"Could not write the preview report under {self.report_dir} ({exc.strerror or exc}); "
                        "the would-be tags are in this log")
            return None

    def write_report(self) -> str:
        """Write the preview as CSV under the report folder (atomically) and return its path."""
        self.report_dir.mkdir(parents=True, exist_ok=True)
        stamp = self.wall_clock().astimezone().strftime("%Y%m%d-%H%M%S")
        path = unique_path(self.report_dir / f"scene_tag_preview_{stamp}.csv")
        partial = path.with_suffix(".csv.partial")
        with partial.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["scene_id", "title", "stashdb_id", "matched_by", "tags_to_add", "tags_unmatched"])
            writer.writerows(self.preview_rows)
        os.replace(partial, path)
        log.info(f"Preview report written to {path}")
        return str(path)

    def result(self, elapsed_s: float, report_path: str | None) -> TagSyncResult:
        """Freeze the tallies into the run's result."""
        return TagSyncResult(
            dry_run=self.dry_run, endpoint=self.endpoint, **self.counters,
            stashdb_requests=self.stashdb.requests_sent, elapsed_s=round(elapsed_s, 3), report_path=report_path,
            unmatched_tag_names=tuple(name for name, _ in self.unmatched_names.most_common(UNMATCHED_NAMES_KEPT)),
        )


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


def linked_scene_ids(stash: StashClient, endpoint: str) -> list[int]:
    """Snapshot the ids of scenes linked to ``endpoint``, least recently updated first.

    Pages are read in id order, which edits do not change (in ``updated_at`` order a scene edited
    while we page would move and push another across a page boundary unseen), then sorted here by
    the instant of ``updated_at``. Only ids are kept: the sync's own writes reorder scenes too.
    """
    variables = {
        "scene_filter": {"stash_id_endpoint": {"endpoint": endpoint, "modifier": "NOT_NULL"}},
        "filter": {"sort": "id", "direction": "ASC"},
    }
    stamped: dict[int, float] = {}
    for page in stash.paginate(LINKED_SCENE_IDS_QUERY, variables, "findScenes", "scenes", per_page=SCENE_ID_PAGE_SIZE):
        stamped.update((int(s["id"]), updated_instant(s.get("updated_at"))) for s in page)
    return sorted(stamped, key=lambda scene_id: (stamped[scene_id], scene_id))


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
