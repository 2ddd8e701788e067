"""The cache_watch mode: a smart sync every interval, a heartbeat, and a clean stop."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tag_manager import parse_command_line
from tagman_mirror.cache_file import sync_lock
from tagman_mirror.runs import cache_full_sync, cache_smart_sync
from tagman_mirror.status import run_cache_status
from tagman_mirror.watch import CacheWatcher, run_cache_watch
from tests.conftest import client_for, ctx_for, live_on, read_rows, ROOT, scene_title, wait_for
from tests.mirror_oracle import assert_mirror_equals


pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


def heartbeat_rows(db: Path) -> list[tuple]:
    return read_rows(db, "SELECT pid, state, last_heartbeat_epoch, last_run_id FROM watch_heartbeat")


def watch_runs(db: Path) -> list[tuple]:
    return read_rows(db, "SELECT r.id, r.status FROM sync_runs r JOIN sync_run_origin o ON o.run_id = r.id "
                         "WHERE o.created_by = 'watch' ORDER BY r.id")


def test_watch_picks_up_changes_heartbeats_and_survives_stash_going_away(db, world, fake, clock, caplog):
    caplog.set_level(logging.DEBUG, logger="tagManager")
    client = client_for(fake.url)
    stop = threading.Event()
    watcher = CacheWatcher(client, db, interval=0.3, heartbeat=0.1, stop=stop)
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
        assert wait_for(lambda: "Executed smart sync due to 1 scenes that needed to be resynced" in caplog.text)
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
    status = run_cache_status(ctx_for(client, db, {}))
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

    watcher = CacheWatcher(stash, db, interval=10, heartbeat=60, stop=stop,
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
        return cache_full_sync(stash_, db_, progress=stopping, per_page=5)

    watcher = CacheWatcher(stash, db, interval=60, heartbeat=60, stop=stop, sync=sync_then_stop)
    summary = watcher.run()
    assert summary.runs == 1 and summary.failed_runs == 1
    assert [s for _, s in watch_runs(db)] == ["interrupted"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    cache_full_sync(stash, db)  # resumes the interrupted full sync
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
        assert wait_for(lambda: read_rows(db, "SELECT 1 FROM sync_runs WHERE status = 'running'"), timeout=30)
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
        run_cache_watch(ctx_for(stash, db, {"interval": "0"}))
    args = parse_command_line(["cache_watch", "--stash-url", "http://nas:9999", "--interval", "60",
                               "--heartbeat", "10"]).args
    assert args["interval"] == "60" and args["heartbeat"] == "10"


def test_watch_skips_a_tick_while_another_sync_holds_the_cache(db, stash):
    cache_full_sync(stash, db)
    with sync_lock(db):
        watcher = CacheWatcher(stash, db, interval=60, heartbeat=60, max_runs=1)
        summary = watcher.run()
    assert summary.runs == 1 and summary.failed_runs == 0 and summary.runs_with_changes == 0
    assert watch_runs(db) == []
