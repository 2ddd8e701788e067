"""The tag sync's writes: grouped ADD-only ``bulkSceneUpdate`` mutations, and the history records
that follow them once Stash confirmed a scene's writes."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence

from tagman_base.errors import StashAuthError, StashError, StashQueryError, StashUnavailable
from tagman_base.stash_client import StashClient
from tagman_tagsync.history import SceneRecord, SyncHistory

log = logging.getLogger(__name__)

# Groups are written when full or at the end of the run, so every tag set costs one mutation
# (per 1000 scenes); a cancelled run loses only undecided writes, which the next run redoes.
MUTATION_CHUNK = 1000
BATCH_FIELDS = 50

ADD_TAGS_MUTATION = """
mutation TagSyncAddTags($input: BulkSceneUpdateInput!) {
  bulkSceneUpdate(input: $input) { id }
}"""


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
