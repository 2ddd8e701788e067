"""Soft retention: vanished entities kept with deleted_at, revived, and purged after their days."""

from __future__ import annotations

import sqlite3

from tagman_mirror.results import CacheOptions
from tagman_mirror.runs import cache_full_sync, cache_smart_sync, last_run_type_counts
from tests.conftest import read_rows, run_plugin, stash_input
from tests.mirror_oracle import assert_mirror_equals, derived_tables, fresh_full
from tests.mirror_oracle import assert_live_equals
from tests.conftest import SCENE_HISTORY
from tests.conftest import LAST_RUN_CHANGES


SOFT = CacheOptions(soft_delete=True)


def test_soft_delete_keeps_revives_and_purges(stash, world, db, clock, tmp_path):
    cache_full_sync(stash, db, options=SOFT, clock=clock)
    scene3_tags = read_rows(db, "SELECT tag_id FROM scene_tags WHERE scene_id = 3")
    clock.tick(60)
    world.delete_entity("scene", 3)
    world.delete_entity("performer", 2)
    world.delete_entity("tag", 6)
    result = cache_smart_sync(stash, db, options=SOFT, clock=clock)
    assert result.per_type["scenes"].deleted == 1 and result.per_type["performers"].deleted == 1
    assert result.per_type["scenes"].soft_deleted == 1
    assert read_rows(db, "SELECT deleted_at IS NOT NULL FROM scenes WHERE id = 3") == [(1,)]
    assert read_rows(db, "SELECT tag_id FROM scene_tags WHERE scene_id = 3") == scene3_tags  # links kept
    assert read_rows(db, "SELECT count(*) FROM live_scenes WHERE id = 3") == [(0,)]
    assert_live_equals(db, world)
    hard = fresh_full(stash, tmp_path, "hard")
    assert derived_tables(db) == derived_tables(hard)
    counts = last_run_type_counts(sqlite3.connect(db))
    assert counts["scenes"]["soft_deleted"] == counts["tags"]["soft_deleted"] == 1
    assert counts["scenes"]["deleted"] == 1 and counts["studios"]["deleted"] == 0

    # still idle afterwards: soft-deleted rows do not upset the count comparisons
    assert cache_smart_sync(stash, db, options=SOFT, clock=clock).rows_written == 0

    # undo: Stash has scene 3 again
    clock.tick(60)
    world.add_entity("scene", id=3, title="Back again", tag_ids=[1])
    result = cache_smart_sync(stash, db, options=SOFT, clock=clock)
    assert result.per_type["scenes"].revived == 1 and result.per_type["scenes"].created == 0
    assert read_rows(db, "SELECT deleted_at, title FROM scenes WHERE id = 3") == [(None, "Back again")]
    assert ("revived", None) in [(h[1], h[2]) for h in read_rows(db, SCENE_HISTORY, {"id": 3})]
    assert_live_equals(db, world)

    # purge after cacheSoftDeleteDays (here the default 14)
    clock.tick(13 * 86400)
    assert cache_smart_sync(stash, db, options=SOFT, clock=clock).per_type["performers"].purged == 0
    clock.tick(2 * 86400)
    result = cache_smart_sync(stash, db, options=SOFT, clock=clock)
    assert result.per_type["performers"].purged == 1 and result.per_type["tags"].purged == 1
    assert read_rows(db, "SELECT count(*) FROM performers WHERE deleted_at IS NOT NULL") == [(0,)]
    assert read_rows(db, "SELECT count(*) FROM performer_tags WHERE performer_id = 2") == [(0,)]
    assert ("performers", 2, "purged") in {r[:3] for r in read_rows(db, LAST_RUN_CHANGES)}
    assert_mirror_equals(db, world)
    assert derived_tables(db) == derived_tables(hard)


def test_zero_days_keeps_soft_deleted_forever_and_switching_off_purges(stash, world, db, clock):
    keep = CacheOptions(soft_delete=True, soft_delete_days=0)
    cache_full_sync(stash, db, options=keep, clock=clock)
    world.delete_entity("scene", 2)
    cache_smart_sync(stash, db, options=keep, clock=clock)
    clock.tick(1000 * 86400)
    cache_smart_sync(stash, db, options=keep, clock=clock)
    assert read_rows(db, "SELECT count(*) FROM scenes WHERE deleted_at IS NOT NULL") == [(1,)]
    result = cache_smart_sync(stash, db, clock=clock)  # setting off: behaviour as without soft retention
    assert result.per_type["scenes"].purged == 1
    assert_mirror_equals(db, world)


def test_soft_delete_setting_through_stdin(small_servers, tmp_path):
    small_servers.library.world.plugin_settings["tagManager"] = {"cacheSoftDelete": True}
    assert run_plugin(stash_input(small_servers, tmp_path, "cache_full_sync")).returncode == 0
    gone = max(small_servers.library.world.table("scene"))
    small_servers.library.world.delete_entity("scene", gone)
    assert run_plugin(stash_input(small_servers, tmp_path, "cache_smart_sync")).returncode == 0
    with sqlite3.connect(tmp_path / "data" / "stash_cache.sqlite3") as conn:
        assert conn.execute("SELECT deleted_at IS NOT NULL FROM scenes WHERE id = ?", (gone,)).fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM live_scenes WHERE id = ?", (gone,)).fetchone() == (0,)
