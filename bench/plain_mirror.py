"""The yardstick of the cache benchmark: a plain mirror of the same pages, nothing more.

``python -m bench.plain_mirror --url URL --db FILE --pages PAGES.json`` reads every page the full
sync reads (the same queries, 1,000 entities each, one type after the other), with ``requests``
and ``json``, and writes each page in one transaction: the entities with ``executemany`` and,
for every list field, its rows (links as ``(owner, target)``, files and stash ids as
``(owner, position, fields...)``). No change accounting, no content digest, no write guard, no
derived data, no resume: what any script that copies Stash into SQLite has to do at least.

Fetching and writing alternate (a page is written before the next is asked for); the report
(one JSON line on stdout) gives the seconds spent in each, so the same run also measures a bare
fetch of the pages. The tables have the keys and target indexes the cache has, so SQLite does
comparable work per row.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCALAR = (str, int, float, bool)


def _is_ref(value: Any) -> bool:
    """A ``{id}`` object."""
    return isinstance(value, dict) and set(value) == {"id"}


def _sample(items: list[dict], key: str) -> Any:
    """The first value of ``key`` in the page that tells its shape (not None, not an empty list)."""
    for item in items:
        value = item.get(key)
        if value is not None and value != []:
            return value
    return None


def _flat_columns(sample: dict) -> list[str]:
    """Columns of a nested object: its keys, ``{id}`` members as ``<key>_id``."""
    return [f"{k}_id" if _is_ref(v) else k for k, v in sample.items()]


def _flat_values(obj: dict) -> list[Any]:
    """Values of a nested object in the order of ``_flat_columns`` (lists and objects as JSON)."""
    out = []
    for value in obj.values():
        if isinstance(value, dict):
            out.append(value.get("id") if set(value) == {"id"} else json.dumps(value))
        elif isinstance(value, list):
            out.append(json.dumps(value))
        else:
            out.append(value)
    return out


def _scalar(value: Any) -> Any:
    """A column value: scalars as they are, anything else as JSON."""
    return value if value is None or isinstance(value, SCALAR) else json.dumps(value)


@dataclass
class TablePlan:
    """How one entity type's items become rows, decided from its first page."""

    table: str
    columns: list[str]
    getters: list[Callable[[dict], Any]]
    links: dict[str, str]        # item key -> link table (list of {id})
    children: dict[str, tuple[str, list[str]]]  # item key -> (child table, columns)

    @classmethod
    def from_page(cls, table: str, items: list[dict]) -> TablePlan:
        """Classify every field of the type by the shape of its first non-empty value."""
        columns, getters, links, children = [], [], {}, {}
        for key in items[0]:
            sample = _sample(items, key)
            if isinstance(sample, list) and sample and isinstance(sample[0], dict):
                if _is_ref(sample[0]):
                    links[key] = f"{table}_{key}"
                else:
                    children[key] = (f"{table}_{key}", _flat_columns(sample[0]))
            elif isinstance(sample, dict):
                sub = next(iter(sample))
                columns.append(f"{key}_{sub}")
                getters.append(lambda item, k=key, s=sub: (item[k] or {}).get(s))
            elif isinstance(sample, list):
                columns.append(key)
                getters.append(lambda item, k=key: json.dumps(item[k]))
            else:  # a scalar, or a field empty on the whole first page: kept as JSON if it is not a scalar
                columns.append(key)
                getters.append(lambda item, k=key: _scalar(item[k]))
        return cls(table, columns, getters, links, children)

    def ddl(self) -> list[str]:
        """CREATE statements: the entity table, link tables keyed and indexed like the cache's, child tables."""
        cols = ", ".join("id INTEGER PRIMARY KEY" if c == "id" else c for c in self.columns)
        out = [f"CREATE TABLE {self.table} ({cols})"]
        for link in self.links.values():
            out.append(f"CREATE TABLE {link} (owner INTEGER NOT NULL, target INTEGER NOT NULL, "
                       "PRIMARY KEY (owner, target)) WITHOUT ROWID")
            out.append(f"CREATE INDEX {link}_target ON {link} (target)")
        for child, child_columns in self.children.values():
            out.append(f"CREATE TABLE {child} (owner INTEGER NOT NULL, position INTEGER NOT NULL, "
                       f"{', '.join(child_columns)}, PRIMARY KEY (owner, position)) WITHOUT ROWID")
        return out

    def write(self, conn: sqlite3.Connection, items: list[dict]) -> int:
        """Insert one page: entities, then every link and child table; returns the rows written."""
        getters = self.getters
        rows = [[get(item) for get in getters] for item in items]
        conn.executemany(f"INSERT OR REPLACE INTO {self.table} VALUES ({','.join('?' * len(self.columns))})", rows)
        written = len(rows)
        for key, link in self.links.items():
            pairs = [(item["id"], ref["id"]) for item in items for ref in item[key] or ()]
            conn.executemany(f"INSERT OR IGNORE INTO {link} VALUES (?, ?)", pairs)
            written += len(pairs)
        for key, (child, child_columns) in self.children.items():
            marks = ",".join("?" * (len(child_columns) + 2))
            child_rows = [(item["id"], pos, *_flat_values(obj)) for item in items
                          for pos, obj in enumerate(item[key] or ())]
            conn.executemany(f"INSERT OR REPLACE INTO {child} VALUES ({marks})", child_rows)
            written += len(child_rows)
        return written


def mirror(url: str, db_path: Path, pages: list[dict], per_page: int = 1000) -> dict[str, Any]:
    """Copy every page of every type into ``db_path``; returns requests, rows and seconds spent."""
    import requests

    session = requests.Session()
    conn = sqlite3.connect(str(db_path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    fetch_s = write_s = 0.0
    sent = rows = 0
    for spec in pages:
        plan: TablePlan | None = None
        page = 1
        while True:
            started = time.perf_counter()
            body = {"query": spec["query"], "variables": {
                "filter": {"page": page, "per_page": per_page, "sort": "id", "direction": "ASC"}}}
            data = json.loads(session.post(url + "/graphql", json=body).content)["data"][spec["find"]]
            items = data[spec["list_key"]]
            sent += 1
            fetched = time.perf_counter()
            fetch_s += fetched - started
            if items:
                if plan is None:
                    plan = TablePlan.from_page(spec["table"], items)
                    for sql in plan.ddl():
                        conn.execute(sql)
                conn.execute("BEGIN")
                rows += plan.write(conn, items)
                conn.execute("COMMIT")
            write_s += time.perf_counter() - fetched
            if len(items) < per_page or page * per_page >= data["count"]:
                break
            page += 1
    conn.close()
    return {"requests": sent, "rows": rows, "fetch_s": fetch_s, "write_s": write_s}


def main(argv: list[str] | None = None) -> int:
    """Command line: mirror the pages named in a JSON file (table, query, find, list_key per type)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--pages", required=True, help="JSON file: [{table, query, find, list_key}, ...]")
    parser.add_argument("--per-page", type=int, default=1000)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report = mirror(args.url, Path(args.db), json.loads(Path(args.pages).read_text()), args.per_page)
    report["seconds"] = time.perf_counter() - started
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
