"""One smart (or incremental) sync makes the mirror equal to Stash after changes no updated_at reveals."""

from __future__ import annotations

import sqlite3

import pytest
from graphql import parse, validate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagman_mirror import queries, signals
from tagman_mirror.entities import SPEC_BY_TABLE, SPECS
from tagman_mirror.runs import cache_full_sync, cache_incremental_sync, cache_smart_sync
from tagman_mirror.store import _remove_rows
from tests.conftest import client_for, SMALL, Clock
from tests.fakes.fake_stash import FakeStash, fake_schema
from tests.fakes.library import generate_library
from tests.mirror_oracle import assert_mirror_equals

SYNCS = {"smart": cache_smart_sync, "incremental": cache_incremental_sync}
TINY = dict(scenes=16, images=12, tags=10, performers=6, studios=3, groups=2, galleries=4)


def first_file(world, etype: str, eid: int) -> int:
    """The id of an entity's first file."""
    return world.get(etype, eid)["files"][0]["id"]


@pytest.fixture
def only_signals(monkeypatch):
    """Shrink the rolling re-verification to one entity per type, so that a test shows its own check at work."""
    monkeypatch.setattr(signals, "VERIFY_SLICE", 1)


def synced_an_hour_ago(stash, db, clock):
    """A mirror after a full sync, with the clock moved on (later edits get a later second)."""
    cache_full_sync(stash, db)
    clock.tick(3600)


# ------------------------------------------------------------------------------------------
# queries and pure helpers


def test_signal_queries_are_in_the_registry_the_conformance_test_validates():
    documents = (queries.SIGNALS, *queries.FILES_PAGE.values(), queries.PHASH_MISSING_IDS)
    assert set(documents) <= set(queries.REGISTRY.values())
    for query in documents:  # the fake implements every filter they use
        assert not validate(fake_schema(), parse(query)), query


@pytest.mark.parametrize("count, runs", [(0, 1), (40, 1), (1000, 1), (10_000, 10), (100_000, 100), (200_000, 200)])
def test_rolling_verification_period(count, runs):
    assert signals.VERIFY_SLICE == 1000  # the same slice at any size: an idle run costs the same in any library
    assert signals.runs_to_verify_all(count) == runs


def test_range_gone_respects_the_slice_bounds():
    assert signals.verified_range_gone([1, 3, 5, 7, 9], [3, 7], after=2, upper=7) == [5]
    assert signals.verified_range_gone([1, 3, 5, 7, 9], [3, 7], after=2, upper=None) == [5, 9]


# ------------------------------------------------------------------------------------------
# one kind of change each: a single sync makes the mirror equal again


@pytest.mark.parametrize("mode", sorted(SYNCS))
def test_tag_merge_reaches_the_destination_aliases_stash_ids_and_parents(mode, stash, world, db, clock, only_signals):
    synced_an_hour_ago(stash, db, clock)
    world.update_entity("tag", 3, parent_ids=[1], stash_ids=[("https://stashdb.org/graphql", "merged-away")])
    cache_smart_sync(stash, db)
    clock.tick(60)
    world.merge_tags([3, 4], 5)
    SYNCS[mode](stash, db)
    assert_mirror_equals(db, world)


@pytest.mark.parametrize("mode", sorted(SYNCS))
def test_file_move_and_rename(mode, stash, world, db, clock, only_signals):
    synced_an_hour_ago(stash, db, clock)
    world.move_file(first_file(world, "scene", 3), "/moved/scene_3.mp4")
    world.move_file(first_file(world, "image", 4), "/moved/image_4.jpg")
    zipped = min(r["id"] for r in world.tables()["gallery"] if r["files"])
    world.move_file(first_file(world, "gallery", zipped), "/moved/gallery.zip")
    SYNCS[mode](stash, db)
    assert_mirror_equals(db, world)


@pytest.mark.parametrize("mode", sorted(SYNCS))
def test_file_modification(mode, stash, world, db, clock, only_signals):
    synced_an_hour_ago(stash, db, clock)
    world.modify_file(first_file(world, "scene", 8), size=1234, oshash="ab" * 8)
    world.modify_file(first_file(world, "image", 9), size=4321)
    SYNCS[mode](stash, db)
    assert_mirror_equals(db, world)


@pytest.mark.parametrize("mode", sorted(SYNCS))
def test_phash_generation(mode, stash, world, db, clock, only_signals):
    old = "2024-05-01T00:00:00Z"  # scanned long ago: outside every updated_at window
    sid = world.add_entity("scene", title="scanned", created_at=old, updated_at=old,
                           files=[{"path": "/new/x.mp4", "size": 3, "duration": 1.0, "updated_at": old}])
    synced_an_hour_ago(stash, db, clock)
    world.set_phash(first_file(world, "scene", sid), "1234abcd")
    SYNCS[mode](stash, db)
    assert_mirror_equals(db, world)


def test_phash_count_is_stored_until_scenes_are_written_and_a_change_after_it_is_found(stash, world, db, clock,
                                                                                       only_signals, monkeypatch):
    old = "2024-05-01T00:00:00Z"
    sid = world.add_entity("scene", title="scanned", created_at=old, updated_at=old,
                           files=[{"path": "/new/y.mp4", "size": 3, "duration": 1.0, "updated_at": old}])
    synced_an_hour_ago(stash, db, clock)
    cache_smart_sync(stash, db)  # counts once and stores the count
    counted = []
    monkeypatch.setattr(signals, "_mirror_phash_missing",
                        lambda conn, real=signals._mirror_phash_missing: counted.append(1) or real(conn))
    cache_smart_sync(stash, db)
    assert counted == []  # idle: the stored count answers
    world.set_phash(first_file(world, "scene", sid), "5678abcd")  # no updated_at moves
    cache_smart_sync(stash, db)
    assert counted  # the count no longer matched Stash: counted, and the scene re-read
    assert_mirror_equals(db, world)
    world.update_entity("scene", 2, title="a scene written")  # any scene write forgets the stored count
    cache_smart_sync(stash, db)
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT phash_missing FROM mirror_signals WHERE entity_type = 'scenes'").fetchone()[0]
    assert stored == len(signals._mirror_phash_missing(sqlite3.connect(db)))


@pytest.mark.parametrize("mode", sorted(SYNCS))
def test_scene_merge(mode, stash, world, db, clock, only_signals):
    synced_an_hour_ago(stash, db, clock)
    world.merge_scenes([2, 3], 1)
    SYNCS[mode](stash, db)
    assert_mirror_equals(db, world)


@pytest.mark.parametrize("mode", sorted(SYNCS))
def test_performer_merge(mode, stash, world, db, clock, only_signals):
    synced_an_hour_ago(stash, db, clock)
    world.merge_performers([2, 3], 1)
    SYNCS[mode](stash, db)
    assert_mirror_equals(db, world)


def test_scene_assign_file_is_found_by_the_rolling_verification(stash, world, db, clock):
    synced_an_hour_ago(stash, db, clock)
    world.assign_scene_file(30, first_file(world, "scene", 2))
    cache_smart_sync(stash, db)  # a small library is re-verified whole on every run
    assert_mirror_equals(db, world)


def test_paging_hole_of_a_full_sync(stash, world, db, clock, fake):
    changed = []

    def delete_low_create_new(operation, variables):
        page = ((variables or {}).get("filter") or {}).get("page")
        if operation == "TagManagerCacheScenesPage" and page == 3 and not changed:
            changed.append(True)
            world.delete_entity("scene", 1)
            world.add_entity("scene", title="created while paging")

    fake.before_request(delete_low_create_new)
    cache_full_sync(stash, db, per_page=7)
    fake.clear_before_request()
    assert changed
    assert_mirror_equals(db, world)


def test_paging_hole_is_repaired_by_one_smart_sync(stash, world, db, clock, fake):
    cache_full_sync(stash, db)
    hidden = 12
    with sqlite3.connect(db) as conn:  # the mirror as a full sync with a hole leaves it
        conn.execute("ATTACH DATABASE ':memory:' AS cache_writer")
        _remove_rows(conn, SPEC_BY_TABLE["scenes"], [hidden])
    world.delete_entity("scene", 1)  # gone from Stash, still mirrored: the counts agree
    cache_smart_sync(stash, db)
    assert_mirror_equals(db, world)


# ------------------------------------------------------------------------------------------
# cost


def test_idle_smart_sync_adds_one_request_and_no_mirror_rows(stash, world, db, fake, clock):
    synced_an_hour_ago(stash, db, clock)
    world.move_file(first_file(world, "scene", 5), "/moved/5.mp4")
    cache_smart_sync(stash, db)
    fake.clear_log()
    result = cache_smart_sync(stash, db)
    assert result.stash_requests == fake.count() <= 2 * len(SPECS) + 1
    assert fake.count("TagManagerCacheSignals") == 1
    assert result.upserted == result.deleted == 0 and all(s.skipped for s in result.per_type.values())
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM sync_changes WHERE run_id = ?", (result.run_id,)).fetchone()[0] == 0


def test_a_run_without_scenes_images_and_galleries_sends_no_signals_request(stash, world, db, fake, clock):
    synced_an_hour_ago(stash, db, clock)
    fake.clear_log()
    cache_smart_sync(stash, db, entities="performers,tags")
    assert fake.count("TagManagerCacheSignals") == 0


def test_rolling_verification_covers_a_larger_type_within_the_stated_runs(tmp_path, clock, monkeypatch):
    monkeypatch.setattr(signals, "VERIFY_SLICE", 100)
    library = generate_library(seed=3, clock=clock, **{**SMALL, "scenes": 250})
    world = library.world
    path = tmp_path / "cache.sqlite3"
    with FakeStash(world) as server:
        client = client_for(server.url)
        cache_full_sync(client, path)
        clock.tick(60)
        for sid in (7, 120, 249):
            world.set_phash(first_file(world, "scene", sid), "feed")  # overwrite: same is_missing count
        world.assign_scene_file(3, first_file(world, "scene", 200))
        runs = signals.runs_to_verify_all(250)
        assert runs == 3
        for _ in range(runs):
            cache_smart_sync(client, path)
        assert_mirror_equals(path, world)


# ------------------------------------------------------------------------------------------
# everything at once


CHANGES = st.lists(st.sampled_from(["edit", "tag_merge", "scene_merge", "performer_merge", "move", "modify",
                                    "phash", "delete", "create", "image_move", "assign", "tag_delete"]),
                  min_size=1, max_size=6)


def apply_change(world, kind: str, n: int) -> None:
    """Apply one kind of change to the world (``n`` varies the target)."""
    scenes = sorted(r["id"] for r in world.tables()["scene"])
    tags = sorted(r["id"] for r in world.tables()["tag"])
    performers = sorted(r["id"] for r in world.tables()["performer"])
    with_files = [s for s in scenes if world.get("scene", s)["files"]]
    pick = lambda ids, k=0: ids[(n + k) % len(ids)]  # noqa: E731
    if kind == "edit":
        world.update_entity("scene", pick(scenes), title=f"edit {n}")
    elif kind == "tag_merge" and len(tags) > 2:
        world.merge_tags([pick(tags)], pick(tags, 1) if pick(tags, 1) != pick(tags) else pick(tags, 2))
    elif kind == "scene_merge" and len(scenes) > 2:
        world.merge_scenes([pick(scenes)], pick(scenes, 1))
    elif kind == "performer_merge" and len(performers) > 2:
        world.merge_performers([pick(performers)], pick(performers, 1))
    elif kind == "move" and with_files:
        world.move_file(first_file(world, "scene", pick(with_files)), f"/moved/{n}.mp4")
    elif kind == "modify" and with_files:
        world.modify_file(first_file(world, "scene", pick(with_files)), size=n + 1, oshash=f"{n:016x}")
    elif kind == "phash" and with_files:
        world.set_phash(first_file(world, "scene", pick(with_files)), format(n + 7, "x"))
    elif kind == "delete":
        world.delete_entity("scene", pick(scenes))
    elif kind == "create":
        world.add_entity("scene", title=f"new {n}", files=[{"path": f"/new/{n}.mp4", "size": 1, "duration": 1.0}])
    elif kind == "assign" and len(with_files) > 1:  # a tiny library is re-verified whole on every run
        world.assign_scene_file(pick(scenes, 1), first_file(world, "scene", pick(with_files)))
    elif kind == "tag_delete" and len(tags) > 2:
        world.delete_entity("tag", pick(tags))
    elif kind == "image_move":
        world.move_file(first_file(world, "image", 1 + n % 12), f"/moved/img_{n}.jpg")


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=CHANGES, seed=st.integers(0, 1000), mode=st.sampled_from(sorted(SYNCS)))
def test_any_mix_of_changes_needs_one_sync(changes, seed, mode, tmp_path_factory):
    clock = Clock()
    world = generate_library(seed=7, clock=clock, **TINY).world
    path = tmp_path_factory.mktemp("mix") / "cache.sqlite3"
    with FakeStash(world) as server:
        client = client_for(server.url)
        cache_full_sync(client, path)
        clock.tick(3600)
        for index, kind in enumerate(changes):
            apply_change(world, kind, seed + index * 13)
            clock.tick(1)
        SYNCS[mode](client, path)
        assert_mirror_equals(path, world)
