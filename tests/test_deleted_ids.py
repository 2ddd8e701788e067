"""Stash fails a whole lookup by ids when one id is gone: a deletion must never sink the others."""

from __future__ import annotations

from tests.conftest import expected_additions, run_plugin, scene_tags, stash_input, tag_sync_context
from tests.mirror_oracle import assert_mirror_equals


def test_smart_sync_after_a_rechecked_scene_was_deleted(small_servers, tmp_path):
    world = small_servers.library.world
    assert run_plugin(stash_input(small_servers, tmp_path, "cache_full_sync")).returncode == 0
    newest = max(world.table("scene"))
    world.update_entity("scene", newest, title="edited, then deleted")
    assert run_plugin(stash_input(small_servers, tmp_path, "cache_smart_sync")).returncode == 0
    world.delete_entity("scene", newest)
    for _ in range(2):
        run = run_plugin(stash_input(small_servers, tmp_path, "cache_smart_sync"))
        assert run.returncode == 0, run.stdout
    assert_mirror_equals(tmp_path / "data" / "stash_cache.sqlite3", world)


def test_destroy_and_merge_hooks_apply(small_servers, tmp_path):
    world = small_servers.library.world
    assert run_plugin(stash_input(small_servers, tmp_path, "cache_full_sync")).returncode == 0
    world.plugin_settings["tagManager"] = {"liveCache": True}
    assert run_plugin(stash_input(small_servers, tmp_path, "cache_status")).returncode == 0  # sees the setting
    gone = min(world.table("scene"))
    world.delete_entity("scene", gone)
    destroy = run_plugin(stash_input(small_servers, tmp_path, "cache_hook", hookContext={
        "id": gone, "type": "Scene.Destroy.Post", "input": {"id": str(gone)}, "inputFields": ["id"]}))
    assert destroy.returncode == 0 and destroy.document["output"]["status"] == "applied", destroy.stdout
    tags = sorted(world.table("tag"))
    world.merge_tags([tags[-1]], tags[0])
    merge = run_plugin(stash_input(small_servers, tmp_path, "cache_hook", hookContext={
        "id": tags[0], "type": "Tag.Merge.Post", "input": {"source": [str(tags[-1])], "destination": str(tags[0])},
        "inputFields": ["source", "destination"]}))
    assert merge.returncode == 0 and merge.document["output"]["status"] == "applied", merge.stdout
    assert_mirror_equals(tmp_path / "data" / "stash_cache.sqlite3", world)


def test_tag_sync_batch_survives_a_scene_deleted_after_the_snapshot(servers, tmp_path):
    from tag_manager import run_sync_scene_tags

    expected, before = expected_additions(servers), scene_tags(servers)
    ctx = tag_sync_context(servers, tmp_path)
    real_call = ctx.stash.call
    deleted = []

    def delete_before_first_read(query, variables=None):
        if "TagSyncScenes" in query and not deleted:
            deleted.append(int(variables["ids"][0]))
            servers.library.world.delete_entity("scene", deleted[0])
        return real_call(query, variables)

    ctx.stash.call = delete_before_first_read
    result = run_sync_scene_tags(ctx)
    after = scene_tags(servers)
    expected.pop(deleted[0], None)
    assert {sid: after[sid] - before[sid] for sid in after if after[sid] != before[sid]} == expected
    assert result.errors == 0
