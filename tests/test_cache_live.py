"""The live cache: Stash hooks, one-scene resync, status and the watch service, against the fake Stash."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from graphql import parse, validate

import cache_live
import local_cache
from local_cache import CacheLock, cache_full_sync, cache_smart_sync
from settings import Settings
from stash_client import StashClient
from tag_manager import RunContext, parse_command_line
from tests.conftest import ROOT, run_plugin
from tests.fakes.fake_stash import fake_schema
from tests.test_local_cache import (  # noqa: F401 - fixtures
    Clock, assert_mirror_equals, clock, db, derived_tables, fake, fresh_full, lib, stash, world,
)

NOW = "2025-03-01T12:00:00+00:00"
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


# ------------------------------------------------------------------------------------------
# helpers


def hook_context(eid, trigger: str, payload=None, fields=None) -> dict:
    """``args.hookContext`` as Stash's HookContext marshals it (id omitted when 0, inputFields when empty)."""
    context = {"type": trigger, "input": payload}
    if eid:
        context["id"] = eid
    if fields:
        context["inputFields"] = fields
    return context


def stash_document(fake, plugin_dir: Path, context: dict | None, mode: str = "cache_hook", **args) -> dict:
    """The whole stdin document Stash writes for a hook (or a task) of this plugin."""
    arguments = {"mode": mode, **args}
    if context is not None:
        arguments["hookContext"] = context
    return {"server_connection": {"Scheme": "http", "Host": "0.0.0.0", "Port": fake.port,
                                  "SessionCookie": None, "Dir": str(plugin_dir), "PluginDir": str(plugin_dir)},
            "args": arguments}


def live_on(world, db: Path, on: bool = True) -> None:
    """Set liveCache as a user would.

    The hook processes of these tests run with the plugin folder ``tmp_path`` (the db's grandparent).
    """
    world.plugin_settings["tagManager"] = {"cacheDbPath": str(db), **({"liveCache": True} if on else {})}


def ctx_for(stash: StashClient, db: Path, args: dict, live: bool = True) -> RunContext:
    return RunContext(stash, Settings(cache_db_path=str(db), live_cache=live), args, db.parent)


def hook_in_process(stash, db, context, live=True) -> cache_live.HookResult:
    """What the cache_hook mode does once Stash's input is parsed, in this process (fast)."""
    ctx = ctx_for(stash, db, {"mode": "cache_hook", "hookContext": context}, live)
    return cache_live.run_hook_safely(lambda: cache_live.run_cache_hook(ctx), ctx.args)


def snapshot(db: Path) -> dict[str, set]:
    """Every mirror table's rows (the bookkeeping tables aside)."""
    with sqlite3.connect(db) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {n: set(conn.execute(f"SELECT * FROM {n}")) for n in names
                if n not in ("sync_runs", "watch_heartbeat", "sync_run_origin")}


def scene_title(db: Path, sid: int):
    rows = read_rows(db, f"SELECT title FROM scenes WHERE id = {int(sid)} AND deleted_at IS NULL")
    return rows[0][0] if rows else None


def wait_for(condition, timeout: float = 20.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


@pytest.fixture
def synced(stash, db, world):
    """A mirror after a completed full sync, with liveCache on in the fake's plugin settings."""
    cache_full_sync(stash, db)
    live_on(world, db)
    return db


# ------------------------------------------------------------------------------------------
# the hook context exactly as Stash passes it


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
    event = cache_live.parse_hook_context({"mode": "cache_hook", "hookContext": context})
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
    with pytest.raises(cache_live.HookInputError):
        cache_live.parse_hook_context(args)


# ------------------------------------------------------------------------------------------
# hooks as Stash runs them: one process each, stdin JSON, exit 0, one JSON document


def test_hooks_are_off_by_default(stash, db, world, fake, tmp_path):
    cache_full_sync(stash, db)
    world.plugin_settings["tagManager"] = {"cacheDbPath": str(db)}  # liveCache never touched
    before = snapshot(db)
    world.update_entity("scene", 3, title="edited while hooks are off")
    fake.clear_log()
    run = run_plugin(stash_document(fake, tmp_path, hook_context(3, "Scene.Update.Post", {"id": "3"}, ["id"])))
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
    run = run_plugin(stash_document(fake, tmp_path, hook_context(
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
        run = run_plugin(stash_document(fake, tmp_path, context))
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
    monkeypatch.setattr(cache_live, "HOOK_REREAD_LIMIT", 1)
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
    conn = local_cache.open_cache(db)
    conn.execute("INSERT INTO sync_state (entity_type, last_full_sync) VALUES ('scenes', 'x')")
    conn.close()
    assert hook_in_process(stash, db, hook_context(3, "Scene.Update.Post", None)).status == "not_ready"
    cache_full_sync(stash, db)
    conn = local_cache.open_cache(db)
    conn.execute("INSERT OR REPLACE INTO cache_meta VALUES ('full_run_pending', '1')")
    conn.close()
    assert "interrupted full sync" in hook_in_process(stash, db, hook_context(3, "Scene.Update.Post", None)).reason


# ------------------------------------------------------------------------------------------
# a hook never fails the edit and never leaves the mirror half-written


def test_stash_errors_exit_0_and_change_nothing(synced, world, fake, clock, tmp_path):
    clock.tick(60)
    world.update_entity("scene", 3, title="never mirrored")
    before = snapshot(synced)
    fake.fail_next(5, status=500, operation="TagManagerCacheScenesPage")
    run = run_plugin(stash_document(fake, tmp_path, hook_context(3, "Scene.Update.Post", {"id": "3"}, ["id"])))
    assert run.returncode == 0, run.stderr
    assert run.document["output"]["status"] == "error"
    assert "saved" in " ".join(run.log_lines("w"))
    assert snapshot(synced) == before
    fake.clear_faults()
    # Stash refusing the settings request (or any error before the mode runs) is no failure either
    fake.fail_next(5, status=500, operation="TagManagerPluginConfig")
    run = run_plugin(stash_document(fake, tmp_path, hook_context(3, "Scene.Update.Post", None)))
    assert run.returncode == 0 and run.document["output"]["status"] == "error"
    assert snapshot(synced) == before


def test_bad_hook_input_exits_0(fake, world, tmp_path):
    world.plugin_settings["tagManager"] = {"liveCache": True}  # with liveCache off the input is not read
    run = run_plugin(stash_document(fake, tmp_path, {"type": "Scene.Update.Post", "input": None}))
    assert run.returncode == 0 and run.document["output"]["status"] == "error"


def test_locked_cache_waits_briefly_then_leaves_the_work_to_the_sync(synced, world, fake, clock, stash, tmp_path):
    clock.tick(60)
    world.update_entity("scene", 3, title="mirrored by the next sync")
    before = snapshot(synced)
    blocker = sqlite3.connect(synced, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the cache
    try:
        started = time.monotonic()
        run = run_plugin(stash_document(fake, tmp_path, hook_context(3, "Scene.Update.Post", {"id": "3"}, ["id"])))
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
    with CacheLock(synced):  # a sync of this process holds the lock and has recorded its run
        conn = local_cache.open_cache(synced)
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
            conn = local_cache.open_cache(synced)
            conn.execute("INSERT INTO sync_runs (mode, started, status) VALUES ('cache_smart_sync', ?, 'ok')", (NOW,))
            conn.close()
            return data

    racing = SyncStartsMeanwhile(requests.Session(), fake.url, sleep=lambda _s: None, backoff=(0.0,))
    stats = cache_live.LiveWriter(racing, synced).apply("scenes", [3])
    assert stats.status == "sync_running"
    assert snapshot(synced) == before
    cache_smart_sync(stash, synced)
    assert_mirror_equals(synced, world)


def test_a_stale_running_row_of_a_killed_sync_does_not_block_hooks(synced, world, clock, stash):
    conn = local_cache.open_cache(synced)
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
        proc.stdin.write(json.dumps(stash_document(fake, tmp_path, hook_context(sid, "Scene.Update.Post", bulk,
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


# ------------------------------------------------------------------------------------------
# cache_sync_scene


def test_sync_one_scene(synced, world, fake, clock, stash, tmp_path):
    clock.tick(60)
    world.update_entity("scene", 11, title="resynced now", performer_ids=[2, 3])
    world.update_entity("scene", 12, title="not this one")
    run = run_plugin(stash_document(fake, tmp_path, None, mode="cache_sync_scene", id="11"))
    assert run.returncode == 0, run.stderr
    assert run.document["output"]["status"] == "updated"
    assert scene_title(synced, 11) == "resynced now" and scene_title(synced, 12) != "not this one"
    world.delete_entity("scene", 11)
    result = cache_live.run_cache_sync_scene(ctx_for(stash, synced, {"id": 11}))
    assert result.status == "deleted" and scene_title(synced, 11) is None
    before = snapshot(synced)
    run = run_plugin(stash_document(fake, tmp_path, None, mode="cache_sync_scene", id="11"))
    assert run.returncode == 1 and "Scene 11 does not exist" in run.document["error"]
    assert "\n" not in run.document["error"] and snapshot(synced) == before
    run = run_plugin(stash_document(fake, tmp_path, None, mode="cache_sync_scene"))
    assert run.returncode == 1 and "scene id" in run.document["error"]
    assert parse_command_line(["cache_sync_scene", "--id", "5"]).args["id"] == "5"


# ------------------------------------------------------------------------------------------
# cache_status


def test_status_figures_equal_the_fake(stash, db, world, fake, clock, tmp_path):
    cache_full_sync(stash, db)
    live_on(world, db, on=False)
    mirrored = {t: len(rows) for t, rows in world.tables().items()}
    clock.tick(60)
    for sid in (2, 3, 4):
        world.update_entity("scene", sid, title=f"pending {sid}")
    world.add_entity("scene", title="new and pending")
    world.update_entity("tag", 5, description="pending tag")
    run = run_plugin(stash_document(fake, tmp_path, None, mode="cache_status"))
    assert run.returncode == 0, run.stderr
    out = run.document["output"]
    plural = {"scene": "scenes", "image": "images", "gallery": "galleries", "group": "groups",
              "performer": "performers", "studio": "studios", "tag": "tags"}
    now = {t: len(rows) for t, rows in world.tables().items()}
    for kind, table in plural.items():
        row = out["types"][table]
        assert row["mirrored"] == mirrored[kind] and row["stash"] == now[kind], table
        assert row["pending"] == {"scenes": 4, "tags": 1}.get(table, 0), table
        assert row["cursor"] and row["last_full_sync"]
    assert out["pending"] == 5 and out["live_cache"] is False
    assert [r["mode"] for r in out["runs"]] == ["cache_full_sync"]
    assert out["watch"] == {"alive": False}
    text = "\n".join(run.log_lines("i"))
    assert "mirrored" in text and "scenes" in text and "Watch: never ran" in text
    cache_smart_sync(stash, db)
    status = cache_live.run_cache_status(ctx_for(stash, db, {}))
    assert status.pending == 0 and [r["mode"] for r in status.runs] == ["cache_smart_sync", "cache_full_sync"]
    assert status.stash_requests <= 2


def test_status_without_a_cache(stash, db, world):
    status = cache_live.run_cache_status(ctx_for(stash, db, {}))
    assert not status.cache_exists and not db.exists()
    assert status.types["scenes"].stash == len(world.table("scene")) == status.types["scenes"].pending
    assert "no cache yet" in str(status)


def test_status_queries_are_valid():
    schemas = [fake_schema()]
    try:
        from tests.reference import real_stash_schema

        schemas.append(real_stash_schema())
    except pytest.skip.Exception:
        pass
    for query in cache_live.status_queries():
        document = parse(query)
        assert len(document.definitions) == 1 and document.definitions[0].name is not None
        for schema in schemas:
            assert not validate(schema, document), query


# ------------------------------------------------------------------------------------------
# cache_watch


def read_rows(db: Path, sql: str) -> list[tuple]:
    """Rows of a query, or [] while the file or table does not exist yet (never creates the file)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.OperationalError:
        return []
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def heartbeat_rows(db: Path) -> list[tuple]:
    return read_rows(db, "SELECT pid, state, last_heartbeat_epoch, last_run_id FROM watch_heartbeat")


def watch_runs(db: Path) -> list[tuple]:
    return read_rows(db, "SELECT r.id, r.status FROM sync_runs r JOIN sync_run_origin o ON o.run_id = r.id "
                         "WHERE o.created_by = 'watch' ORDER BY r.id")


def test_watch_picks_up_changes_heartbeats_and_survives_stash_going_away(db, world, fake, clock, caplog):
    caplog.set_level(logging.DEBUG, logger="tagManager")
    client = StashClient(requests.Session(), fake.url, sleep=lambda _s: None, backoff=(0.0,))
    stop = threading.Event()
    watcher = cache_live.CacheWatcher(client, db, interval=0.3, heartbeat=0.1, stop=stop)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: len(watch_runs(db)) >= 1)
        clock.tick(60)
        world.update_entity("scene", 5, title="seen by the watch")
        assert wait_for(lambda: scene_title(db, 5) == "seen by the watch")
        first = heartbeat_rows(db)
        assert first and first[0][0] == os.getpid()
        assert wait_for(lambda: heartbeat_rows(db)[0][2] > first[0][2])
        assert wait_for(lambda: "Executed incremental sync due to 1 scenes that needed to be resynced" in caplog.text)
        assert wait_for(lambda: "No scenes pending sync" in caplog.text)

        fake.stop()
        failed_before = watcher.summary.failed_runs
        assert wait_for(lambda: watcher.summary.failed_runs >= failed_before + 2)
        assert "retrying in" in caplog.text
        fake.start()
        clock.tick(60)
        world.update_entity("scene", 6, title="after the outage")
        assert wait_for(lambda: scene_title(db, 6) == "after the outage")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert watcher.summary.runs >= 3 and watcher.summary.heartbeats >= 2
    assert heartbeat_rows(db)[0][1] == "stopped"
    assert all(status in ("ok", "failed", "interrupted") for _, status in watch_runs(db))
    assert_mirror_equals(db, world)
    status = cache_live.run_cache_status(ctx_for(client, db, {}))
    assert status.watch["pid"] == os.getpid() and not status.watch["alive"]
    assert any(r["created_by"] == "watch" for r in status.runs)


def test_watch_loop_with_injected_clock_and_wait(db, stash):
    """Runs are spaced by the interval on the injected clock; a stop ends the loop without another run."""
    now = [1000.0]
    waits: list[float] = []
    stop = threading.Event()

    def wait(seconds: float) -> bool:
        waits.append(round(seconds, 3))
        now[0] += seconds
        if len(waits) == 3:
            stop.set()
        return stop.is_set()

    def fake_sync(_stash, _db, progress):
        now[0] += 2.0  # each run takes two seconds
        return cache_smart_sync(stash, db, progress=progress)

    watcher = cache_live.CacheWatcher(stash, db, interval=10, heartbeat=60, stop=stop,
                                      clock=lambda: now[0], wait=wait, sync=fake_sync)
    summary = watcher.run()
    assert summary.runs == 3 and waits == [8.0, 8.0, 8.0]
    assert summary.stop_reason == "stop requested"


def test_watch_stops_between_pages_when_asked(db, stash, world):
    stop = threading.Event()
    calls = []

    def sync_then_stop(stash_, db_, progress):
        def stopping(fraction):
            calls.append(fraction)
            if len(calls) == 3:
                stop.set()
            progress(fraction)
        return local_cache.cache_full_sync(stash_, db_, progress=stopping, per_page=5)

    watcher = cache_live.CacheWatcher(stash, db, interval=60, heartbeat=60, stop=stop, sync=sync_then_stop)
    summary = watcher.run()
    assert summary.runs == 1 and summary.failed_runs == 1
    assert [s for _, s in watch_runs(db)] == ["interrupted"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    local_cache.cache_full_sync(stash, db)  # resumes the interrupted full sync
    assert_mirror_equals(db, world)


def test_watch_process_stops_on_sigterm_with_a_consistent_cache(db, world, fake, clock, stash, tmp_path):
    live_on(world, db, on=False)
    proc = subprocess.Popen([sys.executable, str(ROOT / "tag_manager.py"), "cache_watch", "--stash-url", fake.url,
                             "--interval", "0.5", "--heartbeat", "0.2"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: len(watch_runs(db)) >= 1, timeout=30)
        clock.tick(60)
        world.update_entity("scene", 9, title="seen by the watch process")
        assert wait_for(lambda: scene_title(db, 9) == "seen by the watch process", timeout=30)
        fake.delay_next(50, seconds=0.2)  # keep it busy in the middle of a sync
        clock.tick(60)
        for sid in range(10, 20):
            world.update_entity("scene", sid, title=f"edit {sid}")
        time.sleep(0.6)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        fake.clear_faults()
    assert proc.returncode == 0, err
    summary = json.loads(out)["output"]
    assert summary["stop_reason"] == "stop requested" and summary["runs"] >= 2
    assert "Received SIGTERM" in err
    assert heartbeat_rows(db)[0][1] == "stopped"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM sync_runs WHERE status = 'running'").fetchone() == (0,)
    cache_smart_sync(stash, db)
    assert_mirror_equals(db, world)


def test_watch_arguments(stash, db):
    with pytest.raises(Exception, match="positive"):
        cache_live.run_cache_watch(ctx_for(stash, db, {"interval": "0"}))
    args = parse_command_line(["cache_watch", "--stash-url", "http://nas:9999", "--interval", "60",
                               "--heartbeat", "10"]).args
    assert args["interval"] == "60" and args["heartbeat"] == "10"


def test_large_libraries_leave_image_derived_data_to_the_sync(synced, world, clock, stash, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_live, "HOOK_IMAGE_DERIVED_LIMIT", 0)
    clock.tick(60)
    world.update_entity("gallery", 1, tag_ids=[7], performer_ids=[3])
    result = hook_in_process(stash, synced, hook_context(1, "Gallery.Update.Post", {"id": "1"}, ["id"]))
    assert result.status == "applied" and not result.derived_refreshed
    assert "next sync" in result.reason
    assert_mirror_equals(synced, world)
    cache_smart_sync(stash, synced)
    assert derived_tables(synced) == derived_tables(fresh_full(stash, tmp_path, "reference"))


def test_watch_skips_a_tick_while_another_sync_holds_the_cache(db, stash):
    cache_full_sync(stash, db)
    with CacheLock(db):
        watcher = cache_live.CacheWatcher(stash, db, interval=60, heartbeat=60, max_runs=1)
        summary = watcher.run()
    assert summary.runs == 1 and summary.failed_runs == 0 and summary.runs_with_changes == 0
    assert watch_runs(db) == []


def test_hooks_fired_by_our_own_tag_sync_defer_at_once(fake, tmp_path):
    """Stash runs our hook for every scene a tag sync updates: while the sync holds its lock, it defers."""
    import run_lock

    fake.clear_log()
    with run_lock.exclusive(tmp_path / "data" / "scene_tag_sync.lock"):
        run = run_plugin(stash_document(fake, tmp_path, hook_context(3, "Scene.Update.Post", None)))
    assert run.returncode == 0 and run.document["output"]["status"] == "deferred"
    assert fake.count() == 0
