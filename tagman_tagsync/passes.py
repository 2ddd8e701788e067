"""The full run's look-ups: pass 1 asks StashDB 40 scenes per request by fingerprint, pass 2 looks
the rest up by their linked id; deleted or missing StashDB scenes are reported, probable merges named."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

from stashdb_api import MAX_FINGERPRINT_LISTS, StashDBClient, StashDBScene
from tagman_base.errors import (
    AuthError,
    GraphQLQueryError,
    StashAuthError,
    StashDBError,
    StashDBUnavailable,
    StashError,
    StashUnavailable,
)
from tagman_base.sqlite_util import chunks
from tagman_base.stash_client import StashClient
from tagman_tagsync.history import DELETED, MISSING, SceneRecord, SyncHistory
from tagman_tagsync.results import MERGES_KEPT
from tagman_tagsync.stash_scenes import SCENE_DETAILS_QUERY, SceneWork, scene_work
from tagman_tagsync.writes import HistoryRecorder

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_STASHDB_FAILURES = 5
FAILED = object()  # a StashDB request that failed for good and was skipped


class LookupPasses:
    """Fingerprint and by-id look-ups of a full run (a part of ``SceneTagSync``).

    Calls ``apply`` (``outcomes``) for every matched scene and the run's ``advance``.
    """

    stash: StashClient
    stashdb: StashDBClient
    endpoint: str
    dry_run: bool
    history: SyncHistory | None
    counters: Counter
    recorder: HistoryRecorder
    merged: list[tuple[int, str, str]]
    preview_rows: list[list[str]]
    total_units: int
    full_fallbacks: int
    stashdb_failures_in_a_row: int

    def full_pass(self, scene_ids: Sequence[int]) -> None:
        """Look every scene up: fingerprint batches, then by id."""
        fallbacks = self.fingerprint_pass(scene_ids)
        self.full_fallbacks = len(fallbacks)
        self.id_pass(fallbacks)

    def fingerprint_pass(self, scene_ids: Sequence[int]) -> list[SceneWork]:
        """Pass 1: look scenes up 40 at a time by fingerprint; return those needing pass 2."""
        fallbacks: list[SceneWork] = []
        for batch_ids in chunks(scene_ids, MAX_FINGERPRINT_LISTS):
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
