"""Schema migrations: old files upgrade in place to exactly the fresh schema; newer files are refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tagman_base.errors import CacheSchemaError
from tagman_base.sqlite_util import atomic
from tagman_mirror import schema
from tagman_mirror.cache_file import open_cache, read_cache
from tagman_mirror.entities import LINKS
from tagman_mirror.runs import cache_full_sync, cache_smart_sync
from tests.mirror_oracle import assert_mirror_equals, derived_tables, fresh_full


def test_fresh_and_upgraded_files_have_the_same_schema(tmp_path, stash, world):
    old = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(old, isolation_level=None)
    schema.enable_writes(conn)
    schema.migrate(conn, target=1)
    assert schema.schema_version(conn) == 1
    conn.close()
    cache_full_sync(stash, old)  # upgrades, then syncs
    fresh = tmp_path / "fresh.sqlite3"
    cache_full_sync(stash, fresh)
    with sqlite3.connect(old) as a, sqlite3.connect(fresh) as b:
        assert schema.schema_version(a) == schema.SCHEMA_VERSION
        assert schema.schema_signature(a) == schema.schema_signature(b)
    assert derived_tables(old) == derived_tables(fresh)


def old_file_with_data(src: Path, dst: Path, version: int) -> None:
    """A cache at schema ``version`` holding the data of ``src``, as an older plugin left it.

    Older versions hashed Stash's raw answer, so every content_hash is replaced by a foreign value.
    """
    conn = sqlite3.connect(dst, isolation_level=None)
    schema.enable_writes(conn)
    schema.migrate(conn, target=version)
    conn.execute("ATTACH DATABASE ? AS src", (str(src),))
    tables = [r[0] for r in conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'")]
    with atomic(conn):
        for table in tables:
            cols = ", ".join(r[1] for r in conn.execute(f"PRAGMA main.table_info({table})"))
            conn.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM src.{table}")
        for table in schema.ENTITY_TABLES:
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
        assert schema.schema_version(a) == schema.SCHEMA_VERSION == 8
        assert schema.schema_signature(a) == schema.schema_signature(b)
        assert a.execute("SELECT count(*) FROM sync_changes").fetchone()[0] == 0
        assert a.execute("SELECT count(*) FROM scenes WHERE content_hash = 'raw-answer-hash'").fetchone()[0] == 0
    # old hashes differ, but the content is the same: nothing counts as created or updated
    assert result.created == result.updated == result.deleted == 0
    assert result.unchanged == result.fetched > 0
    assert_mirror_equals(path, world)
    assert derived_tables(path) == derived_tables(reference)
    again = cache_full_sync(stash, path)
    assert again.unchanged == again.fetched and again.created == again.updated == 0


def test_version_4_file_gets_the_signal_state_and_one_smart_sync_mirrors_a_silent_change(tmp_path, stash, world,
                                                                                        clock):
    reference = fresh_full(stash, tmp_path, "ref")
    path = tmp_path / "v4.sqlite3"
    old_file_with_data(reference, path, version=4)
    clock.tick(60)
    world.move_file(world.get("scene", 3)["files"][0]["id"], "/moved/scene_3.mp4")  # the file row only
    cache_smart_sync(stash, path)
    fresh = open_cache(tmp_path / "fresh.sqlite3")
    with sqlite3.connect(path) as a:
        assert schema.schema_version(a) == schema.SCHEMA_VERSION == 8
        assert schema.schema_signature(a) == schema.schema_signature(fresh)
        stored = {r[0] for r in a.execute("SELECT entity_type FROM mirror_signals")}
    fresh.close()
    assert stored == {"scenes", "images", "galleries"}
    assert_mirror_equals(path, world)


def test_a_newer_file_is_refused(tmp_path, stash):
    path = tmp_path / "new.sqlite3"
    cache_full_sync(stash, path)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(CacheSchemaError, match="newer version"):
        cache_smart_sync(stash, path)
    with pytest.raises(CacheSchemaError, match="newer version"):
        with read_cache(path):
            pass


def test_link_tables_are_indexed_on_both_columns(tmp_path):
    conn = open_cache(tmp_path / "c.sqlite3")
    for table, link in LINKS.items():
        owner, target = link.owner, link.target
        leading = set()
        for index in conn.execute(f"PRAGMA index_list({table})"):
            columns = conn.execute(f"PRAGMA index_info({index[1]})").fetchall()
            leading.add(columns[0][2])
        assert {owner, target} <= leading, table
    conn.close()


# the watch tables as version 3 created them outside the schema, before next_full_sync existed
_V3_WATCH_TABLES = (
    """CREATE TABLE IF NOT EXISTS watch_heartbeat (
        pid INTEGER NOT NULL, host TEXT NOT NULL, started TEXT NOT NULL, last_heartbeat TEXT NOT NULL,
        last_heartbeat_epoch REAL NOT NULL, last_run TEXT, last_run_id INTEGER, last_run_status TEXT,
        state TEXT NOT NULL, interval_s REAL NOT NULL, heartbeat_s REAL NOT NULL,
        PRIMARY KEY (host, pid))""",
    "ALTER TABLE watch_heartbeat ADD COLUMN next_full_sync TEXT",
    """CREATE TABLE IF NOT EXISTS sync_run_origin (
        run_id INTEGER PRIMARY KEY, created_by TEXT NOT NULL)""",
)


@pytest.mark.parametrize("marker, pending", [("tags,scenes", ["tags", "scenes"]), ("1", ["studios", "tags", "scenes"]),
                                             (None, [])])
def test_version_3_file_gets_the_watch_tables_and_the_typed_full_sync_marker(tmp_path, marker, pending):
    path = tmp_path / "v3.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    schema.enable_writes(conn)
    schema.migrate(conn, target=3)
    for sql in _V3_WATCH_TABLES:
        conn.execute(sql)
    conn.execute("INSERT INTO sync_runs (mode, started, status) VALUES ('cache_full_sync', 'x', 'ok')")
    conn.execute("INSERT INTO sync_run_origin VALUES (1, 'watch')")
    conn.executemany("INSERT INTO sync_state (entity_type, cursor) VALUES (?, 'c')", [("studios",), ("tags",), ("scenes",)])
    if marker is not None:
        conn.execute("INSERT INTO cache_meta VALUES ('full_run_pending', ?)", (marker,))
    conn.close()
    open_cache(path).close()
    fresh = open_cache(tmp_path / "fresh.sqlite3")
    with sqlite3.connect(path) as a:
        assert schema.schema_version(a) == schema.SCHEMA_VERSION
        assert schema.schema_signature(a) == schema.schema_signature(fresh)
        assert a.execute("SELECT count(*) FROM cache_meta WHERE key = 'full_run_pending'").fetchone() == (0,)
        flagged = {r[0] for r in a.execute("SELECT entity_type FROM sync_state WHERE full_run_pending")}
        assert [t for t in ("studios", "tags", "scenes") if t in flagged] == pending
        assert a.execute("SELECT * FROM sync_run_origin").fetchall() == [(1, "watch")]
    fresh.close()


def test_ddl_lives_only_in_the_schema_module():
    """No runtime module but a schema module (the mirror's, the tag sync history's) creates or alters tables."""
    root = Path(__file__).resolve().parents[1]
    runtime = [p for p in root.rglob("*.py") if not {"tests", "bench", ".venv"} & set(p.relative_to(root).parts)]
    offenders = [p.name for p in runtime if p.name not in ("schema.py", "history_schema.py")
                 and any(word in p.read_text() for word in ("CREATE TABLE ", "ALTER TABLE ", "CREATE INDEX "))]
    assert offenders == []
