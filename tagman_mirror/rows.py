"""Stash items as mirror rows: the entity row, the rows it owns, their digest, and the diff of two versions.

Everything is derived from the entity spec: the row is ``(id, *spec columns, created_at,
updated_at)``; the owned sets are the spec's link tables, its files table and ``stash_ids``.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, NamedTuple

from tagman_base.sqlite_util import rows_where_in
from tagman_mirror.entities import EntitySpec


class Content(NamedTuple):
    """What the mirror holds for one entity: its row and the sets it owns, with their digest.

    ``sets`` maps each owned link table, its files table and ``stash_ids`` to the rows the entity
    has there (deduplicated as the tables' keys do). The digest is stored as ``content_hash``;
    two items with the same mirrored fields and links have the same digest, whatever order Stash
    listed the links in. (A named tuple: a sync makes one per entity it reads.)
    """

    id: int
    row: tuple                       # id, columns..., created_at, updated_at
    sets: dict[str, list]
    digest: str


@dataclass(frozen=True)
class _Mapper:
    """A spec's mapping, gathered once: the per-item work of a sync is this mapping."""

    spec: EntitySpec
    keys: tuple[str, ...]                                 # answer fields of the row, in column order
    conversions: tuple[tuple[int, Callable[[Any], Any]], ...]   # (position in the row, stored form)
    id_links: tuple[tuple[str, str], ...]                 # (table, ``{id}`` list field) of plain links
    row_links: tuple[tuple[str, Callable[[dict], list]], ...]   # (table, rows reader) of links with extras

    @classmethod
    def of(cls, spec: EntitySpec) -> _Mapper:
        """The mapping of ``spec``: its columns' fields and converters, its links split by kind."""
        columns = spec.fields
        keys = ("id", *(c.key for c in columns), "created_at", "updated_at")
        conversions = ((0, int), *((pos, c.convert) for pos, c in enumerate(columns, 1) if c.convert is not None))
        id_links = tuple((link.table, link.id_field) for link in spec.links if link.id_field is not None)
        row_links = tuple((link.table, link.rows) for link in spec.links if link.id_field is None)
        return cls(spec, keys, conversions, id_links, row_links)

    def row(self, item: dict) -> tuple:
        """The entity table row of one item (columns of the spec + created/updated, without the hash)."""
        values = list(map(item.get, self.keys))
        for pos, convert in self.conversions:
            values[pos] = convert(values[pos])
        return tuple(values)

    def sets(self, item: dict, eid: int) -> dict[str, list]:
        """Rows of every link, file and stash-id table the item owns, deduplicated as the tables' keys
        do, each table's rows in one order whatever order Stash listed them in (sorted; files by position)."""
        out: dict[str, list] = {}
        for table, field in self.id_links:
            targets = item.get(field)
            out[table] = [(eid, t) for t in sorted(set(map(int, map(_ID, targets))))] if targets else []
        for table, rows in self.row_links:  # rows of one table differ in their key: sorting compares no None
            values = rows(item)
            out[table] = sorted([(eid, *v) for v in values]) if values else []
        spec = self.spec
        if spec.files:
            out[spec.files.table] = [(eid, *values) for values in spec.files.rows(item)]
        if spec.has_stash_ids:
            ids = item.get("stash_ids")
            out["stash_ids"] = sorted({(spec.kind, eid, s["endpoint"], s["stash_id"]) for s in ids}) if ids else []
        return out


_ID = itemgetter("id")
_MAPPERS: dict[str, _Mapper] = {}


def _mapper(spec: EntitySpec) -> _Mapper:
    """The mapper of ``spec`` (built on first use)."""
    mapper = _MAPPERS.get(spec.table)
    if mapper is None or mapper.spec is not spec:
        mapper = _MAPPERS[spec.table] = _Mapper.of(spec)
    return mapper


def owned_tables(spec: EntitySpec) -> list[tuple[str, str]]:
    """(table, owner column) of every link and file table the type owns."""
    out = [(link.table, link.owner) for link in spec.links]
    if spec.files:
        out.append((spec.files.table, spec.files.owner))
    return out


def mirrored_content(spec: EntitySpec, item: dict) -> Content:
    """The mirrored content of one Stash item and its digest."""
    mapper = _mapper(spec)
    row = mapper.row(item)
    sets = mapper.sets(item, row[0])
    return Content(row[0], row, sets, content_digest(row, sets))


def content_digest(row: tuple, sets: dict[str, list]) -> str:
    """The digest of a row and its owned sets (as ``_Mapper.sets`` orders them).

    ``marshal`` format 2 writes a value's type and bytes only (no references between equal
    objects, no interning marks), so equal contents always give equal bytes.
    """
    return hashlib.blake2b(marshal.dumps((row, tuple(sets.values())), 2), digest_size=12).hexdigest()


def _empty_sets(spec: EntitySpec) -> dict[str, list]:
    """The owned sets of an entity with no links, files or stash ids."""
    sets: dict[str, list] = {t: [] for t, _ in owned_tables(spec)}
    if spec.has_stash_ids:
        sets["stash_ids"] = []
    return sets


def load_contents(conn: sqlite3.Connection, spec: EntitySpec, ids: Sequence[int]) -> dict[int, tuple[tuple, dict]]:
    """id -> (row, sets) as the mirror holds them (the same shapes as ``Content``), for the given ids."""
    cols = ", ".join((*spec.columns, "created_at", "updated_at"))
    out: dict[int, tuple[tuple, dict]] = {}
    for row in rows_where_in(conn, f"SELECT {cols} FROM {spec.table} WHERE id IN ({{marks}})", ids):
        out[row[0]] = (tuple(row), _empty_sets(spec))
    for table, owner in owned_tables(spec):
        for row in rows_where_in(conn, f"SELECT * FROM {table} WHERE {owner} IN ({{marks}})", ids):
            if row[0] in out:
                out[row[0]][1][table].append(tuple(row))
    if spec.has_stash_ids:
        sql = "SELECT * FROM stash_ids WHERE entity_type = ? AND entity_id IN ({marks})"
        for row in rows_where_in(conn, sql, ids, leading=(spec.kind,)):
            if row[1] in out:
                out[row[1]][1]["stash_ids"].append(tuple(row))
    return out


def _element(table: str, row: tuple) -> Any:
    """A link/file/stash-id row without its owner: the bare target id, or a tuple."""
    rest = row[2:] if table == "stash_ids" else row[1:]
    return rest[0] if len(rest) == 1 else tuple(rest)


def _sorted(values: Iterable[Any]) -> list:
    """Elements in a fixed order (None and mixed types sort by their repr)."""
    values = list(values)
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=repr)


def _json_elements(table: str, rows: Iterable[tuple]) -> str:
    """Link rows as a JSON list of their elements (bare ids, or lists for wider rows)."""
    elements = [_element(table, r) for r in rows]
    return json.dumps([list(v) if isinstance(v, tuple) else v for v in _sorted(elements)],
                      ensure_ascii=False, separators=(",", ":"))


def content_diff(spec: EntitySpec, old: tuple[tuple, dict], new: Content) -> list[tuple[str, Any, Any]]:
    """(field, old value, new value) of every difference; a set gives (table, removed ids, added ids) as JSON."""
    old_row, old_sets = old
    names = (*spec.columns[1:], "created_at", "updated_at")
    out = [(name, a, b) for name, a, b in zip(names, old_row[1:], new.row[1:]) if a != b]
    for table, values in new.sets.items():
        before, after = set(old_sets.get(table, ())), set(values)
        removed, added = before - after, after - before
        if removed or added:
            out.append((table, _json_elements(table, removed), _json_elements(table, added)))
    return out
