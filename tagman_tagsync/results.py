"""The frozen result of a scene tag sync run: one per stash-box, and the run's total over them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

UNMATCHED_NAMES_KEPT = 100
MERGES_KEPT = 100


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
