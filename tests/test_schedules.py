"""Scheduled full syncs (``--full-every``) and the run history they are computed from."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest

from tagman_base.errors import SettingsError
from tagman_base.timestamps import parse_duration
from tagman_mirror.cache_file import open_cache, read_cache
from tagman_mirror.entities import ENTITY_TYPES
from tagman_mirror.runs import cache_full_sync, cache_smart_sync, full_sync_due, last_run_type_counts, next_full_sync_at
from tagman_mirror.watch import CacheWatcher


@pytest.mark.parametrize("text, expected", [("7d", timedelta(days=7)), ("12h", timedelta(hours=12)),
                                            ("30m", timedelta(minutes=30)), ("1d12h", timedelta(hours=36)),
                                            ("2w", timedelta(days=14)), (" 1.5h ", timedelta(minutes=90))])
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["7", "d", "-1d", "0h", "", "7 days", "1x"])
def test_bad_duration_is_a_clear_error(text):
    with pytest.raises(SettingsError, match="7d, 12h|longer than zero"):
        parse_duration(text)


def test_full_sync_due_follows_the_oldest_full_sync(stash, world, db, clock):
    week = parse_duration("7d")
    open_cache(db).close()
    with read_cache(db) as conn:
        assert full_sync_due(conn, week, clock())  # never fully synced
        assert next_full_sync_at(conn, week) is None
    cache_full_sync(stash, db, clock=clock)
    start = clock()
    with read_cache(db) as conn:
        assert next_full_sync_at(conn, week) == start.replace(microsecond=0) + week
        assert not full_sync_due(conn, week, start + timedelta(days=6, hours=23))
        assert full_sync_due(conn, week, start + week)
    clock.tick(5 * 86400)
    cache_full_sync(stash, db, clock=clock, entities="scenes")
    with read_cache(db) as conn:
        # the other types still date from the first run
        assert full_sync_due(conn, week, start + week)
        assert not full_sync_due(conn, week, start + week, entities="scenes")
    clock.tick(3 * 86400)
    cache_full_sync(stash, db, clock=clock)
    with read_cache(db) as conn:
        assert not full_sync_due(conn, week, clock.now + timedelta(days=6))


def test_last_run_type_counts_come_from_the_last_run_of_each_type(stash, world, db, clock):
    cache_full_sync(stash, db)
    clock.tick(10)
    world.update_entity("tag", 1, name="Retitled tag")
    cache_smart_sync(stash, db, entities="tags")
    with read_cache(db) as conn:
        counts = last_run_type_counts(conn)
        runs = [r[0] for r in conn.execute("SELECT id FROM sync_runs ORDER BY id")]
    assert counts["tags"]["run_id"] == runs[1] and counts["tags"]["updated"] == 1
    assert counts["scenes"]["run_id"] == runs[0] and counts["scenes"]["created"] == len(world.table("scene"))
    assert counts["scenes"]["mode"] == "cache_full_sync" and counts["scenes"]["soft_deleted"] == 0
    assert set(counts) == set(ENTITY_TYPES)


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

    watcher = CacheWatcher(stash, db, interval=10, heartbeat=60, stop=stop, wait=wait, sync=smart,
                                      full_sync=full, max_runs=4, full_every=timedelta(days=7),
                                      wall_clock=lambda: now[0], sync_options={"clock": lambda: now[0]})
    assert watcher.next_full_sync_text() != "now"
    summary = watcher.run()
    assert kinds == ["smart", "smart", "full", "smart"] and summary.full_runs == 1
    assert watcher.heartbeat.next_full_sync not in (None, "now")
