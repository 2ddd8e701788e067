"""SIGKILL during syncs that keep a history: no tag withheld, and none re-added after a user removal."""

from __future__ import annotations

import random
import sqlite3

import pytest

from tagman_tagsync import history as tag_sync_history
from tests.conftest import run_plugin, start_servers
from tests.kill_harness import kill_when, start_plugin


def stash_input(servers, plugin_dir, **args) -> dict:
    """The stdin document of a sync task, as Stash writes it."""
    return {"server_connection": servers.server_connection(plugin_dir), "args": {"mode": "sync_scene_tags", **args}}


def scene_tags(servers) -> dict[int, set[int]]:
    """Every scene's tag ids in the fake Stash."""
    return {sid: set(row["tag_ids"]) for sid, row in servers.library.world.table("scene").items()}


def settled(plugin_dir) -> list[tuple[int, int, str]]:
    """(scene id, local tag id, origin) of every settled tag."""
    path = tag_sync_history.history_path(plugin_dir)
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT scene_id, local_tag_id, origin FROM settled_tags").fetchall()


def assert_nothing_withheld(servers, plugin_dir, removed: dict[int, set[int]]) -> None:
    """Every settled tag is on its scene, unless the user removed it."""
    tags = scene_tags(servers)
    for scene_id, local_id, _origin in settled(plugin_dir):
        assert local_id in tags[scene_id] or local_id in removed.get(scene_id, set()), (scene_id, local_id)


def kill_point(servers, rng: random.Random):
    """A moment in the run: reading scenes, mid fingerprint pass, or while writing."""
    choice = rng.randrange(3)
    if choice == 0:
        n = rng.randint(1, 6)
        return lambda: servers.stash.count("TagSyncScenes") >= n
    if choice == 1:
        n = rng.randint(2, 12)
        return lambda: servers.stashdb.requests >= n
    n = rng.randint(1, 3)
    return lambda: servers.stash.count("TagSyncAddTagsBatch") + servers.stash.count("TagSyncAddTags") >= n


def kill_then_finish(servers, plugin_dir, rng: random.Random, kills: int, removed: dict[int, set[int]]) -> None:
    """Kill ``kills`` runs at random moments, checking the history after each, then run to the end."""
    document = stash_input(servers, plugin_dir)
    for _ in range(kills):
        servers.stash.clear_log()
        servers.stashdb.reset_counters()
        kill_when(start_plugin(document), kill_point(servers, rng))
        assert_nothing_withheld(servers, plugin_dir, removed)
    finished = run_plugin(document)
    assert finished.returncode == 0, finished.stderr


def converge_then_respect_removals(plugin_dir, seed: int, kills: int) -> None:
    """Kills converge to the oracle; a later removal survives a killed run and a full one."""
    servers = start_servers(scenes=400, seed=seed)
    rng = random.Random(seed)
    try:
        before = scene_tags(servers)
        expected = servers.library.expected_tag_additions(before)
        kill_then_finish(servers, plugin_dir, rng, kills, {})
        after = scene_tags(servers)
        assert {sid: after[sid] - before[sid] for sid in after if after[sid] != before[sid]} == expected
        assert_nothing_withheld(servers, plugin_dir, {})
        removed = {sid: {rng.choice(sorted(tags))} for sid, tags in sorted(expected.items())[:30]}
        world = servers.library.world
        for sid, tag_ids in removed.items():
            world.update_entity("scene", sid, tag_ids=[t for t in world.get("scene", sid)["tag_ids"] if t not in tag_ids])
        wanted = scene_tags(servers)
        kill_then_finish(servers, plugin_dir, rng, 1, removed)
        assert scene_tags(servers) == wanted
        assert_nothing_withheld(servers, plugin_dir, removed)
    finally:
        servers.stash.stop()
        servers.stashdb.stop()


@pytest.mark.parametrize("seed", [31, 32])
def test_killed_syncs_converge_and_never_re_add_a_removed_tag(tmp_path, seed):
    converge_then_respect_removals(tmp_path, seed, kills=2)


@pytest.mark.stress
@pytest.mark.parametrize("attempt", range(12))
def test_stress_kills_with_history(tmp_path, attempt):
    converge_then_respect_removals(tmp_path, 300 + attempt, kills=4)


def test_killed_feed_runs_converge_to_what_a_full_run_adds(tmp_path):
    """Runs that use StashDB's change feed, killed while they re-read scenes or write, then finished."""
    servers = start_servers(scenes=400, seed=33)
    rng = random.Random(33)
    try:
        assert run_plugin(stash_input(servers, tmp_path)).returncode == 0
        lib = servers.library
        pool = sorted(lib.stashdb_tags)
        for sid in rng.sample(lib.scenes_of_kind("normal"), 60):
            remote = lib.stashdb["scenes"][lib.scene_link[sid]]
            servers.stashdb.edit_scene(remote["id"], tags=list(remote["tags"]) + [lib.stashdb_tags[rng.choice(pool)]])
        before = scene_tags(servers)
        expected = lib.expected_tag_additions(before)
        assert expected
        document = stash_input(servers, tmp_path)
        killed = []
        for n in (1, 2):
            servers.stash.clear_log()
            killed.append(kill_when(start_plugin(document), lambda: servers.stash.count("TagSyncScenes")
                                    + servers.stash.count("TagSyncAddTagsBatch") >= n))
            assert_nothing_withheld(servers, tmp_path, {})
        assert all(killed)
        finished = run_plugin(document)
        assert finished.returncode == 0, finished.stderr
        assert finished.document["output"]["strategy"] == "feed"
        after = scene_tags(servers)
        assert {sid: after[sid] - before[sid] for sid in after if after[sid] != before[sid]} == expected
    finally:
        servers.stash.stop()
        servers.stashdb.stop()
