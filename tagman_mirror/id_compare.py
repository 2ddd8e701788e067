"""Stash's ids of a type against the mirror's, in pages: memory stays flat at any library size.

Deletions leave no trace in Stash, so the sync compares id sets (after every full pass, and when
a count differs). Both sides are walked in ascending order and merged: Stash's ids in keyset pages
(``id > last``, where Stash's filter has an id criterion: scenes, images, galleries; the other types
in one listing), the mirror's from one ordered query. Keyset pages skip nothing when rows are
deleted meanwhile, unlike LIMIT/OFFSET: an entity deleted after its page was read is found by the
next count comparison, one created meanwhile shows in a later page.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field

from tagman_base.stash_client import StashClient
from tagman_mirror import queries
from tagman_mirror.entities import EntitySpec
from tagman_mirror.queries import SIGNAL_TYPES

ID_PAGE = 20_000  # ids per keyset page (about 1 MB of JSON)


@dataclass
class IdComparison:
    """What differs between Stash's ids and the mirror's live ones."""

    gone: list[int] = field(default_factory=list)      # in the mirror, not in Stash
    missing: list[int] = field(default_factory=list)   # in Stash, not in the mirror
    mirrored: int = 0                                   # live mirror rows seen


def stash_id_pages(stash: StashClient, spec: EntitySpec) -> Iterator[list[int]]:
    """Stash's ids of the type, ascending, page by page."""
    if spec.table not in SIGNAL_TYPES:  # no id criterion: one listing
        yield sorted(int(i["id"]) for i in _listing(stash, spec, None, -1))
        return
    after = 0
    while True:
        items = _listing(stash, spec, {"id": {"value": after, "modifier": "GREATER_THAN"}}, ID_PAGE)
        ids = sorted(int(i["id"]) for i in items)
        if ids:
            yield ids
        if len(items) < ID_PAGE:
            return
        after = ids[-1]


def _listing(stash: StashClient, spec: EntitySpec, window: dict | None, per_page: int) -> list[dict]:
    """One id listing of the type."""
    variables = {"window": window, "filter": {"per_page": per_page, "sort": "id", "direction": "ASC"}}
    return stash.call(queries.IDS[spec.table], variables)[spec.find][spec.list_key]


def compare_ids(conn: sqlite3.Connection, stash: StashClient, spec: EntitySpec) -> IdComparison:
    """Merge Stash's ascending ids with the mirror's live ones (nothing is written)."""
    out = IdComparison()
    mirror = (row[0] for row in conn.execute(f"SELECT id FROM {spec.table} WHERE deleted_at IS NULL ORDER BY id"))
    pending = next(mirror, None)
    for page in stash_id_pages(stash, spec):
        for stash_id in page:
            while pending is not None and pending < stash_id:
                out.gone.append(pending)
                out.mirrored += 1
                pending = next(mirror, None)
            if pending == stash_id:
                out.mirrored += 1
                pending = next(mirror, None)
            else:
                out.missing.append(stash_id)
    while pending is not None:
        out.gone.append(pending)
        out.mirrored += 1
        pending = next(mirror, None)
    return out
