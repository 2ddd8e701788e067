"""The README's "What happens when ..." table, one test per row, through the real sync."""

from __future__ import annotations

import json

import pytest

from tagman_base.errors import AuthError
from tests.conftest import expected_additions, run_tag_sync, scene_tags, tag_sync_context

GRAPHQL_ERROR = json.dumps({"errors": [{"message": "too many scenes"}], "data": None})


def changes(servers, before):
    after = scene_tags(servers)
    return {sid: after[sid] - before[sid] for sid in after if after[sid] != before[sid]}


@pytest.mark.parametrize("status, body, headers", [
    (429, "", {"Retry-After": "1"}),
    (429, "", None),
    (500, "", None),
    (502, "<html>bad gateway</html>", None),
    (503, "", None),
    (200, "this is not json", None),
], ids=["429-retry-after", "429-backoff", "500", "502", "503", "malformed-body"])
def test_stashdb_transient_fault_is_retried_and_the_run_is_complete(servers, tmp_path, status, body, headers):
    expected, before = expected_additions(servers), scene_tags(servers)
    servers.stashdb.fail_next(2, status=status, body=body, headers=headers)
    result = run_tag_sync(servers, tmp_path)
    assert changes(servers, before) == expected
    assert result.errors == 0
    assert result.stashdb_requests == servers.stashdb.requests


def test_stashdb_graphql_error_skips_that_batch_only(servers, tmp_path):
    expected, before = expected_additions(servers), scene_tags(servers)
    servers.stashdb.fail_next(1, status=200, body=GRAPHQL_ERROR)
    result = run_tag_sync(servers, tmp_path)
    first_batch = {int(i) for i in servers.stash.requests("TagSyncScenes")[0][1]["ids"]}
    assert result.errors == 1
    assert changes(servers, before) == {sid: tags for sid, tags in expected.items() if sid not in first_batch}


def test_stashdb_401_stops_the_run(servers, tmp_path):
    servers.stashdb.fail_next(1, status=401)
    with pytest.raises(AuthError, match="Check the API key"):
        run_tag_sync(servers, tmp_path)


def test_rejected_batch_mutation_is_retried_field_by_field(servers, tmp_path):
    """Stash rejects a whole batch request once: every group in it is written on its own instead."""
    expected, before = expected_additions(servers), scene_tags(servers)
    error = json.dumps({"errors": [{"message": "database is busy elsewhere"}], "data": None})
    servers.stash.fail_next(1, status=200, body=error, operation="TagSyncAddTagsBatch")
    result = run_tag_sync(servers, tmp_path)
    assert changes(servers, before) == expected
    assert result.errors == 0 and servers.stash.count("TagSyncAddTags") > 0


def test_deleted_scene_and_tag_on_stashdb_are_left_alone(servers, tmp_path):
    before = scene_tags(servers)
    result = run_tag_sync(servers, tmp_path)
    deleted_scenes = servers.library.scenes_of_kind("deleted")
    assert deleted_scenes and all(scene_tags(servers)[sid] == before[sid] for sid in deleted_scenes)
    assert result.deleted_on_stashdb == len(deleted_scenes)
    deleted_tags = {t["id"] for t in servers.library.stashdb_tags.values() if t["deleted"]}
    assert deleted_tags and result.tags_deleted_on_stashdb > 0


def test_scene_deleted_by_the_user_mid_run_costs_only_that_scene(servers, tmp_path):
    """Its group's bulk update fails in Stash; the other groups and scenes still get their tags."""
    from tag_manager import run_sync_scene_tags

    expected, before = expected_additions(servers), scene_tags(servers)
    doomed = sorted(expected)[len(expected) // 2]
    ctx = tag_sync_context(servers, tmp_path)
    real_call = ctx.stash.call

    def delete_before_writing(query, variables=None):
        if "TagSyncAddTags" in query and servers.library.world.get("scene", doomed) is not None:
            servers.library.world.delete_entity("scene", doomed)
        return real_call(query, variables)

    ctx.stash.call = delete_before_writing
    result = run_sync_scene_tags(ctx)
    expected.pop(doomed)
    assert changes(servers, {k: v for k, v in before.items() if k != doomed}) == expected
    assert result.errors == 1 and result.scenes_updated == len(expected)


def test_many_stashdb_graphql_errors_in_a_row_do_not_stop_the_run(servers, tmp_path):
    """StashDB answering (e.g. rejecting malformed linked ids) is not StashDB being down."""
    servers.stashdb.fail_next(6, status=200, body=GRAPHQL_ERROR)  # 6 of the 7 fingerprint batches
    result = run_tag_sync(servers, tmp_path)
    assert result.errors == 6 and result.tags_added > 0


def test_writes_decided_before_stashdb_gives_out_still_land(servers, tmp_path):
    """StashDB answers three fingerprint batches, then drops every connection: the run stops, and
    the tags decided from those three batches are written before it does."""
    from tag_manager import run_sync_scene_tags
    from tagman_base.errors import StashDBUnavailable

    before = scene_tags(servers)
    answered = []
    original = servers.stashdb.execute

    def answer_three_then_drop(payload):
        if len(answered) >= 3:
            raise ConnectionResetError("StashDB went away")
        answered.append(payload)
        return original(payload)

    servers.stashdb.execute = answer_three_then_drop
    with pytest.raises(StashDBUnavailable, match="in a row"):
        run_sync_scene_tags(tag_sync_context(servers, tmp_path))
    assert changes(servers, before), "the tags decided from the first batches were written"
