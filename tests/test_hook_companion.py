"""Hooks cost Stash nothing unless liveCache is on: the companion plugin is switched with the setting.

These tests install the plugin in a plugins folder that the fake Stash loads as Stash does (every
``*.yml``, id = file name), and the fake starts hook processes exactly as Stash does: one
``tag_manager.py`` per entity per enabled plugin declaring the trigger, waiting for each.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from tagman_base.hook_switch import COMPANION_ID
from tests.conftest import ROOT, plugin_folder, run_plugin, start_servers, wait_for

COMPANION = COMPANION_ID
TAG_MANAGER = "tagManager"


@pytest.fixture
def installed(tmp_path):
    """Both fakes, with this plugin installed in the fake Stash's plugins folder (fresh: all enabled)."""
    plugins = tmp_path / "plugins"
    folder = plugin_folder(plugins)
    servers = start_servers(scenes=40, seed=11, stash_options={"plugins_dir": plugins})
    servers.folder = folder
    yield servers
    servers.stash.stop()
    servers.stashdb.stop()


def set_live_cache(servers, on: bool) -> None:
    """Change the setting as a user would in Settings › Plugins › tagManager."""
    settings = servers.library.world.plugin_settings.setdefault(TAG_MANAGER, {})
    if on:
        settings["liveCache"] = True
    else:
        settings.pop("liveCache", None)


def run_task(servers, mode: str, **args) -> dict:
    """Run a tagManager task as Stash does (stdin JSON with a fresh session cookie)."""
    document = {"server_connection": servers.stash.server_connection(servers.folder), "args": {"mode": mode, **args}}
    run = run_plugin(document)
    assert run.returncode == 0, run.stderr
    return run.document["output"]


def bulk_add_tag(servers, scene_ids, tag_id: int = 1) -> None:
    """A user's bulk edit in Stash (the fake waits for every hook process before it answers)."""
    import requests

    body = {"query": "mutation E($input: BulkSceneUpdateInput!) { bulkSceneUpdate(input: $input) { id } }",
            "variables": {"input": {"ids": [str(i) for i in scene_ids],
                                    "tag_ids": {"ids": [str(tag_id)], "mode": "ADD"}}}}
    from tests.conftest import SESSION_COOKIE

    answer = requests.post(servers.stash.graphql_url, json=body, cookies={"session": SESSION_COOKIE}, timeout=120)
    assert answer.status_code == 200 and "errors" not in answer.json(), answer.text


def scene_ids(servers) -> list[int]:
    return sorted(servers.library.world.table("scene"))


def test_with_live_cache_off_a_scan_starts_one_process_per_install(installed):
    hosts = installed.stash.plugins
    assert hosts.is_enabled(COMPANION)  # Stash enables a newly installed plugin
    installed.stash.fire_scan(scene_ids(installed)[:20], created=True)
    assert hosts.started == {COMPANION: 1}  # the first hook found liveCache off and switched itself off
    assert not hosts.is_enabled(COMPANION) and hosts.is_enabled(TAG_MANAGER)
    installed.stash.fire_scan(scene_ids(installed)[:20])
    bulk_add_tag(installed, scene_ids(installed)[:20])
    assert hosts.total_started() == 1


def test_every_task_keeps_the_companion_equal_to_live_cache(installed):
    hosts = installed.stash.plugins
    set_live_cache(installed, False)
    run_task(installed, "cache_status")
    assert not hosts.is_enabled(COMPANION)
    set_live_cache(installed, True)
    run_task(installed, "sync_scene_tags", dry_run="true")
    assert hosts.is_enabled(COMPANION)
    set_live_cache(installed, False)
    run_task(installed, "cache_status")
    assert not hosts.is_enabled(COMPANION) and hosts.total_started() == 0


def mirrored_tags(db, scene_id: int) -> set[int]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT tag_id FROM scene_tags WHERE scene_id = ?", (scene_id,))}


def test_live_cache_on_user_edits_reach_the_mirror_and_our_tag_sync_starts_no_hook(installed):
    hosts = installed.stash.plugins
    world = installed.library.world
    set_live_cache(installed, True)
    run_task(installed, "cache_full_sync")
    assert hosts.is_enabled(COMPANION)
    db = installed.folder / "data" / "stash_cache.sqlite3"

    edited = scene_ids(installed)[:2]
    tag_id = max(world.table("tag"))
    bulk_add_tag(installed, edited, tag_id)  # a user's edit: one hook process per scene
    assert hosts.started == {COMPANION: 2}
    assert all(tag_id in mirrored_tags(db, s) for s in edited)

    output = run_task(installed, "sync_scene_tags")
    assert output["scenes_updated"] > 10
    assert hosts.started == {COMPANION: 2}  # no hook process for the sync's own writes
    assert hosts.is_enabled(COMPANION)  # back on after the sync
    run_task(installed, "cache_smart_sync")  # the next smart sync mirrors what the hooks did not see
    assert {s: mirrored_tags(db, s) for s in scene_ids(installed)} == \
        {s: set(row["tag_ids"]) for s, row in world.table("scene").items()}


def test_a_killed_tag_sync_leaves_live_updates_off_only_until_the_next_task(installed):
    hosts = installed.stash.plugins
    set_live_cache(installed, True)
    installed.stashdb.delay_next(1000, 0.05)  # keep the sync busy long enough to be killed in it
    document = {"server_connection": installed.stash.server_connection(installed.folder),
                "args": {"mode": "sync_scene_tags"}}
    process = subprocess.Popen([sys.executable, str(ROOT / "tag_manager.py")], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    process.stdin.write(json.dumps(document))
    process.stdin.close()
    try:
        assert wait_for(lambda: not hosts.is_enabled(COMPANION) and installed.stashdb.requests >= 1)
    finally:
        process.kill()  # Stash cancels a task with SIGKILL
        process.wait(timeout=30)
    assert not hosts.is_enabled(COMPANION)  # the killed sync could not switch it back
    run_task(installed, "cache_status")  # any task that reads the settings repairs it
    assert hosts.is_enabled(COMPANION)
