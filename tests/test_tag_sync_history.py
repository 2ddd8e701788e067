"""Scene tag sync history: a tag the user removed is never added back; new StashDB tags still are."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import pytest

from tagman_base import stash_client
from tagman_tagsync import history as tag_sync_history
from tagman_tagsync import history_schema as tag_sync_history_schema
from tagman_base.settings import Settings
from tagman_base.run_context import RunContext
from tag_manager import run_reset_sync_history, run_sync_scene_tags
from tests.conftest import Servers
from tagman_base.errors import SyncHistoryError


@pytest.fixture
def servers(fast_servers):
    """This file's tests run on the library whose StashDB never makes the limiter wait long."""
    return fast_servers


def scene_tags(servers: Servers) -> dict[int, set[int]]:
    """Every scene's tag ids as the fake Stash holds them now."""
    return {sid: set(row["tag_ids"]) for sid, row in servers.library.world.table("scene").items()}


def context(servers: Servers, tmp_path: Path, **args) -> RunContext:
    """A run context wired as the entry script wires it."""
    stash = stash_client.connect(servers.server_connection(tmp_path), lean=True)
    return RunContext(stash, Settings(), {"mode": "sync_scene_tags", **args}, tmp_path, lambda f: None, lambda s: None)


def sync(servers: Servers, tmp_path: Path, **args):
    """One scene tag sync (or preview with dry_run="true") in-process."""
    return run_sync_scene_tags(context(servers, tmp_path, **args))


def settled_rows(tmp_path: Path) -> list[tuple]:
    """(endpoint, scene id, StashDB scene id, StashDB tag id, local tag id, origin) of every settled tag."""
    path = tag_sync_history.history_path(tmp_path)
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT endpoint, scene_id, stashdb_id, stashdb_tag_id, local_tag_id, origin "
                            "FROM settled_tags ORDER BY 1, 2, 3, 4").fetchall()


def assert_nothing_withheld(servers: Servers, tmp_path: Path) -> None:
    """Every tag the history calls settled is on its scene (valid while the user removed nothing)."""
    tags = scene_tags(servers)
    for _endpoint, scene_id, _sdb, _tag, local_id, _origin in settled_rows(tmp_path):
        assert local_id in tags[scene_id], f"scene {scene_id} lacks settled tag {local_id}"


def remove_tags(servers: Servers, removals: dict[int, set[int]]) -> None:
    """Remove tags from scenes in Stash, as a user would."""
    world = servers.library.world
    for scene_id, tag_ids in removals.items():
        row = world.get("scene", scene_id)
        world.update_entity("scene", scene_id, tag_ids=[t for t in row["tag_ids"] if t not in tag_ids])


def added_by_first_sync(servers: Servers, tmp_path: Path) -> dict[int, set[int]]:
    """Run one sync and return what it added per scene."""
    before = scene_tags(servers)
    sync(servers, tmp_path)
    after = scene_tags(servers)
    return {sid: after[sid] - before[sid] for sid in after if after[sid] != before[sid]}


def some_removals(added: dict[int, set[int]], scenes: int = 12) -> dict[int, set[int]]:
    """One added tag off each of the first ``scenes`` scenes that gained tags."""
    return {sid: {min(tags)} for sid, tags in sorted(added.items())[:scenes]}


def linked_stashdb_scene(servers: Servers, scene_id: int) -> dict:
    """The StashDB scene a local scene is linked to."""
    return servers.library.stashdb["scenes"][servers.library.scene_link[scene_id]]


def test_removed_tags_are_never_re_added(servers, tmp_path):
    added = added_by_first_sync(servers, tmp_path)
    assert added
    assert_nothing_withheld(servers, tmp_path)
    removals = some_removals(added)
    remove_tags(servers, removals)
    before = scene_tags(servers)
    fed = sync(servers, tmp_path)  # a change-feed run: settled tags are not even looked at
    assert fed.strategy == "feed" and fed.tags_added == 0 and fed.stash_mutations == 0
    again = sync(servers, tmp_path, full_recheck="true")
    assert scene_tags(servers) == before
    assert again.strategy == "full" and again.tags_added == 0 and again.stash_mutations == 0
    assert again.tags_skipped_by_history == sum(map(len, removals.values()))


def test_a_tag_the_scene_already_had_is_settled_too(servers, tmp_path):
    """A StashDB tag whose match the scene had before the first sync stays removed once removed."""
    before = scene_tags(servers)
    sync(servers, tmp_path)
    present = [(sid, local) for _e, sid, _s, _t, local, origin in settled_rows(tmp_path)
               if origin == "present" and local in before[sid]]
    assert present, "the generated library has scenes that already carry some StashDB tags"
    removals = {sid: {local} for sid, local in present[:8]}
    remove_tags(servers, removals)
    expected = scene_tags(servers)
    sync(servers, tmp_path)
    assert scene_tags(servers) == expected


def test_a_new_upstream_tag_is_added_and_the_removed_one_is_not(servers, tmp_path):
    added = added_by_first_sync(servers, tmp_path)
    scene_id, tag_ids = sorted(added.items())[0]
    remove_tags(servers, {scene_id: tag_ids})
    world, remote = servers.library.world, linked_stashdb_scene(servers, scene_id)
    candidates = [t for t in world.table("tag").values()
                  if t["id"] not in scene_tags(servers)[scene_id] and t["id"] not in tag_ids and not t["stash_ids"]
                  and not any(r["name"].lower() == t["name"].lower() for r in remote["tags"])]
    newcomer = candidates[0]
    new_tag = {"id": "11111111-2222-4333-8444-555555555555", "name": newcomer["name"], "aliases": [], "deleted": False}
    servers.stashdb.edit_scene(remote["id"], tags=list(remote["tags"]) + [new_tag])
    sync(servers, tmp_path)
    assert scene_tags(servers)[scene_id] & tag_ids == set()
    assert newcomer["id"] in scene_tags(servers)[scene_id]


@pytest.mark.parametrize("how", ["name", "alias", "stash_id"])
def test_a_newly_matchable_tag_is_added(servers, tmp_path, how):
    """An unmatched StashDB tag becomes a local tag's name, alias or StashID link: the next run adds it."""
    result = sync(servers, tmp_path)
    assert result.tags_unmatched
    lib = servers.library
    scene_id, remote_tag = next(
        (sid, tag) for sid, kind in sorted(lib.scene_kind.items()) if kind == "normal"
        for tag in linked_stashdb_scene(servers, sid)["tags"]
        if lib.tag_kind[tag["id"]] == "unmatched" and not tag["deleted"])
    world = lib.world
    if how == "name":
        tag_id = world.add_entity("tag", name=remote_tag["name"].upper())
    elif how == "alias":
        tag_id = world.add_entity("tag", name="Local Name For It", aliases=[remote_tag["name"].lower()])
    else:
        tag_id = world.add_entity("tag", name="Linked Local Tag",
                                  stash_ids=[{"endpoint": lib.endpoint, "stash_id": remote_tag["id"]}])
    sync(servers, tmp_path)
    assert tag_id in scene_tags(servers)[scene_id]


def test_a_relinked_scene_starts_fresh(servers, tmp_path):
    added = added_by_first_sync(servers, tmp_path)
    scene_id, tag_ids = next((sid, tags) for sid, tags in sorted(added.items())
                             if servers.library.scene_kind[sid] == "normal")
    remove_tags(servers, {scene_id: tag_ids})
    old = linked_stashdb_scene(servers, scene_id)
    new_id = "99999999-8888-4777-8666-555555555555"
    servers.library.stashdb["scenes"][new_id] = {"id": new_id, "title": "Re-linked", "deleted": False,
                                                 "tags": list(old["tags"]), "fingerprints": [],
                                                 "updated": "2025-06-01T12:00:00.5Z"}
    world = servers.library.world
    others = [s for s in world.get("scene", scene_id)["stash_ids"] if s["endpoint"] != servers.library.endpoint]
    world.update_entity("scene", scene_id, stash_ids=others + [{"endpoint": servers.library.endpoint, "stash_id": new_id}])
    sync(servers, tmp_path)
    assert tag_ids <= scene_tags(servers)[scene_id]
    assert {row[2] for row in settled_rows(tmp_path) if row[1] == scene_id} == {new_id}


def test_preview_shows_what_history_skips_and_records_nothing(servers, tmp_path):
    added = added_by_first_sync(servers, tmp_path)
    recorded = settled_rows(tmp_path)
    removals = some_removals(added, scenes=200)
    remove_tags(servers, removals)
    preview = sync(servers, tmp_path, dry_run="true")
    assert settled_rows(tmp_path) == recorded
    rows = list(csv.DictReader(Path(preview.report_path).open(encoding="utf-8")))
    skipped = {int(r["scene_id"]): set(filter(None, r["skipped_by_history"].split("; "))) for r in rows}
    world = servers.library.world
    previewed = {sid for sid in removals if sid in skipped}
    assert previewed and preview.tags_skipped_by_history == sum(len(removals[s]) for s in previewed)
    for sid in previewed:
        assert skipped[sid] == {world.get("tag", t)["name"] for t in removals[sid]}
        assert rows[[int(r["scene_id"]) for r in rows].index(sid)]["tags_to_add"] == ""


def test_reset_forgets_so_removed_tags_come_back(servers, tmp_path):
    added = added_by_first_sync(servers, tmp_path)
    removals = some_removals(added)
    remove_tags(servers, removals)
    reset = run_reset_sync_history(context(servers, tmp_path, mode="reset_sync_history"))
    assert reset.endpoints == (servers.library.endpoint,) and reset.tags_forgotten > 0
    assert settled_rows(tmp_path) == []
    sync(servers, tmp_path)
    after = scene_tags(servers)
    for sid, tags in removals.items():
        assert tags <= after[sid]


def test_reset_of_an_unknown_box_is_a_clear_error(servers, tmp_path):
    from tagman_base.errors import SettingsError

    sync(servers, tmp_path)
    with pytest.raises(SettingsError, match="neither a stash-box configured"):
        run_reset_sync_history(context(servers, tmp_path, mode="reset_sync_history", endpoint="https://nowhere.example"))
    assert settled_rows(tmp_path)


def test_a_write_stash_rejects_is_not_recorded(servers, tmp_path):
    servers.stash.fail_next(1000, status=200, body='{"errors": [{"message": "boom"}], "data": null}',
                            operation="TagSyncAddTagsBatch")
    servers.stash.fail_next(1000, status=200, body='{"errors": [{"message": "boom"}], "data": null}',
                            operation="TagSyncAddTags")
    result = sync(servers, tmp_path)
    assert result.tags_added == 0 and result.errors > 0
    assert not [row for row in settled_rows(tmp_path) if row[5] == "added"]
    assert_nothing_withheld(servers, tmp_path)
    servers.stash.clear_faults()
    sync(servers, tmp_path)
    assert [row for row in settled_rows(tmp_path) if row[5] == "added"]
    assert_nothing_withheld(servers, tmp_path)


def test_a_crash_between_write_and_record_re_adds_harmlessly(servers, tmp_path, monkeypatch):
    """The writes land, the process dies before recording: the next run settles them as present."""
    expected_before = scene_tags(servers)
    expected = servers.library.expected_tag_additions(expected_before)
    real_record = tag_sync_history.SyncHistory.record

    def die_on_added(self, records):
        records = list(records)
        added = [(r.scene_id, s.local_tag_id) for r in records for s in r.settled if s.origin == "added"]
        for scene_id, local_id in added:  # recorded only once Stash has the tag
            assert local_id in servers.library.world.get("scene", scene_id)["tag_ids"]
        if added:
            raise KeyboardInterrupt("killed between write and record")
        real_record(self, records)

    monkeypatch.setattr(tag_sync_history.SyncHistory, "record", die_on_added)
    with pytest.raises(KeyboardInterrupt):
        sync(servers, tmp_path)
    monkeypatch.setattr(tag_sync_history.SyncHistory, "record", real_record)
    assert not [row for row in settled_rows(tmp_path) if row[5] == "added"]
    sync(servers, tmp_path)
    after = scene_tags(servers)
    assert {sid: after[sid] - expected_before[sid] for sid in after if after[sid] != expected_before[sid]} == expected
    assert_nothing_withheld(servers, tmp_path)


# -- the file ---------------------------------------------------------------------------------------


def test_fresh_file_is_wal_at_the_current_version(tmp_path):
    conn = tag_sync_history.open_history(tmp_path)
    try:
        assert tag_sync_history_schema.schema_version(conn) == tag_sync_history_schema.SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        names = {n for _t, n, _s in tag_sync_history_schema.schema_signature(conn)}
        assert {"scene_answers", "settled_tags"} <= names
    finally:
        conn.close()


def test_a_file_from_a_newer_version_is_refused(tmp_path):
    path = tag_sync_history.history_path(tmp_path)
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {tag_sync_history_schema.SCHEMA_VERSION + 1}")
    with pytest.raises(SyncHistoryError, match="newer version"):
        tag_sync_history.open_history(tmp_path)


def test_an_unreadable_file_is_a_clear_error_and_reset_replaces_it(tmp_path):
    path = tag_sync_history.history_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not an SQLite file at all" * 100)
    with pytest.raises(SyncHistoryError, match="Reset Scene Tag Sync History"):
        tag_sync_history.open_history(tmp_path)
    tag_sync_history.reset_history(tmp_path)
    assert not path.exists()
    tag_sync_history.open_history(tmp_path).close()
