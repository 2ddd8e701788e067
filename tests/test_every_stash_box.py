"""Every stash-box with an API key is synced, each at its own rate and with its own tag links."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import pytest

from tagman_base import stash_client
from tagman_tagsync import history as tag_sync_history
from tagman_base.settings import Settings
from tagman_base.stash_boxes import StashBox, stash_boxes_to_sync
from stashdb_scene_sync import RATE_SAFETY_FACTOR, stashdb_client_for
from tagman_base.run_context import RunContext
from tag_manager import run_sync_scene_tags
from tests.conftest import STASHDB_API_KEY, start_servers
from tests.fakes.boxes import add_second_box
from tests.fakes.fake_stashdb import FakeStashDB
from tagman_base.errors import SettingsError

SECOND_KEY = "second-box-SECRET-key-5c1e"
SECOND_RATE = 3000


@pytest.fixture
def two_boxes():
    """A 300-scene library linked to two fake stash-boxes (the second one at a lower rate)."""
    servers = start_servers(scenes=300, seed=21, rate=6000)
    second = FakeStashDB(None, api_key=SECOND_KEY, max_requests_per_minute=SECOND_RATE).start()
    endpoint = second.url
    second.load_world(add_second_box(servers.library, endpoint, seed=21))
    servers.library.world.stash_boxes.append({"endpoint": endpoint, "api_key": SECOND_KEY, "name": "Second Box",
                                              "max_requests_per_minute": SECOND_RATE})
    yield servers, second
    servers.stash.stop()
    servers.stashdb.stop()
    second.stop()


def scene_tags(servers) -> dict[int, set[int]]:
    """Every scene's tag ids in the fake Stash."""
    return {sid: set(row["tag_ids"]) for sid, row in servers.library.world.table("scene").items()}


def tagger_match(local_tags: list[dict], endpoint: str, remote_tag: dict) -> int | None:
    """Brute force of Stash's Tagger: StashID for this endpoint, else name, else alias; lowest id."""
    def fold(text: str) -> str:
        return "".join(c.lower() if "A" <= c <= "Z" else c for c in text)

    rules = (
        lambda t: any(s["endpoint"] == endpoint and s["stash_id"] == remote_tag["id"] for s in t["stash_ids"]),
        lambda t: fold(t["name"]) == fold(remote_tag["name"]),
        lambda t: any(fold(a) == fold(remote_tag["name"]) for a in t["aliases"]),
    )
    for rule in rules:
        hits = [t["id"] for t in local_tags if rule(t)]
        if hits:
            return min(hits)
    return None


def oracle(servers, boxes: dict[str, dict]) -> dict[int, set[int]]:
    """Tags each scene must gain from every box (endpoint -> that box's world), by brute force."""
    world = servers.library.world
    local_tags = list(world.table("tag").values())
    gains: dict[int, set[int]] = {}
    for scene_id, row in world.table("scene").items():
        gain: set[int] = set()
        for link in row["stash_ids"]:
            remote = boxes.get(link["endpoint"], {}).get("scenes", {}).get(link["stash_id"])
            if remote is None or remote["deleted"]:
                continue
            for tag in remote["tags"]:
                local = None if tag["deleted"] else tagger_match(local_tags, link["endpoint"], tag)
                if local is not None:
                    gain.add(local)
        if gain - set(row["tag_ids"]):
            gains[scene_id] = gain - set(row["tag_ids"])
    return gains


def context(servers, tmp_path: Path, **settings) -> RunContext:
    """A sync run context as the entry script wires it."""
    stash = stash_client.connect(servers.server_connection(tmp_path), lean=True)
    return RunContext(stash, Settings(**settings), {"mode": "sync_scene_tags"}, tmp_path, lambda f: None, lambda s: None)


def test_every_box_adds_its_own_tags_with_per_endpoint_matching(two_boxes, tmp_path):
    servers, second = two_boxes
    boxes = {servers.library.endpoint: servers.library.stashdb, second.url: second.world}
    before = scene_tags(servers)
    expected = oracle(servers, boxes)
    only_first = oracle(servers, {servers.library.endpoint: servers.library.stashdb})
    assert expected != only_first, "the second box must contribute tags"
    result = run_sync_scene_tags(context(servers, tmp_path))
    after = scene_tags(servers)
    assert {sid: after[sid] - before[sid] for sid in after if after[sid] != before[sid]} == expected
    assert [box.endpoint for box in result.boxes] == [servers.library.endpoint, second.url]
    assert result.tags_added == sum(box.tags_added for box in result.boxes) == sum(map(len, expected.values()))
    assert second.requests == result.boxes[1].stashdb_requests > 0
    assert servers.stashdb.requests == result.boxes[0].stashdb_requests
    with sqlite3.connect(tag_sync_history.history_path(tmp_path)) as conn:
        endpoints = {row[0] for row in conn.execute("SELECT DISTINCT endpoint FROM scene_answers")}
    assert endpoints == {servers.library.endpoint, second.url}
    assert second.url in str(result) and servers.library.endpoint in str(result)


def test_a_first_box_tag_id_never_matches_on_the_second_box(two_boxes, tmp_path):
    servers, second = two_boxes
    foreign = [t for s in second.world["scenes"].values() for t in s["tags"] if t["name"].startswith("Foreign Link")]
    assert foreign, "the second box has tags whose ids are first-box StashIDs of local tags"
    result = run_sync_scene_tags(context(servers, tmp_path))
    assert {t["name"] for t in foreign} <= set(result.boxes[1].unmatched_tag_names)


def test_preview_reports_each_box_in_one_csv_and_writes_nothing(two_boxes, tmp_path):
    servers, second = two_boxes
    before = scene_tags(servers)
    ctx = context(servers, tmp_path)
    preview = run_sync_scene_tags(RunContext(ctx.stash, ctx.settings, {"mode": "sync_scene_tags", "dry_run": "true"},
                                             tmp_path, ctx.progress, ctx.sleep))
    assert scene_tags(servers) == before
    rows = list(csv.DictReader(Path(preview.report_path).open(encoding="utf-8")))
    assert {r["endpoint"] for r in rows} == {servers.library.endpoint, second.url}
    assert all(box.scenes_seen <= 200 for box in preview.boxes)


def test_the_setting_names_one_box(two_boxes, tmp_path):
    servers, second = two_boxes
    result = run_sync_scene_tags(context(servers, tmp_path, stash_box_endpoint="Second Box"))
    assert [box.endpoint for box in result.boxes] == [second.url]
    assert servers.stashdb.requests == 0 and second.requests > 0


def test_a_box_whose_key_is_rejected_does_not_stop_the_other(two_boxes, tmp_path):
    servers, second = two_boxes
    second.api_key = "not-the-key-stash-has"
    before = scene_tags(servers)
    expected = oracle(servers, {servers.library.endpoint: servers.library.stashdb})
    result = run_sync_scene_tags(context(servers, tmp_path))
    after = scene_tags(servers)
    assert {sid: after[sid] - before[sid] for sid in after if after[sid] != before[sid]} == expected
    assert result.boxes[1].errors == 1 and result.errors >= 1


def test_boxes_without_an_api_key_are_skipped():
    boxes = [StashBox("https://a.example/graphql", "key-a", "A", 0), StashBox("https://b.example/graphql", "", "B", 0),
             StashBox("https://stashdb.org/graphql", "key-c", "StashDB", 0)]
    assert stash_boxes_to_sync(boxes) == [boxes[0], boxes[2]]
    with pytest.raises(SettingsError, match=r"B \(https://b.example/graphql\) has no API key"):
        stash_boxes_to_sync(boxes, "B")  # named, but stash-box would answer it "not authorized"
    with pytest.raises(SettingsError, match="API key"):
        stash_boxes_to_sync([boxes[1]])
    with pytest.raises(SettingsError):
        stash_boxes_to_sync([])


def test_each_box_gets_its_own_limiter_at_its_own_rate():
    slow, fast = StashBox("https://slow.example/graphql", "k", "Slow", 60), StashBox("https://fast.example/graphql", "k", "Fast", 0)
    settings = Settings()
    slow_client, fast_client = stashdb_client_for(slow, settings, lambda s: None), stashdb_client_for(fast, settings, lambda s: None)
    assert slow_client.limiter is not fast_client.limiter
    assert slow_client.limiter.rate_per_s == pytest.approx(60 * RATE_SAFETY_FACTOR / 60)
    assert fast_client.limiter.rate_per_s == pytest.approx(240 * RATE_SAFETY_FACTOR / 60)
    lowered = stashdb_client_for(fast, Settings(max_requests_per_minute=30), lambda s: None)
    assert lowered.limiter.rate_per_s == pytest.approx(30 * RATE_SAFETY_FACTOR / 60)


def test_second_box_key_never_leaks(two_boxes, tmp_path):
    from tests.conftest import run_plugin

    servers, _second = two_boxes
    run = run_plugin({"server_connection": servers.server_connection(tmp_path), "args": {"mode": "sync_scene_tags"}})
    assert run.returncode == 0, run.stderr
    for secret in (SECOND_KEY, STASHDB_API_KEY):
        assert secret not in run.stdout and secret not in run.stderr
    output = run.document["output"]
    assert len(output["boxes"]) == 2


def test_reset_of_one_box_keeps_the_other_boxes_history(two_boxes, tmp_path):
    from tag_manager import run_reset_sync_history

    servers, second = two_boxes
    run_sync_scene_tags(context(servers, tmp_path))
    ctx = context(servers, tmp_path)
    reset = run_reset_sync_history(RunContext(ctx.stash, ctx.settings, {"mode": "reset_sync_history",
                                                                        "endpoint": "Second Box"},
                                              tmp_path, ctx.progress, ctx.sleep))
    assert reset.endpoints == (second.url,) and reset.scenes_forgotten > 0
    with sqlite3.connect(tag_sync_history.history_path(tmp_path)) as conn:
        endpoints = {row[0] for row in conn.execute("SELECT endpoint FROM scene_answers")}
    assert endpoints == {servers.library.endpoint}
