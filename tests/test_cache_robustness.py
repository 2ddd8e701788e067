"""The cache survives kills, refuses concurrent runs and foreign writes, and migrates old files."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

import cache_schema
import local_cache
from local_cache import CacheLock, cache_full_sync, cache_incremental_sync, cache_smart_sync
from stash_client import StashClient
from tests.test_local_cache import (  # noqa: F401 - fixtures
    Clock, assert_mirror_equals, clock, db, derived_tables, fake, fresh_full, lib, stash, world,
)
from tm_errors import CacheLockedError, CacheSchemaError, StashUnavailable

REPO = Path(__file__).resolve().parents[1]


class Crash(BaseException):
    """Stands in for the process dying in the middle of a request."""


class CrashingClient(StashClient):
    """A Stash client that dies at its Nth request."""

    def __init__(self, url: str, die_at: int) -> None:
        super().__init__(requests.Session(), url, sleep=lambda _s: None, backoff=(0.0,))
        self.die_at = die_at

    def call(self, query, variables=None):
        if self.requests_sent + 1 >= self.die_at:
            raise Crash(f"killed at request {self.die_at}")
        return super().call(query, variables)


# ------------------------------------------------------------------------------------------
# write guard


def test_plain_connections_cannot_write(stash, world, db):
    cache_full_sync(stash, db)
    conn = sqlite3.connect(db)
    for statement in ("UPDATE scenes SET title = 'hacked'", "DELETE FROM tags",
                      "INSERT INTO scene_tags VALUES (1, 1)", "DELETE FROM sync_state",
                      "UPDATE image_counts SET image_count = 0"):
        with pytest.raises(sqlite3.DatabaseError, match="read-only mirror"):
            conn.execute(statement)
    assert conn.execute("SELECT count(*) FROM scenes").fetchone()[0] == len(world.table("scene"))
    conn.close()
    assert_mirror_equals(db, world)


def test_the_sync_connection_writes_only_with_its_guard_on(tmp_path):
    conn = local_cache.open_cache(tmp_path / "c.sqlite3")
    conn.execute("INSERT INTO cache_meta VALUES ('k', 'v')")
    cache_schema.disable_writes(conn)
    with pytest.raises(sqlite3.DatabaseError, match="read-only mirror"):
        conn.execute("DELETE FROM cache_meta")
    conn.close()


def test_reading_needs_no_guard(stash, db):
    cache_full_sync(stash, db)
    with local_cache.read_cache(db) as conn:
        assert conn.execute("SELECT count(*) FROM scenes").fetchone()[0] > 0


# ------------------------------------------------------------------------------------------
# one sync at a time


def test_a_second_run_exits_at_once_and_changes_nothing(stash, world, db, fake):
    cache_full_sync(stash, db)
    before = db.read_bytes()
    fake.clear_log()
    with CacheLock(db):
        with pytest.raises(CacheLockedError, match="Another cache sync .*pid"):
            cache_smart_sync(stash, db)
    assert fake.count() == 0
    assert db.read_bytes() == before


def test_a_lock_left_by_a_killed_run_is_taken_over(stash, world, db):
    db.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(REPO)!r})
            from local_cache import CacheLock
            lock = CacheLock({str(db)!r}); lock.acquire()
            print("locked", flush=True); time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(CacheLockedError):
        cache_full_sync(stash, db)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert Path(str(db) + ".lock").exists()  # left behind, but no longer held
    assert cache_full_sync(stash, db).status == "ok"
    assert_mirror_equals(db, world)


# ------------------------------------------------------------------------------------------
# killed runs converge


@pytest.mark.parametrize("die_at", [2, 5, 11])
def test_full_sync_killed_at_a_request_resumes_and_converges(die_at, fake, world, db, stash):
    with pytest.raises(Crash):
        cache_full_sync(CrashingClient(fake.url, die_at), db, per_page=10)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status FROM sync_runs").fetchall() == [("failed",)]
    fake.clear_log()
    cache_full_sync(stash, db, per_page=10)
    assert_mirror_equals(db, world)
    first_pages = [v for op, v in fake.requests() if op == "TagManagerCacheStudiosPage"]
    if die_at > 3:  # studios (one page) had been committed: the rerun resumes after it
        assert not first_pages or first_pages[0]["filter"]["page"] > 1


@pytest.mark.parametrize("die_at", [3, 9, 15])
def test_smart_sync_killed_at_a_request_converges(die_at, fake, world, db, stash, clock, tmp_path):
    cache_full_sync(stash, db)
    clock.tick(30)
    for sid in range(1, 25):
        world.update_entity("scene", sid, title=f"edit {sid}")
    world.delete_entity("tag", 6)
    world.update_entity("performer", 1, tag_ids=[2])
    with pytest.raises(Crash):
        cache_smart_sync(CrashingClient(fake.url, die_at), db, per_page=5)
    cache_smart_sync(stash, db, per_page=5)
    assert_mirror_equals(db, world)
    assert derived_tables(db) == derived_tables(fresh_full(stash, tmp_path, "ref"))


def test_transient_stash_failure_is_recorded(fake, world, db, stash):
    fake.fail_next(2, status=503)  # both attempts of the first request
    with pytest.raises(StashUnavailable):
        cache_full_sync(stash, db)
    with sqlite3.connect(db) as conn:
        status, error = conn.execute("SELECT status, error FROM sync_runs").fetchone()
    assert status == "failed" and "StashUnavailable" in error
    cache_incremental_sync(stash, db)
    assert_mirror_equals(db, world)


def test_sigkill_during_a_full_sync_then_rerun_converges(fake, world, db, stash, clock):
    db.parent.mkdir(parents=True, exist_ok=True)
    fake.delay_next(n=1000, seconds=0.03)
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, requests
            sys.path.insert(0, {str(REPO)!r})
            from local_cache import cache_full_sync
            from stash_client import StashClient
            cache_full_sync(StashClient(requests.Session(), {fake.url!r}), {str(db)!r}, per_page=4)
        """)])
    deadline = time.monotonic() + 30
    while fake.count() < 25 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    fake.clear_faults()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status FROM sync_runs").fetchall() == [("running",)]
    clock.tick(5)
    world.update_entity("scene", 3, title="changed while the sync was dead")
    result = cache_smart_sync(stash, db)
    assert result.status == "ok"
    assert_mirror_equals(db, world)
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("SELECT status FROM sync_runs ORDER BY id")] == ["interrupted", "ok"]


# ------------------------------------------------------------------------------------------
# migrations


def test_fresh_and_upgraded_files_have_the_same_schema(tmp_path, stash, world):
    old = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(old, isolation_level=None)
    cache_schema.enable_writes(conn)
    cache_schema.migrate(conn, target=1)
    assert cache_schema.schema_version(conn) == 1
    conn.close()
    cache_full_sync(stash, old)  # upgrades, then syncs
    fresh = tmp_path / "fresh.sqlite3"
    cache_full_sync(stash, fresh)
    with sqlite3.connect(old) as a, sqlite3.connect(fresh) as b:
        assert cache_schema.schema_version(a) == cache_schema.SCHEMA_VERSION
        assert cache_schema.schema_signature(a) == cache_schema.schema_signature(b)
    assert derived_tables(old) == derived_tables(fresh)


def old_file_with_data(src: Path, dst: Path, version: int) -> None:
    """A cache at schema ``version`` holding the data of ``src``, as an older plugin left it.

    Older versions hashed Stash's raw answer, so every content_hash is replaced by a foreign value.
    """
    conn = sqlite3.connect(dst, isolation_level=None)
    cache_schema.enable_writes(conn)
    cache_schema.migrate(conn, target=version)
    conn.execute("ATTACH DATABASE ? AS src", (str(src),))
    tables = [r[0] for r in conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'")]
    with cache_schema.atomic(conn):
        for table in tables:
            cols = ", ".join(r[1] for r in conn.execute(f"PRAGMA main.table_info({table})"))
            conn.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM src.{table}")
        for table in cache_schema.ENTITY_TABLES:
            conn.execute(f"UPDATE main.{table} SET content_hash = 'raw-answer-hash'")
        conn.execute("DELETE FROM main.cache_meta")
    conn.close()


def test_version_1_file_with_data_gets_its_derived_data_on_the_next_sync(tmp_path, stash, world, fake):
    reference = fresh_full(stash, tmp_path, "ref")
    path = tmp_path / "v1.sqlite3"
    old_file_with_data(reference, path, version=1)
    cache_smart_sync(stash, path)
    assert derived_tables(path) == derived_tables(reference)
    assert_mirror_equals(path, world)


def test_version_2_file_upgrades_to_the_fresh_schema_and_keeps_its_data(tmp_path, stash, world):
    reference = fresh_full(stash, tmp_path, "ref")
    path = tmp_path / "v2.sqlite3"
    old_file_with_data(reference, path, version=2)
    result = cache_full_sync(stash, path)  # upgrades, then compares every entity with the mirror
    with sqlite3.connect(path) as a, sqlite3.connect(reference) as b:
        assert cache_schema.schema_version(a) == cache_schema.SCHEMA_VERSION == 4
        assert cache_schema.schema_signature(a) == cache_schema.schema_signature(b)
        assert a.execute("SELECT count(*) FROM sync_changes").fetchone()[0] == 0
        assert a.execute("SELECT count(*) FROM scenes WHERE content_hash = 'raw-answer-hash'").fetchone()[0] == 0
    # old hashes differ, but the content is the same: nothing counts as created or updated
    assert result.created == result.updated == result.deleted == 0
    assert result.unchanged == result.fetched > 0
    assert_mirror_equals(path, world)
    assert derived_tables(path) == derived_tables(reference)
    again = cache_full_sync(stash, path)
    assert again.unchanged == again.fetched and again.created == again.updated == 0


def test_a_newer_file_is_refused(tmp_path, stash):
    path = tmp_path / "new.sqlite3"
    cache_full_sync(stash, path)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {cache_schema.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(CacheSchemaError, match="newer version"):
        cache_smart_sync(stash, path)
    with pytest.raises(CacheSchemaError, match="newer version"):
        with local_cache.read_cache(path):
            pass


def test_link_tables_are_indexed_on_both_columns(tmp_path):
    conn = local_cache.open_cache(tmp_path / "c.sqlite3")
    for table, (owner, target, _extra) in cache_schema.LINK_TABLES.items():
        leading = set()
        for index in conn.execute(f"PRAGMA index_list({table})"):
            columns = conn.execute(f"PRAGMA index_info({index[1]})").fetchall()
            leading.add(columns[0][2])
        assert {owner, target} <= leading, table
    conn.close()


def test_atomic_nests_with_savepoints(tmp_path):
    conn = local_cache.open_cache(tmp_path / "c.sqlite3")
    with cache_schema.atomic(conn):
        conn.execute("INSERT INTO cache_meta VALUES ('a', '1')")
        with pytest.raises(ZeroDivisionError):
            with cache_schema.atomic(conn):
                conn.execute("INSERT INTO cache_meta VALUES ('b', '2')")
                raise ZeroDivisionError
    assert conn.execute("SELECT key FROM cache_meta").fetchall() == [("a",)]
    conn.close()
