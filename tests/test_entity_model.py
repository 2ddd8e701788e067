"""One declarative spec per entity type: its SQLite table, query selection, row mapping and links agree."""

from __future__ import annotations

from tagman_base.sqlite_util import atomic
from tagman_mirror import queries
from tagman_mirror.cache_file import open_cache
from tagman_mirror.entities import LINKS, SPECS, references_to
from tagman_mirror.rows import load_contents, mirrored_content
from tagman_mirror.store import write_items


def table_columns(conn, table: str) -> tuple[str, ...]:
    """Column names of a table in declaration order (generated columns included)."""
    return tuple(r[1] for r in conn.execute(f"PRAGMA table_xinfo({table})"))


def test_every_spec_matches_its_tables(tmp_path):
    conn = open_cache(tmp_path / "c.sqlite3")
    try:
        for spec in SPECS:
            assert table_columns(conn, spec.table) == (
                *spec.columns, "created_at", "updated_at", "content_hash", "updated_epoch", "deleted_at"), spec.table
            for link in spec.links:
                assert table_columns(conn, link.table) == (link.owner, link.target, *(n for n, _ in link.extra))
            if spec.files:
                assert table_columns(conn, spec.files.table) == (
                    spec.files.owner, "position", *(n for n, _ in spec.files.columns))
    finally:
        conn.close()


def test_every_face_is_in_the_query_selection():
    for spec in SPECS:
        for face in (*(c.gql for c in spec.fields), *(link.gql for link in spec.links),
                     *([spec.files.gql] if spec.files else [])):
            assert face in spec.selection, (spec.table, face)
        assert spec.selection in queries.PAGE[spec.table] and spec.selection in queries.PROBE[spec.table]


def test_references_cover_every_reference_column_and_link():
    for spec in SPECS:
        for column in spec.fields:
            if column.references:
                assert (spec.table, column.name, "id", spec.table) in references_to(column.references)
        for link in spec.links:
            assert (link.table, link.target, link.owner, spec.table) in references_to(link.target_type)
    assert all(link.target_type in {s.table for s in SPECS} for link in LINKS.values())


def test_a_fake_entity_of_every_type_round_trips_through_its_spec(stash, world, tmp_path):
    """Fetched with the spec's query, written with its row mapping, read back: the same content."""
    conn = open_cache(tmp_path / "c.sqlite3")
    try:
        for spec in SPECS:
            data = stash.call(queries.PAGE[spec.table], {"filter": {"per_page": -1}})
            items = data[spec.find][spec.list_key]
            assert items, spec.table
            with atomic(conn):
                assert write_items(conn, spec, items) == len(items)
            stored = load_contents(conn, spec, [int(i["id"]) for i in items])
            for item in items:
                content = mirrored_content(spec, item)
                row, sets = stored[content.id]
                assert row == content.row, spec.table
                assert {t: sorted(v) for t, v in sets.items()} == {t: sorted(v) for t, v in content.sets.items()}
            with atomic(conn):  # identical content: nothing is rewritten
                assert write_items(conn, spec, items) == 0
    finally:
        conn.close()
