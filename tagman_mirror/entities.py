"""One declarative spec per mirrored Stash entity type: every other face is derived from it.

An ``EntitySpec`` lists its ``Column``s (SQLite declaration, GraphQL selection and how the value
is read from Stash's answer), its ``Link`` tables, its ``Files`` table and whether it has stash
ids. From it come the ``CREATE TABLE`` statements (``schema``), the query selection
(``queries``), the row tuple and the link/file rows (``rows``), and the references that a
deletion must follow (``references_to``). Adding a column is one line here (with ``since`` set to
the schema version that adds it); a face that disagrees cannot exist.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tagman_base.errors import SettingsError

Reader = Callable[[dict], Any]


def _flag(value: Any) -> int:
    """Booleans as 0/1."""
    return 1 if value else 0


_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # built once, not per value


def _json_list(value: Any) -> str:
    """A list as compact JSON text (None becomes [])."""
    if not value:
        return "[]"
    return _COMPACT_JSON(list(value))


def _ref_id(value: Any) -> int | None:
    """The integer id of a ``{id}`` object, or None."""
    return int(value["id"]) if value else None


def _path_of(value: Any) -> str | None:
    """The ``path`` of a ``{path}`` object, or None."""
    return value.get("path") if value else None


def ids_of(objs: Any) -> list[int]:
    """Distinct integer ids of a list of ``{id}`` objects, in Stash's order."""
    return list(dict.fromkeys(int(o["id"]) for o in objs or []))


@dataclass(frozen=True)
class Column:
    """One entity-table column: its SQLite declaration, GraphQL selection and where its value comes from.

    The value is the answer's ``key`` field, passed through ``convert`` when the column stores it
    in another form (``None``: as Stash sends it).
    """

    name: str
    sql: str                        # "TEXT NOT NULL", "INTEGER"
    gql: str                        # selection that fetches it ("name", "studio { id }")
    key: str                        # the answer's field the value is read from
    convert: Callable[[Any], Any] | None = None   # the stored form of that field's value
    references: str | None = None   # entity table whose id this column holds
    since: int = 1                  # schema version that added the column


def text(name: str, required: bool = False, gql: str | None = None) -> Column:
    """A text (or date) field read as Stash sends it."""
    return Column(name, "TEXT NOT NULL" if required else "TEXT", gql or name, gql or name)


def integer(name: str) -> Column:
    """An integer field read as Stash sends it."""
    return Column(name, "INTEGER", name, name)


def flag(name: str) -> Column:
    """A boolean stored as 0/1."""
    return Column(name, "INTEGER NOT NULL DEFAULT 0", name, name, _flag)


def json_list(name: str, gql: str | None = None) -> Column:
    """A list field stored as a JSON array."""
    return Column(name, "TEXT NOT NULL DEFAULT '[]'", gql or name, gql or name, _json_list)


def reference(name: str, gql_field: str, target: str) -> Column:
    """The id of one related entity (``studio { id }`` as ``studio_id``)."""
    return Column(name, "INTEGER", f"{gql_field} {{ id }}", gql_field, _ref_id, target)


@dataclass(frozen=True)
class Link:
    """A link table the entity owns: (owner id, target id, extra columns...)."""

    table: str
    owner: str                      # owner column, e.g. scene_id
    target: str                     # target column, e.g. tag_id
    target_type: str                # entity table of the target
    gql: str                        # selection that fetches the links
    rows: Reader                    # item -> [(target, *extra), ...]
    extra: tuple[tuple[str, str], ...] = ()   # (column, SQLite declaration)
    id_field: str | None = None     # a plain link: the ``{id}`` list field its targets come from


def id_link(table: str, owner: str, target: str, target_type: str, gql_field: str) -> Link:
    """A plain link from the ids of a ``{id}`` list field."""
    return Link(table, owner, target, target_type, f"{gql_field} {{ id }}",
                lambda item: [(x,) for x in ids_of(item.get(gql_field))], id_field=gql_field)


@dataclass(frozen=True)
class Files:
    """The entity's files table: (owner id, position, columns...)."""

    table: str
    owner: str
    columns: tuple[tuple[str, str], ...]   # after owner and position: (column, SQLite declaration)
    gql: str
    rows: Reader                           # item -> [(position, *columns), ...]


@dataclass(frozen=True)
class EntitySpec:
    """How one Stash entity type is queried, stored and linked."""

    table: str            # plural: table name and type name in sync_state
    kind: str             # singular: stash_ids.entity_type and image_counts
    operation: str        # CamelCase part of the operation names
    filter_type: str      # SceneFilterType
    fields: tuple[Column, ...]
    links: tuple[Link, ...] = ()
    files: Files | None = None
    has_stash_ids: bool = False

    @property
    def find(self) -> str:
        """The Stash query field (findScenes)."""
        return f"find{self.operation}"

    @property
    def filter_arg(self) -> str:
        """The filter argument of ``find`` (scene_filter)."""
        return f"{self.kind}_filter"

    @property
    def list_key(self) -> str:
        """The list field of ``find``'s answer (scenes)."""
        return self.table

    @property
    def columns(self) -> tuple[str, ...]:
        """Entity-table columns filled from Stash, ``id`` first (created_at/updated_at follow them)."""
        return ("id", *(c.name for c in self.fields))

    @property
    def selection(self) -> str:
        """The GraphQL selection of one entity."""
        parts = ["id", *dict.fromkeys(c.gql for c in self.fields), "created_at", "updated_at",
                 *(link.gql for link in self.links)]
        if self.files:
            parts.append(self.files.gql)
        if self.has_stash_ids:
            parts.append("stash_ids { endpoint stash_id }")
        return " ".join(parts)


def _scene_groups(item: dict) -> list[tuple]:
    """(group id, scene_index) of a scene's groups, the first entry of a group winning."""
    groups: dict[int, Any] = {}
    for g in item.get("groups") or []:
        groups.setdefault(int(g["group"]["id"]), g.get("scene_index"))
    return list(groups.items())


def _scene_files(item: dict) -> list[tuple]:
    """(position, path, size, duration, oshash, phash, md5) of a scene's files."""
    out = []
    for pos, f in enumerate(item.get("files") or []):
        prints = {fp["type"]: fp["value"] for fp in f.get("fingerprints") or []}
        out.append((pos, f["path"], f.get("size"), f.get("duration"),
                    prints.get("oshash"), prints.get("phash"), prints.get("md5")))
    return out


def _image_files(item: dict) -> list[tuple]:
    """(position, path, size) of an image's visual files."""
    return [(pos, f["path"], f.get("size")) for pos, f in enumerate(item.get("visual_files") or [])
            if f and f.get("path") is not None]


def _gallery_files(item: dict) -> list[tuple]:
    """(position, path) of a gallery's files."""
    return [(pos, f["path"]) for pos, f in enumerate(item.get("files") or [])]


_MEDIA = (text("title"), text("code"), text("date"), text("details"), text("photographer"),
          integer("rating100"), flag("organized"), reference("studio_id", "studio", "studios"), json_list("urls"))

SPECS: tuple[EntitySpec, ...] = (
    EntitySpec("studios", "studio", "Studios", "StudioFilterType", (
        text("name", required=True), reference("parent_id", "parent_studio", "studios"), json_list("aliases"),
        json_list("urls"), text("details"), integer("rating100"), flag("favorite"), flag("ignore_auto_tag")),
        links=(id_link("studio_tags", "studio_id", "tag_id", "tags", "tags"),), has_stash_ids=True),
    EntitySpec("tags", "tag", "Tags", "TagFilterType", (
        text("name", required=True), text("sort_name"), text("description"), json_list("aliases"),
        flag("favorite"), flag("ignore_auto_tag")),
        links=(id_link("tag_parents", "tag_id", "parent_id", "tags", "parents"),), has_stash_ids=True),
    EntitySpec("performers", "performer", "Performers", "PerformerFilterType", (
        text("name", required=True), text("disambiguation"), text("gender"), text("birthdate"),
        json_list("aliases", gql="alias_list"), json_list("urls"), text("details"), integer("rating100"),
        flag("favorite"), flag("ignore_auto_tag")),
        links=(id_link("performer_tags", "performer_id", "tag_id", "tags", "tags"),), has_stash_ids=True),
    EntitySpec("groups", "group", "Groups", "GroupFilterType", (
        text("name", required=True), text("aliases"), text("date"), integer("rating100"),
        reference("studio_id", "studio", "studios"), text("director"), text("synopsis"), json_list("urls")),
        links=(id_link("group_tags", "group_id", "tag_id", "tags", "tags"),)),
    EntitySpec("galleries", "gallery", "Galleries", "GalleryFilterType", (
        *_MEDIA, Column("folder_path", "TEXT", "folder { path }", "folder", _path_of)),
        links=(id_link("gallery_tags", "gallery_id", "tag_id", "tags", "tags"),
               id_link("gallery_performers", "gallery_id", "performer_id", "performers", "performers")),
        files=Files("gallery_files", "gallery_id", (("path", "TEXT NOT NULL"),), "files { path }", _gallery_files)),
    EntitySpec("scenes", "scene", "Scenes", "SceneFilterType", (
        text("title"), text("code"), text("details"), text("director"), text("date"), integer("rating100"),
        flag("organized"), reference("studio_id", "studio", "studios"), json_list("urls")),
        links=(id_link("scene_tags", "scene_id", "tag_id", "tags", "tags"),
               id_link("scene_performers", "scene_id", "performer_id", "performers", "performers"),
               Link("scene_groups", "scene_id", "group_id", "groups", "groups { group { id } scene_index }",
                    _scene_groups, extra=(("scene_index", "INTEGER"),)),
               id_link("scene_galleries", "scene_id", "gallery_id", "galleries", "galleries")),
        files=Files("scene_files", "scene_id", (("path", "TEXT NOT NULL"), ("size", "INTEGER"), ("duration", "REAL"),
                                                ("oshash", "TEXT"), ("phash", "TEXT"), ("md5", "TEXT")),
                    "files { path size duration fingerprints { type value } }", _scene_files),
        has_stash_ids=True),
    EntitySpec("images", "image", "Images", "ImageFilterType", _MEDIA,
        links=(id_link("image_tags", "image_id", "tag_id", "tags", "tags"),
               id_link("image_performers", "image_id", "performer_id", "performers", "performers"),
               Link("image_galleries", "image_id", "gallery_id", "galleries", "galleries { id }",
                    lambda item: [(x, pos) for pos, x in enumerate(ids_of(item.get("galleries")))],
                    extra=(("position", "INTEGER NOT NULL"),))),
        files=Files("image_files", "image_id", (("path", "TEXT NOT NULL"), ("size", "INTEGER")),
                    "visual_files { ... on ImageFile { path size } ... on VideoFile { path size } }", _image_files)),
)
SPEC_BY_TABLE = {spec.table: spec for spec in SPECS}
ENTITY_TYPES: tuple[str, ...] = tuple(spec.table for spec in SPECS)
LINKS: dict[str, Link] = {link.table: link for spec in SPECS for link in spec.links}
_ENTITY_ALIASES = {**{spec.table: spec.table for spec in SPECS}, **{spec.kind: spec.table for spec in SPECS}}


def references_to(table: str) -> tuple[tuple[str, str, str, str], ...]:
    """(table, column, owner column, owner type) of every mirrored reference to entities of ``table``.

    Whatever referenced a vanished entity is re-read, since Stash rewrites such links silently.
    """
    out = []
    for spec in SPECS:
        out += [(spec.table, c.name, "id", spec.table) for c in spec.fields if c.references == table]
    for spec in SPECS:
        out += [(link.table, link.target, link.owner, spec.table) for link in spec.links if link.target_type == table]
    return tuple(out)


def parse_entities(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """The entity types named in ``text`` ("performers,tags" or a list), in sync order; () means all.

    Names are case-insensitive and may be singular; an unknown name is a SettingsError listing the
    allowed ones.
    """
    if text is None:
        return ()
    parts = str(text).split(",") if isinstance(text, str) else [str(p) for p in text]
    wanted = set()
    for part in parts:
        name = part.strip().lower()
        if not name:
            continue
        if name not in _ENTITY_ALIASES:
            raise SettingsError(f"Unknown entity type {part.strip()!r} in entities. "
                                f"Allowed: {','.join(ENTITY_TYPES)} (comma separated).")
        wanted.add(_ENTITY_ALIASES[name])
    return tuple(t for t in ENTITY_TYPES if t in wanted)
