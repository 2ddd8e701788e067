"""Auth cases a user meets are one clear answer each: an anonymous stash-box stops before any write."""

from __future__ import annotations

import pytest

from tests.conftest import run_plugin


@pytest.mark.parametrize("key", ["", "   "])
def test_empty_stash_box_key_is_one_line_error_before_any_write(servers, tmp_path, key):
    servers.library.world.stash_boxes[0]["api_key"] = key
    before = {sid: tuple(row["tag_ids"]) for sid, row in servers.library.world.table("scene").items()}
    run = run_plugin({"server_connection": servers.server_connection(tmp_path), "args": {"mode": "sync_scene_tags"}})
    assert run.returncode == 1
    error = run.document["error"]
    assert "\n" not in error and "StashDB" in error and servers.stashdb.url in error
    assert "Settings › Metadata Providers › Stash-box Endpoints" in error
    assert servers.stashdb.requests <= 1
    assert servers.stash.count("TagSyncAddTags") == servers.stash.count("TagSyncAddTagsBatch") == 0
    assert {sid: tuple(row["tag_ids"]) for sid, row in servers.library.world.table("scene").items()} == before


def test_wrong_stash_box_key_stops_after_one_request(servers, tmp_path):
    """stash-box answers a wrong non-empty key with HTTP 401: the run stops at once, nothing written."""
    servers.library.world.stash_boxes[0]["api_key"] = "wrong-key"
    run = run_plugin({"server_connection": servers.server_connection(tmp_path), "args": {"mode": "sync_scene_tags"}})
    assert run.returncode == 1 and "HTTP 401" in run.document["error"]
    assert servers.stashdb.requests == 1
    assert servers.stash.count("TagSyncAddTags") == servers.stash.count("TagSyncAddTagsBatch") == 0
