"""The cache_status mode: mirror against Stash per type, the last runs and the watch service."""

from __future__ import annotations

from tagman_mirror.runs import cache_full_sync, cache_smart_sync
from tagman_mirror.status import run_cache_status
from tests.conftest import ctx_for, live_on, run_plugin, stash_input


def test_status_figures_equal_the_fake(stash, db, world, fake, clock, tmp_path):
    cache_full_sync(stash, db)
    live_on(world, db, on=False)
    mirrored = {t: len(rows) for t, rows in world.tables().items()}
    clock.tick(60)
    for sid in (2, 3, 4):
        world.update_entity("scene", sid, title=f"pending {sid}")
    world.add_entity("scene", title="new and pending")
    world.update_entity("tag", 5, description="pending tag")
    run = run_plugin(stash_input(fake, tmp_path, "cache_status"))
    assert run.returncode == 0, run.stderr
    out = run.document["output"]
    plural = {"scene": "scenes", "image": "images", "gallery": "galleries", "group": "groups",
              "performer": "performers", "studio": "studios", "tag": "tags"}
    now = {t: len(rows) for t, rows in world.tables().items()}
    for kind, table in plural.items():
        row = out["types"][table]
        assert row["mirrored"] == mirrored[kind] and row["stash"] == now[kind], table
        assert row["pending"] == {"scenes": 4, "tags": 1}.get(table, 0), table
        assert row["cursor"] and row["last_full_sync"]
    assert out["pending"] == 5 and out["live_cache"] is False
    assert [r["mode"] for r in out["runs"]] == ["cache_full_sync"]
    assert out["watch"] == {"alive": False}
    text = "\n".join(run.log_lines("i"))
    assert "mirrored" in text and "scenes" in text and "Watch: never ran" in text
    cache_smart_sync(stash, db)
    status = run_cache_status(ctx_for(stash, db, {}))
    assert status.pending == 0 and [r["mode"] for r in status.runs] == ["cache_smart_sync", "cache_full_sync"]
    assert status.stash_requests <= 2


def test_status_without_a_cache(stash, db, world):
    status = run_cache_status(ctx_for(stash, db, {}))
    assert not status.cache_exists and not db.exists()
    assert status.types["scenes"].stash == len(world.table("scene")) == status.types["scenes"].pending
    assert "no cache yet" in str(status)


def test_status_run_keeps_the_live_marker_in_step(synced, world, fake, tmp_path):
    live_on(world, synced, on=False)
    world.plugin_settings["tagManager"] = {"cacheDbPath": str(synced), "liveCache": True}
    assert not (tmp_path / "data" / "live_cache.on").exists()
    assert run_plugin(stash_input(fake, tmp_path, "cache_status")).returncode == 0
    assert (tmp_path / "data" / "live_cache.on").exists()
    world.plugin_settings["tagManager"] = {"cacheDbPath": str(synced)}
    assert run_plugin(stash_input(fake, tmp_path, "cache_status")).returncode == 0
    assert not (tmp_path / "data" / "live_cache.on").exists()


def test_status_shows_last_run_counts(small_servers, tmp_path):
    assert run_plugin(stash_input(small_servers, tmp_path, "cache_full_sync")).returncode == 0
    world = small_servers.library.world
    world.update_entity("scene", min(world.table("scene")), title="changed for the status")
    assert run_plugin(stash_input(small_servers, tmp_path, "cache_smart_sync")).returncode == 0
    status = run_plugin(stash_input(small_servers, tmp_path, "cache_status"))
    assert status.returncode == 0, status.stderr
    scenes = status.document["output"]["types"]["scenes"]
    assert scenes["last_run"]["updated"] == 1 and scenes["last_run"]["created"] == 0
    assert any("last run: 0 created, 1 updated" in line for line in status.log_lines("i"))
