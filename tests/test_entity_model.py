"""One declarative spec per entity type: its SQLite table, query selection, row mapping and links agree."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

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


SCENE = {"id": "7", "title": "t", "code": None, "details": None, "director": None, "date": "2024-01-02",
         "rating100": 60, "organized": True, "studio": {"id": "3"}, "urls": ["https://a"],
         "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-02T00:00:00Z",
         "tags": [{"id": "2"}, {"id": "11"}, {"id": "2"}], "performers": [{"id": "5"}, {"id": "4"}],
         "groups": [{"group": {"id": "9"}, "scene_index": None}, {"group": {"id": "8"}, "scene_index": 2}],
         "galleries": [{"id": "1"}],
         "files": [{"path": "/a.mp4", "size": 10, "duration": 1.5, "fingerprints": [{"type": "phash", "value": "p"}]}],
         "stash_ids": [{"endpoint": "https://b", "stash_id": "x"}, {"endpoint": "https://a", "stash_id": "y"}]}
SCENE_SPEC = next(spec for spec in SPECS if spec.table == "scenes")


@given(st.permutations(range(3)), st.permutations(range(2)), st.permutations(range(2)), st.permutations(range(2)))
def test_the_digest_and_the_rows_ignore_the_order_stash_lists_links_in(tags, performers, groups, stash_ids):
    shuffled = dict(SCENE, tags=[SCENE["tags"][i] for i in tags],
                    performers=[SCENE["performers"][i] for i in performers],
                    groups=[SCENE["groups"][i] for i in groups],
                    stash_ids=[SCENE["stash_ids"][i] for i in stash_ids])
    original, reordered = mirrored_content(SCENE_SPEC, SCENE), mirrored_content(SCENE_SPEC, shuffled)
    assert reordered.sets == original.sets and reordered.digest == original.digest
    assert original.sets["scene_tags"] == [(7, 2), (7, 11)]  # deduplicated as the table's key does


@given(st.sampled_from(sorted(SCENE)), st.sampled_from([None, 0, 1, "1", 1.5, "", [], [{"id": "99"}], True]))
def test_any_change_of_a_mirrored_value_changes_the_digest(key, value):
    assume(key != "id" and SCENE[key] != value)
    changed = dict(SCENE, **{key: value})
    try:
        content = mirrored_content(SCENE_SPEC, changed)
    except (TypeError, KeyError, AttributeError, ValueError):  # not a shape Stash sends for that field
        return
    original = mirrored_content(SCENE_SPEC, SCENE)
    assume((content.row, content.sets) != (original.row, original.sets))
    assert content.digest != original.digest


def test_plain_links_map_as_their_readers_do():
    """The mapping reads ``{id}`` lists directly; it gives what each link's own reader gives, sorted."""
    for spec in SPECS:
        for link in spec.links:
            if link.id_field is not None:
                item = dict(SCENE, **{link.id_field: [{"id": "5"}, {"id": "2"}, {"id": "5"}]})
                sets = mirrored_content(spec, item).sets
                assert sets[link.table] == sorted((7, *values) for values in link.rows(item)) == [(7, 2), (7, 5)]
