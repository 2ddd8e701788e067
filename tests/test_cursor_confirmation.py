"""Stash's clock (its Date header) confirms a cursor: settled seconds are not re-read, quiet cursors list less.

A smart sync re-reads the mirrored rows of the cursor's second ("recheck") in case an edit raced
their read within that second, and lists a window reaching 26 h of UTC offsets below the cursor.
Once Stash's clock has left that second, the re-read is skipped; once it is 26 h past it, the
window starts at the cursor's own text. These tests pin that neither shortcut ever misses a write.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import pytest

from tagman_mirror.cursor import QUIET_AFTER_S
from tagman_mirror.entities import ENTITY_TYPES
from tagman_mirror.hook import run_cache_sync_scene
from tagman_mirror.runs import cache_full_sync, cache_smart_sync
from tagman_mirror.store import live_stamps_since
from tests.conftest import client_for, ctx_for
from tests.mirror_oracle import assert_mirror_equals


def scene_probes(fake) -> list[dict]:
    """Variables of the scene probes the fake answered, oldest first."""
    return [variables for op, variables in fake.requests() if op == "TagManagerCacheScenesProbe"]


def scene_listings(fake) -> list[dict]:
    return [variables for op, variables in fake.requests() if op == "TagManagerCacheScenesListing"]


def checked_epoch(db, table: str = "scenes") -> int | None:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT checked_epoch FROM sync_state WHERE entity_type = ?", (table,)).fetchone()[0]


def smart_sync_seen_by(fake, stash, db):
    """One smart sync; the scene probe and scene listings it sent."""
    fake.clear_log()
    cache_smart_sync(stash, db)
    return scene_probes(fake)[-1], scene_listings(fake)


def edit_scene_at_the_cursor(world, stash, db) -> None:
    """Move the scene cursor to the clock's current second with an edit, and mirror it."""
    world.update_entity("scene", 5, title="the cursor's second")
    cache_smart_sync(stash, db)


@pytest.fixture
def mirrored(stash, db, clock):
    """A mirror after a full sync, with the clock long past every entity's updated_at (the cursor is quiet)."""
    cache_full_sync(stash, db)
    return db


def test_an_edit_racing_the_read_within_its_second_is_still_caught(mirrored, world, clock, stash, fake):
    clock.tick(60)
    edit_scene_at_the_cursor(world, stash, mirrored)
    world.update_entity("scene", 5, title="again, in the same second")  # the clock has not moved
    probe, _ = smart_sync_seen_by(fake, stash, mirrored)
    assert probe["recheck"] == ["5"]  # Stash's clock had not left the second: re-read
    assert_mirror_equals(mirrored, world)


def test_a_settled_second_is_re_read_once_then_never(mirrored, world, clock, stash, fake):
    clock.tick(60)
    edit_scene_at_the_cursor(world, stash, mirrored)
    clock.tick(1)
    first, _ = smart_sync_seen_by(fake, stash, mirrored)
    second, _ = smart_sync_seen_by(fake, stash, mirrored)
    assert first["recheck"] == ["5"] and not second["withRecheck"]
    world.update_entity("scene", 5, title="a later second shows in the window")
    smart_sync_seen_by(fake, stash, mirrored)
    assert_mirror_equals(mirrored, world)


def test_quiet_cursor_lists_only_what_is_newer_than_its_text(mirrored, world, clock, stash, fake):
    probe, listings = smart_sync_seen_by(fake, stash, mirrored)
    assert not probe["withRecheck"] and listings == []  # an idle sync: one probe, nothing listed
    cursor = probe["window"]["updated_at"]["value"]
    with sqlite3.connect(mirrored) as conn:
        assert conn.execute("SELECT cursor FROM sync_state WHERE entity_type = 'scenes'").fetchone()[0] == cursor


@pytest.mark.parametrize("before, after", [(14, -12), (0, -1)])
@pytest.mark.parametrize("confirmed_after", [2, 3600, QUIET_AFTER_S - 3600, QUIET_AFTER_S])
@pytest.mark.parametrize("later_by", [1, 3600])
def test_any_write_after_a_confirmed_cursor_is_caught_in_any_offset(stash, db, world, clock, fake, before, after,
                                                                    confirmed_after, later_by):
    # performers: the rolling re-verification of scenes, images and galleries would hide a miss
    world.set_offset(timedelta(hours=before))
    clock.tick(60)
    world.update_entity("performer", 7, name="sets the cursor")
    cache_full_sync(stash, db)
    clock.tick(confirmed_after)
    cache_smart_sync(stash, db)  # Stash's clock confirms the cursor this long after it
    assert checked_epoch(db, "performers") is not None
    world.set_offset(timedelta(hours=after))  # a time-zone move or DST change on the server
    clock.tick(later_by)
    world.update_entity("performer", 8, name="written after the offset changed")
    world.update_entity("performer", 7, name="edited again")
    smart_sync_seen_by(fake, stash, db)
    assert_mirror_equals(db, world)


def test_rows_written_outside_a_window_pass_unconfirm_the_cursor(mirrored, world, clock, stash, fake):
    cache_smart_sync(stash, mirrored)
    assert checked_epoch(mirrored) is not None
    clock.tick(5)
    world.update_entity("scene", 3, title="resynced alone")
    run_cache_sync_scene(ctx_for(stash, mirrored, {"id": "3"}))
    assert checked_epoch(mirrored) is None
    probe, _ = smart_sync_seen_by(fake, stash, mirrored)
    assert "3" in probe["recheck"]  # read by the one-scene sync within its second: re-read
    assert_mirror_equals(mirrored, world)


def test_without_a_date_header_nothing_is_skipped(mirrored, world, clock, stash, fake, monkeypatch):
    monkeypatch.setattr("tagman_base.stash_client.http_date_epoch", lambda value: None)  # no Date header
    clock.tick(60)
    edit_scene_at_the_cursor(world, stash, mirrored)
    clock.tick(QUIET_AFTER_S)
    probe, listings = smart_sync_seen_by(fake, stash, mirrored)
    assert probe["recheck"] == ["5"] and probe["window"]["updated_at"]["value"].endswith("-12:00")
    assert_mirror_equals(mirrored, world)


def test_every_type_is_confirmed_when_the_run_is_the_process_s_first_request(db, world, clock, fake):
    """A task is a new process with a new client: the first type's pass still has Stash's clock before it."""
    cache_full_sync(client_for(fake.url), db)
    assert {table: checked_epoch(db, table) is not None for table in ENTITY_TYPES} == dict.fromkeys(ENTITY_TYPES, True)
    clock.tick(5)
    fake.clear_log()
    client = client_for(fake.url)
    cache_smart_sync(client, db)
    operations = [op for op, _variables in fake.requests()]
    assert operations[0] == "TagManagerCacheClock" and operations.count("TagManagerCacheClock") == 1
    assert not [op for op in operations if op.endswith("Listing")]  # every cursor quiet: no window to list
    assert not [v for op, v in fake.requests() if op.endswith("Probe") and v["withRecheck"]]  # every second settled
    assert_mirror_equals(db, world)
    fake.clear_log()
    cache_smart_sync(client, db)  # a client that has Stash's clock already (a watch loop's next run)
    assert "TagManagerCacheClock" not in [op for op, _variables in fake.requests()]


def test_a_window_is_compared_with_the_mirror_from_the_update_time_index_alone(mirrored, world, clock, stash):
    """However far apart the listed ids lie, the comparison reads index pages only, never a table row."""
    clock.tick(60)
    for scene_id in (2, 9):
        world.update_entity("scene", scene_id, title=f"edited {scene_id}")
    cache_smart_sync(stash, mirrored)
    with sqlite3.connect(mirrored) as conn:
        assert live_stamps_since(conn, "scenes", 0) == dict(
            conn.execute("SELECT id, updated_at FROM scenes WHERE deleted_at IS NULL"))
        for table in ENTITY_TYPES:
            statements: list[str] = []
            conn.set_trace_callback(statements.append)
            live_stamps_since(conn, table, 0)
            conn.set_trace_callback(None)
            program = conn.execute(f"EXPLAIN {statements[-1]}").fetchall()  # parameters expanded
            opened = {row[2]: row[3] for row in program if row[1] == "OpenRead"}  # cursor -> its b-tree
            index_root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?",
                                      (f"{table}_updated_epoch",)).fetchone()[0]
            read = {row[2] for row in program if row[1] in ("Column", "Rowid")}
            assert read and all(opened[cursor] == index_root for cursor in read), table
