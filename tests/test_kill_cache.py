"""Cache jobs killed with SIGKILL at many moments: the next run converges and no lock is left behind."""

from __future__ import annotations

import random

import pytest

from tests.conftest import run_plugin, start_servers, stash_input
from tests.kill_harness import kill_after_delay, kill_then_rerun, start_plugin
from tests.mirror_oracle import assert_mirror_equals


def edit_some(world, rng: random.Random, count: int = 25) -> None:
    """Edits a user could make between runs: titles, tags, a deletion and a tag merge."""
    scenes = sorted(world.table("scene"))
    tags = sorted(world.table("tag"))
    for sid in rng.sample(scenes, min(count, len(scenes))):
        world.update_entity("scene", sid, title=f"edited {rng.random():.6f}")
    world.delete_entity("scene", scenes[-1])
    world.merge_tags([tags[-1]], tags[0])


def run_kill_case(tmp_path, mode: str, seed: int, kill_after_requests: int | None = None,
                  kill_after_s: float | None = None) -> None:
    """Full sync first (unless testing it), edit, kill ``mode`` at a moment, re-run it, compare."""
    servers = start_servers(scenes=150, seed=seed, images=120, galleries=12)
    db = tmp_path / "data" / "stash_cache.sqlite3"
    try:
        rng = random.Random(seed)
        if mode != "cache_full_sync":
            assert run_plugin(stash_input(servers, tmp_path, "cache_full_sync")).returncode == 0
            edit_some(servers.library.world, rng)
        document = stash_input(servers, tmp_path, mode)
        if kill_after_s is not None:
            kill_after_delay(start_plugin(document), kill_after_s)
            rerun = run_plugin(document)
        else:
            start = servers.stash.count()
            _, rerun = kill_then_rerun(document, lambda: servers.stash.count() >= start + kill_after_requests)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-2000:]
        if mode != "cache_full_sync":  # an incremental/smart run after a kill must still converge
            assert run_plugin(stash_input(servers, tmp_path, "cache_smart_sync")).returncode == 0
        assert_mirror_equals(db, servers.library.world)
    finally:
        servers.stash.stop()
        servers.stashdb.stop()


@pytest.mark.parametrize("mode, after", [("cache_incremental_sync", 5), ("cache_smart_sync", 9)])
def test_killed_cache_sync_converges(tmp_path, mode, after):
    run_kill_case(tmp_path, mode, seed=31, kill_after_requests=after)


def test_killed_hook_leaves_a_consistent_cache(tmp_path):
    servers = start_servers(scenes=120, seed=33, images=60, galleries=8)
    db = tmp_path / "data" / "stash_cache.sqlite3"
    try:
        assert run_plugin(stash_input(servers, tmp_path, "cache_full_sync")).returncode == 0
        servers.library.world.plugin_settings["tagManager"] = {"liveCache": True}
        assert run_plugin(stash_input(servers, tmp_path, "cache_status")).returncode == 0  # sees the setting
        scene = min(servers.library.world.table("scene"))
        servers.library.world.update_entity("scene", scene, title="Edited, then the hook was killed")
        hook = stash_input(servers, tmp_path, "cache_hook",
                              hookContext={"id": scene, "type": "Scene.Update.Post",
                                           "input": {"id": str(scene), "title": "Edited, then the hook was killed"},
                                           "inputFields": ["id", "title"]})
        start = servers.stash.count()
        kill_then_rerun(hook, lambda: servers.stash.count() >= start + 2)
        assert run_plugin(hook).returncode == 0
        assert run_plugin(stash_input(servers, tmp_path, "cache_smart_sync")).returncode == 0
        assert_mirror_equals(db, servers.library.world)
    finally:
        servers.stash.stop()
        servers.stashdb.stop()


@pytest.mark.stress
@pytest.mark.parametrize("mode", ["cache_full_sync", "cache_incremental_sync", "cache_smart_sync"])
@pytest.mark.parametrize("attempt", range(20))
def test_stress_kill_cache_sync(tmp_path, mode, attempt):
    rng = random.Random(attempt)
    if rng.random() < 0.5:
        run_kill_case(tmp_path, mode, seed=300 + attempt, kill_after_requests=rng.randint(1, 25))
    else:
        run_kill_case(tmp_path, mode, seed=300 + attempt, kill_after_s=rng.uniform(0.2, 2.0))


@pytest.mark.stress
@pytest.mark.parametrize("attempt", range(20))
def test_stress_kill_hook(tmp_path, attempt):
    servers = start_servers(scenes=100, seed=400 + attempt, images=40, galleries=6)
    db = tmp_path / "data" / "stash_cache.sqlite3"
    try:
        assert run_plugin(stash_input(servers, tmp_path, "cache_full_sync")).returncode == 0
        servers.library.world.plugin_settings["tagManager"] = {"liveCache": True}
        assert run_plugin(stash_input(servers, tmp_path, "cache_status")).returncode == 0
        rng = random.Random(attempt)
        scene = rng.choice(sorted(servers.library.world.table("scene")))
        servers.library.world.update_entity("scene", scene, title=f"hook {attempt}")
        hook = stash_input(servers, tmp_path, "cache_hook",
                              hookContext={"id": scene, "type": "Scene.Update.Post", "input": None, "inputFields": []})
        kill_after_delay(start_plugin(hook), rng.uniform(0.05, 0.6))
        assert run_plugin(stash_input(servers, tmp_path, "cache_smart_sync")).returncode == 0
        assert_mirror_equals(db, servers.library.world)
    finally:
        servers.stash.stop()
        servers.stashdb.stop()
