"""Scene tag sync killed with SIGKILL at many moments: nothing lost, and a re-run converges."""

from __future__ import annotations

import random

import pytest

from tests.conftest import expected_additions, scene_tags, start_servers, stash_input
from tests.kill_harness import after_stash_requests, kill_after_delay, kill_then_rerun, start_plugin


def assert_only_allowed_changes(before, after, expected) -> None:
    """No scene lost a tag and every added tag is one the matching rules allow."""
    for sid, tags in after.items():
        assert before[sid] <= tags, f"scene {sid} lost {before[sid] - tags}"
        assert tags - before[sid] <= expected.get(sid, set()), f"scene {sid} gained {tags - before[sid]}"


def kill_and_converge(tmp_path, ready_factory, dry_run=False, seed=5):
    """Kill at the point ``ready_factory(servers)`` names, check invariants, re-run, check convergence."""
    servers = start_servers(scenes=400, seed=seed)
    try:
        before = scene_tags(servers)
        expected = expected_additions(servers)
        document = stash_input(servers, tmp_path, **({"dry_run": "true"} if dry_run else {}))
        killed, rerun = kill_then_rerun(document, ready_factory(servers))
        assert rerun.returncode == 0, rerun.stderr
        after = scene_tags(servers)
        assert_only_allowed_changes(before, after, expected)
        if dry_run:
            assert after == before
        else:
            assert {sid: after[sid] - before[sid] for sid in after if after[sid] != before[sid]} == expected
        return killed
    finally:
        servers.stash.stop()
        servers.stashdb.stop()


def after_stashdb_requests(n: int):
    return lambda servers: (lambda: servers.stashdb.requests >= n)


@pytest.mark.parametrize("ready_factory", [
    after_stash_requests("TagSyncScenes", 1),
    after_stashdb_requests(5),
    after_stash_requests("TagSyncAddTagsBatch", 2),
], ids=["reading-scenes", "mid-fingerprint-pass", "while-writing"])
def test_killed_sync_converges(tmp_path, ready_factory):
    assert kill_and_converge(tmp_path, ready_factory)


def test_killed_preview_changes_nothing(tmp_path):
    assert kill_and_converge(tmp_path, after_stashdb_requests(2), dry_run=True)


@pytest.mark.stress
@pytest.mark.parametrize("attempt", range(24))
def test_stress_kill_sync_at_random_moments(tmp_path, attempt):
    rng = random.Random(attempt)
    moment = rng.choice([
        after_stash_requests("TagSyncScenes", rng.randint(1, 10)),
        after_stashdb_requests(rng.randint(1, 20)),
        after_stash_requests("TagSyncAddTagsBatch", rng.randint(1, 4)),
    ])
    kill_and_converge(tmp_path, moment, seed=100 + attempt)


@pytest.mark.stress
@pytest.mark.parametrize("attempt", range(20))
def test_stress_kill_preview_after_random_delay(tmp_path, attempt):
    servers = start_servers(scenes=300, seed=200 + attempt)
    try:
        before = scene_tags(servers)
        kill_after_delay(start_plugin(stash_input(servers, tmp_path, dry_run="true")),
                         random.Random(attempt).uniform(0.05, 1.5))
        assert scene_tags(servers) == before
        # a report is renamed into place only once complete: every .csv has its header
        for report in (tmp_path / "reports").glob("*.csv"):
            assert report.read_text(encoding="utf-8").startswith("scene_id,title,stashdb_id")
    finally:
        servers.stash.stop()
        servers.stashdb.stop()
