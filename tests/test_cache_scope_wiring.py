"""Scope, history settings and schedules wired through the task input, the command line and watch mode."""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timedelta, timezone

import cache_live
from local_cache import cache_full_sync, cache_smart_sync
from tag_manager import parse_command_line
from tests.conftest import run_plugin
from tests.test_entry_cache import cache_input, small_servers  # noqa: F401 - fixture
from tests.test_local_cache import clock, db, fake, lib, stash, world  # noqa: F401 - fixtures


def test_entities_argument_limits_the_run(small_servers, tmp_path):
    assert run_plugin(cache_input(small_servers, tmp_path, "cache_full_sync")).returncode == 0
    world = small_servers.library.world
    scene, performer = min(world.table("scene")), min(world.table("performer"))
    world.update_entity("scene", scene, title="scene edit left for later")
    world.update_entity("performer", performer, name="Renamed Performer")
    run = run_plugin(cache_input(small_servers, tmp_path, "cache_smart_sync", entities="performers,tags"))
    assert run.returncode == 0, run.stderr
    assert run.document["output"]["entities"] == ["tags", "performers"]
    with sqlite3.connect(tmp_path / "data" / "stash_cache.sqlite3") as conn:
        assert conn.execute("SELECT name FROM performers WHERE id = ?", (performer,)).fetchone()[0] == "Renamed Performer"
        assert conn.execute("SELECT title FROM scenes WHERE id = ?", (scene,)).fetchone()[0] != "scene edit left for later"


def test_unknown_entity_name_is_a_clear_error(small_servers, tmp_path):
    run = run_plugin(cache_input(small_servers, tmp_path, "cache_full_sync", entities="scenes,movies2"))
    assert run.returncode == 1 and "movies2" in run.document["error"] and "performers" in run.document["error"]
    assert not (tmp_path / "data" / "stash_cache.sqlite3").exists()


def test_soft_delete_setting_through_stdin(small_servers, tmp_path):
    small_servers.library.world.plugin_settings["tagManager"] = {"cacheSoftDelete": True}
    assert run_plugin(cache_input(small_servers, tmp_path, "cache_full_sync")).returncode == 0
    gone = max(small_servers.library.world.table("scene"))
    small_servers.library.world.delete_entity("scene", gone)
    assert run_plugin(cache_input(small_servers, tmp_path, "cache_smart_sync")).returncode == 0
    with sqlite3.connect(tmp_path / "data" / "stash_cache.sqlite3") as conn:
        assert conn.execute("SELECT deleted_at IS NOT NULL FROM scenes WHERE id = ?", (gone,)).fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM live_scenes WHERE id = ?", (gone,)).fetchone() == (0,)


def test_command_line_scope_and_schedule_options():
    invocation = parse_command_line(["cache_watch", "--stash-url", "http://nas:9999", "--entities", "tags",
                                     "--full-every", "7d", "--interval", "60"])
    assert invocation.args == {"mode": "cache_watch", "entities": "tags", "full_every": "7d", "interval": "60"}


def test_watch_runs_a_full_sync_when_the_last_one_is_too_old(db, stash):  # noqa: F811 - fixtures
    cache_full_sync(stash, db)
    now = [datetime.now(timezone.utc)]
    stop = threading.Event()
    kinds: list[str] = []

    def smart(*args, **kwargs):
        kinds.append("smart")
        return cache_smart_sync(*args, **kwargs)

    def full(*args, **kwargs):
        kinds.append("full")
        return cache_full_sync(*args, **kwargs)

    def wait(seconds: float) -> bool:
        now[0] += timedelta(days=4)  # every interval, four days pass
        return stop.is_set()

    watcher = cache_live.CacheWatcher(stash, db, interval=10, heartbeat=60, stop=stop, wait=wait, sync=smart,
                                      full_sync=full, max_runs=4, full_every=timedelta(days=7),
                                      wall_clock=lambda: now[0], sync_options={"clock": lambda: now[0]})
    assert watcher.next_full_sync_text() != "now"
    summary = watcher.run()
    assert kinds == ["smart", "smart", "full", "smart"] and summary.full_runs == 1
    assert watcher.heartbeat.next_full_sync not in (None, "now")


def test_status_shows_last_run_counts(small_servers, tmp_path):
    assert run_plugin(cache_input(small_servers, tmp_path, "cache_full_sync")).returncode == 0
    world = small_servers.library.world
    world.update_entity("scene", min(world.table("scene")), title="changed for the status")
    assert run_plugin(cache_input(small_servers, tmp_path, "cache_smart_sync")).returncode == 0
    status = run_plugin(cache_input(small_servers, tmp_path, "cache_status"))
    assert status.returncode == 0, status.stderr
    scenes = status.document["output"]["types"]["scenes"]
    assert scenes["last_run"]["updated"] == 1 and scenes["last_run"]["created"] == 0
    assert any("last run: 0 created, 1 updated" in line for line in status.log_lines("i"))
