"""A sync that dies at any request (or is SIGKILLed) leaves a file the next run converges from."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from tagman_base.errors import StashUnavailable
from tagman_mirror.runs import cache_full_sync, cache_incremental_sync, cache_smart_sync
from tests.conftest import Crash, CrashingClient
from tests.mirror_oracle import assert_mirror_equals, derived_tables, fresh_full
from tests.conftest import wait_for
from tests.conftest import ROOT


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
            sys.path.insert(0, {str(ROOT)!r})
            from tagman_mirror.runs import cache_full_sync
            from tagman_base.stash_client import StashClient
            cache_full_sync(StashClient(requests.Session(), {fake.url!r}), {str(db)!r}, per_page=4)
        """)])
    assert wait_for(lambda: fake.count() >= 25, timeout=30, step=0.01)
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
