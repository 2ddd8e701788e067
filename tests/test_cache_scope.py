"""Runs limited to some entity types (``entities``), in process and through the entry point."""

from __future__ import annotations

import sqlite3

import pytest

from tag_manager import parse_command_line
from tagman_base.errors import SettingsError
from tagman_mirror.entities import parse_entities
from tagman_mirror.runs import cache_full_sync, cache_smart_sync
from tests.conftest import Crash, CrashingClient, operations, read_rows, run_plugin, stash_input, types_of
from tests.mirror_oracle import assert_mirror_equals, derived_tables, expected_tables, fresh_full, mirror_tables
from tagman_mirror.entities import ENTITY_TYPES


def pending_full_types(db) -> list[str]:
    """Types of an interrupted full sync, in sync order."""
    pending = {r[0] for r in read_rows(db, "SELECT entity_type FROM sync_state WHERE full_run_pending")}
    return [t for t in ENTITY_TYPES if t in pending]


def test_parse_entities_orders_and_validates():
    assert parse_entities("tags, Performers") == ("tags", "performers")
    assert parse_entities(["scene", "studios"]) == ("studios", "scenes")
    assert parse_entities("") == parse_entities(None) == ()
    with pytest.raises(SettingsError, match="'actors'.*studios,tags,performers,groups,galleries,scenes,images"):
        parse_entities("tags,actors")


def test_unknown_entity_stops_the_run_before_any_request(stash, db, fake):
    with pytest.raises(SettingsError, match="Allowed: studios,tags"):
        cache_smart_sync(stash, db, entities="tags,movies")
    assert fake.count() == 0


def test_a_scoped_run_touches_only_the_named_types(stash, world, db, fake, clock, tmp_path):
    cache_full_sync(stash, db)
    before = mirror_tables(db)
    cursors = dict(read_rows(db, "SELECT entity_type, cursor FROM sync_state"))
    clock.tick(60)
    world.update_entity("scene", 4, title="left for later")
    world.update_entity("performer", 2, tag_ids=[6, 7], name="Retagged")
    world.update_entity("tag", 3, description="described")
    fake.clear_log()
    result = cache_smart_sync(stash, db, entities="performers,tags")
    assert types_of(operations(fake)) == {"tags", "performers"}
    assert result.entities == ("tags", "performers") and set(result.per_type) == {"tags", "performers"}
    assert result.per_type["performers"].updated == 1 and result.per_type["tags"].updated == 1
    after, expected = mirror_tables(db), expected_tables(world)
    for table in ("tags", "tag_parents", "performers", "performer_tags"):
        assert after[table] == expected[table], table
    for table in ("studios", "groups", "galleries", "scenes", "images", "scene_tags", "scene_files", "image_tags"):
        assert after[table] == before[table], table  # other types are left as they are
    new_cursors = dict(read_rows(db, "SELECT entity_type, cursor FROM sync_state"))
    assert {t for t in cursors if cursors[t] != new_cursors[t]} == {"tags", "performers"}
    assert read_rows(db, "SELECT entities FROM sync_runs ORDER BY id DESC LIMIT 1") == [("tags,performers",)]
    # scene inherited tags depend on performers: recomputed although scenes were not synced
    inherited = derived_tables(db)["scene_inherited_tags"]
    scenes_of_2 = {r[0] for r in after["scene_performers"] if r[1] == 2}
    assert scenes_of_2 and {(s, t) for s in scenes_of_2 for t in (6, 7)} <= {(r[0], r[1]) for r in inherited
                                                                             if r[2] == "performer" and r[3] == 2}
    cache_smart_sync(stash, db)  # the rest follows on the next unscoped run
    assert_mirror_equals(db, world)
    assert derived_tables(db) == derived_tables(fresh_full(stash, tmp_path, "ref"))


def test_a_scoped_full_sync_reads_only_its_types(stash, world, db, fake, clock, tmp_path):
    cache_full_sync(stash, db)
    clock.tick(5)
    world.update_entity("gallery", 1, performer_ids=[1, 2], tag_ids=[3])
    world.update_entity("image", 2, title="not yet")
    fake.clear_log()
    result = cache_full_sync(stash, db, entities=["galleries"])
    assert types_of(operations(fake)) == {"galleries"}
    assert result.per_type["galleries"].updated == 1
    assert result.per_type["galleries"].unchanged == len(world.table("gallery")) - 1
    stamps = dict(read_rows(db, "SELECT entity_type, last_full_sync FROM sync_state"))
    cache_smart_sync(stash, db)
    assert_mirror_equals(db, world)
    assert derived_tables(db) == derived_tables(fresh_full(stash, tmp_path, "ref"))
    assert stamps["galleries"] >= stamps["scenes"]


def test_an_interrupted_scoped_full_sync_resumes_in_a_later_full_sync(fake, world, db, stash, clock):
    cache_full_sync(stash, db)
    clock.tick(5)
    world.update_entity("scene", 1, title="during the crash")
    world.update_entity("tag", 1, name="Renamed during the crash")
    with pytest.raises(Crash):
        cache_full_sync(CrashingClient(fake.url, 6), db, per_page=5, entities="tags,scenes")
    assert pending_full_types(db) == ["tags", "scenes"]
    cache_full_sync(stash, db, per_page=5, entities="scenes")
    assert pending_full_types(db) == ["tags"]
    assert read_rows(db, "SELECT full_next_page > 1 FROM sync_state WHERE entity_type = 'tags'") == [(1,)]
    fake.clear_log()
    cache_full_sync(stash, db, per_page=5)
    tag_pages = [v["filter"]["page"] for op, v in fake.requests() if op == "TagManagerCacheTagsPage"]
    assert tag_pages and tag_pages[0] > 1  # resumed where the interrupted run stopped
    assert pending_full_types(db) == []
    assert_mirror_equals(db, world)


def test_entities_argument_limits_the_run(small_servers, tmp_path):
    assert run_plugin(stash_input(small_servers, tmp_path, "cache_full_sync")).returncode == 0
    world = small_servers.library.world
    scene, performer = min(world.table("scene")), min(world.table("performer"))
    world.update_entity("scene", scene, title="scene edit left for later")
    world.update_entity("performer", performer, name="Renamed Performer")
    run = run_plugin(stash_input(small_servers, tmp_path, "cache_smart_sync", entities="performers,tags"))
    assert run.returncode == 0, run.stderr
    assert run.document["output"]["entities"] == ["tags", "performers"]
    with sqlite3.connect(tmp_path / "data" / "stash_cache.sqlite3") as conn:
        assert conn.execute("SELECT name FROM performers WHERE id = ?", (performer,)).fetchone()[0] == "Renamed Performer"
        assert conn.execute("SELECT title FROM scenes WHERE id = ?", (scene,)).fetchone()[0] != "scene edit left for later"


def test_unknown_entity_name_is_a_clear_error(small_servers, tmp_path):
    run = run_plugin(stash_input(small_servers, tmp_path, "cache_full_sync", entities="scenes,movies2"))
    assert run.returncode == 1 and "movies2" in run.document["error"] and "performers" in run.document["error"]
    assert not (tmp_path / "data" / "stash_cache.sqlite3").exists()


def test_command_line_scope_and_schedule_options():
    invocation = parse_command_line(["cache_watch", "--stash-url", "http://nas:9999", "--entities", "tags",
                                     "--full-every", "7d", "--interval", "60"])
    assert invocation.args == {"mode": "cache_watch", "entities": "tags", "full_every": "7d", "interval": "60"}
