"""What a matched scene gains: each StashDB tag classified against the local tags, the blacklist and
the sync history, then queued for writing (or previewed) with the history record it settles."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from stashdb_api import StashDBScene, StashDBTag
from tagman_base.settings import TagBlacklist
from tagman_tagsync.history import ADDED, PRESENT, SceneRecord, SettledTag
from tagman_tagsync.matcher import LocalTag, TagMatcher
from tagman_tagsync.stash_scenes import SceneWork
from tagman_tagsync.writes import HistoryRecorder, TagWriter

log = logging.getLogger(__name__)


@dataclass
class SceneOutcome:
    """Tags one scene gains, StashDB tag names without a local match, tags held back by the history,
    and the StashDB tags this answer settles (recorded once Stash confirmed the scene's writes)."""

    add: tuple[LocalTag, ...]
    unmatched: tuple[str, ...]
    skipped: tuple[LocalTag, ...] = ()
    settled: tuple[SettledTag, ...] = ()


class TagOutcomes:
    """The scene tag sync's rules for one matched scene (a part of ``SceneTagSync``)."""

    endpoint: str
    dry_run: bool
    blacklist: TagBlacklist
    matcher: TagMatcher
    match_cache: dict[tuple[str, str, bool], LocalTag | None]
    counters: Counter
    unmatched_names: Counter
    writer: TagWriter
    recorder: HistoryRecorder
    preview_rows: list[list[str]]

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
