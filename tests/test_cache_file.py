"""Opening the cache file: where it lives, what it refuses, and its one transaction helper."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tagman_base.errors import CacheError, CacheSchemaError
from tagman_base.sqlite_util import atomic
from tagman_mirror.cache_file import default_cache_path, open_cache
from tagman_mirror.runs import cache_full_sync


def test_unwritable_path_is_a_cache_error(stash, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="cacheDbPath"):
        cache_full_sync(stash, blocker / "sub" / "cache.sqlite3")


def test_a_non_sqlite_file_is_refused(stash, tmp_path):
    path = tmp_path / "cache.sqlite3"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(CacheSchemaError, match="not a usable SQLite cache"):
        cache_full_sync(stash, path)


def test_a_foreign_sqlite_file_is_refused(stash, tmp_path):
    path = tmp_path / "other.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (x)")
    with pytest.raises(CacheSchemaError, match="not a tagManager cache"):
        cache_full_sync(stash, path)


def test_default_path():
    assert default_cache_path(Path("/p")) == Path("/p/data/stash_cache.sqlite3")


def test_atomic_nests_with_savepoints(tmp_path):
    conn = open_cache(tmp_path / "c.sqlite3")
    with atomic(conn):
        conn.execute("INSERT INTO cache_meta VALUES ('a', '1')")
        with pytest.raises(ZeroDivisionError):
            with atomic(conn):
                conn.execute("INSERT INTO cache_meta VALUES ('b', '2')")
                raise ZeroDivisionError
    assert conn.execute("SELECT key FROM cache_meta").fetchall() == [("a",)]
    conn.close()
