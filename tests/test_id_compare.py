"""The id comparison behind deletions walks Stash's ids in keyset pages: exact, and safe while Stash changes."""

from __future__ import annotations

import sqlite3

import pytest

from tagman_mirror import id_compare
from tagman_mirror.runs import cache_full_sync, cache_smart_sync
from tests.mirror_oracle import assert_mirror_equals


@pytest.fixture
def small_pages(monkeypatch):
    monkeypatch.setattr(id_compare, "ID_PAGE", 7)  # the SMALL library's 40 scenes, 50 images: several pages


def listings(fake, operation: str) -> list[dict]:
    return [variables for op, variables in fake.requests() if op == operation]


def test_full_sync_compares_ids_in_keyset_pages(small_pages, stash, db, world, fake):
    cache_full_sync(stash, db)
    pages = [v for v in listings(fake, "TagManagerCacheImagesIds") if v["window"]]
    assert [p["window"]["id"]["value"] for p in pages][:2] == [0, 7]
    assert len(pages) == len(world.table("image")) // 7 + 1
    assert all(p["filter"]["per_page"] == 7 for p in pages)
    assert_mirror_equals(db, world)


def test_deletions_and_creations_in_every_page_are_found(small_pages, stash, db, world, clock):
    cache_full_sync(stash, db)
    clock.tick(60)
    for image_id in (1, 8, 15, 22, 49, 50):  # first, page edges, last
        world.delete_entity("image", image_id)
    world.add_entity("image", title="new at the end")
    world.delete_entity("scene", 3)
    cache_smart_sync(stash, db)
    assert_mirror_equals(db, world)


def test_a_deletion_while_paging_never_removes_another_entity(small_pages, stash, db, world, fake, clock):
    cache_full_sync(stash, db)
    clock.tick(60)
    world.delete_entity("image", 30)  # the count differs: the smart sync compares the ids
    deleted_meanwhile = []

    def delete_below_the_next_page(operation, variables):
        window = (variables or {}).get("window") or {}
        if operation == "TagManagerCacheImagesIds" and window.get("id", {}).get("value") == 14:
            world.delete_entity("image", 5)  # below the offset: LIMIT/OFFSET paging would skip a row now
            deleted_meanwhile.append(5)

    fake.before_request(delete_below_the_next_page)
    cache_smart_sync(stash, db)
    fake.clear_before_request()
    assert deleted_meanwhile == [5]
    # every image Stash has is mirrored; image 5, deleted after its page was read, still is
    assert mirrored_images(db) == set(world.table("image")) | {5}
    cache_smart_sync(stash, db)  # the next count comparison finds the one deleted meanwhile
    assert_mirror_equals(db, world)


def mirrored_images(db) -> set[int]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM images WHERE deleted_at IS NULL")}
