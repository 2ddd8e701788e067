"""One sync per cache file: a second run stops at once, a killed run's lock is taken over."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tagman_base.errors import CacheLockedError
from tagman_mirror.cache_file import sync_lock
from tagman_mirror.runs import cache_full_sync, cache_smart_sync
from tests.mirror_oracle import assert_mirror_equals
from tests.conftest import ROOT


def test_a_second_run_exits_at_once_and_changes_nothing(stash, world, db, fake):
    cache_full_sync(stash, db)
    before = db.read_bytes()
    fake.clear_log()
    with sync_lock(db):
        with pytest.raises(CacheLockedError, match="Another cache sync .*pid"):
            cache_smart_sync(stash, db)
    assert fake.count() == 0
    assert db.read_bytes() == before


def test_a_lock_left_by_a_killed_run_is_taken_over(stash, world, db):
    db.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(ROOT)!r})
            from tagman_mirror.cache_file import sync_lock
            lock = sync_lock({str(db)!r}); lock.__enter__()
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
