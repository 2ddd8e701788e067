"""The cache_hook mode: Stash's hooks keep the mirror current on every edit, and never fail the edit."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tagman_base.stash_client import StashClient
from tagman_mirror import live_writer
from tagman_mirror.cache_file import open_cache, sync_lock
from tagman_mirror.hook import HookInputError, parse_hook_context
from tagman_mirror.live_writer import LiveWriter
from tagman_mirror.runs import cache_full_sync, cache_smart_sync
from tests.conftest import hook_context, hook_in_process, ROOT, run_plugin, scene_title, stash_input
from tests.mirror_oracle import assert_mirror_equals, derived_tables, fresh_full, snapshot


NOW = "2025-03-01T12:00:00+00:00"
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.mark.parametrize("context, expected", [
    (hook_context(12, "Scene.Update.Post", {"id": "12", "title": "T"}, ["id", "title"]),
     dict(table="scenes", action="Update", ids=(12,), bulk=False, scan=False, input_fields=("id", "title"))),
    (hook_context(13, "Scene.Update.Post", {"ids": ["12", "13", "14"], "tag_ids": {"ids": ["3"], "mode": "ADD"}},
                  ["ids", "tag_ids"]),
     dict(table="scenes", ids=(13,), bulk=True)),
    (hook_context(12, "Scene.Update.Post", None), dict(table="scenes", ids=(12,), scan=True, input_fields=())),
    (hook_context(7, "Scene.Destroy.Post", {"id": "7", "delete_file": False, "delete_generated": True},
                  ["id", "delete_file", "delete_generated"]), dict(action="Destroy", ids=(7,))),
    (hook_context(8, "Image.Destroy.Post", {"ids": ["8", "9"]}, ["ids"]), dict(table="images", ids=(8,), bulk=True)),
    (hook_context(5, "Tag.Merge.Post", {"source": ["3", "4"], "destination": "5"}, ["source", "destination"]),
     dict(table="tags", action="Merge", ids=(5,), sources=(3, 4))),
    (hook_context(2, "Movie.Update.Post", {"id": "2"}, ["id"]), dict(table="groups")),
    (hook_context(2, "Group.Create.Post", {"name": "G"}, ["name"]), dict(table="groups", action="Create")),
    (hook_context(4, "Gallery.Create.Post", {"title": "G"}, ["title"]), dict(table="galleries")),
    (hook_context(4, "Performer.Update.Post", {"id": "4"}, ["id"]), dict(table="performers")),
    (hook_context(4, "Studio.Destroy.Post", {"id": "4"}, ["id"]), dict(table="studios")),
    (hook_context(3, "SceneMarker.Update.Post", {"id": "3"}, ["id"]), dict(table=None)),
    (hook_context(0, "Tag.Merge.Post", {"source": ["3"], "destination": "6"}), dict(ids=(6,), sources=(3,))),
    (hook_context(0, "Scene.Destroy.Post", {"ids": ["1", "2"]}), dict(ids=(1, 2))),
    (json.dumps(hook_context(3, "Tag.Update.Post", {"id": "3"})), dict(table="tags", ids=(3,))),
])
def test_hook_context_as_stash_sends_it(context, expected):
    event = parse_hook_context({"mode": "cache_hook", "hookContext": context})
    for key, value in expected.items():
        assert getattr(event, key) == value, key


@pytest.mark.parametrize("args", [
    {"mode": "cache_hook"},
    {"mode": "cache_hook", "hookContext": {"type": "Scene.Explode.Post", "id": 1}},
    {"mode": "cache_hook", "hookContext": {"type": "Scene.Update.Post", "input": None}},
    {"mode": "cache_hook", "hookContext": {"type": "Scene.Update.Post", "id": "x1"}},
    {"mode": "cache_hook", "hookContext": "{not json"},
])
def test_unusable_hook_context(args):
    with pytest.raises(HookInputError):
        parse_hook_context(args)


def test_hooks_are_off_by_default(stash, db, world, fake, tmp_path):
    cache_full_sync(stash, db)
    world.plugin_settings["tagManager"] = {"cacheDbPath": str(db)}  # liveCache never touched
    before = snapshot(db)
    world.update_entity("scene", 3, title="edited while hooks are off")
    fake.clear_log()
    run = run_plugin(stash_input(fake, tmp_path, "cache_hook", hook_context(3, "Scene.Update.Post", {"id": "3"}, ["id"])))
    assert run.returncode == 0, run.stderr
    assert run.document["output"]["status"] == "off"
    assert snapshot(db) == before
    # the companion's hook, finding liveCache off, switches its own plugin off: no later event starts one
    assert fake.requests("TagManagerSetPluginsEnabled") == [("TagManagerSetPluginsEnabled",
                                                             {"enabledMap": {"tagManagerLiveCache": False}})]
    assert not run.log_lines("w") and not run.log_lines("e")


def test_update_create_destroy_and_merge_through_processes(synced, world, fake, clock, stash, tmp_path):
    clock.tick(60)
    world.update_entity("scene", 3, title="edited in Stash", tag_ids=[1, 2])
    run = run_plugin(stash_input(fake, tmp_path, "cache_hook", hook_context(
        3, "Scene.Update.Post", {"id": "3", "title": "edited in Stash", "tag_ids": ["1", "2"]}, ["id", "title", "tag_ids"])))
    assert run.returncode == 0 and run.document["output"]["status"] == "applied", run.stdout + run.stderr
    assert set(run.document) == {"output"}
    assert scene_title(synced, 3) == "edited in Stash"

    new = world.add_entity("scene", title="created", tag_ids=[3], performer_ids=[1],
                           files=[{"path": "/new.mp4", "size": 9, "duration": 2.0, "oshash": "ab12"}])
    world.delete_entity("scene", 7)
    world.merge_tags([3, 4], 5)
    for context in (hook_context(new, "Scene.Create.Post", {"title": "created"}, ["title"]),
                    hook_context(7, "Scene.Destroy.Post", {"id": "7", "delete_file": False}, ["id", "delete_file"]),
                    hook_context(5, "Tag.Merge.Post", {"source": ["3", "4"], "destination": "5"},
                                 ["source", "destination"])):
        run = run_plugin(stash_input(fake, tmp_path, "cache_hook", context))
        assert run.returncode == 0 and run.document["output"]["status"] == "applied", run.stdout + run.stderr
    assert_mirror_equals(synced, world)
    assert derived_tables(synced) == derived_tables(fresh_full(stash, tmp_path, "reference"))


def test_bulk_update_calls_the_hook_once_per_scene(synced, world, fake, clock, stash, tmp_path):
    clock.tick(60)
    ids = [4, 5, 6]
    for sid in ids:
        world.update_entity("scene", sid, tag_ids=[*world.get("scene", sid)["tag_ids"], 9])
    bulk = {"ids": [str(i) for i in ids], "tag_ids": {"ids": ["9"], "mode": "ADD"}}
    for sid in ids:
        result = hook_in_process(stash, synced, hook_context(sid, "Scene.Update.Post", bulk, ["ids", "tag_ids"]))
        assert result.status == "applied" and result.upserted == 1
    assert_mirror_equals(synced, world)


def test_scan_update_with_null_input(synced, world, clock, stash):
    clock.tick(60)
    world.update_entity("scene", 8, files=[{"path": "/library/rescanned.mp4", "size": 123, "duration": 9.5,
                                            "oshash": "feed", "phash": "beef"}])
    result = hook_in_process(stash, synced, hook_context(8, "Scene.Update.Post", None))
    assert result.status == "applied"
    assert_mirror_equals(synced, world)


@pytest.mark.parametrize("entity, table", [("Image", "image"), ("Gallery", "gallery"), ("Group", "group"),
                                           ("Performer", "performer"), ("Studio", "studio"), ("Tag", "tag")])
def test_every_entity_type(entity, table, synced, world, clock, stash, tmp_path):
    clock.tick(60)
    name_field = "title" if table in ("image", "gallery") else "name"
    world.update_entity(table, 2, **{name_field: f"{entity} renamed"})
    assert hook_in_process(stash, synced, hook_context(2, f"{entity}.Update.Post", {"id": "2"}, ["id"])).status == "applied"
    created = world.add_entity(table, **{name_field: f"new {entity}"})
    assert hook_in_process(stash, synced, hook_context(created, f"{entity}.Create.Post", {})).status == "applied"
    world.delete_entity(table, 1)
    result = hook_in_process(stash, synced, hook_context(1, f"{entity}.Destroy.Post", {"id": "1"}, ["id"]))
    assert result.status == "applied" and result.deleted == 1
    assert_mirror_equals(synced, world)
    assert derived_tables(synced) == derived_tables(fresh_full(stash, tmp_path, "reference"))


def test_merge_with_many_linked_entities_leaves_the_rereads_to_the_sync(synced, world, stash, monkeypatch):
    monkeypatch.setattr(live_writer, "HOOK_REREAD_LIMIT", 1)
    world.merge_tags([1, 2], 6)
    result = hook_in_process(stash, synced, hook_context(6, "Tag.Merge.Post", {"source": ["1", "2"], "destination": "6"}))
    assert result.status == "applied" and result.reread == 0
    # links already point at the destination; the sync re-reads the queued entities
    assert_mirror_equals(synced, world)
    with sqlite3.connect(synced) as conn:
        assert conn.execute("SELECT count(*) FROM pending_reread").fetchone()[0] > 1
    cache_smart_sync(stash, synced)
    assert_mirror_equals(synced, world)
    with sqlite3.connect(synced) as conn:
        assert conn.execute("SELECT count(*) FROM pending_reread").fetchone()[0] == 0


def test_ignored_trigger_and_unready_cache(stash, db, world, clock):
    result = hook_in_process(stash, db, hook_context(3, "SceneMarker.Update.Post", {"id": "3"}))
    assert result.status == "ignored"
    result = hook_in_process(stash, db, hook_context(3, "Scene.Update.Post", None))
    assert result.status == "not_ready" and not db.exists()
    # an interrupted full sync: the mirror is incomplete, the hook leaves it alone
    conn = open_cache(db)
    conn.execute("INSERT INTO sync_state (entity_type, last_full_sync) VALUES ('scenes', 'x')")
    conn.close()
    assert hook_in_process(stash, db, hook_context(3, "Scene.Update.Post", None)).status == "not_ready"
    cache_full_sync(stash, db)
    conn = open_cache(db)
    conn.execute("UPDATE sync_state SET full_run_pending = 1 WHERE entity_type = 'scenes'")
    conn.close()
    assert "interrupted full sync" in hook_in_process(stash, db, hook_context(3, "Scene.Update.Post", None)).reason


def test_stash_errors_exit_0_and_change_nothing(synced, world, fake, clock, tmp_path):
    clock.tick(60)
    world.update_entity("scene", 3, title="never mirrored")
    before = snapshot(synced)
    fake.fail_next(5, status=500, operation="TagManagerCacheScenesPage")
    run = run_plugin(stash_input(fake, tmp_path, "cache_hook", hook_context(3, "Scene.Update.Post", {"id": "3"}, ["id"])))
    assert run.returncode == 0, run.stderr
    assert run.document["output"]["status"] == "error"
    assert "saved" in " ".join(run.log_lines("w"))
    assert snapshot(synced) == before
    fake.clear_faults()
    # Stash refusing the settings request (or any error before the mode runs) is no failure either
    fake.fail_next(5, status=500, operation="TagManagerPluginConfig")
    run = run_plugin(stash_input(fake, tmp_path, "cache_hook", hook_context(3, "Scene.Update.Post", None)))
    assert run.returncode == 0 and run.document["output"]["status"] == "error"
    assert snapshot(synced) == before


def test_bad_hook_input_exits_0(fake, world, tmp_path):
    world.plugin_settings["tagManager"] = {"liveCache": True}  # with liveCache off the input is not read
    run = run_plugin(stash_input(fake, tmp_path, "cache_hook", {"type": "Scene.Update.Post", "input": None}))
    assert run.returncode == 0 and run.document["output"]["status"] == "error"


def test_locked_cache_waits_briefly_then_leaves_the_work_to_the_sync(synced, world, fake, clock, stash, tmp_path):
    clock.tick(60)
    world.update_entity("scene", 3, title="mirrored by the next sync")
    before = snapshot(synced)
    blocker = sqlite3.connect(synced, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the cache
    try:
        started = time.monotonic()
        run = run_plugin(stash_input(fake, tmp_path, "cache_hook", hook_context(3, "Scene.Update.Post", {"id": "3"}, ["id"])))
        elapsed = time.monotonic() - started
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert run.returncode == 0 and run.document["output"]["status"] == "busy", run.stdout + run.stderr
    assert elapsed < 15
    assert snapshot(synced) == before
    cache_smart_sync(stash, synced)
    assert_mirror_equals(synced, world)


def test_hook_during_a_running_sync_is_left_to_the_sync(synced, world, clock, stash):
    clock.tick(60)
    world.update_entity("scene", 3, title="seen by the sync")
    before = snapshot(synced)
    with sync_lock(synced):  # a sync of this process holds the lock and has recorded its run
        conn = open_cache(synced)
        conn.execute("INSERT INTO sync_runs (mode, started, status) VALUES ('cache_smart_sync', ?, 'running')", (NOW,))
        conn.close()
        result = hook_in_process(stash, synced, hook_context(3, "Scene.Update.Post", None))
    assert result.status == "sync_running"
    assert snapshot(synced) == before
    cache_smart_sync(stash, synced)
    assert_mirror_equals(synced, world)


def test_sync_starting_between_read_and_write_wins(synced, world, clock, stash, fake):
    """A sync that starts while the hook reads from Stash makes the hook drop its write."""
    clock.tick(60)
    world.update_entity("scene", 3, title="read by the hook, written by the sync")
    before = snapshot(synced)

    class SyncStartsMeanwhile(StashClient):
        def call(self, query, variables=None):
            data = super().call(query, variables)
            conn = open_cache(synced)
            conn.execute("INSERT INTO sync_runs (mode, started, status) VALUES ('cache_smart_sync', ?, 'ok')", (NOW,))
            conn.close()
            return data

    racing = SyncStartsMeanwhile(requests.Session(), fake.url, sleep=lambda _s: None, backoff=(0.0,))
    stats = LiveWriter(racing, synced).apply("scenes", [3])
    assert stats.status == "sync_running"
    assert snapshot(synced) == before
    cache_smart_sync(stash, synced)
    assert_mirror_equals(synced, world)


def test_a_stale_running_row_of_a_killed_sync_does_not_block_hooks(synced, world, clock, stash):
    conn = open_cache(synced)
    conn.execute("INSERT INTO sync_runs (mode, started, status) VALUES ('cache_smart_sync', ?, 'running')", (NOW,))
    conn.close()
    Path(str(synced) + ".lock").write_text("999999999 2020-01-01T00:00:00+00:00\n")  # holder long gone
    clock.tick(60)
    world.update_entity("scene", 3, title="written despite the stale row")
    assert hook_in_process(stash, synced, hook_context(3, "Scene.Update.Post", None)).status == "applied"
    assert scene_title(synced, 3) == "written despite the stale row"


def test_many_concurrent_hooks_do_not_pile_up(synced, world, fake, clock, tmp_path):
    clock.tick(60)
    ids = list(range(1, 9))
    for sid in ids:
        world.update_entity("scene", sid, title=f"bulk edit {sid}")
    bulk = {"ids": [str(i) for i in ids], "title": "x"}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tag_manager.py")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for _ in ids]
    for proc, sid in zip(procs, ids):
        proc.stdin.write(json.dumps(stash_input(fake, tmp_path, "cache_hook", hook_context(sid, "Scene.Update.Post", bulk,
                                                                                ["ids", "title"]))))
        proc.stdin.close()
    outputs = [(proc.wait(timeout=60), json.loads(proc.stdout.read())["output"]) for proc in procs]
    for proc in procs:
        proc.stdout.close()
        proc.stderr.close()
    assert all(code == 0 for code, _ in outputs)
    statuses = [out["status"] for _, out in outputs]
    assert set(statuses) <= {"applied", "busy"}, statuses
    applied = [sid for sid, (_, out) in zip(ids, outputs) if out["status"] == "applied"]
    assert all(scene_title(synced, sid) == f"bulk edit {sid}" for sid in applied)


def test_large_libraries_leave_image_derived_data_to_the_sync(synced, world, clock, stash, tmp_path, monkeypatch):
    monkeypatch.setattr(live_writer, "HOOK_IMAGE_DERIVED_LIMIT", 0)
    clock.tick(60)
    world.update_entity("gallery", 1, tag_ids=[7], performer_ids=[3])
    result = hook_in_process(stash, synced, hook_context(1, "Gallery.Update.Post", {"id": "1"}, ["id"]))
    assert result.status == "applied" and not result.derived_refreshed
    assert "next sync" in result.reason
    assert_mirror_equals(synced, world)
    cache_smart_sync(stash, synced)
    assert derived_tables(synced) == derived_tables(fresh_full(stash, tmp_path, "reference"))


def test_hooks_fired_by_our_own_tag_sync_defer_at_once(fake, tmp_path):
    """Stash runs our hook for every scene a tag sync updates: while the sync holds its lock, it defers."""
    from tagman_base import file_lock as run_lock

    fake.clear_log()
    with run_lock.exclusive(tmp_path / "data" / "scene_tag_sync.lock"):
        run = run_plugin(stash_input(fake, tmp_path, "cache_hook", hook_context(3, "Scene.Update.Post", None)))
    assert run.returncode == 0 and run.document["output"]["status"] == "deferred"
    assert fake.count() == 0
