"""Bulk writes lift the write guard inside their own transaction only: nobody else ever sees it missing."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tagman_base.errors import CacheSchemaError
from tagman_mirror import schema, store
from tagman_mirror.cache_file import open_cache
from tagman_mirror.runs import cache_full_sync
from tests.conftest import client_for
from tests.fakes.fake_stash import FakeStash
from tests.fakes.library import generate_library
from tests.mirror_oracle import assert_mirror_equals

REPO = Path(__file__).resolve().parents[1]
TABLES = ("scene_tags", "dirty")


def guard_triggers(conn: sqlite3.Connection, tables=TABLES) -> int:
    """How many guard triggers the tables have, as this connection sees them."""
    marks = ",".join("?" * len(tables))
    return conn.execute(f"SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name IN ({marks})",
                        tables).fetchone()[0]


def test_guard_lifted_only_inside_the_writers_transaction(tmp_path):
    conn = open_cache(tmp_path / "c.sqlite3")
    fresh = schema.schema_signature(conn)
    other = sqlite3.connect(tmp_path / "c.sqlite3")
    conn.execute("BEGIN IMMEDIATE")
    with schema.guard_lifted(conn, TABLES):
        assert guard_triggers(conn) == 0
        assert guard_triggers(other) == 3 * len(TABLES)  # readers see the committed schema
        conn.execute("INSERT INTO scene_tags VALUES (1, 2)")
    conn.execute("COMMIT")
    assert schema.schema_signature(conn) == fresh
    with pytest.raises(sqlite3.DatabaseError, match="read-only mirror"):
        other.execute("INSERT INTO scene_tags VALUES (3, 4)")
    other.close()
    conn.close()


def test_guard_lifted_comes_back_with_a_rollback(tmp_path):
    conn = open_cache(tmp_path / "c.sqlite3")
    fresh = schema.schema_signature(conn)
    conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(RuntimeError):
        with schema.guard_lifted(conn, TABLES):
            raise RuntimeError("failed mid-page")
    conn.execute("ROLLBACK")
    assert schema.schema_signature(conn) == fresh
    conn.close()


def test_guard_lifted_refuses_outside_a_transaction(tmp_path):
    conn = open_cache(tmp_path / "c.sqlite3")
    with pytest.raises(CacheSchemaError):
        with schema.guard_lifted(conn, TABLES):
            pass
    assert guard_triggers(conn) == 3 * len(TABLES)
    conn.close()


KILLED_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from tagman_mirror import schema, store
from tagman_mirror.cache_file import open_cache
conn = open_cache(Path(sys.argv[1]))
conn.execute("BEGIN IMMEDIATE")
with schema.guard_lifted(conn, ("scene_tags", "dirty")):
    conn.executemany("INSERT INTO scene_tags VALUES (?, ?)", [(i, i) for i in range(2000)])
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_process_killed_with_the_guard_lifted_leaves_it_in_place(tmp_path):
    path = tmp_path / "c.sqlite3"
    open_cache(path).close()
    done = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(path)], cwd=REPO)
    assert done.returncode == -signal.SIGKILL
    conn = sqlite3.connect(path)
    assert guard_triggers(conn) == 3 * len(TABLES)
    assert conn.execute("SELECT count(*) FROM scene_tags").fetchone()[0] == 0
    with pytest.raises(sqlite3.DatabaseError, match="read-only mirror"):
        conn.execute("INSERT INTO scene_tags VALUES (1, 1)")
    conn.close()


def test_a_bulk_full_sync_keeps_the_schema_the_guard_and_the_mirror_exact(tmp_path, clock, monkeypatch):
    lib = generate_library(seed=11, clock=clock, scenes=600, images=400, tags=40, performers=20, studios=6,
                           groups=5, galleries=12)
    lifted = []
    real = store.guard_lifted

    def recording(conn, tables, events=schema.GUARDED_EVENTS):
        lifted.append(tuple(events))
        return real(conn, tables, events)

    monkeypatch.setattr(store, "guard_lifted", recording)
    db = tmp_path / "cache.sqlite3"
    with FakeStash(lib.world) as fake:
        stash = client_for(fake.url)
        cache_full_sync(stash, db)
        assert lifted and set(lifted) == {("INSERT",)}  # a first fill only inserts: only those triggers go
        lifted.clear()
        with sqlite3.connect(db) as conn:  # digests of another format: every entity is compared, then touched
            schema.disable_writes(conn)
            conn.execute("DROP TRIGGER scenes_read_only_update")
            conn.execute("UPDATE scenes SET content_hash = 'another format'")
            conn.executescript(schema.guard_triggers("scenes")[1] + ";")
        lib.world.update_entity("scene", 5, title="edited after the bulk fill")
        result = cache_full_sync(stash, db)
    assert schema.GUARDED_EVENTS in lifted  # touching and rewriting lift every event's trigger
    assert result.per_type["scenes"].updated == 1 and result.per_type["scenes"].created == 0
    fresh = open_cache(tmp_path / "fresh.sqlite3")
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM scenes WHERE content_hash = 'another format'").fetchone()[0] == 0
    logged = conn.execute("SELECT DISTINCT entity_type, entity_id, change FROM sync_changes WHERE run_id = ?",
                          (result.run_id,)).fetchall()
    assert logged == [("scenes", 5, "updated")]  # touched digests are no change
    assert schema.schema_signature(conn) == schema.schema_signature(fresh)
    with pytest.raises(sqlite3.DatabaseError, match="read-only mirror"):
        conn.execute("DELETE FROM scene_tags")
    conn.close()
    fresh.close()
    assert_mirror_equals(db, lib.world)
