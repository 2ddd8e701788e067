"""A second stash-box for a generated library: its own StashDB world, links and tag StashIDs.

``add_second_box(library, endpoint, seed)`` links a share of the library's scenes (both scenes
already linked to the first box and unlinked ones) to scenes of a new stash-box world, and gives
that world tags of every kind the matcher knows:

  name      a local tag's name (in another ASCII case)
  alias     a local tag's alias
  link      linked to a local tag by a StashID for the second endpoint (its name matches nothing)
  foreign   its id equals a local tag's StashID for the FIRST box and its name matches nothing:
            it must stay unmatched on the second box (matching is per endpoint)
  unmatched nothing local corresponds

Half of the linked scenes carry their local fingerprints on the second box, half none (found by id
only). The returned dict is the second box's world for ``FakeStashDB``.
"""

from __future__ import annotations

import random

from tests.fakes.library import Library

BOX_SCENES_SHARE = 0.4


def _uuid(rng: random.Random) -> str:
    """A version-4 UUID string from the seeded rng."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _box_tags(library: Library, endpoint: str, rng: random.Random) -> list[dict]:
    """The second box's tag pool, updating local tags with StashIDs for the second endpoint."""
    world = library.world
    local = sorted(world.table("tag").values(), key=lambda t: t["id"])
    tags: list[dict] = []

    def new(name: str, tag_id: str | None = None) -> dict:
        tag = {"id": tag_id or _uuid(rng), "name": name, "aliases": [], "deleted": False}
        tags.append(tag)
        return tag

    for row in rng.sample(local, max(1, len(local) // 4)):
        new(row["name"].swapcase())
    for row in [r for r in local if r["aliases"]][:max(1, len(local) // 10)]:
        new(row["aliases"][0].upper())
    for row in rng.sample(local, max(1, len(local) // 10)):
        tag = new(f"Second Box Only {row['id']}")
        world.update_entity("tag", row["id"], stash_ids=list(row["stash_ids"]) + [
            {"endpoint": endpoint, "stash_id": tag["id"]}])
    for row in [r for r in local if any(s["endpoint"] == library.endpoint for s in r["stash_ids"])][:3]:
        first_box_id = next(s["stash_id"] for s in row["stash_ids"] if s["endpoint"] == library.endpoint)
        new(f"Foreign Link {row['id']}", tag_id=first_box_id)
    for k in range(max(3, len(local) // 10)):
        new(f"Nothing Local {k}")
    return tags


def add_second_box(library: Library, endpoint: str, seed: int = 1) -> dict:
    """Link a share of the scenes to a new stash-box world; return that world."""
    rng = random.Random(seed)
    world = library.world
    tags = _box_tags(library, endpoint, rng)
    box_world: dict = {"scenes": {}}
    scene_ids = sorted(world.table("scene"))
    for scene_id in rng.sample(scene_ids, round(BOX_SCENES_SHARE * len(scene_ids))):
        row = world.get("scene", scene_id)
        box_id = _uuid(rng)
        fingerprints = []
        if rng.random() < 0.5:
            fingerprints = [{"algorithm": fp["type"].upper(), "hash": fp["value"], "duration": 60}
                            for file in row["files"] for fp in file["fingerprints"] if fp["type"] != "md5"]
        box_world["scenes"][box_id] = {"id": box_id, "title": f"Box scene {scene_id}", "deleted": False,
                                       "tags": rng.sample(tags, rng.randint(0, min(8, len(tags)))),
                                       "fingerprints": fingerprints}
        world.update_entity("scene", scene_id, stash_ids=list(row["stash_ids"]) + [
            {"endpoint": endpoint, "stash_id": box_id}])
    return box_world
