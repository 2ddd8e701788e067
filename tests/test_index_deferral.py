"""A first fill builds each type's indexes once at the end of its read; a killed one gets them back on the next run."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from tagman_base.sqlite_util import atomic
from tagman_mirror import schema
from tagman_mirror.cache_file import open_cache
from tagman_mirror.runs import cache_full_sync
from tests.conftest import run_plugin, start_servers, stash_input
from tests.kill_harness import kill_when, start_plugin
from tests.mirror_oracle import assert_mirror_equals

SCENE_INDEXES = {"scenes_updated_epoch", "scenes_studio_id", "scene_files_path", "scene_files_phash",
                 "scene_tags_tag_id", "stash_ids_stash_id"}


def indexes(db) -> set[str]:
    """Names of the secondary indexes the file has."""
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}


def deferred(db) -> dict[str, str]:
    """The indexes a first fill dropped and has not built again: name -> SQL."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT key, value FROM cache_meta WHERE key LIKE 'deferred_index:%'").fetchall()
    return {key.split(":", 1)[1]: sql for key, sql in rows}


def fresh_signature(tmp_path) -> list:
    conn = open_cache(tmp_path / "fresh" / "c.sqlite3")
    try:
        return schema.schema_signature(conn)
    finally:
        conn.close()


def signature(db) -> list:
    with sqlite3.connect(db) as conn:
        return schema.schema_signature(conn)


def test_a_first_fill_reads_without_the_types_indexes_and_builds_them_at_the_end(stash, db, world, fake, tmp_path):
    seen = []

    def look_while_scenes_are_read(operation, _variables):
        if operation == "TagManagerCacheScenesPage":
            seen.append((indexes(db), deferred(db)))

    fake.before_request(look_while_scenes_are_read)
    cache_full_sync(stash, db)
    present, kept = seen[0]
    assert not present & SCENE_INDEXES and SCENE_INDEXES <= set(kept)
    assert {"tags_name", "performers_name"} <= present  # types read earlier have theirs again
    assert signature(db) == fresh_signature(tmp_path) and deferred(db) == {}
    assert_mirror_equals(db, world)

    seen.clear()
    world.update_entity("scene", 3, title="second full sync")
    cache_full_sync(stash, db)  # the tables are not empty: indexes stay
    assert seen and all(SCENE_INDEXES <= present and not kept for present, kept in seen)
    assert_mirror_equals(db, world)


@pytest.mark.parametrize("rerun", ["cache_full_sync", "cache_smart_sync"])
def test_a_fill_killed_without_its_indexes_gets_them_back_on_the_next_run(tmp_path, rerun):
    servers = start_servers(scenes=60, seed=5, images=80, galleries=8)
    db = tmp_path / "data" / "stash_cache.sqlite3"
    reached, release = threading.Event(), threading.Event()

    def hold_the_images_page(operation, _variables):
        if operation == "TagManagerCacheImagesPage":
            reached.set()
            release.wait(30)

    try:
        servers.stash.before_request(hold_the_images_page)
        assert kill_when(start_plugin(stash_input(servers, tmp_path, "cache_full_sync")), reached.is_set)
        release.set()
        servers.stash.clear_before_request()
        assert {"images_updated_epoch", "image_tags_tag_id", "image_files_path"} <= set(deferred(db))
        assert "images_updated_epoch" not in indexes(db)
        assert run_plugin(stash_input(servers, tmp_path, rerun)).returncode == 0
        assert deferred(db) == {}
        assert signature(db) == fresh_signature(tmp_path)
        assert_mirror_equals(db, servers.library.world)
    finally:
        servers.stash.stop()
        servers.stashdb.stop()


def test_migrations_find_every_index_in_place(tmp_path, monkeypatch):
    path = tmp_path / "c.sqlite3"
    conn = open_cache(path)
    with atomic(conn):
        schema.defer_indexes(conn, ["scenes"])
    conn.close()
    later = (schema.SCHEMA_VERSION + 1, "a later version that rebuilds an index",
             ["DROP INDEX scenes_studio_id", "CREATE INDEX scenes_studio_id ON scenes (studio_id)"])
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, later])
    conn = sqlite3.connect(path, isolation_level=None)
    schema.enable_writes(conn)
    assert schema.migrate(conn, target=schema.SCHEMA_VERSION + 1) == schema.SCHEMA_VERSION
    assert {"scenes_updated_epoch", "scenes_studio_id"} <= {
        r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    conn.close()
    assert deferred(path) == {}
