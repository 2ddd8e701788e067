"""Link local tags to a stash-box's tags: the ``link_tags`` mode and its preview.

Stash matches a StashDB tag to a local tag exactly only through a StashID on the local tag, and it
has no tagger for tags. For one stash-box, a run:
  1. reads every live tag of the box with ``queryTags``, ``TAG_PAGE_SIZE`` per request;
  2. reads every local tag; those without a StashID for the box are the ones considered;
  3. classifies each: its name or one of its aliases equals (ASCII case-insensitively, as the
     Tagger compares) the name or an alias of exactly one box tag (``name`` / ``alias``), of
     several (``ambiguous``) or of none (``unmatched``);
  4. (not in a preview) re-reads the tags to link ``LINK_BATCH`` at a time, right before writing,
     and gives each that still has no StashID for the box and still matches the same box tag its
     full StashID list plus the new one (``tagUpdate`` replaces the list; the others are kept);
  5. writes a CSV report with one row per considered tag.
A cancelled run leaves each tag either linked or not: the next run skips the linked ones.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tagman_base.stash_boxes import StashBox
from tagman_base.stash_client import StashClient
from stashdb_api import StashDBClient, StashDBTag
from tagman_base.sqlite_util import chunks
from tagman_tagsync.matcher import fold_case
from tagman_tagsync.report import unique_path
from tagman_base.errors import StashAuthError, StashDBError, StashQueryError, StashUnavailable

# A child of the plugin's own logger ("tagManager"), so it logs at that logger's level.
log = logging.getLogger("tagManager.tag_links")

TAG_PAGE_SIZE = 1000  # stash-box has no cap on per_page; 20,000 tags cost 20 requests
LOCAL_TAG_PAGE_SIZE = 1000
LINK_BATCH = 50  # tags re-read and written per request pair
TAG_LINK_LOCK = Path("data") / "tag_link.lock"
REPORT_HEADER = ["local_tag_id", "local_tag_name", "stashdb_tag_id", "stashdb_tag_name", "reason",
                 "candidates", "action"]

TAG_FIELDS = "id name aliases stash_ids { endpoint stash_id updated_at }"

LOCAL_TAGS_QUERY = f"""
query TagLinkLocalTags($filter: FindFilterType) {{
  findTags(filter: $filter) {{ count tags {{ {TAG_FIELDS} }} }}
}}"""

TAGS_BY_ID_QUERY = f"""
query TagLinkTagsById($ids: [ID!], $filter: FindFilterType) {{
  findTags(ids: $ids, filter: $filter) {{ count tags {{ {TAG_FIELDS} }} }}
}}"""


@dataclass(frozen=True)
class TagIndex:
    """A stash-box's live tags, and the ids of those each folded name or alias belongs to."""

    tags: dict[str, StashDBTag]
    by_key: dict[str, frozenset[str]]

    @classmethod
    def build(cls, tags: Iterable[StashDBTag]) -> TagIndex:
        """Index tags by every folded name and alias (deleted tags are left out)."""
        live = {tag.id: tag for tag in tags if not tag.deleted}
        keys: dict[str, set[str]] = {}
        for tag in live.values():
            for key in match_keys(tag.name, tag.aliases):
                keys.setdefault(key, set()).add(tag.id)
        return cls(live, {key: frozenset(ids) for key, ids in keys.items()})


@dataclass(frozen=True)
class Proposal:
    """What the rules say about one local tag without a StashID for the box."""

    tag_id: int
    tag_name: str
    reason: str  # "name", "alias", "ambiguous" or "unmatched"
    candidates: tuple[StashDBTag, ...] = ()  # the one to link (name/alias), or the ambiguous ones

    @property
    def target(self) -> StashDBTag | None:
        """The box tag to link, or None when the tag is ambiguous or unmatched."""
        return self.candidates[0] if self.reason in ("name", "alias") else None


def match_keys(name: str, aliases: Iterable[str]) -> set[str]:
    """The folded name and aliases that matching compares (empty ones never match)."""
    return {fold_case(text) for text in (name, *aliases) if text}


def has_link(tag: dict, endpoint: str) -> bool:
    """True when a local tag already has a StashID for ``endpoint``."""
    return any(s.get("endpoint") == endpoint for s in tag.get("stash_ids") or ())


def classify(tag: dict, index: TagIndex) -> Proposal:
    """Apply the linking rules to one local tag (a dict with id, name and aliases)."""
    name = tag["name"]
    ids: set[str] = set()
    for key in match_keys(name, tag.get("aliases") or ()):
        ids.update(index.by_key.get(key, ()))
    candidates = tuple(sorted((index.tags[i] for i in ids), key=lambda t: (t.name, t.id)))
    if not candidates:
        return Proposal(int(tag["id"]), name, "unmatched")
    if len(candidates) > 1:
        return Proposal(int(tag["id"]), name, "ambiguous", candidates)
    reason = "name" if fold_case(name) == fold_case(candidates[0].name) else "alias"
    return Proposal(int(tag["id"]), name, reason, candidates)


def plan_links(local_tags: Iterable[dict], index: TagIndex, endpoint: str) -> list[Proposal]:
    """Classify every local tag that has no StashID for ``endpoint``, in the order given."""
    return [classify(tag, index) for tag in local_tags if not has_link(tag, endpoint)]


def linked_stash_ids(tag: dict, endpoint: str, stash_id: str) -> list[dict]:
    """The tag's whole StashID list (each kept as it is) with the new link for ``endpoint`` added."""
    kept = [{"endpoint": s["endpoint"], "stash_id": s["stash_id"], **({"updated_at": s["updated_at"]}
             if s.get("updated_at") else {})} for s in tag.get("stash_ids") or ()]
    return kept + [{"endpoint": endpoint, "stash_id": stash_id}]


def set_stash_ids_batch_document(size: int) -> str:
    """One mutation document with ``size`` aliased ``tagUpdate`` fields, each setting one tag's StashIDs."""
    params = ", ".join(f"$t{i}: TagUpdateInput!" for i in range(size))
    fields = " ".join(f"t{i}: tagUpdate(input: $t{i}) {{ id }}" for i in range(size))
    return f"mutation TagLinkSetStashIdsBatch({params}) {{ {fields} }}"


@dataclass(frozen=True)
class TagLinkResult:
    """What one link run did (or, in a preview, would do) for one stash-box."""

    dry_run: bool
    endpoint: str
    stashdb_tags: int = 0
    local_tags: int = 0
    already_linked: int = 0
    considered: int = 0
    matched_by_name: int = 0
    matched_by_alias: int = 0
    ambiguous: int = 0
    unmatched: int = 0
    linked: int = 0
    changed_meanwhile: int = 0
    errors: int = 0
    stashdb_requests: int = 0
    stash_mutations: int = 0
    elapsed_s: float = 0.0
    report_path: str | None = None

    def __str__(self) -> str:
        verb = "would link" if self.dry_run else "linked"
        done = self.matched_by_name + self.matched_by_alias if self.dry_run else self.linked
        text = (
            f"Tag linking ({'preview' if self.dry_run else 'applied'}) against {self.endpoint}: "
            f"{self.stashdb_tags} StashDB tags, {self.local_tags} local tags ({self.already_linked} already linked); "
            f"of {self.considered} considered, {self.matched_by_name} match by name, {self.matched_by_alias} by alias, "
            f"{self.ambiguous} ambiguous, {self.unmatched} unmatched; {verb} {done}; "
            f"{self.changed_meanwhile} changed in Stash meanwhile, {self.errors} errors; "
            f"{self.stashdb_requests} StashDB requests, {self.stash_mutations} tag updates in {self.elapsed_s:.1f} s."
        )
        if self.report_path:
            text += f" Report: {self.report_path}"
        return text


class TagLinker:
    """One link run against one stash-box; ``run()`` returns its ``TagLinkResult``."""

    def __init__(self, stash: StashClient, stashdb: StashDBClient, box: StashBox, dry_run: bool, report_dir: Path,
                 progress: Callable[[float], None] = lambda f: None, page_size: int = TAG_PAGE_SIZE,
                 batch_size: int = LINK_BATCH, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.stash = stash
        self.stashdb = stashdb
        self.endpoint = box.endpoint
        self.dry_run = dry_run
        self.report_dir = report_dir
        self.progress = progress
        self.page_size = page_size
        self.batch_size = batch_size
        self.clock = clock
        self.wall_clock = wall_clock
        self.counters: Counter = Counter()  # TagLinkResult field name -> count
        self.actions: dict[int, str] = {}  # local tag id -> what happened to it
        self.reported = 0.0

    def run(self) -> TagLinkResult:
        """Read both tag lists, classify, link (unless previewing) and report."""
        started = self.clock()
        index = TagIndex.build(self.read_stashdb_tags())
        self.advance(0.4)
        local_tags = self.read_local_tags()
        proposals = plan_links(local_tags, index, self.endpoint)
        self.count_plan(local_tags, proposals)
        self.advance(0.5)
        if not self.dry_run:
            self.link(proposals, index)
        report_path = self.try_write_report(proposals)
        self.progress(1.0)
        return self.result(len(index.tags), self.clock() - started, report_path)

    def advance(self, fraction: float) -> None:
        """Report progress; it never goes back (a re-read of StashDB's tags starts its count over)."""
        self.reported = max(self.reported, fraction)
        self.progress(self.reported)

    def read_stashdb_tags(self) -> list[StashDBTag]:
        """Every live tag of the box, page by page; a list that changes while it is read is read again."""
        for attempt in range(2):
            tags, count = self.list_stashdb_tags()
            if len(tags) == count:
                log.info(f"Read {count} tags from {self.endpoint} in {self.stashdb.requests_sent} requests")
                return list(tags.values())
            log.warning(f"StashDB's tag list changed while it was read ({len(tags)} tags read, {count} listed)"
                        + ("; reading it again" if attempt == 0 else ""))
        raise StashDBError(f"StashDB's tag list at {self.endpoint} kept changing while it was read; nothing was "
                           "linked. Run the task again later.")

    def list_stashdb_tags(self) -> tuple[dict[str, StashDBTag], int]:
        """One pass over ``queryTags``: tags by id, and the count the last page reported."""
        tags: dict[str, StashDBTag] = {}
        page, seen, count = 1, 0, 0
        while True:
            answer = self.stashdb.query_tags(page, self.page_size)
            count = answer.count
            tags.update((tag.id, tag) for tag in answer.tags)
            seen += len(answer.tags)
            if count:
                self.advance(0.4 * min(1.0, seen / count))
            if not answer.tags or seen >= count:
                return tags, count
            page += 1

    def read_local_tags(self) -> list[dict]:
        """Every local tag with its aliases and StashIDs, in id order."""
        variables = {"filter": {"sort": "id", "direction": "ASC"}}
        tags: dict[int, dict] = {}
        for page in self.stash.paginate(LOCAL_TAGS_QUERY, variables, "findTags", "tags", per_page=LOCAL_TAG_PAGE_SIZE):
            tags.update((int(tag["id"]), tag) for tag in page)
        return [tags[tag_id] for tag_id in sorted(tags)]

    def count_plan(self, local_tags: list[dict], proposals: list[Proposal]) -> None:
        """Tally the classification and log the tags that would be or will be linked."""
        reasons = Counter(p.reason for p in proposals)
        self.counters.update(local_tags=len(local_tags), already_linked=len(local_tags) - len(proposals),
                             considered=len(proposals), matched_by_name=reasons["name"],
                             matched_by_alias=reasons["alias"], ambiguous=reasons["ambiguous"],
                             unmatched=reasons["unmatched"])
        for proposal in proposals:
            self.actions[proposal.tag_id] = "would link" if self.dry_run and proposal.target else "left alone"
            if self.dry_run and proposal.target:
                log.info(f"Tag {proposal.tag_id} ({proposal.tag_name!r}) would be linked to "
                         f"{proposal.target.name!r} ({proposal.target.id}) by {proposal.reason}")

    def link(self, proposals: list[Proposal], index: TagIndex) -> None:
        """Write the links, ``batch_size`` tags per re-read and write."""
        to_link = [p for p in proposals if p.target is not None]
        log.info(f"Linking {len(to_link)} tags to {self.endpoint}")
        for done, batch in enumerate(chunks(to_link, self.batch_size), start=1):
            self.link_batch(batch, index)
            self.advance(0.5 + 0.5 * min(1.0, done * self.batch_size / len(to_link)))

    def link_batch(self, batch: Sequence[Proposal], index: TagIndex) -> None:
        """Re-read a batch of tags and write the links that still hold, in one request."""
        current = self.reread(batch)
        inputs: dict[int, dict] = {}
        for proposal in batch:
            tag = current.get(proposal.tag_id)
            if tag is None or has_link(tag, self.endpoint) or classify(tag, index).target != proposal.target:
                self.counters["changed_meanwhile"] += 1
                self.actions[proposal.tag_id] = "changed in Stash meanwhile, left alone"
                continue
            inputs[proposal.tag_id] = {"id": str(proposal.tag_id),
                                       "stash_ids": linked_stash_ids(tag, self.endpoint, proposal.target.id)}
        if inputs:
            self.write(inputs, {p.tag_id: p for p in batch})

    def reread(self, batch: Sequence[Proposal]) -> dict[int, dict]:
        """The batch's tags as Stash has them now (a tag deleted meanwhile is absent)."""
        variables = {"ids": [str(p.tag_id) for p in batch], "filter": {"per_page": -1}}
        data = self.stash.call_by_ids(TAGS_BY_ID_QUERY, variables)
        return {int(tag["id"]): tag for tag in (data or {"findTags": {"tags": []}})["findTags"]["tags"]}

    def write(self, inputs: dict[int, dict], proposals: dict[int, Proposal]) -> None:
        """Send the tag updates as aliased fields of one mutation; a field Stash rejects is counted."""
        tag_ids = list(inputs)
        variables = {f"t{i}": inputs[tag_id] for i, tag_id in enumerate(tag_ids)}
        try:
            data = self.stash.call(set_stash_ids_batch_document(len(tag_ids)), variables)
            messages: dict[str, str] = {}
        except (StashAuthError, StashUnavailable):
            raise
        except StashQueryError as exc:
            data = exc.data or {}
            messages = {str((e.get("path") or [""])[0]): str(e.get("message")) for e in exc.errors if isinstance(e, dict)}
        self.counters["stash_mutations"] += len(tag_ids)
        for i, tag_id in enumerate(tag_ids):
            target = proposals[tag_id].target
            if data.get(f"t{i}") is None:
                self.counters["errors"] += 1
                self.actions[tag_id] = "error"
                log.error(f"Stash rejected linking tag {tag_id} ({proposals[tag_id].tag_name!r}) to {target.id}: "
                          f"{messages.get(f't{i}', 'no answer')}")
                continue
            self.counters["linked"] += 1
            self.actions[tag_id] = "linked"
            log.debug(f"Linked tag {tag_id} ({proposals[tag_id].tag_name!r}) to {target.name!r} ({target.id})")

    def try_write_report(self, proposals: list[Proposal]) -> str | None:
        """Write the report; an unwritable folder costs the file, not the run."""
        try:
            return self.write_report(proposals)
        except OSError as exc:
            log.warning(f"Could not write the tag link report under {self.report_dir} ({exc.strerror or exc}); "
                        "the proposed links are in this log")
            return None

    def write_report(self, proposals: list[Proposal]) -> str:
        """Write one CSV row per considered tag (atomically) and return the file's path."""
        self.report_dir.mkdir(parents=True, exist_ok=True)
        stamp = self.wall_clock().astimezone().strftime("%Y%m%d-%H%M%S")
        kind = "tag_links_preview" if self.dry_run else "tag_links"
        path = unique_path(self.report_dir / f"{kind}_{stamp}.csv")
        partial = path.with_suffix(".csv.partial")
        with partial.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(REPORT_HEADER)
            writer.writerows(self.report_row(p) for p in proposals)
        os.replace(partial, path)
        log.info(f"Tag link report written to {path}")
        return str(path)

    def report_row(self, proposal: Proposal) -> list[str]:
        """One report row: the local tag, the proposed box tag, why, the candidates and what was done."""
        target = proposal.target
        candidates = "; ".join(f"{t.name} [{t.id}]" for t in proposal.candidates) if proposal.reason == "ambiguous" else ""
        return [str(proposal.tag_id), proposal.tag_name, target.id if target else "", target.name if target else "",
                proposal.reason, candidates, self.actions.get(proposal.tag_id, "")]

    def result(self, stashdb_tags: int, elapsed_s: float, report_path: str | None) -> TagLinkResult:
        """Freeze the tallies into the run's result."""
        return TagLinkResult(dry_run=self.dry_run, endpoint=self.endpoint, stashdb_tags=stashdb_tags,
                             **self.counters, stashdb_requests=self.stashdb.requests_sent,
                             elapsed_s=round(elapsed_s, 3), report_path=report_path)


def link_tags_for_box(stash: StashClient, stashdb: StashDBClient, box: StashBox, dry_run: bool, report_dir: Path,
                      progress: Callable[[float], None] = lambda f: None) -> TagLinkResult:
    """Link (or preview linking) the local tags to one stash-box's tags."""
    return TagLinker(stash, stashdb, box, dry_run, report_dir, progress=progress).run()
