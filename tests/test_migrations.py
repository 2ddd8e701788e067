"""Schema migrations: old files upgrade in place to exactly the fresh schema; newer files are refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tagman_base.errors import CacheSchemaError
from tagman_base.sqlite_util import atomic
from tagman_mirror import schema
from tagman_mirror.cache_file import open_cache, read_cache
from tagman_mirror.runs import cache_full_sync, cache_smart_sync
from tests.mirror_oracle import assert_mirror_equals, derived_tables, fresh_full
from tagman_mirror.entities import LINKS


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
        assert schema.schema_version(a) == schema.SCHEMA_VERSION == 4
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
