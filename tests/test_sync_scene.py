"""The cache_sync_scene mode: one scene re-read at once, with errors reported."""

from __future__ import annotations

from tag_manager import parse_command_line
from tagman_mirror.hook import run_cache_sync_scene
from tests.conftest import ctx_for, run_plugin, scene_title, stash_input
from tests.mirror_oracle import snapshot


def test_sync_one_scene(synced, world, fake, clock, stash, tmp_path):
    clock.tick(60)
    world.update_entity("scene", 11, title="resynced now", performer_ids=[2, 3])
    world.update_entity("scene", 12, title="not this one")
    run = run_plugin(stash_input(fake, tmp_path, "cache_sync_scene", id="11"))
    assert run.returncode == 0, run.stderr
    assert run.document["output"]["status"] == "updated"
    assert scene_title(synced, 11) == "resynced now" and scene_title(synced, 12) != "not this one"
    world.delete_entity("scene", 11)
    result = run_cache_sync_scene(ctx_for(stash, synced, {"id": 11}))
    assert result.status == "deleted" and scene_title(synced, 11) is None
    before = snapshot(synced)
    run = run_plugin(stash_input(fake, tmp_path, "cache_sync_scene", id="11"))
    assert run.returncode == 1 and "Scene 11 does not exist" in run.document["error"]
    assert "\n" not in run.document["error"] and snapshot(synced) == before
    run = run_plugin(stash_input(fake, tmp_path, "cache_sync_scene"))
    assert run.returncode == 1 and "scene id" in run.document["error"]
    assert parse_command_line(["cache_sync_scene", "--id", "5"]).args["id"] == "5"
