"""SQLite helpers shared by every writer: the one ``atomic()`` transaction and chunked ``id IN (...)``."""

from __future__ import annotations

import functools
import itertools
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

# SQLite's default limit of bound variables is 999 in older builds; stay under it
IN_CHUNK = 900

_savepoints = itertools.count(1)


@contextmanager
def atomic(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One transaction (BEGIN IMMEDIATE/COMMIT/ROLLBACK) at top level, a SAVEPOINT when nested."""
    if conn.in_transaction:
        name = f"sp_{id(conn)}_{next(_savepoints)}"
        conn.execute(f"SAVEPOINT {name}")
        try:
            yield conn
        except BaseException:
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
            raise
        conn.execute(f"RELEASE {name}")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@functools.cache
def json_functions() -> bool:
    """Whether this SQLite has its JSON functions (built in since 3.38; an option before, on in most builds)."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("SELECT json_array_length('[]')")
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()
    return True


def chunks(seq: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def rows_where_in(conn: sqlite3.Connection, sql: str, ids: Sequence[Any], leading: Sequence[Any] = (),
                  size: int = IN_CHUNK) -> Iterator[tuple]:
    """Rows of ``sql`` (whose ``{marks}`` stands for the ``IN`` list) for every chunk of ``ids``.

    ``leading`` are parameters bound before the list in each chunk's query.
    """
    for chunk in chunks(list(ids), size):
        marks = ",".join("?" * len(chunk))
        yield from conn.execute(sql.format(marks=marks), (*leading, *chunk))


def schema_version(conn: sqlite3.Connection) -> int:
    """The ``user_version`` of the open file."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def apply_migrations(conn: sqlite3.Connection, migrations: Sequence[tuple[int, str, Sequence[str]]],
                     found: int, target: int) -> None:
    """Run each step above ``found`` up to ``target``, each in one transaction with its version bump."""
    for version, _description, statements in migrations:
        if found < version <= target:
            with atomic(conn):
                for sql in statements:
                    conn.execute(sql)
                conn.execute(f"PRAGMA user_version = {int(version)}")


def schema_signature(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """(type, name, normalised SQL) of every schema object, for comparing two files."""
    rows = conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
    ).fetchall()
    return [(t, n, " ".join((s or "").split())) for t, n, s in rows]
