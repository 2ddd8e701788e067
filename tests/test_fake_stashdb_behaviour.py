"""Behaviours of the real stash-box that the fake StashDB models (see stash-behaviour.md), pinned."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import requests

from tests.fakes.fake_stashdb import DEFAULT_API_KEY, FakeStashDB, stashbox_time

UPDATED_TEXT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d*[1-9])?Z$")


def world() -> dict:
    """Two live scenes sharing nothing, each with one fingerprint."""
    return {"scenes": {
        "a": {"id": "a", "title": "A", "deleted": False, "tags": [],
              "fingerprints": [{"algorithm": "OSHASH", "hash": "aaaa", "duration": 60}]},
        "b": {"id": "b", "title": "B", "deleted": False, "tags": [],
              "fingerprints": [{"algorithm": "OSHASH", "hash": "bbbb", "duration": 60}]},
    }}


def ask(fake: FakeStashDB, query: str, variables: dict) -> dict:
    """One GraphQL request to the fake."""
    body = requests.post(fake.url, json={"query": query, "variables": variables}, headers={"ApiKey": DEFAULT_API_KEY},
                         timeout=10).json()
    assert "errors" not in body, body
    return body["data"]


BY_PRINTS = "query Q($f: [[FingerprintQueryInput!]!]!) { findScenesBySceneFingerprints(fingerprints: $f) { id } }"
BY_ID = "query Q($id: ID!) { findScene(id: $id) { id deleted updated } }"


def test_fake_never_returns_deleted_scenes_by_fingerprint():
    with FakeStashDB(world()) as fake:
        fake.delete_scene("a")
        found = ask(fake, BY_PRINTS, {"f": [[{"hash": "aaaa", "algorithm": "OSHASH"}]]})
        assert found["findScenesBySceneFingerprints"] == [[]]
        assert ask(fake, BY_ID, {"id": "a"})["findScene"]["deleted"] is True


def test_fake_merge_deletes_the_source_moves_fingerprints_and_find_scene_does_not_follow():
    with FakeStashDB(world()) as fake:
        before = ask(fake, BY_ID, {"id": "b"})["findScene"]["updated"]
        fake.merge_scenes("a", "b")
        found = ask(fake, BY_PRINTS, {"f": [[{"hash": "aaaa", "algorithm": "OSHASH"}]]})
        assert found["findScenesBySceneFingerprints"] == [[{"id": "b"}]]
        source = ask(fake, BY_ID, {"id": "a"})["findScene"]
        assert source == {"id": "a", "deleted": True, "updated": source["updated"]}
        assert ask(fake, BY_ID, {"id": "b"})["findScene"]["updated"] > before
        assert ask(fake, BY_ID, {"id": "nope"})["findScene"] is None


def test_fake_updated_is_microsecond_utc_text_that_moves_on_edits():
    clock = [datetime(2026, 3, 1, 12, 0, 0, 120000, tzinfo=timezone.utc)]
    with FakeStashDB(world(), clock=lambda: clock[0]) as fake:
        assert UPDATED_TEXT.match(ask(fake, BY_ID, {"id": "a"})["findScene"]["updated"])
        fake.edit_scene("a", tags=[])
        assert ask(fake, BY_ID, {"id": "a"})["findScene"]["updated"] == "2026-03-01T12:00:00.12Z"
        late = fake.edit_scene("b", tags=[], started_at=clock[0] - timedelta(seconds=5))
        assert late < ask(fake, BY_ID, {"id": "a"})["findScene"]["updated"]


def test_stashbox_time_drops_trailing_zeros():
    assert stashbox_time(datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)) == "2025-06-01T12:00:00.123456Z"
    assert stashbox_time(datetime(2025, 6, 1, 12, 0, 0, 100000, tzinfo=timezone.utc)) == "2025-06-01T12:00:00.1Z"
    assert stashbox_time(datetime(2025, 6, 1, 12, 0, 0, tzinfo=timezone.utc)) == "2025-06-01T12:00:00Z"
