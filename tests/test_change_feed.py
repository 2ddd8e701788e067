"""Re-runs of the scene tag sync through StashDB's change feed: cost what changed, same tags as a full run."""

from __future__ import annotations

import math
import random
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagman_base import stash_client
from tagman_tagsync import history as tag_sync_history
from tagman_tagsync import history_schema as tag_sync_history_schema
from tagman_base.settings import Settings
from stashdb_api import StashDBScene
from tagman_tagsync.change_feed import FeedPolicy, check_first_page, full_reason, parse_instant
from tagman_base.run_context import RunContext
from tag_manager import run_sync_scene_tags
from tagman_tagsync.history import BoxState
from tests.conftest import start_servers

FAST = 6000  # requests per minute of the fake StashDB in these tests


def scene_tags(servers) -> dict[int, set[int]]:
    """Every scene's tag ids in the fake Stash."""
    return {sid: set(row["tag_ids"]) for sid, row in servers.library.world.table("scene").items()}


def sync(servers, plugin_dir: Path, **args):
    """One scene tag sync in-process, as the entry script wires it."""
    stash = stash_client.connect(servers.server_connection(plugin_dir), lean=True)
    ctx = RunContext(stash, Settings(), {"mode": "sync_scene_tags", **args}, plugin_dir, lambda f: None, lambda s: None)
    return run_sync_scene_tags(ctx)


def edit_upstream(servers, rng: random.Random, count: int) -> list[str]:
    """Give ``count`` linked StashDB scenes a changed tag list (a pool tag added, maybe one dropped)."""
    lib = servers.library
    pool = sorted(lib.stashdb_tags)
    linked = sorted({lib.scene_link[sid] for sid, kind in lib.scene_kind.items() if kind in ("normal", "fallback")})
    edited = rng.sample(linked, min(count, len(linked)))
    for stashdb_id in edited:
        tags = list(lib.stashdb["scenes"][stashdb_id]["tags"])
        if tags and rng.random() < 0.3:
            tags.pop(rng.randrange(len(tags)))
        tags.append(lib.stashdb_tags[rng.choice(pool)])
        servers.stashdb.edit_scene(stashdb_id, tags=tags)
    return edited


@pytest.fixture
def feed_servers():
    """A 200-scene library with fast fakes."""
    servers = start_servers(scenes=200, seed=41, rate=FAST)
    yield servers
    servers.stash.stop()
    servers.stashdb.stop()


def test_first_run_is_full_then_the_feed_costs_what_changed(feed_servers, tmp_path):
    servers = feed_servers
    first = sync(servers, tmp_path)
    assert first.strategy == "full" and "no completed run" in first.boxes[0].strategy_reason
    edited = edit_upstream(servers, random.Random(1), 30)
    servers.stashdb.reset_counters()
    servers.stash.clear_log()
    before = scene_tags(servers)
    expected = servers.library.expected_tag_additions(before)
    second = sync(servers, tmp_path)
    after = scene_tags(servers)
    assert second.strategy == "feed"
    assert {sid: after[sid] - before[sid] for sid in after if after[sid] != before[sid]} == expected
    assert servers.stashdb.operations.keys() == {"QueryScenesByUpdated"}
    assert servers.stashdb.requests <= math.ceil(len(edited) / 100) + 1
    assert len(edited) <= second.scenes_from_feed <= len(edited) + 1  # + the scene at the old mark (overlap)
    servers.stashdb.reset_counters()
    servers.stash.clear_log()
    third = sync(servers, tmp_path)
    assert third.strategy == "feed" and third.tags_added == 0 and third.stash_mutations == 0
    assert servers.stashdb.requests == 1
    assert servers.stash.count("TagSyncScenes") == 0  # nothing to settle: no scene is even read


def test_local_changes_need_no_stashdb_request(feed_servers, tmp_path):
    servers = feed_servers
    sync(servers, tmp_path)
    lib = servers.library
    unmatched = [t for t in lib.stashdb_tags.values() if lib.tag_kind[t["id"]] == "unmatched" and not t["deleted"]]
    new_ids = [lib.world.add_entity("tag", name=unmatched[0]["name"].lower()),
               lib.world.add_entity("tag", name="Aliased Here", aliases=[unmatched[1]["name"]]),
               lib.world.add_entity("tag", name="Linked Here",
                                    stash_ids=[{"endpoint": lib.endpoint, "stash_id": unmatched[2]["id"]}])]
    before = scene_tags(servers)
    servers.stashdb.reset_counters()
    result = sync(servers, tmp_path)
    after = scene_tags(servers)
    gained = {t for sid in after for t in after[sid] - before[sid]}
    assert result.strategy == "feed" and gained and gained <= set(new_ids)
    assert servers.stashdb.requests == 1  # the feed's first page, nothing else
    full = sync(servers, tmp_path, full_recheck="true")
    assert full.strategy == "full" and full.tags_added == 0


def test_an_edit_that_commits_late_inside_the_overlap_is_not_missed(feed_servers, tmp_path):
    servers = feed_servers
    sync(servers, tmp_path)
    edit_upstream(servers, random.Random(2), 3)
    sync(servers, tmp_path)
    with sqlite3.connect(tag_sync_history.history_path(tmp_path)) as conn:
        mark = conn.execute("SELECT feed_mark FROM box_state").fetchone()[0]
    lib = servers.library
    scene_id = next(sid for sid in lib.scenes_of_kind("normal") if sid not in lib.expected_tag_additions(scene_tags(servers)))
    local = lib.world.add_entity("tag", name="Committed Late")
    late_tag = {"id": "77777777-0000-4000-8000-000000000001", "name": "Committed Late", "aliases": [], "deleted": False}
    remote = lib.stashdb["scenes"][lib.scene_link[scene_id]]
    servers.stashdb.edit_scene(remote["id"], tags=list(remote["tags"]) + [late_tag],
                               started_at=parse_instant(mark) - timedelta(minutes=2))
    result = sync(servers, tmp_path)
    assert result.strategy == "feed" and local in scene_tags(servers)[scene_id]


def test_a_failed_run_keeps_the_old_mark(feed_servers, tmp_path):
    servers = feed_servers
    sync(servers, tmp_path)
    with sqlite3.connect(tag_sync_history.history_path(tmp_path)) as conn:
        mark = conn.execute("SELECT feed_mark FROM box_state").fetchone()[0]
    edited = edit_upstream(servers, random.Random(3), 5)
    servers.stash.fail_next(1000, status=200, body='{"errors": [{"message": "no"}], "data": null}',
                            operation="TagSyncScenes")
    failed = sync(servers, tmp_path)
    assert failed.errors > 0
    with sqlite3.connect(tag_sync_history.history_path(tmp_path)) as conn:
        assert conn.execute("SELECT feed_mark FROM box_state").fetchone()[0] == mark
    servers.stash.clear_faults()
    before = scene_tags(servers)
    expected = servers.library.expected_tag_additions(before)
    again = sync(servers, tmp_path)
    after = scene_tags(servers)
    assert again.strategy == "feed" and again.scenes_from_feed >= len(edited)
    assert {sid: after[sid] - before[sid] for sid in after if after[sid] != before[sid]} == expected


# -- the property: a feed run adds exactly what a full run adds ---------------------------------------


def apply_round(servers_pair, rng: random.Random) -> None:
    """One round of identical random upstream and local changes on both libraries."""
    reference = servers_pair[0].library
    pool = sorted(reference.stashdb_tags)
    linked = sorted(sid for sid, kind in reference.scene_kind.items() if kind in ("normal", "fallback", "wrong_hit"))
    upstream = [(reference.scene_link[sid], rng.choice(pool), rng.random() < 0.3) for sid in rng.sample(linked, 6)]
    unmatched = [t for t in pool if reference.tag_kind[t] == "unmatched"]
    local_kind, local_target = rng.choice(["name", "alias", "link", "none"]), rng.choice(unmatched)
    removals = [(sid, rng.random()) for sid in rng.sample(linked, 5)]
    relink = rng.choice(linked) if rng.random() < 0.5 else None
    for servers in servers_pair:
        lib = servers.library
        for stashdb_id, tag_id, drop in upstream:
            tags = list(lib.stashdb["scenes"][stashdb_id]["tags"])
            if drop and tags:
                tags.pop(0)
            servers.stashdb.edit_scene(stashdb_id, tags=tags + [lib.stashdb_tags[tag_id]])
        add_local_tag(lib, local_kind, lib.stashdb_tags[local_target])
        for sid, pick in removals:
            row = lib.world.get("scene", sid)
            if row["tag_ids"]:
                victim = sorted(row["tag_ids"])[int(pick * len(row["tag_ids"]))]
                lib.world.update_entity("scene", sid, tag_ids=[t for t in row["tag_ids"] if t != victim])
        if relink is not None:
            relink_scene(lib, relink)


def add_local_tag(lib, kind: str, remote_tag: dict) -> None:
    """Make a StashDB tag matchable locally by name, alias or StashID link (or change nothing)."""
    existing = {t["name"].lower() for t in lib.world.table("tag").values()}
    if kind == "none" or remote_tag["name"].lower() in existing:
        return
    if kind == "name":
        lib.world.add_entity("tag", name=remote_tag["name"].upper())
    elif kind == "alias":
        lib.world.add_entity("tag", name=f"Local {remote_tag['id'][:8]}", aliases=[remote_tag["name"]])
    else:
        lib.world.add_entity("tag", name=f"Linked {remote_tag['id'][:8]}",
                             stash_ids=[{"endpoint": lib.endpoint, "stash_id": remote_tag["id"]}])


def relink_scene(lib, scene_id: int) -> None:
    """Point a local scene at another live StashDB scene (the user re-matched it in the Tagger)."""
    others = sorted(s for s, k in lib.scene_kind.items() if k == "normal" and s != scene_id)
    target = lib.scene_link[others[scene_id % len(others)]]
    row = lib.world.get("scene", scene_id)
    stash_ids = [s for s in row["stash_ids"] if s["endpoint"] != lib.endpoint]
    lib.world.update_entity("scene", scene_id, stash_ids=stash_ids + [{"endpoint": lib.endpoint, "stash_id": target}])


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(min_value=0, max_value=10_000))
def test_feed_runs_add_exactly_what_full_runs_add(tmp_path_factory, seed):
    pair = (start_servers(scenes=120, seed=seed, rate=FAST), start_servers(scenes=120, seed=seed, rate=FAST))
    feed_dir, full_dir = tmp_path_factory.mktemp("feed"), tmp_path_factory.mktemp("full")
    rng = random.Random(seed)
    try:
        sync(pair[0], feed_dir)
        sync(pair[1], full_dir)
        assert scene_tags(pair[0]) == scene_tags(pair[1])
        for _round in range(3):
            apply_round(pair, rng)
            fed = sync(pair[0], feed_dir)
            full = sync(pair[1], full_dir, full_recheck="true")
            assert fed.strategy == "feed" and full.strategy == "full"
            assert scene_tags(pair[0]) == scene_tags(pair[1])
    finally:
        for servers in pair:
            servers.stash.stop()
            servers.stashdb.stop()


# -- when the feed is not trusted ------------------------------------------------------------------


NOW = datetime(2026, 5, 1, 12, tzinfo=timezone.utc)


def state(**changes) -> BoxState:
    """A box state from yesterday."""
    values = dict(feed_mark="2026-04-30T12:00:00.5Z", last_full_check="2026-04-20T12:00:00+00:00",
                  last_run_started="2026-04-30T12:00:00+00:00", full_fallbacks=3)
    values.update(changes)
    return BoxState(**values)


@pytest.mark.parametrize(("box_state", "policy", "reason"), [
    (None, FeedPolicy(), "no completed run"),
    (state(feed_mark=None), FeedPolicy(), "no completed run"),
    (state(), FeedPolicy(force_full=True), "requested"),
    (state(), FeedPolicy(full_every_days=0), "every time"),
    (state(), FeedPolicy(full_every_days=7), "11 days old"),
    (state(last_run_started="2026-05-02T00:00:00+00:00"), FeedPolicy(), "clock went backwards"),
    (state(last_full_check="garbage"), FeedPolicy(), "no readable time"),
    (state(), FeedPolicy(), ""),
])
def test_when_a_full_re_check_runs(box_state, policy, reason):
    found = full_reason(box_state, policy, NOW)
    assert (reason in found) if reason else found == ""


def feed_page(*updated: str) -> list[StashDBScene]:
    """A feed page with these update times, newest first."""
    return [StashDBScene(f"s{i}", False, (), text) for i, text in enumerate(updated)]


def test_feed_older_than_the_mark_means_the_clock_or_data_went_back():
    mark = "2026-04-30T12:00:00.5Z"
    refusal = check_first_page(feed_page("2026-04-30T11:00:00Z"), mark, parse_instant(mark), 100, 50)
    assert "older than the last run's mark" in refusal


def test_a_feed_costlier_than_the_batches_is_refused_after_one_page():
    mark = "2026-04-01T00:00:00Z"
    page = feed_page(*[f"2026-04-30T12:{59 - i // 2:02d}:00Z" for i in range(100)])  # 100 edits per hour
    refusal = check_first_page(page, mark, parse_instant(mark), 100, 50)
    assert "would take about" in refusal
    assert check_first_page(page, mark, parse_instant(mark), 100, 10_000) == ""


def test_a_burst_of_edits_on_the_first_page_is_paged_not_extrapolated():
    mark = "2026-04-01T00:00:00Z"
    page = feed_page(*[f"2026-04-30T12:00:00.{999 - i:03d}Z" for i in range(100)])  # 100 edits in one second
    assert check_first_page(page, mark, parse_instant(mark), 100, 50) == ""


def test_an_upgraded_version_1_history_equals_a_fresh_one(tmp_path):
    old = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(old, isolation_level=None)
    tag_sync_history_schema.migrate(conn, target=1)
    conn.execute("INSERT INTO scene_answers VALUES ('e', 1, 's', NULL, '[]', 'now')")
    conn.close()
    upgraded = tag_sync_history_schema.connect(old)
    fresh = tag_sync_history_schema.connect(tmp_path / "fresh.sqlite3")
    try:
        assert tag_sync_history_schema.schema_signature(upgraded) == tag_sync_history_schema.schema_signature(fresh)
        assert upgraded.execute("SELECT answer_state FROM scene_answers").fetchall() == [("live",)]
    finally:
        upgraded.close()
        fresh.close()


class EndlessFeed:
    """A stand-in StashDB client whose feed never reaches the mark (100 edits a second, forever)."""

    def __init__(self) -> None:
        self.pages = 0

    def scenes_by_updated(self, page: int, per_page: int):
        """Page ``page``: ``per_page`` scenes, one second per page back from 2026-04-30 12:00."""
        self.pages += 1
        start = datetime(2026, 4, 30, 12, tzinfo=timezone.utc) - timedelta(seconds=page)
        return 10**6, [StashDBScene(f"p{page}-{i}", False, (), (start - timedelta(milliseconds=i)).isoformat())
                       for i in range(per_page)]


def test_a_feed_that_reaches_the_batches_cost_is_abandoned():
    from tagman_tagsync.change_feed import read_feed

    client = EndlessFeed()
    read = read_feed(client, state(feed_mark="2026-04-01T00:00:00Z"), FeedPolicy(), budget=7)
    assert read.refused and "7 requests" in read.refused
    assert client.pages == read.requests == 7
