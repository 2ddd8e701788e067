"""A re-run from the change feed: every linked scene is re-matched from its stored (or freshly fed)
StashDB answer; only scenes with StashDB tags to settle are read from Stash, and only scenes
without a usable stored answer are looked up as a full run would."""

from __future__ import annotations

import json
import logging
from collections import Counter

from stashdb_api import MAX_FINGERPRINT_LISTS, StashDBScene, StashDBTag
from tagman_base.sqlite_util import chunks
from tagman_tagsync.change_feed import FeedRead
from tagman_tagsync.history import LIVE, SceneRecord, StoredAnswer, SyncHistory, decode_remote_tags
from tagman_tagsync.matcher import LocalTag
from tagman_tagsync.writes import HistoryRecorder

log = logging.getLogger(__name__)

UNCERTAIN = object()  # a scene the stored answers cannot settle: look it up as a full run would
HISTORY_CHUNK = 500  # scenes whose stored answers are read per history query


class FeedPasses:
    """Re-matching from stored and fed answers (a part of ``SceneTagSync``).

    Calls ``full_pass`` and ``fetch_scenes`` (``passes``), ``apply`` and ``usable_match``
    (``outcomes``) and the run's ``advance``.
    """

    history: SyncHistory | None
    counters: Counter
    recorder: HistoryRecorder
    match_cache: dict[tuple[str, str, bool], LocalTag | None]
    total_units: int

    def feed_pass(self, scene_ids: list[int], links: dict[int, tuple[str, ...]], feed: FeedRead) -> None:
        """Re-match stored answers (fed ones replaced); look up scenes without one as a full run would."""
        uncertain: list[int] = []
        candidates: dict[int, StashDBScene] = {}
        for chunk in chunks(scene_ids, HISTORY_CHUNK):
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

    def rematch_pass(self, candidates: dict[int, StashDBScene], feed: FeedRead) -> None:
        """Read the scenes with tags to settle from Stash and apply their answers (no StashDB request)."""
        for batch_ids in chunks(list(candidates), MAX_FINGERPRINT_LISTS):
            for scene in self.fetch_scenes(batch_ids):
                answer = candidates.get(scene.id)
                if answer is None or scene.linked_ids != (answer.id,):
                    continue  # re-linked since the listing: the next run looks it up
                self.counters["scenes_rematched"] += 1
                self.apply(scene, answer, "feed" if answer.id in feed.items else "stored answer")
            self.recorder.checkpoint()
            self.advance(len(batch_ids))
