"""The linking rules of the issue as a brute-force model, and helpers that prepare the fakes for link runs."""

from __future__ import annotations

import copy

from tests.conftest import Servers
from tests.fakes.library import OTHER_ENDPOINT

OTHER_LINK_STAMP = "2025-03-04T05:06:07Z"


def ascii_lower(text: str) -> str:
    """Lower-case A-Z only (SQLite's NOCASE), written independently of the plugin's folding."""
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)


def oracle(local_tags: list[dict], remote_tags: list[dict], endpoint: str) -> dict[int, tuple[str, list[str]]]:
    """Local tag id -> (reason, candidate StashDB ids) for every tag without a StashID for the endpoint."""
    plan = {}
    live = [(r["id"], [ascii_lower(text) for text in [r["name"], *r.get("aliases", ())] if text])
            for r in remote_tags if not r.get("deleted")]
    for tag in local_tags:
        if any(s["endpoint"] == endpoint for s in tag.get("stash_ids") or ()):
            continue
        own = [ascii_lower(text) for text in [tag["name"], *tag.get("aliases", ())] if text]
        hits = sorted({remote_id for remote_id, theirs in live if any(mine == other for mine in own for other in theirs)})
        if not hits:
            plan[int(tag["id"])] = ("unmatched", [])
        elif len(hits) > 1:
            plan[int(tag["id"])] = ("ambiguous", hits)
        else:
            remote = next(r for r in remote_tags if r["id"] == hits[0])
            same_name = ascii_lower(tag["name"]) == ascii_lower(remote["name"])
            plan[int(tag["id"])] = ("name" if same_name else "alias", hits)
    return plan


def tag_rows(servers: Servers) -> dict[int, dict]:
    """A deep copy of every local tag row in the fake Stash."""
    with servers.library.world.lock:
        return copy.deepcopy(servers.library.world.table("tag"))


def remote_tags(servers: Servers) -> list[dict]:
    return list(servers.library.stashdb["tags"].values())


def link_others_elsewhere(servers: Servers, count: int = 6) -> None:
    """Give some unlinked local tags a StashID for another stash-box (it must survive a link)."""
    world = servers.library.world
    unlinked = [tid for tid, row in sorted(world.table("tag").items()) if not row["stash_ids"]]
    for tid in unlinked[:count]:
        world.update_entity("tag", tid, stash_ids=[{"endpoint": OTHER_ENDPOINT, "stash_id": f"other-{tid}",
                                                     "updated_at": OTHER_LINK_STAMP}])


def expected_after(before: dict[int, dict], plan: dict[int, tuple[str, list[str]]], endpoint: str) -> dict[int, list]:
    """Every tag's (endpoint, stash_id) pairs once the plan is applied."""
    expected = {tid: [(s["endpoint"], s["stash_id"]) for s in row["stash_ids"]] for tid, row in before.items()}
    for tid, (reason, candidates) in plan.items():
        if reason in ("name", "alias"):
            expected[tid] = expected[tid] + [(endpoint, candidates[0])]
    return expected


def stash_id_pairs(rows: dict[int, dict]) -> dict[int, list]:
    return {tid: [(s["endpoint"], s["stash_id"]) for s in row["stash_ids"]] for tid, row in rows.items()}


def make_some_ambiguous(servers: Servers) -> None:
    """Add StashDB tags that make two unambiguous local tags ambiguous: an alias naming one, a case twin of another."""
    before = tag_rows(servers)
    plan = oracle(list(before.values()), remote_tags(servers), servers.library.endpoint)
    unique = [(tid, ids[0]) for tid, (reason, ids) in sorted(plan.items()) if reason == "name"]
    pool = servers.library.stashdb["tags"]
    first = before[unique[0][0]]["name"]
    pool["ambiguous-alias"] = {"id": "ambiguous-alias", "name": "Ambiguity Maker", "aliases": [first.upper()],
                               "deleted": False}
    second, taken = before[unique[1][0]]["name"], pool[unique[1][1]]["name"]
    twin = next(v for v in (second.lower(), second.upper(), second.swapcase()) if v != taken)
    pool["ambiguous-twin"] = {"id": "ambiguous-twin", "name": twin, "aliases": [], "deleted": False}


def prepare_for_linking(servers: Servers) -> Servers:
    """A library that exercises every rule: other boxes' StashIDs to keep and ambiguous tags."""
    link_others_elsewhere(servers)
    make_some_ambiguous(servers)
    return servers
