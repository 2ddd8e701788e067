"""Scene tag sync against the fake Stash and fake StashDB: outcomes, passes, dry run and failures."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from tag_manager import run_sync_scene_tags
from tagman_base.errors import AuthError, StashDBUnavailable
from tests.conftest import Servers, expected_additions, mutations_sent, scene_tags
from tests.conftest import run_tag_sync as sync
from tests.conftest import tag_sync_context as context

LINKED_KINDS = ("normal", "fallback", "wrong_hit", "deleted", "missing")


def local_name(servers: Servers, tag_id: int) -> str:
    return servers.library.world.get("tag", tag_id)["name"]


def kind_count(servers: Servers, *kinds: str) -> int:
    return sum(1 for k in servers.library.scene_kind.values() if k in kinds)


def test_sync_adds_exactly_what_the_tagger_would_and_removes_nothing(servers, tmp_path):
    before = scene_tags(servers)
    expected = expected_additions(servers)
    assert expected, "the generated library must need some tags"
    result = sync(servers, tmp_path)
    after = scene_tags(servers)
    for sid in after:
        assert before[sid] <= after[sid], f"scene {sid} lost tags"
        assert after[sid] - before[sid] == expected.get(sid, set()), f"scene {sid}"
    assert result.scenes_seen == kind_count(servers, *LINKED_KINDS)
    assert result.matched_by_fingerprint == kind_count(servers, "normal")
    assert result.matched_by_id == kind_count(servers, "fallback", "wrong_hit")
    assert result.not_found == kind_count(servers, "missing")
    assert result.deleted_on_stashdb == kind_count(servers, "deleted")
    assert result.scenes_updated == len(expected)
    assert result.tags_added == sum(len(v) for v in expected.values())
    assert result.errors == 0 and not result.dry_run and result.report_path is None
    assert result.stash_mutations == mutations_sent(servers)
    assert result.stash_mutations <= len({frozenset(v) for v in expected.values()})
    assert servers.stashdb.throttled == 0


def test_requests_are_batched_and_bounded(servers, tmp_path):
    result = sync(servers, tmp_path)
    calls = servers.stashdb.operations
    with_prints = kind_count(servers, *LINKED_KINDS)
    fallbacks = kind_count(servers, "fallback", "wrong_hit", "missing")
    assert calls["FindScenesBySceneFingerprints"] == math.ceil(with_prints / 40)
    assert calls["FindScene"] == fallbacks
    # on a busy machine the fake may answer 429 to a request that arrived early; the retry is the
    # only extra request, so the requests answered are exactly the bound whatever the load
    assert result.stashdb_requests - servers.stashdb.throttled == math.ceil(with_prints / 40) + fallbacks
    sizes = [len(c["variables"]["fingerprints"]) for c in servers.stashdb.calls
             if c["operation"] == "FindScenesBySceneFingerprints"]
    assert max(sizes) == 40 and all(size <= 40 for size in sizes)


def test_second_run_converges_with_no_writes(servers, tmp_path):
    sync(servers, tmp_path)
    servers.stash.clear_log()
    again = sync(servers, tmp_path)
    assert again.tags_added == 0 and again.scenes_updated == 0 and again.stash_mutations == 0
    assert mutations_sent(servers) == 0


def test_wrong_fingerprint_hit_never_tags_from_the_decoy(servers, tmp_path):
    lib = servers.library
    wrong = lib.scenes_of_kind("wrong_hit")
    assert wrong
    expected = expected_additions(servers)
    before = scene_tags(servers)
    sync(servers, tmp_path)
    after = scene_tags(servers)
    for sid in wrong:
        assert after[sid] - before[sid] == expected.get(sid, set())


def test_dry_run_writes_nothing_caps_at_200_and_reports(tmp_path):
    from tests.conftest import start_servers

    servers = start_servers(scenes=400, seed=11)
    try:
        before = scene_tags(servers)
        expected = expected_additions(servers)
        result = sync(servers, tmp_path, dry_run=True)
        assert mutations_sent(servers) == 0
        assert scene_tags(servers) == before
        assert result.dry_run and result.scenes_seen == 200 and result.stash_mutations == 0
        rows = list(csv.DictReader(Path(result.report_path).open(encoding="utf-8")))
        assert Path(result.report_path).parent == tmp_path / "reports"
        previewed = {int(r["scene_id"]): r for r in rows}
        would_add = {sid: set(filter(None, r["tags_to_add"].split("; "))) for sid, r in previewed.items()}
        would_add = {sid: names for sid, names in would_add.items() if names}
        assert result.scenes_updated == len(would_add)
        for sid, names in would_add.items():
            assert names == {local_name(servers, t) for t in expected[sid]}
        assert set(would_add) <= set(expected)
    finally:
        servers.stash.stop()
        servers.stashdb.stop()


def test_sync_dry_run_setting_also_previews(servers, tmp_path):
    result = sync(servers, tmp_path, sync_dry_run=True)
    assert result.dry_run and mutations_sent(servers) == 0


def test_blacklist_and_stash_exclude_patterns(servers, tmp_path):
    unfiltered = expected_additions(servers)
    names = sorted({local_name(servers, t) for tags in unfiltered.values() for t in tags})
    literal, regex_target = names[0], names[1]
    servers.library.world.exclude_tag_patterns = [f"^{regex_target}$"]
    blocked = {literal.casefold(), regex_target.casefold()}
    expected = expected_additions(servers, blacklisted=lambda name: name.casefold() in blocked)
    before = scene_tags(servers)
    result = sync(servers, tmp_path, tag_blacklist=f"  {literal.upper()} ,\n/nothing-matches-this/")
    after = scene_tags(servers)
    for sid in after:
        added = after[sid] - before[sid]
        assert added == expected.get(sid, set())
        assert not {local_name(servers, t).casefold() for t in added} & blocked
    assert result.tags_blacklisted > 0


def test_user_edit_during_the_run_survives(servers, tmp_path):
    """A tag the user adds after the sync read the scene (before it writes) is kept."""
    ctx = context(servers, tmp_path)
    expected = expected_additions(servers)
    target = next(iter(expected))
    user_tag = servers.library.world.add_entity("tag", name="Added By The User Meanwhile")
    real_call = ctx.stash.call

    def call_with_user_edit(query, variables=None):
        if "TagSyncAddTags" in query and user_tag not in servers.library.world.get("scene", target)["tag_ids"]:
            row = servers.library.world.get("scene", target)
            servers.library.world.update_entity("scene", target, tag_ids=list(row["tag_ids"]) + [user_tag])
        return real_call(query, variables)

    ctx.stash.call = call_with_user_edit
    before = scene_tags(servers)
    run_sync_scene_tags(ctx)
    final = scene_tags(servers)[target]
    assert user_tag in final
    assert before[target] | expected[target] | {user_tag} == final


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_transient_stashdb_failure_is_retried_to_the_same_outcome(servers, tmp_path, status):
    expected = expected_additions(servers)
    before = scene_tags(servers)
    servers.stashdb.fail_next(1, status=status, headers={"Retry-After": "0"} if status == 429 else None)
    result = sync(servers, tmp_path)
    after = scene_tags(servers)
    assert {sid: after[sid] - before[sid] for sid in expected} == expected
    assert result.errors == 0


def test_failed_batch_is_skipped_and_counted(servers, tmp_path):
    expected = expected_additions(servers)
    before = scene_tags(servers)
    servers.stashdb.fail_next(4, status=503)  # the first fingerprint batch fails on all 4 attempts
    result = sync(servers, tmp_path)
    first_batch = {int(i) for i in servers.stash.requests("TagSyncScenes")[0][1]["ids"]}
    after = scene_tags(servers)
    assert result.errors == 1
    for sid in after:
        want = set() if sid in first_batch else expected.get(sid, set())
        assert after[sid] - before[sid] == want, sid
    assert result.stashdb_requests == servers.stashdb.requests


def test_stashdb_auth_failure_stops_with_a_clear_error(servers, tmp_path):
    servers.stashdb.api_key = "a-different-key"
    with pytest.raises(AuthError, match="Settings › Metadata Providers"):
        sync(servers, tmp_path)
    assert mutations_sent(servers) == 0


def test_stashdb_down_for_good_stops_after_a_few_failures(servers, tmp_path):
    servers.stashdb.stop()
    with pytest.raises(StashDBUnavailable, match="in a row"):
        sync(servers, tmp_path)


def test_progress_rises_to_one(servers, tmp_path):
    seen = []
    run_sync_scene_tags(context(servers, tmp_path, progress=seen.append))
    assert seen[-1] == 1.0 and len(seen) > 5
    assert all(0 <= a <= b <= 1 for a, b in zip(seen, seen[1:]))


def test_preview_survives_an_unwritable_report_folder(servers, tmp_path):
    (tmp_path / "reports").write_text("a file where the folder should be")
    result = sync(servers, tmp_path, dry_run=True)
    assert result.dry_run and result.report_path is None and result.scenes_updated > 0
