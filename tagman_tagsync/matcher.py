"""Tag matching as Stash's Tagger does it: StashID link, then name, then alias (ASCII case folded)."""

from __future__ import annotations

import logging
import string
from collections.abc import Iterable
from dataclasses import dataclass

from stashdb_api import StashDBTag
from tagman_base.stash_client import StashClient

log = logging.getLogger(__name__)

TAG_PAGE_SIZE = 1000
ASCII_FOLD = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)

ALL_TAGS_QUERY = """
query TagSyncTags($filter: FindFilterType) {
  findTags(filter: $filter) { count tags { id name aliases stash_ids { endpoint stash_id } } }
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
