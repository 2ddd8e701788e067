"""Only the sync's own connection may write the mirror."""

from __future__ import annotations

import sqlite3

import pytest

from tagman_mirror import schema
from tagman_mirror.cache_file import open_cache, read_cache
from tagman_mirror.runs import cache_full_sync, cache_smart_sync
from tests.mirror_oracle import assert_mirror_equals
from tagman_mirror.results import CacheOptions


def test_plain_connections_cannot_write(stash, world, db):
    cache_full_sync(stash, db)
    conn = sqlite3.connect(db)
    for statement in ("UPDATE scenes SET title = 'hacked'", "DELETE FROM tags",
                      "INSERT INTO scene_tags VALUES (1, 1)", "DELETE FROM sync_state",
                      "UPDATE image_counts SET image_count = 0"):
        with pytest.raises(sqlite3.DatabaseError, match="read-only mirror"):
            conn.execute(statement)
    assert conn.execute("SELECT count(*) FROM scenes").fetchone()[0] == len(world.table("scene"))
    conn.close()
    assert_mirror_equals(db, world)


def test_the_sync_connection_writes_only_with_its_guard_on(tmp_path):
    conn = open_cache(tmp_path / "c.sqlite3")
    conn.execute("INSERT INTO cache_meta VALUES ('k', 'v')")
    schema.disable_writes(conn)
    with pytest.raises(sqlite3.DatabaseError, match="read-only mirror"):
        conn.execute("DELETE FROM cache_meta")
    conn.close()


def test_reading_needs_no_guard(stash, db):
    cache_full_sync(stash, db)
    with read_cache(db) as conn:
        assert conn.execute("SELECT count(*) FROM scenes").fetchone()[0] > 0


def test_soft_retention_keeps_the_write_guard(stash, world, db):
    cache_full_sync(stash, db, options=CacheOptions(soft_delete=True))
    world.delete_entity("scene", 2)
    cache_smart_sync(stash, db, options=CacheOptions(soft_delete=True))
    conn = sqlite3.connect(db)
    for statement in ("UPDATE scenes SET deleted_at = NULL", "DELETE FROM sync_changes",
                      "INSERT INTO sync_changes (run_id, entity_type, entity_id, change) VALUES (1, 'x', 1, 'y')"):
        with pytest.raises(sqlite3.DatabaseError, match="read-only mirror"):
            conn.execute(statement)
    with pytest.raises(sqlite3.DatabaseError):
        conn.execute("DELETE FROM live_scenes")
    assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'view'")} >= set(
        schema.LIVE_VIEWS)
    conn.close()
