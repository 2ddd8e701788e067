"""Tag linking killed with SIGKILL at many moments: never a duplicate link, and a re-run converges."""

from __future__ import annotations

import random

import pytest

from tests.conftest import start_servers
from tests.kill_harness import after_stash_requests, kill_then_rerun
from tests.tag_link_model import expected_after, oracle, prepare_for_linking, remote_tags, stash_id_pairs, tag_rows


def link_input(servers, tmp_path, **args) -> dict:
    return {"server_connection": servers.server_connection(tmp_path), "args": {"mode": "link_tags", **args}}


def assert_no_duplicate_link(rows: dict[int, dict], endpoint: str) -> None:
    """No tag ever holds two StashIDs for the same stash-box."""
    for tid, row in rows.items():
        endpoints = [s["endpoint"] for s in row["stash_ids"]]
        assert endpoints.count(endpoint) <= 1, f"tag {tid} has {row['stash_ids']}"


def kill_and_converge(tmp_path, ready_factory, dry_run=False, seed=11) -> tuple[bool, int, int]:
    """Kill a link run where ``ready_factory(servers)`` says, check the state, re-run, check convergence.

    Returns whether the kill happened, how many tags the plan links, and how many the re-run linked."""
    servers = prepare_for_linking(start_servers(scenes=40, seed=seed, tags=600, performers=5, galleries=2, images=5))
    try:
        endpoint = servers.library.endpoint
        before = tag_rows(servers)
        plan = oracle(list(before.values()), remote_tags(servers), endpoint)
        wanted = expected_after(before, plan, endpoint)
        to_link = sum(1 for reason, _ in plan.values() if reason in ("name", "alias"))
        assert to_link > 100, "the run must need several write batches"
        document = link_input(servers, tmp_path, **({"dry_run": "true"} if dry_run else {}))
        killed, rerun = kill_then_rerun(document, ready_factory(servers))
        assert rerun.returncode == 0, rerun.stderr
        after = tag_rows(servers)
        assert_no_duplicate_link(after, endpoint)
        assert stash_id_pairs(after) == (stash_id_pairs(before) if dry_run else wanted)
        for report in (tmp_path / "reports").glob("*.csv"):  # a report appears only once complete
            assert report.read_text(encoding="utf-8").startswith("local_tag_id,local_tag_name,stashdb_tag_id")
        return killed, to_link, rerun.document["output"]["linked"]
    finally:
        servers.stash.stop()
        servers.stashdb.stop()


def after_stashdb_requests(n: int):
    return lambda servers: (lambda: servers.stashdb.operations["QueryTags"] >= n)


def test_killed_before_any_write_links_everything_on_the_rerun(tmp_path):
    killed, to_link, relinked = kill_and_converge(tmp_path, after_stashdb_requests(1))
    assert killed and relinked == to_link


@pytest.mark.parametrize("ready_factory", [
    after_stash_requests("TagLinkTagsById", 2),
    after_stash_requests("TagLinkSetStashIdsBatch", 2),
], ids=["between-reread-and-write", "after-writes"])
def test_killed_while_linking_converges_without_duplicates(tmp_path, ready_factory):
    killed, to_link, relinked = kill_and_converge(tmp_path, ready_factory)
    assert killed and 0 < relinked < to_link  # the re-run only does what the killed run left


def test_killed_preview_changes_nothing(tmp_path):
    killed, _, relinked = kill_and_converge(tmp_path, after_stash_requests("TagLinkLocalTags", 1), dry_run=True)
    assert killed and relinked == 0


@pytest.mark.stress
@pytest.mark.parametrize("attempt", range(20))
def test_stress_kill_link_run_at_random_moments(tmp_path, attempt):
    rng = random.Random(attempt)
    moment = rng.choice([after_stash_requests("TagLinkTagsById", rng.randint(1, 4)),
                         after_stash_requests("TagLinkSetStashIdsBatch", rng.randint(1, 3)),
                         after_stashdb_requests(1)])
    kill_and_converge(tmp_path, moment, seed=300 + attempt)
