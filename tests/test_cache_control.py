"""Steering the cache: entity scope, change accounting, the change log, soft retention and schedules."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

import cache_schema
import local_cache
import mirror_signals
from local_cache import CacheOptions, cache_full_sync, cache_incremental_sync, cache_smart_sync
from settings import Settings
from tests.test_cache_robustness import Crash, CrashingClient
from tests.test_local_cache import (  # noqa: F401 - fixtures
    Clock, assert_mirror_equals, clock, db, derived_tables, expected_tables, fake, fresh_full, lib, mirror_tables,
    stash, world,
)
from tm_errors import SettingsError

SOFT = CacheOptions(soft_delete=True)

# the README's change-log queries, run here as written there
LAST_RUN_CHANGES = """
SELECT entity_type, entity_id, change, field, old_value, new_value FROM sync_changes
WHERE run_id = (SELECT max(id) FROM sync_runs) ORDER BY entity_type, entity_id, field"""
SCENE_HISTORY = """
SELECT r.started, c.change, c.field, c.old_value, c.new_value
FROM sync_changes c JOIN sync_runs r ON r.id = c.run_id
WHERE c.entity_type = 'scenes' AND c.entity_id = :id ORDER BY c.run_id, c.id"""


def rows(db: Path, sql: str, params=()) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def operations(fake) -> set[str]:
    return {op for op, _variables in fake.requests()}


def types_of(ops: set[str]) -> set[str]:
    """Entity types named by the cache's operation names (TagManagerCache<Type><Kind>)."""
    out = set()
    for op in ops:
        for spec in local_cache.SPECS:
            if op.startswith(f"TagManagerCache{spec.operation}"):
                out.add(spec.table)
    return out


def live_mirror(db: Path) -> dict[str, set]:
    """The mirror restricted to entities that are not soft-deleted (and what they own)."""
    with sqlite3.connect(db) as conn:
        live = {t: {r[0] for r in conn.execute(f"SELECT id FROM live_{t}")} for t in cache_schema.ENTITY_TABLES}
    table_type = {t: s.table for s in local_cache.SPECS for t in (*s.links, s.files_table) if t}
    kind_type = {s.kind: s.table for s in local_cache.SPECS}
    out = {}
    for table, content in mirror_tables(db).items():
        if table in live:
            out[table] = {r for r in content if r[0] in live[table]}
        elif table == "stash_ids":
            out[table] = {r for r in content if r[1] in live[kind_type[r[0]]]}
        else:
            out[table] = {r for r in content if r[0] in live[table_type[table]]}
    return out


def assert_live_equals(db: Path, world) -> None:
    expected, actual = expected_tables(world), live_mirror(db)
    for table in expected:
        assert expected[table] == actual[table], table


# ------------------------------------------------------------------------------------------
# parsing and settings


def test_parse_entities_orders_and_validates():
    assert local_cache.parse_entities("tags, Performers") == ("tags", "performers")
    assert local_cache.parse_entities(["scene", "studios"]) == ("studios", "scenes")
    assert local_cache.parse_entities("") == local_cache.parse_entities(None) == ()
    with pytest.raises(SettingsError, match="'actors'.*studios,tags,performers,groups,galleries,scenes,images"):
        local_cache.parse_entities("tags,actors")


def test_unknown_entity_stops_the_run_before_any_request(stash, db, fake):
    with pytest.raises(SettingsError, match="Allowed: studios,tags"):
        cache_smart_sync(stash, db, entities="tags,movies")
    assert fake.count() == 0


@pytest.mark.parametrize("text, expected", [("7d", timedelta(days=7)), ("12h", timedelta(hours=12)),
                                            ("30m", timedelta(minutes=30)), ("1d12h", timedelta(hours=36)),
                                            ("2w", timedelta(days=14)), (" 1.5h ", timedelta(minutes=90))])
def test_parse_duration(text, expected):
    assert local_cache.parse_duration(text) == expected


@pytest.mark.parametrize("text", ["7", "d", "-1d", "0h", "", "7 days", "1x"])
def test_bad_duration_is_a_clear_error(text):
    with pytest.raises(SettingsError, match="7d, 12h|longer than zero"):
        local_cache.parse_duration(text)


def test_cache_settings_defaults_and_parsing():
    assert CacheOptions() == CacheOptions.from_settings(Settings())
    assert CacheOptions() == CacheOptions(change_log_days=30, soft_delete=False, soft_delete_days=14)
    settings = Settings.from_plugin_config({"cacheChangeLogDays": 7, "cacheSoftDelete": True,
                                            "cacheSoftDeleteDays": "0", "cacheDbPath": ""})
    assert CacheOptions.from_settings(settings) == CacheOptions(7.0, True, 0.0)
    assert Settings.from_plugin_config({"cacheChangeLogDays": ""}).cache_change_log_days == 30


@pytest.mark.parametrize("key", ["cacheChangeLogDays", "cacheSoftDeleteDays"])
@pytest.mark.parametrize("raw", [-1, "abc", float("nan"), True, "inf"])
def test_bad_day_settings_name_the_setting(key, raw):
    with pytest.raises(SettingsError, match=key):
        Settings.from_plugin_config({key: raw})


# ------------------------------------------------------------------------------------------
# scope


def test_a_scoped_run_touches_only_the_named_types(stash, world, db, fake, clock, tmp_path):
    cache_full_sync(stash, db)
    before = mirror_tables(db)
    cursors = dict(rows(db, "SELECT entity_type, cursor FROM sync_state"))
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
    new_cursors = dict(rows(db, "SELECT entity_type, cursor FROM sync_state"))
    assert {t for t in cursors if cursors[t] != new_cursors[t]} == {"tags", "performers"}
    assert rows(db, "SELECT entities FROM sync_runs ORDER BY id DESC LIMIT 1") == [("tags,performers",)]
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
    stamps = dict(rows(db, "SELECT entity_type, last_full_sync FROM sync_state"))
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
    assert rows(db, "SELECT value FROM cache_meta WHERE key = 'full_run_pending'") == [("tags,scenes",)]
    cache_full_sync(stash, db, per_page=5, entities="scenes")
    assert rows(db, "SELECT value FROM cache_meta WHERE key = 'full_run_pending'") == [("tags",)]
    assert rows(db, "SELECT full_next_page > 1 FROM sync_state WHERE entity_type = 'tags'") == [(1,)]
    fake.clear_log()
    cache_full_sync(stash, db, per_page=5)
    tag_pages = [v["filter"]["page"] for op, v in fake.requests() if op == "TagManagerCacheTagsPage"]
    assert tag_pages and tag_pages[0] > 1  # resumed where the interrupted run stopped
    assert rows(db, "SELECT value FROM cache_meta WHERE key = 'full_run_pending'") == []
    assert_mirror_equals(db, world)


# ------------------------------------------------------------------------------------------
# change accounting and the change log


def test_counts_and_change_log_match_what_stash_changed(stash, world, db, clock):
    cache_full_sync(stash, db)
    old = {r[0]: r for r in rows(db, "SELECT id, title, updated_at FROM scenes")}
    old_tags = {r[0] for r in rows(db, "SELECT tag_id FROM scene_tags WHERE scene_id = 5")}
    old_perf = rows(db, "SELECT name, updated_at FROM performers WHERE id = 3")[0]
    clock.tick(3600)
    world.update_entity("scene", 5, title="Edited title", tag_ids=[1, 2])
    world.update_entity("scene", 6, title="Only the title")
    new_ids = [world.add_entity("scene", title=f"New {n}") for n in range(2)]
    world.delete_entity("scene", 7)
    world.update_entity("performer", 3, name="Renamed performer")
    result = cache_smart_sync(stash, db)
    scenes, performers = result.per_type["scenes"], result.per_type["performers"]
    assert (scenes.created, scenes.updated, scenes.deleted) == (2, 2, 1)
    assert scenes.unchanged == scenes.fetched - scenes.created - scenes.updated
    assert (performers.created, performers.updated, performers.deleted) == (0, 1, 0)
    for table in ("studios", "tags", "groups", "galleries", "images"):
        stats = result.per_type[table]
        assert stats.created == stats.updated == stats.deleted == 0, table
    assert (result.created, result.updated, result.deleted) == (2, 3, 1)
    s5, s6 = world.get("scene", 5), world.get("scene", 6)
    expected = {
        ("performers", 3, "updated", "name", old_perf[0], "Renamed performer"),
        ("performers", 3, "updated", "updated_at", old_perf[1], world.get("performer", 3)["updated_at"]),
        ("scenes", 5, "updated", "scene_tags", json.dumps(sorted(old_tags - {1, 2})).replace(" ", ""),
         json.dumps(sorted({1, 2} - old_tags)).replace(" ", "")),
        ("scenes", 5, "updated", "title", old[5][1], "Edited title"),
        ("scenes", 5, "updated", "updated_at", old[5][2], s5["updated_at"]),
        ("scenes", 6, "updated", "title", old[6][1], "Only the title"),
        ("scenes", 6, "updated", "updated_at", old[6][2], s6["updated_at"]),
        ("scenes", 7, "deleted", None, None, None),
        *{("scenes", i, "created", None, None, None) for i in new_ids},
    }
    if old_tags == {1, 2}:
        expected = {e for e in expected if e[3] != "scene_tags"}
    assert set(rows(db, LAST_RUN_CHANGES)) == expected
    assert len(rows(db, LAST_RUN_CHANGES)) == len(expected)
    history = rows(db, SCENE_HISTORY, {"id": 5})
    assert {h[2] for h in history} >= {"title", "updated_at"}
    stored = rows(db, "SELECT created, updated, unchanged, deleted, rows_written, per_type FROM sync_runs "
                      "WHERE id = ?", (result.run_id,))[0]
    assert stored[:5] == (2, 3, result.unchanged, 1, result.rows_written)
    assert json.loads(stored[5])["scenes"]["created"] == 2
    output = json.loads(json.dumps(result.as_dict()))
    assert (output["created"], output["updated"], output["per_type"]["scenes"]["deleted"]) == (2, 3, 1)
    assert output["rows_written"] == result.rows_written > 0
    assert "scenes 2+/2~/" in str(result)


def test_link_order_and_refetching_identical_content_rewrite_nothing(stash, world, db, fake):
    cache_full_sync(stash, db)
    result = cache_incremental_sync(stash, db, since="2000-01-01T00:00:00Z")  # refetches every entity
    assert result.fetched > 0 and result.unchanged == result.fetched
    assert result.created == result.updated == result.deleted == 0
    assert rows(db, "SELECT count(*) FROM sync_changes WHERE run_id = ?", (result.run_id,)) == [(0,)]
    # only bookkeeping: last_incremental_sync of each type and mirror_signals' state of its types
    assert result.rows_written <= len(local_cache.SPECS) + len(mirror_signals.SIGNAL_TYPES)
    spec = local_cache.SPEC_BY_TABLE["scenes"]
    item = {"id": "1", "title": "t", "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z",
            "tags": [{"id": "2"}, {"id": "1"}], "performers": [], "files": [], "groups": [], "galleries": [],
            "stash_ids": []}
    shuffled = dict(item, tags=[{"id": "1"}, {"id": "2"}])
    assert local_cache.mirrored_content(spec, item).digest == local_cache.mirrored_content(spec, shuffled).digest


def test_an_idle_smart_sync_writes_no_row(stash, world, db, clock):
    cache_full_sync(stash, db, options=SOFT)
    world.update_entity("scene", 9, title="x")  # leaves something to recheck in every run
    world.delete_entity("scene", 10)            # and a soft-deleted entity
    cache_smart_sync(stash, db, options=SOFT)
    result = cache_smart_sync(stash, db, options=SOFT)
    assert result.rows_written == 0
    assert all(s.skipped for s in result.per_type.values())
    assert rows(db, "SELECT rows_written, created, updated, deleted FROM sync_runs WHERE id = ?",
                (result.run_id,)) == [(0, 0, 0, 0)]
    assert "0 rows written" in str(result)


def test_change_log_is_pruned_after_its_days(stash, world, db, clock):
    options = CacheOptions(change_log_days=30)
    cache_full_sync(stash, db, clock=clock, options=options)
    first_run = rows(db, "SELECT max(run_id) FROM sync_changes")[0][0]
    assert rows(db, "SELECT count(*) FROM sync_changes WHERE run_id = ?", (first_run,))[0][0] > 0
    clock.tick(20 * 86400)
    world.update_entity("scene", 3, title="day 20")
    cache_smart_sync(stash, db, clock=clock, options=options)
    clock.tick(15 * 86400)
    world.update_entity("scene", 4, title="day 35")
    cache_smart_sync(stash, db, clock=clock, options=options)
    kept = {r[0] for r in rows(db, "SELECT DISTINCT run_id FROM sync_changes")}
    assert first_run not in kept and len(kept) == 2
    clock.tick(100 * 86400)
    world.update_entity("scene", 5, title="day 135")
    cache_smart_sync(stash, db, clock=clock, options=CacheOptions(change_log_days=0))  # 0 keeps everything
    assert len({r[0] for r in rows(db, "SELECT DISTINCT run_id FROM sync_changes")}) == 3


# ------------------------------------------------------------------------------------------
# soft retention


def test_soft_delete_keeps_revives_and_purges(stash, world, db, clock, tmp_path):
    cache_full_sync(stash, db, options=SOFT, clock=clock)
    scene3_tags = rows(db, "SELECT tag_id FROM scene_tags WHERE scene_id = 3")
    clock.tick(60)
    world.delete_entity("scene", 3)
    world.delete_entity("performer", 2)
    world.delete_entity("tag", 6)
    result = cache_smart_sync(stash, db, options=SOFT, clock=clock)
    assert result.per_type["scenes"].deleted == 1 and result.per_type["performers"].deleted == 1
    assert result.per_type["scenes"].soft_deleted == 1
    assert rows(db, "SELECT deleted_at IS NOT NULL FROM scenes WHERE id = 3") == [(1,)]
    assert rows(db, "SELECT tag_id FROM scene_tags WHERE scene_id = 3") == scene3_tags  # links kept
    assert rows(db, "SELECT count(*) FROM live_scenes WHERE id = 3") == [(0,)]
    assert_live_equals(db, world)
    hard = fresh_full(stash, tmp_path, "hard")
    assert derived_tables(db) == derived_tables(hard)
    counts = local_cache.last_run_type_counts(sqlite3.connect(db))
    assert counts["scenes"]["soft_deleted"] == counts["tags"]["soft_deleted"] == 1
    assert counts["scenes"]["deleted"] == 1 and counts["studios"]["deleted"] == 0

    # still idle afterwards: soft-deleted rows do not upset the count comparisons
    assert cache_smart_sync(stash, db, options=SOFT, clock=clock).rows_written == 0

    # undo: Stash has scene 3 again
    clock.tick(60)
    world.add_entity("scene", id=3, title="Back again", tag_ids=[1])
    result = cache_smart_sync(stash, db, options=SOFT, clock=clock)
    assert result.per_type["scenes"].revived == 1 and result.per_type["scenes"].created == 0
    assert rows(db, "SELECT deleted_at, title FROM scenes WHERE id = 3") == [(None, "Back again")]
    assert ("revived", None) in [(h[1], h[2]) for h in rows(db, SCENE_HISTORY, {"id": 3})]
    assert_live_equals(db, world)

    # purge after cacheSoftDeleteDays (here the default 14)
    clock.tick(13 * 86400)
    assert cache_smart_sync(stash, db, options=SOFT, clock=clock).per_type["performers"].purged == 0
    clock.tick(2 * 86400)
    result = cache_smart_sync(stash, db, options=SOFT, clock=clock)
    assert result.per_type["performers"].purged == 1 and result.per_type["tags"].purged == 1
    assert rows(db, "SELECT count(*) FROM performers WHERE deleted_at IS NOT NULL") == [(0,)]
    assert rows(db, "SELECT count(*) FROM performer_tags WHERE performer_id = 2") == [(0,)]
    assert ("performers", 2, "purged") in {r[:3] for r in rows(db, LAST_RUN_CHANGES)}
    assert_mirror_equals(db, world)
    assert derived_tables(db) == derived_tables(hard)


def test_zero_days_keeps_soft_deleted_forever_and_switching_off_purges(stash, world, db, clock):
    keep = CacheOptions(soft_delete=True, soft_delete_days=0)
    cache_full_sync(stash, db, options=keep, clock=clock)
    world.delete_entity("scene", 2)
    cache_smart_sync(stash, db, options=keep, clock=clock)
    clock.tick(1000 * 86400)
    cache_smart_sync(stash, db, options=keep, clock=clock)
    assert rows(db, "SELECT count(*) FROM scenes WHERE deleted_at IS NOT NULL") == [(1,)]
    result = cache_smart_sync(stash, db, clock=clock)  # setting off: behaviour as without soft retention
    assert result.per_type["scenes"].purged == 1
    assert_mirror_equals(db, world)


def test_soft_retention_keeps_the_write_guard(stash, world, db):
    cache_full_sync(stash, db, options=SOFT)
    world.delete_entity("scene", 2)
    cache_smart_sync(stash, db, options=SOFT)
    conn = sqlite3.connect(db)
    for statement in ("UPDATE scenes SET deleted_at = NULL", "DELETE FROM sync_changes",
                      "INSERT INTO sync_changes (run_id, entity_type, entity_id, change) VALUES (1, 'x', 1, 'y')"):
        with pytest.raises(sqlite3.DatabaseError, match="read-only mirror"):
            conn.execute(statement)
    with pytest.raises(sqlite3.DatabaseError):
        conn.execute("DELETE FROM live_scenes")
    assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'view'")} >= set(
        cache_schema.LIVE_VIEWS)
    conn.close()


# ------------------------------------------------------------------------------------------
# schedules and status


def test_full_sync_due_follows_the_oldest_full_sync(stash, world, db, clock):
    week = local_cache.parse_duration("7d")
    local_cache.open_cache(db).close()
    with local_cache.read_cache(db) as conn:
        assert local_cache.full_sync_due(conn, week, clock())  # never fully synced
        assert local_cache.next_full_sync_at(conn, week) is None
    cache_full_sync(stash, db, clock=clock)
    start = clock()
    with local_cache.read_cache(db) as conn:
        assert local_cache.next_full_sync_at(conn, week) == start.replace(microsecond=0) + week
        assert not local_cache.full_sync_due(conn, week, start + timedelta(days=6, hours=23))
        assert local_cache.full_sync_due(conn, week, start + week)
    clock.tick(5 * 86400)
    cache_full_sync(stash, db, clock=clock, entities="scenes")
    with local_cache.read_cache(db) as conn:
        # the other types still date from the first run
        assert local_cache.full_sync_due(conn, week, start + week)
        assert not local_cache.full_sync_due(conn, week, start + week, entities="scenes")
    clock.tick(3 * 86400)
    cache_full_sync(stash, db, clock=clock)
    with local_cache.read_cache(db) as conn:
        assert not local_cache.full_sync_due(conn, week, clock.now + timedelta(days=6))


def test_last_run_type_counts_come_from_the_last_run_of_each_type(stash, world, db, clock):
    cache_full_sync(stash, db)
    clock.tick(10)
    world.update_entity("tag", 1, name="Retitled tag")
    cache_smart_sync(stash, db, entities="tags")
    with local_cache.read_cache(db) as conn:
        counts = local_cache.last_run_type_counts(conn)
        runs = [r[0] for r in conn.execute("SELECT id FROM sync_runs ORDER BY id")]
    assert counts["tags"]["run_id"] == runs[1] and counts["tags"]["updated"] == 1
    assert counts["scenes"]["run_id"] == runs[0] and counts["scenes"]["created"] == len(world.table("scene"))
    assert counts["scenes"]["mode"] == "cache_full_sync" and counts["scenes"]["soft_deleted"] == 0
    assert set(counts) == set(local_cache.ENTITY_TYPES)
