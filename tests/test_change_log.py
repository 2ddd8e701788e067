"""What each sync did: created/updated/unchanged/deleted counts, rows written and the change log."""

from __future__ import annotations

import json

import pytest

from tagman_mirror import store
from tagman_mirror.entities import SPEC_BY_TABLE, SPECS
from tagman_mirror.queries import SIGNAL_TYPES
from tagman_mirror.results import CacheOptions
from tagman_mirror.rows import mirrored_content
from tagman_mirror.runs import cache_full_sync, cache_incremental_sync, cache_smart_sync
from tests.conftest import LAST_RUN_CHANGES, read_rows, SCENE_HISTORY


@pytest.mark.parametrize("json_functions", [True, False], ids=["ids-as-json", "row-by-row"])
def test_counts_and_change_log_match_what_stash_changed(stash, world, db, clock, monkeypatch, json_functions):
    """Whole-entity rows go to SQLite as one JSON array of ids, or row by row where SQLite has no JSON."""
    monkeypatch.setattr(store, "json_functions", lambda: json_functions)
    cache_full_sync(stash, db)
    old = {r[0]: r for r in read_rows(db, "SELECT id, title, updated_at FROM scenes")}
    old_tags = {r[0] for r in read_rows(db, "SELECT tag_id FROM scene_tags WHERE scene_id = 5")}
    old_perf = read_rows(db, "SELECT name, updated_at FROM performers WHERE id = 3")[0]
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
    assert set(read_rows(db, LAST_RUN_CHANGES)) == expected
    assert len(read_rows(db, LAST_RUN_CHANGES)) == len(expected)
    history = read_rows(db, SCENE_HISTORY, {"id": 5})
    assert {h[2] for h in history} >= {"title", "updated_at"}
    stored = read_rows(db, "SELECT created, updated, unchanged, deleted, rows_written, per_type FROM sync_runs "
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
    assert read_rows(db, "SELECT count(*) FROM sync_changes WHERE run_id = ?", (result.run_id,)) == [(0,)]
    # only bookkeeping: last_incremental_sync of each type, the signals' state of its types and the
    # stored count of scenes missing a phash
    assert result.rows_written <= len(SPECS) + len(SIGNAL_TYPES) + 1
    spec = SPEC_BY_TABLE["scenes"]
    item = {"id": "1", "title": "t", "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z",
            "tags": [{"id": "2"}, {"id": "1"}], "performers": [], "files": [], "groups": [], "galleries": [],
            "stash_ids": []}
    shuffled = dict(item, tags=[{"id": "1"}, {"id": "2"}])
    assert mirrored_content(spec, item).digest == mirrored_content(spec, shuffled).digest


def test_an_idle_smart_sync_writes_no_row(stash, world, db, clock):
    cache_full_sync(stash, db, options=CacheOptions(soft_delete=True))
    world.update_entity("scene", 9, title="x")  # leaves something to recheck in every run
    world.delete_entity("scene", 10)            # and a soft-deleted entity
    cache_smart_sync(stash, db, options=CacheOptions(soft_delete=True))
    result = cache_smart_sync(stash, db, options=CacheOptions(soft_delete=True))
    assert result.rows_written == 0
    assert all(s.skipped for s in result.per_type.values())
    assert read_rows(db, "SELECT rows_written, created, updated, deleted FROM sync_runs WHERE id = ?",
                (result.run_id,)) == [(0, 0, 0, 0)]
    assert "0 rows written" in str(result)


def test_change_log_is_pruned_after_its_days(stash, world, db, clock):
    options = CacheOptions(change_log_days=30)
    cache_full_sync(stash, db, clock=clock, options=options)
    first_run = read_rows(db, "SELECT max(run_id) FROM sync_changes")[0][0]
    assert read_rows(db, "SELECT count(*) FROM sync_changes WHERE run_id = ?", (first_run,))[0][0] > 0
    clock.tick(20 * 86400)
    world.update_entity("scene", 3, title="day 20")
    cache_smart_sync(stash, db, clock=clock, options=options)
    clock.tick(15 * 86400)
    world.update_entity("scene", 4, title="day 35")
    cache_smart_sync(stash, db, clock=clock, options=options)
    kept = {r[0] for r in read_rows(db, "SELECT DISTINCT run_id FROM sync_changes")}
    assert first_run not in kept and len(kept) == 2
    clock.tick(100 * 86400)
    world.update_entity("scene", 5, title="day 135")
    cache_smart_sync(stash, db, clock=clock, options=CacheOptions(change_log_days=0))  # 0 keeps everything
    assert len({r[0] for r in read_rows(db, "SELECT DISTINCT run_id FROM sync_changes")}) == 3
