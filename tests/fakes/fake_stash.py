"""In-memory fake of a Stash server's GraphQL API.

Every request is executed by graphql-core against ``stash_fake.graphql``, a
strict subset of the real Stash schema, so a query that asks for something the
fake does not declare fails the same way it would against Stash. Resolvers run
over a :class:`World`, a set of plain in-memory tables.

Timestamps behave like Stash's: each write stores ``world.clock()`` rendered as
RFC3339 text at one-second precision in the server's current UTC offset
(``world.set_offset``); reads return exactly that text and timestamp filters
compare text with text.

Run as a process::

    python -m tests.fakes.fake_stash --port 0 --seed 1 --scenes 1000

prints one JSON line ``{"url": ..., "port": ...}`` when ready and serves until
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import bisect
import copy
import json
import signal
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from tests.fakes.stash_plugins import HookEvent, PluginHost, scan_events
from tests.fakes.stash_sessions import DEFAULT_MAX_SESSION_AGE, SessionStore, authenticate, set_cookie_header
from graphql import (
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    build_schema,
    execute_sync,
    parse,
    validate,
)

SDL_PATH = Path(__file__).with_name("stash_fake.graphql")

ENTITY_TYPES = ("tag", "studio", "performer", "group", "gallery", "image", "scene")

_TYPE_ALIASES = {
    "tags": "tag", "studios": "studio", "performers": "performer",
    "groups": "group", "movie": "group", "movies": "group",
    "galleries": "gallery", "images": "image", "scenes": "scene",
}

# Stored fields of each entity type with their defaults (lists are never
# mutated in place, so sharing the default tuples is safe).
_DEFAULTS = {
    "tag": dict(name=None, sort_name=None, description=None, aliases=(),
                ignore_auto_tag=False, favorite=False, stash_ids=(), parent_ids=()),
    "studio": dict(name=None, urls=(), parent_id=None, aliases=(), tag_ids=(),
                   ignore_auto_tag=False, stash_ids=(), rating100=None,
                   favorite=False, details=None),
    "performer": dict(name=None, disambiguation=None, urls=(), gender=None,
                      birthdate=None, alias_list=(), favorite=False, tag_ids=(),
                      ignore_auto_tag=False, stash_ids=(), rating100=None,
                      details=None),
    "group": dict(name=None, aliases=None, date=None, rating100=None,
                  studio_id=None, director=None, synopsis=None, urls=(), tag_ids=()),
    "gallery": dict(title=None, code=None, urls=(), date=None, details=None,
                    photographer=None, rating100=None, organized=False, files=(),
                    folder=None, studio_id=None, tag_ids=(), performer_ids=()),
    "image": dict(title=None, code=None, rating100=None, urls=(), date=None,
                  details=None, photographer=None, organized=False, files=(),
                  gallery_ids=(), studio_id=None, tag_ids=(), performer_ids=()),
    "scene": dict(title=None, code=None, details=None, director=None, urls=(),
                  date=None, rating100=None, organized=False, files=(),
                  gallery_ids=(), studio_id=None, groups=(), tag_ids=(),
                  performer_ids=(), stash_ids=()),
}

_LIST_FIELDS = {
    t: {k for k, v in d.items() if isinstance(v, tuple)} for t, d in _DEFAULTS.items()
}

# target type -> [(source type, field, kind)]: every stored reference to an entity.
_REFS = {
    "tag": [("tag", "parent_ids", "list")] + [
        (t, "tag_ids", "list")
        for t in ("studio", "performer", "group", "gallery", "image", "scene")
    ],
    "studio": [("studio", "parent_id", "one")] + [
        (t, "studio_id", "one") for t in ("group", "gallery", "image", "scene")
    ],
    "performer": [(t, "performer_ids", "list") for t in ("gallery", "image", "scene")],
    "group": [("scene", "groups", "groups")],
    "gallery": [("image", "gallery_ids", "list"), ("scene", "gallery_ids", "list")],
    "image": [],
    "scene": [],
}

_NAME_FIELD = {"tag": "name", "studio": "name", "performer": "name", "group": "name",
               "gallery": "title", "image": "title", "scene": "title"}

# filter input fields the fake implements, per entity type
_FILTERS = {
    "scene": {"id", "tags", "stash_id_endpoint", "created_at", "updated_at"},
    "image": {"id", "tags", "created_at", "updated_at"},
    "gallery": {"id", "tags", "created_at", "updated_at"},
    "performer": {"tags", "stash_id_endpoint", "created_at", "updated_at"},
    "studio": {"stash_id_endpoint", "tags", "created_at", "updated_at"},
    "group": {"tags", "created_at", "updated_at"},
    "tag": {"stash_id_endpoint", "created_at", "updated_at"},
}

# filters on files (related files_filter, scenes' is_missing) the fake implements, per entity type
_FILE_FILTERS = {"scene": {"files_filter", "is_missing"}, "image": {"files_filter"},
                 "gallery": {"files_filter"}}
# file timestamps of generated rows that never set them: older than every generated entity
GENERATED_FILE_TIME = "2024-01-01T00:00:00Z"

_SEARCH_FIELDS = {
    "tag": ("name", "aliases"), "studio": ("name", "aliases"),
    "performer": ("name", "alias_list", "disambiguation"), "group": ("name", "aliases"),
    "gallery": ("title", "details"), "image": ("title", "details"),
    "scene": ("title", "details", "code"),
}

# Stash has no upper limit on per_page ("removed the maxPerPage check"); negative = all, 0 = count only.


class FakeStashError(Exception):
    """Raised by the world API on invalid input (becomes a GraphQL error)."""


def render_timestamp(dt: datetime, offset: timedelta) -> str:
    """RFC3339 at second precision in the given UTC offset, like Go's time.RFC3339."""
    local = dt.astimezone(timezone(offset))
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if not offset:
        return text + "Z"
    total = int(offset.total_seconds())
    sign = "-" if total < 0 else "+"
    total = abs(total)
    return f"{text}{sign}{total // 3600:02d}:{total % 3600 // 60:02d}"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _int_id(value, what="id") -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise FakeStashError(f"invalid {what}: {value!r}") from None


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def _dirname(path: str) -> str:
    p = path.replace("\\", "/")
    return p.rsplit("/", 1)[0] if "/" in p else ""


def _phash_text(value) -> str:
    if isinstance(value, int):
        return format(value, "x")
    return format(int(value, 16), "x")


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class ReadWriteLock:
    """The world's lock: ``with lock:`` is exclusive (and reentrant) for writers; ``with lock.shared():``
    lets readers run together, as Stash's database serves concurrent reads.

    A waiting writer holds back new readers, so a stream of reads cannot starve an edit.
    A writer may read inside its own write; a reader must not start a write.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None
        self._depth = 0
        self._writers_waiting = 0

    def acquire(self) -> bool:
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._depth += 1
                return True
            self._writers_waiting += 1
            while self._writer is not None or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer, self._depth = me, 1
        return True

    def release(self) -> None:
        with self._cond:
            self._depth -= 1
            if not self._depth:
                self._writer = None
                self._cond.notify_all()

    __enter__ = acquire

    def __exit__(self, *exc) -> None:
        self.release()

    @contextmanager
    def shared(self):
        """Hold the lock for reading (alongside other readers)."""
        if self._writer == threading.get_ident():  # a read inside this thread's own write
            yield
            return
        with self._cond:
            while self._writer is not None or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @property
    def readers(self) -> int:
        """How many readers hold the lock now."""
        return self._readers


class World:
    """In-memory Stash database.

    Ids are ints here and ``ID`` strings on the wire. Rows are plain dicts with
    the GraphQL field names for scalar fields and ``tag_ids``, ``studio_id``,
    ``performer_ids``, ``gallery_ids``, ``parent_ids`` (tags), ``parent_id``
    (studios) and ``groups`` (scenes: ``[{"group_id", "scene_index"}]``) for
    links. ``Gallery.scenes`` is derived from ``scene.gallery_ids`` and
    ``Tag.children`` from ``tag.parent_ids``.
    """

    def __init__(self, clock=None, offset: timedelta = timedelta(0)):
        self.clock = clock or _utcnow
        self._offset = offset
        self.lock = ReadWriteLock()
        self._tables: dict[str, dict[int, dict]] = {t: {} for t in ENTITY_TYPES}
        self._next_id = {t: 1 for t in ENTITY_TYPES}
        self._next_file_id = 1
        self._next_folder_id = 1
        self._versions = {t: 0 for t in ENTITY_TYPES}
        self._cache: dict = {}
        # configuration
        self.plugin_settings: dict[str, dict] = {}
        self.api_key = ""
        self.stash_boxes: list[dict] = []
        self.exclude_tag_patterns: list[str] = []
        self.version = {"version": "v0.30.1", "hash": "b23b0267",
                        "build_time": "2025-12-01 12:00:00"}
        # Real Stash's sceneUpdate/bulkSceneUpdate bump updated_at of every
        # addressed scene even when nothing changes; by default the fake only
        # bumps scenes whose data changed. Set True for the real behaviour.
        self.touch_unchanged_on_update = False

    # ------------------------------------------------------------ time
    @property
    def offset(self) -> timedelta:
        return self._offset

    def set_offset(self, offset: timedelta) -> None:
        self._offset = offset

    def now_text(self) -> str:
        return render_timestamp(self.clock(), self._offset)

    # ------------------------------------------------------------ internals
    def _type(self, etype: str) -> str:
        t = _TYPE_ALIASES.get(etype.lower(), etype.lower())
        if t not in self._tables:
            raise FakeStashError(f"unknown entity type {etype!r}")
        return t

    def _bump(self, *types: str) -> None:
        for t in types:
            self._versions[t] += 1

    def _derived(self, key, deps, build):
        stamp = tuple(self._versions[d] for d in deps)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        value = build()
        self._cache[key] = (stamp, value)
        return value

    def table(self, etype: str) -> dict[int, dict]:
        """The live table (id -> row) of a type. Do not mutate the rows."""
        return self._tables[self._type(etype)]

    def get(self, etype: str, eid) -> dict | None:
        return self._tables[self._type(etype)].get(_int_id(eid))

    def _new_file_id(self) -> int:
        fid = self._next_file_id
        self._next_file_id += 1
        return fid

    def _norm_stash_ids(self, value, now):
        """A written stash_ids list, as Stash stores it: the whole list replaces the old one, a
        missing updated_at becomes now, and a repeated (endpoint, stash_id) pair is kept once
        (``StashIDInputs.ToStashIDs``, stashapp/stash#2800)."""
        out, seen = [], set()
        for s in value or ():
            if isinstance(s, (tuple, list)):
                s = {"endpoint": s[0], "stash_id": s[1]}
            if (s["endpoint"], s["stash_id"]) in seen:
                continue
            seen.add((s["endpoint"], s["stash_id"]))
            out.append({"endpoint": s["endpoint"], "stash_id": s["stash_id"],
                        "updated_at": s.get("updated_at") or now})
        return out

    def _norm_fingerprints(self, f):
        fps = []
        for fp in f.get("fingerprints") or ():
            fps.append({"type": fp["type"], "value": fp["value"]})
        for kind in ("oshash", "md5", "phash"):
            v = f.get(kind)
            if v is not None:
                fps = [x for x in fps if x["type"] != kind]
                fps.append({"type": kind, "value": _phash_text(v) if kind == "phash" else v})
        return fps

    def _norm_file(self, etype, f):
        if isinstance(f, str):
            f = {"path": f}
        path = f["path"]
        out = {"id": f.get("id") or self._new_file_id(), "path": path,
               "basename": f.get("basename") or _basename(path),
               "size": int(f.get("size", 0)),
               "fingerprints": self._norm_fingerprints(f)}
        out.update(self._file_times(f))
        if etype == "scene":
            out.update(format=f.get("format", "mp4"), width=int(f.get("width", 1920)),
                       height=int(f.get("height", 1080)),
                       duration=float(f.get("duration", 0.0)))
        elif etype == "image":
            out.update(format=f.get("format", "jpeg"), width=int(f.get("width", 1200)),
                       height=int(f.get("height", 800)))
        return out

    def _norm_groups(self, value):
        out = []
        for g in value or ():
            if isinstance(g, dict):
                out.append({"group_id": _int_id(g["group_id"]),
                            "scene_index": g.get("scene_index")})
            elif isinstance(g, (tuple, list)):
                out.append({"group_id": _int_id(g[0]),
                            "scene_index": g[1] if len(g) > 1 else None})
            else:
                out.append({"group_id": _int_id(g), "scene_index": None})
        return out

    def _normalize(self, etype, fields, now, row_id=None):
        """Turn add/update keyword fields into stored values. Returns
        (values, side) where side holds cross-row links (gallery scene_ids,
        tag child_ids) to apply after the row exists."""
        defaults = _DEFAULTS[etype]
        values, side = {}, {}
        for key, val in fields.items():
            if key in ("created_at", "updated_at"):
                values[key] = val
            elif etype == "gallery" and key == "scene_ids":
                side["scene_ids"] = [_int_id(x) for x in val or ()]
            elif etype == "tag" and key == "child_ids":
                side["child_ids"] = [_int_id(x) for x in val or ()]
            elif etype == "studio" and key == "parent_studio_id":
                values["parent_id"] = None if val is None else _int_id(val)
            elif key not in defaults:
                raise FakeStashError(f"unknown field {key!r} for {etype}")
            elif key == "stash_ids":
                values[key] = self._norm_stash_ids(val, now)
            elif key == "files":
                values[key] = [self._norm_file(etype, f) for f in val or ()]
            elif key == "folder":
                if val is None:
                    values[key] = None
                else:
                    if isinstance(val, str):
                        val = {"path": val}
                    fid = val.get("id")
                    if not fid:
                        fid = self._next_folder_id
                        self._next_folder_id += 1
                    values[key] = {"id": fid, "path": val["path"]}
            elif key == "groups":
                values[key] = self._norm_groups(val)
            elif key.endswith("_ids"):
                ids = []
                for x in val or ():
                    i = _int_id(x)
                    if i not in ids:
                        ids.append(i)
                values[key] = ids
            elif key.endswith("_id"):
                values[key] = None if val is None else _int_id(val)
            elif key in _LIST_FIELDS[etype]:
                values[key] = list(val or ())
            else:
                values[key] = val
        return values, side

    def _check_refs(self, etype, values, row_id=None):
        t = self._tables
        for key, val in values.items():
            if key == "tag_ids" or key == "parent_ids":
                target = "tag"
            elif key in ("studio_id", "parent_id"):
                target = "studio"
            elif key == "performer_ids":
                target = "performer"
            elif key == "gallery_ids":
                target = "gallery"
            elif key == "groups":
                for g in val:
                    if g["group_id"] not in t["group"]:
                        raise FakeStashError(f"group {g['group_id']} not found")
                continue
            else:
                continue
            ids = [val] if not isinstance(val, list) else val
            for i in ids:
                if i is not None and i not in t[target]:
                    raise FakeStashError(f"{target} {i} not found")
                if row_id is not None and target == etype and i == row_id:
                    raise FakeStashError(f"{etype} {i} cannot reference itself")

    def _apply_side(self, etype, eid, side):
        if "scene_ids" in side:
            wanted = set(side["scene_ids"])
            for sid in wanted:
                if sid not in self._tables["scene"]:
                    raise FakeStashError(f"scene {sid} not found")
            for sid, srow in self._tables["scene"].items():
                has = eid in srow["gallery_ids"]
                if sid in wanted and not has:
                    srow["gallery_ids"] = list(srow["gallery_ids"]) + [eid]
                elif has and sid not in wanted:
                    srow["gallery_ids"] = [g for g in srow["gallery_ids"] if g != eid]
            self._bump("scene")
        if "child_ids" in side:
            wanted = set(side["child_ids"])
            for cid in wanted:
                if cid not in self._tables["tag"] or cid == eid:
                    raise FakeStashError(f"invalid child tag {cid}")
            for cid, crow in self._tables["tag"].items():
                has = eid in crow["parent_ids"]
                if cid in wanted and not has:
                    crow["parent_ids"] = list(crow["parent_ids"]) + [eid]
                elif has and cid not in wanted:
                    crow["parent_ids"] = [p for p in crow["parent_ids"] if p != eid]
            self._bump("tag")

    # ------------------------------------------------------------ public writes
    def add_entity(self, etype: str, **fields) -> int:
        """Create an entity; returns its int id. ``created_at``/``updated_at``
        default to now; ``id`` may be given explicitly."""
        with self.lock:
            etype = self._type(etype)
            now = self.now_text()
            eid = fields.pop("id", None)
            if eid is None:
                eid = self._next_id[etype]
            eid = _int_id(eid)
            if eid in self._tables[etype]:
                raise FakeStashError(f"{etype} {eid} already exists")
            values, side = self._normalize(etype, fields, now)
            if _NAME_FIELD[etype] == "name" and not values.get("name"):
                raise FakeStashError(f"{etype} needs a name")
            self._check_refs(etype, values, eid)
            row = {"id": eid}
            for key, default in _DEFAULTS[etype].items():
                if key in values:
                    row[key] = values[key]
                else:
                    row[key] = [] if isinstance(default, tuple) else default
            row["created_at"] = values.get("created_at") or now
            row["updated_at"] = values.get("updated_at") or row["created_at"]
            self._tables[etype][eid] = row
            self._next_id[etype] = max(self._next_id[etype], eid + 1)
            self._bump(etype)
            self._apply_side(etype, eid, side)
            return eid

    def _insert_raw(self, etype: str, row: dict) -> None:
        """Fast path for generators: ``row`` must already be complete and
        canonical (every _DEFAULTS key plus id/created_at/updated_at)."""
        eid = row["id"]
        self._tables[etype][eid] = row
        if eid >= self._next_id[etype]:
            self._next_id[etype] = eid + 1
        self._versions[etype] += 1

    def update_entity(self, etype: str, eid, **fields) -> None:
        """Change fields of an entity and bump its updated_at to now (unless
        ``updated_at`` is given explicitly)."""
        with self.lock:
            etype = self._type(etype)
            eid = _int_id(eid)
            row = self._tables[etype].get(eid)
            if row is None:
                raise FakeStashError(f"{etype} {eid} not found")
            now = self.now_text()
            values, side = self._normalize(etype, fields, now, eid)
            self._check_refs(etype, values, eid)
            if etype == "tag" and "parent_ids" in values:
                self._check_tag_cycle(eid, values["parent_ids"])
            row.update(values)
            if "updated_at" not in values:
                row["updated_at"] = now
            self._bump(etype)
            self._apply_side(etype, eid, side)

    def _check_tag_cycle(self, eid, parent_ids):
        tags = self._tables["tag"]
        stack, seen = list(parent_ids), set()
        while stack:
            p = stack.pop()
            if p == eid:
                raise FakeStashError("tag hierarchy would contain a cycle")
            if p in seen:
                continue
            seen.add(p)
            stack.extend(tags[p]["parent_ids"])

    def delete_entity(self, etype: str, eid) -> None:
        """Remove an entity and every link to it. Other entities' updated_at
        is NOT touched (Stash deletes join rows without updating the owners)."""
        with self.lock:
            etype = self._type(etype)
            eid = _int_id(eid)
            if self._tables[etype].pop(eid, None) is None:
                raise FakeStashError(f"{etype} {eid} not found")
            self._bump(etype)
            self._unlink(etype, {eid: None})

    def _unlink(self, target, mapping):
        """Rewrite every reference to ``target`` ids: mapping old id -> new id
        (None = remove). Does not touch updated_at."""
        for src, field, kind in _REFS[target]:
            changed = False
            for row in self._tables[src].values():
                val = row[field]
                if kind == "one":
                    if val in mapping:
                        new = mapping[val]
                        row[field] = None if new == row["id"] and src == target else new
                        changed = True
                elif kind == "list":
                    if val and any(v in mapping for v in val):
                        out = []
                        for v in val:
                            v = mapping.get(v, v) if v in mapping else v
                            if v is None or v in out or (src == target and v == row["id"]):
                                continue
                            out.append(v)
                        row[field] = out
                        changed = True
                else:  # scene groups
                    if val and any(g["group_id"] in mapping for g in val):
                        out, seen = [], set()
                        for g in val:
                            gid = mapping.get(g["group_id"], g["group_id"]) \
                                if g["group_id"] in mapping else g["group_id"]
                            if gid is None or gid in seen:
                                continue
                            seen.add(gid)
                            out.append({"group_id": gid, "scene_index": g["scene_index"]})
                        row[field] = out
                        changed = True
            if changed:
                self._bump(src)

    def merge_tags(self, source_ids, dest_id) -> None:
        """Merge tags like Stash's tagsMerge: every link to a source becomes a
        link to the destination (linked entities' updated_at untouched), the
        sources are deleted, their names and aliases become aliases of the
        destination, their stash ids and parents move to it; nothing's
        updated_at changes, the destination's included (pkg/sqlite/tag.go Merge)."""
        with self.lock:
            tags = self._tables["tag"]
            dest_id = _int_id(dest_id)
            sources = [_int_id(s) for s in source_ids]
            if dest_id not in tags:
                raise FakeStashError(f"tag {dest_id} not found")
            sources = [s for s in dict.fromkeys(sources) if s != dest_id]
            for s in sources:
                if s not in tags:
                    raise FakeStashError(f"tag {s} not found")
            dest = tags[dest_id]
            aliases = list(dest["aliases"])
            lower = {a.lower() for a in aliases} | {dest["name"].lower()}
            stash_ids = list(dest["stash_ids"])
            # a source that was the destination's parent would become its own parent: dropped
            parents = [p for p in dest["parent_ids"] if p not in sources]
            for s in sources:
                src = tags[s]
                for p in src["parent_ids"]:  # Stash moves the sources' parents too
                    if p != dest_id and p not in sources and p not in parents:
                        parents.append(p)
                for a in [src["name"], *src["aliases"]]:
                    if a.lower() not in lower:
                        lower.add(a.lower())
                        aliases.append(a)
                for sid in src["stash_ids"]:
                    if not any(x["endpoint"] == sid["endpoint"] and x["stash_id"] == sid["stash_id"]
                               for x in stash_ids):
                        stash_ids.append(dict(sid))
            for s in sources:
                del tags[s]
            self._unlink("tag", {s: dest_id for s in sources})
            dest["aliases"] = aliases
            dest["stash_ids"] = stash_ids
            try:
                self._check_tag_cycle(dest_id, parents)
                dest["parent_ids"] = parents
            except FakeStashError:
                pass  # keep the destination's own parents rather than make a cycle
            self._bump("tag")

    # ------------------------------------------------------------ reads
    def tables(self) -> dict[str, list[dict]]:
        """Plain deep copy of every table: type -> rows sorted by id (all
        sequences as lists)."""
        with self.lock:
            return {t: [_plain(self._tables[t][i]) for i in sorted(self._tables[t])]
                    for t in ENTITY_TYPES}

    def tag_children(self) -> dict[int, list[int]]:
        def build():
            out: dict[int, list[int]] = {}
            for tid in sorted(self._tables["tag"]):
                for p in self._tables["tag"][tid]["parent_ids"]:
                    out.setdefault(p, []).append(tid)
            return out
        return self._derived("tag_children", ("tag",), build)

    def studio_children(self) -> dict[int, list[int]]:
        def build():
            out: dict[int, list[int]] = {}
            for sid in sorted(self._tables["studio"]):
                p = self._tables["studio"][sid]["parent_id"]
                if p is not None:
                    out.setdefault(p, []).append(sid)
            return out
        return self._derived("studio_children", ("studio",), build)

    def gallery_scenes(self) -> dict[int, list[int]]:
        def build():
            out: dict[int, list[int]] = {}
            for sid in sorted(self._tables["scene"]):
                for g in self._tables["scene"][sid]["gallery_ids"]:
                    out.setdefault(g, []).append(sid)
            return out
        return self._derived("gallery_scenes", ("scene",), build)

    def gallery_image_counts(self) -> Counter:
        def build():
            c = Counter()
            for row in self._tables["image"].values():
                c.update(row["gallery_ids"])
            return c
        return self._derived("gallery_image_counts", ("image",), build)

    def tag_scene_counts(self) -> Counter:
        def build():
            c = Counter()
            for row in self._tables["scene"].values():
                c.update(row["tag_ids"])
            return c
        return self._derived("tag_scene_counts", ("scene",), build)

    def _sorted_rows(self, etype, sort, direction):
        if sort in ("name", "title"):
            field = _NAME_FIELD[etype]
        elif sort in ("id", "created_at", "updated_at"):
            field = sort
        else:
            raise FakeStashError(f"invalid sort: {sort}")

        def build():
            rows = sorted(self._tables[etype].values(), key=lambda r: r["id"])
            if field == "id":
                if direction == "DESC":
                    rows.reverse()
                return rows
            if field in ("name", "title"):
                key = lambda r: (r[field] or "").lower()  # noqa: E731
            else:
                key = lambda r: r[field]  # noqa: E731
            rows.sort(key=key, reverse=(direction == "DESC"))  # stable: ties by id ASC
            return rows
        return self._derived(("order", etype, field, direction), (etype,), build)

    def find(self, etype, entity_filter=None, find_filter=None, ids=None):
        """Stash-like query: returns (count, rows of the requested page)."""
        etype = self._type(etype)
        ff = find_filter or {}
        sort = ff.get("sort") or _NAME_FIELD[etype]
        direction = ff.get("direction") or "ASC"
        preds = self._predicates(etype, entity_filter or {})
        q = (ff.get("q") or "").strip()
        if q:
            preds.append(self._search_pred(etype, q))
        if ids is not None:
            idset = {_int_id(i) for i in ids}
            table = self._tables[etype]
            for i in sorted(idset):
                if i not in table:  # like Stash's FindMany: one missing id fails the whole lookup
                    raise FakeStashError(f"{etype} with id {i} not found")
            rows = [table[i] for i in sorted(idset)]
            rows = self._sort_small(etype, rows, sort, direction)
            for p in preds:
                rows = [r for r in rows if p(r)]
        elif self._after_id_only(entity_filter, q, sort, direction):
            # `id > X ORDER BY id`: Stash walks its primary key from X (an index range scan), so
            # keyset pages cost their own rows, not the table's; so here
            return self._page_after_id(etype, entity_filter["id"]["value"], ff)
        elif preds:
            # Paging re-runs one filter page after page: keep its result until the table changes.
            key = ("find", etype, json.dumps([entity_filter, q], sort_keys=True, default=str), sort, direction)
            unfiltered = self._sorted_rows(etype, sort, direction)
            rows = self._derived(key, (etype,), lambda: [r for r in unfiltered if all(p(r) for p in preds)])
        else:
            rows = self._sorted_rows(etype, sort, direction)
        return self._page_of(rows, ff)

    @staticmethod
    def _page_of(rows, ff, first: int = 0):
        """(count, page) of ``rows[first:]`` as Stash pages them: a negative per_page is all of them,
        page 1 and 25 per page by default."""
        count = len(rows) - first
        per_page = ff.get("per_page")
        if per_page is not None and per_page < 0:
            return count, list(rows[first:])
        page = ff.get("page")
        page = 1 if page is None or page < 1 else page
        per_page = 25 if per_page is None else per_page
        start = first + (page - 1) * per_page
        return count, rows[start:start + per_page]

    @staticmethod
    def _after_id_only(entity_filter, q, sort, direction) -> bool:
        """Whether a query is only ``id > X``, ascending by id (the keyset pages of an id listing)."""
        if q or sort != "id" or direction != "ASC":
            return False
        criteria = {k: v for k, v in (entity_filter or {}).items() if v is not None}
        return list(criteria) == ["id"] and criteria["id"].get("modifier") == "GREATER_THAN"

    def _page_after_id(self, etype, after, ff):
        """(count, page) of the rows with an id above ``after``, ascending, found by bisection."""
        rows = self._sorted_rows(etype, "id", "ASC")
        ids = self._derived(("ids", etype), (etype,), lambda: [r["id"] for r in rows])
        return self._page_of(rows, ff, bisect.bisect_right(ids, after))

    def _sort_small(self, etype, rows, sort, direction):
        if sort in ("name", "title"):
            field = _NAME_FIELD[etype]
            key = lambda r: (r[field] or "").lower()  # noqa: E731
        elif sort in ("id", "created_at", "updated_at"):
            key = lambda r: r[sort]  # noqa: E731
        else:
            raise FakeStashError(f"invalid sort: {sort}")
        return sorted(rows, key=key, reverse=(direction == "DESC")) if sort != "id" or \
            direction == "DESC" else rows

    def _search_pred(self, etype, q):
        words = q.lower().split()
        if q.startswith('"') and q.endswith('"') and len(q) > 1:
            words = [q[1:-1].lower()]
        fields = _SEARCH_FIELDS[etype]

        def pred(r):
            texts = []
            for f in fields:
                v = r.get(f)
                if isinstance(v, (list, tuple)):
                    texts.extend(v)
                elif v:
                    texts.append(v)
            blob = "\n".join(texts).lower()
            return any(w in blob for w in words)
        return pred

    def _predicates(self, etype, flt):
        preds = []
        allowed = _FILTERS[etype] | _FILE_FILTERS.get(etype, set())
        for key, crit in flt.items():
            if crit is None:
                continue
            if key not in allowed:
                raise FakeStashError(f"filter {key} is not supported by the fake")
            if key in ("created_at", "updated_at"):
                preds.append(self._ts_pred(key, crit))
            elif key == "id":
                preds.append(self._int_pred("id", crit))
            elif key == "tags":
                preds.append(self._multi_pred("tag_ids", crit))
            elif key == "stash_id_endpoint":
                preds.append(self._stash_id_pred(crit))
            elif key == "files_filter":
                preds.append(self._files_pred(crit))
            elif key == "is_missing":
                preds.append(self._is_missing_pred(crit))
        return preds

    def _files_pred(self, flt):
        """Entities with at least one file matching every criterion of a FileFilterType
        (updated_at, mod_time, created_at; text comparison like Stash's)."""
        tests = []
        for key, crit in flt.items():
            if crit is None:
                continue
            if key not in ("updated_at", "mod_time", "created_at"):
                raise FakeStashError(f"file filter {key} is not supported by the fake")
            tests.append((key, self._ts_pred(key, crit)))

        def match(row):
            for f in row["files"]:
                view = {k: f.get(k) or GENERATED_FILE_TIME for k, _ in tests}
                if all(test(view) for _, test in tests):
                    return True
            return False
        return match

    @staticmethod
    def _is_missing_pred(what):
        """Scenes' is_missing; "phash": a scene without files or with a file lacking a phash
        (a LEFT JOIN on the phash fingerprint, pkg/sqlite/scene_filter.go)."""
        if what != "phash":
            raise FakeStashError(f"is_missing {what!r} is not supported by the fake")
        return lambda r: not r["files"] or any(
            not any(fp["type"] == "phash" for fp in f["fingerprints"]) for f in r["files"])

    def _ts_pred(self, field, crit):
        # Stash compares timestamps as text; BETWEEN without value2 runs up to a day from now
        v2 = crit.get("value2")
        v2 = render_timestamp(self.clock() + timedelta(days=1), self._offset) if v2 is None else v2
        return self._compare_pred("timestamp", field, crit["modifier"], crit["value"], v2)

    def _int_pred(self, field, crit):
        v2 = crit.get("value2")
        return self._compare_pred("int", field, crit["modifier"], crit["value"], 0 if v2 is None else v2)

    def _compare_pred(self, kind, field, mod, v, v2):
        """The row predicate of a comparison criterion (shared by timestamps and integers)."""
        return {
            "EQUALS": lambda r: r[field] == v,
            "NOT_EQUALS": lambda r: r[field] != v,
            "GREATER_THAN": lambda r: r[field] > v,
            "LESS_THAN": lambda r: r[field] < v,
            "BETWEEN": lambda r: v <= r[field] <= v2,
            "NOT_BETWEEN": lambda r: not (v <= r[field] <= v2),
            "IS_NULL": lambda r: False,
            "NOT_NULL": lambda r: True,
        }.get(mod) or self._bad_modifier(kind, mod)

    def _multi_pred(self, field, crit):
        mod = crit["modifier"]
        vals = {_int_id(x) for x in crit.get("value") or ()}
        excl = {_int_id(x) for x in crit.get("excludes") or ()}
        if mod == "INCLUDES":
            base = (lambda r: not vals.isdisjoint(r[field])) if vals else (lambda r: True)
        elif mod == "INCLUDES_ALL":
            base = lambda r: vals.issubset(r[field])  # noqa: E731
        elif mod == "EXCLUDES":
            base = lambda r: vals.isdisjoint(r[field])  # noqa: E731
        elif mod == "IS_NULL":
            base = lambda r: not r[field]  # noqa: E731
        elif mod == "NOT_NULL":
            base = lambda r: bool(r[field])  # noqa: E731
        else:
            self._bad_modifier("multi", mod)
        if not excl:
            return base
        return lambda r: base(r) and excl.isdisjoint(r[field])

    def _stash_id_pred(self, crit):
        mod = crit["modifier"]
        endpoint = crit.get("endpoint")
        value = crit.get("stash_id")

        def ids(r):
            return [s["stash_id"] for s in r["stash_ids"]
                    if endpoint is None or s["endpoint"] == endpoint]
        if mod == "NOT_NULL":
            return lambda r: bool(ids(r))
        if mod == "IS_NULL":
            return lambda r: not ids(r)
        if mod == "EQUALS":
            return lambda r: value in ids(r)
        if mod == "NOT_EQUALS":
            return lambda r: value not in ids(r)
        self._bad_modifier("stash_id", mod)

    @staticmethod
    def _bad_modifier(kind, mod):
        raise FakeStashError(f"unsupported {kind} modifier type {mod}")

    # ------------------------------------------------------------ scene updates
    def _ids_of(self, etype, values):
        table = self._tables[etype]
        out = []
        for v in values or ():
            i = _int_id(v)
            if i not in table:
                raise FakeStashError(f"{etype} with id {i} not found")
            if i not in out:
                out.append(i)
        return out

    @staticmethod
    def _apply_mode(current, ids, mode):
        if mode == "SET":
            return list(ids)
        if mode == "ADD":
            return list(current) + [i for i in ids if i not in current]
        if mode == "REMOVE":
            drop = set(ids)
            return [i for i in current if i not in drop]
        raise FakeStashError(f"invalid mode {mode}")

    _SCENE_SCALARS = ("title", "code", "details", "director", "date", "rating100",
                      "organized", "urls")

    def _scene_changes(self, row, inp, bulk):
        new = {}
        for k in self._SCENE_SCALARS:
            if k in inp and not (bulk and k == "urls"):
                v = inp[k]
                new[k] = list(v or ()) if k == "urls" else v
        if "studio_id" in inp:
            v = inp["studio_id"]
            new["studio_id"] = None if v in (None, "") else self._ids_of("studio", [v])[0]
        for key, etype in (("tag_ids", "tag"), ("performer_ids", "performer"),
                           ("gallery_ids", "gallery")):
            if key in inp and inp[key] is not None:
                if bulk:
                    spec = inp[key]
                    ids = self._ids_of(etype, spec.get("ids"))
                    new[key] = self._apply_mode(row[key], ids, spec["mode"])
                else:
                    new[key] = self._ids_of(etype, inp[key])
        if bulk and inp.get("group_ids") is not None:
            spec = inp["group_ids"]
            ids = self._ids_of("group", spec.get("ids"))
            cur = [g["group_id"] for g in row["groups"]]
            keep = self._apply_mode(cur, ids, spec["mode"])
            idx = {g["group_id"]: g["scene_index"] for g in row["groups"]}
            new["groups"] = [{"group_id": g, "scene_index": idx.get(g)} for g in keep]
        elif not bulk and inp.get("groups") is not None:
            self._ids_of("group", [g["group_id"] for g in inp["groups"]])
            new["groups"] = self._norm_groups(inp["groups"])
        if not bulk and inp.get("stash_ids") is not None:
            new["stash_ids"] = self._norm_stash_ids(inp["stash_ids"], self.now_text())
        return {k: v for k, v in new.items() if row.get(k) != v}

    def update_scenes(self, ids, inp, bulk=True):
        """Apply a (bulk)SceneUpdate input to scenes. Validates everything
        first, so an error changes nothing. Returns the scene rows."""
        with self.lock:
            scenes = self._tables["scene"]
            rows = []
            for i in ids:
                i = _int_id(i)
                if i not in scenes:
                    raise FakeStashError(f"scene with id {i} not found")
                rows.append(scenes[i])
            changes = [self._scene_changes(r, inp, bulk) for r in rows]
            now = self.now_text()
            touched = False
            for row, ch in zip(rows, changes):
                if ch or self.touch_unchanged_on_update:
                    row.update(ch)
                    row["updated_at"] = now
                    touched = True
            if touched:
                self._bump("scene")
            return rows

    def find_tag_by_name(self, name):
        low = name.lower()
        for tid in sorted(self._tables["tag"]):
            t = self._tables["tag"][tid]
            if t["name"].lower() == low:
                return t
        return None

    # ------------------------------------------------------------ silent changes: files and merges
    # What Stash changes without moving the owning entity's updated_at (stash-behaviour.md,
    # "File-level changes" and "No hooks at all for sceneMerge, performerMerge").

    def _file_times(self, f):
        """created_at / updated_at / mod_time of a file row: as given, else now."""
        now = self.now_text()
        return {k: f.get(k) or now for k in ("created_at", "updated_at", "mod_time")}

    def find_file(self, file_id):
        """(type, owner row, index in its files) of the file with this id."""
        fid = _int_id(file_id)
        for etype in ("scene", "image", "gallery"):
            for row in self._tables[etype].values():
                for index, f in enumerate(row["files"]):
                    if f["id"] == fid:
                        return etype, row, index
        raise FakeStashError(f"file with id {fid} not found")

    def _change_file(self, file_id, **changes):
        """Replace fields of one file row (the owner's own fields stay as they are)."""
        etype, row, index = self.find_file(file_id)
        files = list(row["files"])
        files[index] = {**files[index], **changes}
        row["files"] = files
        self._bump(etype)

    def move_file(self, file_id, new_path):
        """A scan finds a file moved or renamed: only the file row changes, taking the scan's
        time as its updated_at; the scene's or image's updated_at stays (pkg/scene/scan.go)."""
        with self.lock:
            self._change_file(file_id, path=new_path, basename=_basename(new_path),
                              updated_at=self.now_text())

    def modify_file(self, file_id, size, oshash=None, md5=None):
        """A scan finds a file's content changed: size, mod_time, content fingerprints and the
        file's updated_at change; the owner's updated_at stays."""
        with self.lock:
            _etype, row, index = self.find_file(file_id)
            now = self.now_text()
            new = {k: v for k, v in (("oshash", oshash), ("md5", md5)) if v is not None}
            prints = [fp for fp in row["files"][index]["fingerprints"] if fp["type"] not in new]
            prints += [{"type": k, "value": v} for k, v in new.items()]
            self._change_file(file_id, size=int(size), fingerprints=prints, mod_time=now, updated_at=now)

    def set_phash(self, file_id, phash):
        """Generating a phash stores the fingerprint only: no timestamp moves, no hook
        (internal/manager/task_generate_phash.go). ``None`` removes it (fileSetFingerprints)."""
        with self.lock:
            _etype, row, index = self.find_file(file_id)
            prints = [fp for fp in row["files"][index]["fingerprints"] if fp["type"] != "phash"]
            if phash is not None:
                prints.append({"type": "phash", "value": _phash_text(phash)})
            self._change_file(file_id, fingerprints=prints)

    def assign_scene_file(self, scene_id, file_id):
        """sceneAssignFile: the file leaves its scene for another one (appended; primary only when
        that scene had no file); neither scene's updated_at moves (SceneStore.AssignFiles)."""
        with self.lock:
            dest = self._tables["scene"].get(_int_id(scene_id))
            if dest is None:
                raise FakeStashError(f"scene with id {scene_id} not found")
            etype, row, index = self.find_file(file_id)
            if etype != "scene":
                raise FakeStashError(f"file {file_id} is not a video file")
            moved = row["files"][index]
            row["files"] = [f for i, f in enumerate(row["files"]) if i != index]
            dest["files"] = list(dest["files"]) + [moved]
            self._bump("scene")

    def _merge_sources(self, etype, source_ids, dest_id):
        """Validated (source ids, destination row) of a merge."""
        table = self._tables[etype]
        dest_id = _int_id(dest_id)
        sources = list(dict.fromkeys(_int_id(s) for s in source_ids))
        if dest_id in sources:
            raise FakeStashError(f"destination {etype} cannot be in source list")
        for i in [dest_id, *sources]:
            if i not in table:
                raise FakeStashError(f"{etype} with id {i} not found")
        return sources, table[dest_id]

    def merge_scenes(self, source_ids, dest_id):
        """sceneMerge: the sources' files move to the destination after its own, the destination's
        updated_at moves (UpdatePartial), the sources are destroyed; no hook (pkg/scene/merge.go)."""
        with self.lock:
            sources, dest = self._merge_sources("scene", source_ids, dest_id)
            files = list(dest["files"])
            for s in sources:
                files += self._tables["scene"][s]["files"]
            dest["files"] = files
            dest["updated_at"] = self.now_text()
            for s in sources:
                del self._tables["scene"][s]
            self._bump("scene")

    def merge_performers(self, source_ids, dest_id):
        """performerMerge: the sources' scene, gallery, image and tag links move to the destination
        (duplicates dropped) without touching the linked entities, the destination's updated_at
        moves, the sources are destroyed; no hook (PerformerStore.Merge)."""
        with self.lock:
            sources, dest = self._merge_sources("performer", source_ids, dest_id)
            tags = list(dest["tag_ids"])
            for s in sources:
                tags += [t for t in self._tables["performer"][s]["tag_ids"] if t not in tags]
            dest["tag_ids"] = tags
            dest["updated_at"] = self.now_text()
            for s in sources:
                del self._tables["performer"][s]
            self._bump("performer")
            self._unlink("performer", {s: dest["id"] for s in sources})


# ====================================================================== GraphQL

def _entity_list(etype):
    def resolve(row, info):
        table = info.context["world"]._tables[etype]
        return [table[i] for i in row[_LINK_FIELD[etype]] if i in table]
    return resolve


_LINK_FIELD = {"tag": "tag_ids", "performer": "performer_ids", "gallery": "gallery_ids"}


def _one(etype, field):
    def resolve(row, info):
        v = row[field]
        return None if v is None else info.context["world"]._tables[etype].get(v)
    return resolve


def _fingerprint(row, info, type):  # noqa: A002 - GraphQL argument name
    for fp in row["fingerprints"]:
        if fp["type"] == type:
            return fp["value"]
    return None


def _resolve_find(etype, filter_arg, result_field):
    def resolve(_root, info, **args):
        world = info.context["world"]
        count, rows = world.find(etype, args.get(filter_arg), args.get("filter"),
                                 args.get("ids"))
        return {"count": count, result_field: rows}
    return resolve


def _resolve_get(etype):
    def resolve(_root, info, id=None):  # noqa: A002
        if id is None:
            return None
        return info.context["world"]._tables[etype].get(_int_id(id))
    return resolve


def _tag_parents(row, info):
    tags = info.context["world"]._tables["tag"]
    return [tags[i] for i in row["parent_ids"] if i in tags]


def _tag_children(row, info):
    world = info.context["world"]
    tags = world._tables["tag"]
    return [tags[i] for i in world.tag_children().get(row["id"], ())]


def _configuration(_root, info):
    world = info.context["world"]
    return {
        "general": {"apiKey": world.api_key, "stashBoxes": world.stash_boxes,
                    "maxSessionAge": int(getattr(world, "max_session_age", DEFAULT_MAX_SESSION_AGE))},
        "scraping": {"excludeTagPatterns": world.exclude_tag_patterns},
        "_world": world,
    }


def _config_plugins(cfg, info, include=None):
    settings = cfg["_world"].plugin_settings
    if not include:
        return copy.deepcopy(settings)
    return {p: copy.deepcopy(settings[p]) for p in include if settings.get(p)}


def _fire(info, trigger, ids, input):  # noqa: A002
    """Queue the post-commit hook events of a mutation that succeeded (one per entity)."""
    events = info.context.get("events")
    if events is not None:
        fields = tuple(input.keys()) if isinstance(input, dict) else ()
        events.extend(HookEvent(trigger, _int_id(i), _plain(input), fields) for i in ids)


def _bulk_scene_update(_root, info, input):  # noqa: A002
    world = info.context["world"]
    rows = world.update_scenes(input.get("ids") or [], input, bulk=True)
    _fire(info, "Scene.Update.Post", [r["id"] for r in rows], input)
    return rows


def _scene_update(_root, info, input):  # noqa: A002
    world = info.context["world"]
    row = world.update_scenes([input["id"]], input, bulk=False)[0]
    _fire(info, "Scene.Update.Post", [row["id"]], input)
    return row


def _tag_input_fields(inp):
    out = {}
    for k in ("name", "sort_name", "description", "aliases", "ignore_auto_tag",
              "favorite", "stash_ids", "parent_ids", "child_ids"):
        if k in inp:
            v = inp[k]
            if k in ("aliases", "stash_ids", "parent_ids", "child_ids") and v is None:
                v = []
            out[k] = v
    return out


def _check_tag_names(world, name, aliases, own_id=None):
    names = [n for n in [name] if n] + list(aliases or ())
    for tid, t in world._tables["tag"].items():
        if tid == own_id:
            continue
        for n in names:
            if t["name"].lower() == n.lower():
                raise FakeStashError(f"tag with name '{t['name']}' already exists")
        if name:
            for a in t["aliases"]:
                if a.lower() == name.lower():
                    raise FakeStashError(
                        f"name '{name}' is used as alias for '{t['name']}'")


def _tag_create(_root, info, input):  # noqa: A002
    world = info.context["world"]
    with world.lock:
        fields = _tag_input_fields(input)
        _check_tag_names(world, fields["name"], fields.get("aliases"))
        tid = world.add_entity("tag", **fields)
    _fire(info, "Tag.Create.Post", [tid], input)
    return world._tables["tag"][tid]


def _tag_update(_root, info, input):  # noqa: A002
    world = info.context["world"]
    with world.lock:
        tid = _int_id(input["id"])
        if tid not in world._tables["tag"]:
            raise FakeStashError(f"tag with id {tid} not found")
        fields = _tag_input_fields(input)
        if fields.get("name") is None:
            fields.pop("name", None)
        _check_tag_names(world, fields.get("name"), fields.get("aliases"), tid)
        world.update_entity("tag", tid, **fields)
    _fire(info, "Tag.Update.Post", [tid], input)
    return world._tables["tag"][tid]


def _tag_destroy(_root, info, input):  # noqa: A002
    info.context["world"].delete_entity("tag", input["id"])
    _fire(info, "Tag.Destroy.Post", [input["id"]], input)
    return True


def _tags_merge(_root, info, input):  # noqa: A002
    world = info.context["world"]
    world.merge_tags(input["source"], input["destination"])
    _fire(info, "Tag.Merge.Post", [input["destination"]], input)
    return world._tables["tag"][_int_id(input["destination"])]


def _configure_plugin(_root, info, plugin_id, input):  # noqa: A002
    world = info.context["world"]
    with world.lock:
        world.plugin_settings[plugin_id] = dict(input)
        return copy.deepcopy(world.plugin_settings[plugin_id])


def _plugins(_root, info):
    host = getattr(info.context["world"], "plugin_host", None)
    return host.listing() if host is not None else []


def _set_plugins_enabled(_root, info, enabledMap):  # noqa: N803 - GraphQL argument name
    host = getattr(info.context["world"], "plugin_host", None)
    return host.set_enabled(enabledMap) if host is not None else True


def _scene_merge(_root, info, input):  # noqa: A002
    world = info.context["world"]
    world.merge_scenes(input["source"], input["destination"])
    return world._tables["scene"][_int_id(input["destination"])]


def _scene_assign_file(_root, info, input):  # noqa: A002
    info.context["world"].assign_scene_file(input["scene_id"], input["file_id"])
    return True


def _performer_merge(_root, info, input):  # noqa: A002
    world = info.context["world"]
    world.merge_performers(input["source"], input["destination"])
    return world._tables["performer"][_int_id(input["destination"])]


def _move_files(_root, info, input):  # noqa: A002
    """moveFiles: the file row takes the new folder/basename and now as its updated_at (pkg/file/move.go)."""
    world = info.context["world"]
    with world.lock:
        for fid in input["ids"]:
            _etype, row, index = world.find_file(fid)
            old = row["files"][index]["path"]
            folder = input.get("destination_folder") or _dirname(old)
            base = input.get("destination_basename") or _basename(old)
            world.move_file(fid, f"{folder.rstrip('/')}/{base}")
    return True


def _file_set_fingerprints(_root, info, input):  # noqa: A002
    """fileSetFingerprints for phash (the only kind the fake models): the fingerprint alone changes;
    a null value removes it."""
    world = info.context["world"]
    for fp in input["fingerprints"]:
        if fp["type"] != "phash":
            raise FakeStashError("the fake sets phash fingerprints only")
        world.set_phash(input["id"], fp["value"])
    return True


def _file_time(field):
    def resolve(f, _info):
        return f.get(field) or GENERATED_FILE_TIME
    return resolve


def build_fake_schema():
    schema = build_schema(SDL_PATH.read_text(encoding="utf-8"))
    tm = schema.type_map
    resolvers = {
        ("Query", "findScenes"): _resolve_find("scene", "scene_filter", "scenes"),
        ("Query", "findImages"): _resolve_find("image", "image_filter", "images"),
        ("Query", "findGalleries"): _resolve_find("gallery", "gallery_filter", "galleries"),
        ("Query", "findPerformers"): _resolve_find("performer", "performer_filter", "performers"),
        ("Query", "findStudios"): _resolve_find("studio", "studio_filter", "studios"),
        ("Query", "findGroups"): _resolve_find("group", "group_filter", "groups"),
        ("Query", "findTags"): _resolve_find("tag", "tag_filter", "tags"),
        ("Query", "findScene"): _resolve_get("scene"),
        ("Query", "findImage"): _resolve_get("image"),
        ("Query", "findGallery"): _resolve_get("gallery"),
        ("Query", "findPerformer"): _resolve_get("performer"),
        ("Query", "findStudio"): _resolve_get("studio"),
        ("Query", "findGroup"): _resolve_get("group"),
        ("Query", "findTag"): _resolve_get("tag"),
        ("Query", "configuration"): _configuration,
        ("Query", "version"): lambda _r, info: info.context["world"].version,
        ("ConfigResult", "plugins"): _config_plugins,
        ("Mutation", "bulkSceneUpdate"): _bulk_scene_update,
        ("Mutation", "sceneUpdate"): _scene_update,
        ("Mutation", "tagCreate"): _tag_create,
        ("Mutation", "tagUpdate"): _tag_update,
        ("Mutation", "tagDestroy"): _tag_destroy,
        ("Mutation", "tagsMerge"): _tags_merge,
        ("Mutation", "configurePlugin"): _configure_plugin,
        ("Query", "plugins"): _plugins,
        ("Mutation", "setPluginsEnabled"): _set_plugins_enabled,
        ("Mutation", "sceneMerge"): _scene_merge,
        ("Mutation", "sceneAssignFile"): _scene_assign_file,
        ("Mutation", "performerMerge"): _performer_merge,
        ("Mutation", "moveFiles"): _move_files,
        ("Mutation", "fileSetFingerprints"): _file_set_fingerprints,
        ("Tag", "parents"): _tag_parents,
        ("Tag", "children"): _tag_children,
        ("Tag", "parent_count"): lambda r, i: len(_tag_parents(r, i)),
        ("Tag", "child_count"): lambda r, i: len(_tag_children(r, i)),
        ("Tag", "scene_count"): lambda r, i, depth=None:
            i.context["world"].tag_scene_counts().get(r["id"], 0),
        ("Studio", "parent_studio"): _one("studio", "parent_id"),
        ("Studio", "child_studios"): lambda r, i: [
            i.context["world"]._tables["studio"][c]
            for c in i.context["world"].studio_children().get(r["id"], ())],
        ("Studio", "tags"): _entity_list("tag"),
        ("Performer", "tags"): _entity_list("tag"),
        ("Group", "studio"): _one("studio", "studio_id"),
        ("Group", "tags"): _entity_list("tag"),
        ("Gallery", "studio"): _one("studio", "studio_id"),
        ("Gallery", "tags"): _entity_list("tag"),
        ("Gallery", "performers"): _entity_list("performer"),
        ("Gallery", "scenes"): lambda r, i: [
            i.context["world"]._tables["scene"][s]
            for s in i.context["world"].gallery_scenes().get(r["id"], ())],
        ("Gallery", "image_count"): lambda r, i:
            i.context["world"].gallery_image_counts().get(r["id"], 0),
        ("Image", "studio"): _one("studio", "studio_id"),
        ("Image", "tags"): _entity_list("tag"),
        ("Image", "performers"): _entity_list("performer"),
        ("Image", "galleries"): _entity_list("gallery"),
        ("Image", "visual_files"): lambda r, i: r["files"],
        ("Scene", "studio"): _one("studio", "studio_id"),
        ("Scene", "tags"): _entity_list("tag"),
        ("Scene", "performers"): _entity_list("performer"),
        ("Scene", "galleries"): _entity_list("gallery"),
        ("Scene", "groups"): lambda r, i: [
            {"group": i.context["world"]._tables["group"][g["group_id"]],
             "scene_index": g["scene_index"]}
            for g in r["groups"] if g["group_id"] in i.context["world"]._tables["group"]],
    }
    for (tname, fname), fn in resolvers.items():
        tm[tname].fields[fname].resolve = fn
    for tname in ("VideoFile", "ImageFile", "GalleryFile"):
        tm[tname].fields["fingerprint"].resolve = _fingerprint
        for fname in ("mod_time", "created_at", "updated_at"):
            tm[tname].fields[fname].resolve = _file_time(fname)
    tm["VisualFile"].resolve_type = lambda obj, info, t: "VideoFile" if "duration" in obj \
        else "ImageFile"
    tm["BaseFile"].resolve_type = lambda obj, info, t: (
        "VideoFile" if "duration" in obj else "ImageFile" if "width" in obj else "GalleryFile")
    return schema


_SCHEMA = None
_SCHEMA_LOCK = threading.Lock()


def fake_schema():
    global _SCHEMA
    with _SCHEMA_LOCK:
        if _SCHEMA is None:
            _SCHEMA = build_fake_schema()
        return _SCHEMA


def _is_mutation(doc, operation_name) -> bool:
    """Whether the operation a request runs is a mutation."""
    for d in doc.definitions:
        if isinstance(d, OperationDefinitionNode) and (operation_name is None or
                                                       (d.name and d.name.value == operation_name)):
            return d.operation == OperationType.MUTATION
    return True  # unknown operation: let graphql-core report it, alone


class GraphQLExecutor:
    """Parses/validates (cached per query text) and executes against a world."""

    def __init__(self, world: World, cache_size: int = 256):
        self.world = world
        self.schema = fake_schema()
        self._docs: dict[str, tuple] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def prepare(self, query: str):
        """Returns (document or None, errors list, operation names)."""
        with self._lock:
            hit = self._docs.get(query)
        if hit is not None:
            return hit
        try:
            doc = parse(query)
        except GraphQLError as e:
            err = e.formatted
            err.setdefault("extensions", {})["code"] = "GRAPHQL_PARSE_FAILED"
            return None, [err], []
        errors = validate(self.schema, doc)
        names = [d.name.value if d.name else None for d in doc.definitions
                 if isinstance(d, OperationDefinitionNode)]
        if errors:
            errs = []
            for e in errors:
                f = e.formatted
                f.setdefault("extensions", {})["code"] = "GRAPHQL_VALIDATION_FAILED"
                errs.append(f)
            entry = (None, errs, names)
        else:
            entry = (doc, [], names)
        with self._lock:
            if len(self._docs) >= self._cache_size:
                self._docs.clear()
            self._docs[query] = entry
        return entry

    def execute(self, query: str, variables=None, operation_name=None, events=None) -> dict:
        """Run a request; the hook events of its committed mutations are appended to ``events``."""
        doc, errors, _ = self.prepare(query)
        if doc is None:
            return {"errors": errors, "data": None}
        # queries run side by side (Stash serves concurrent reads); a mutation runs alone
        lock = self.world.lock if _is_mutation(doc, operation_name) else self.world.lock.shared()
        with lock:
            result = execute_sync(self.schema, doc, variable_values=variables or None,
                                  operation_name=operation_name,
                                  context_value={"world": self.world, "events": events})
        out = {}
        if result.errors:
            out["errors"] = [e.formatted for e in result.errors]
        out["data"] = result.data
        return out


# ====================================================================== HTTP server

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeStash/1.0"

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def date_time_string(self, timestamp=None):
        """The Date header from the world's clock, as Go's net/http writes it: UTC, whole seconds,
        set when the answer is written (after the request's reads)."""
        return format_datetime(self.server.fake.world.clock().astimezone(timezone.utc), usegmt=True)

    def setup(self):
        super().setup()
        # Headers and body go out in two writes: without TCP_NODELAY every answer waits
        # for the client's delayed ACK (~40 ms), which would dominate every benchmark.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.fake._register_conn(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.fake._unregister_conn(self.connection)

    def _send(self, status, body: bytes = b"", ctype="application/json", cookie: str | None = None):
        self.send_response(status)
        if cookie:
            self.send_header("Set-Cookie", set_cookie_header(cookie, self.server.fake.sessions.max_age))
        if body:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path.rstrip("/") != "/graphql":
            return self._send(404, b"404 page not found\n", "text/plain")
        qs = parse_qs(url.query)
        payload = {"query": (qs.get("query") or [""])[0]}
        if qs.get("variables"):
            try:
                payload["variables"] = json.loads(qs["variables"][0])
            except ValueError:
                payload["variables"] = None
        if qs.get("operationName"):
            payload["operationName"] = qs["operationName"][0]
        self._handle(payload, None)

    def do_POST(self):
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if url.path.rstrip("/") != "/graphql":
            return self._send(404, b"404 page not found\n", "text/plain")
        try:
            payload = json.loads(raw or b"null")
            if not isinstance(payload, dict):
                raise ValueError("not an object")
            err = None
        except ValueError as e:
            payload, err = {}, f"json request body could not be decoded: {e}"
        self._handle(payload, err)

    def _handle(self, payload, decode_error):
        fake = self.server.fake
        query = payload.get("query") or ""
        variables = payload.get("variables")
        op_name = payload.get("operationName")
        names = []
        if query and decode_error is None:
            _, _, names = fake.executor.prepare(query)
        logged_name = op_name or (names[0] if len(names) == 1 else None)
        fault = fake._take_fault(logged_name)
        fake._log(logged_name, variables)
        if fault is not None:
            delay, fail = fault
            if delay:
                time.sleep(delay)
            if fail is not None:
                status, body = fail
                if status == 0:  # drop the connection without an answer
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if isinstance(body, str):
                    body = body.encode()
                return self._send(status, body, "text/plain")
        auth = fake._authenticate(self.headers)
        if not auth.allowed:
            return self._send(401)
        cookie = auth.refreshed_cookie
        fake._run_before_request(logged_name, variables)
        if decode_error is not None:
            body = {"errors": [{"message": decode_error}], "data": None}
            return self._send(400, json.dumps(body).encode(), cookie=cookie)
        if not query:
            body = {"errors": [{"message": "no operation provided",
                                "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}],
                    "data": None}
            return self._send(422, json.dumps(body).encode(), cookie=cookie)
        events: list = []
        try:
            result = fake.executor.execute(query, variables, op_name, events=events)
        except Exception as e:  # noqa: BLE001 - report like a server error
            result = {"errors": [{"message": str(e)}], "data": None}
        fake.run_hooks(events)  # Stash waits for every hook process before it answers
        self._send(200, json.dumps(result, separators=(",", ":")).encode(), cookie=cookie)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


class FakeStash:
    """HTTP front end for a :class:`World`.

    ``FakeStash(world, session_cookie=None, api_key=None)``; ``start()`` binds
    127.0.0.1 (ephemeral port unless ``port`` given) and serves ``/graphql`` in
    a daemon thread; ``stop()`` closes the listener and every open connection;
    ``start()`` again reuses the same port. Also a context manager.
    """

    def __init__(self, world: World, session_cookie: str | None = None,
                 api_key: str | None = None, port: int = 0, host: str = "127.0.0.1",
                 plugins_dir: str | Path | None = None, sessions: SessionStore | None = None,
                 tls: tuple[str, str] | None = None):
        self.world = world
        self.session_cookie = session_cookie
        self.api_key = api_key
        if api_key and not world.api_key:
            world.api_key = api_key
        self.host = host
        self.port = port
        # Sessions like Stash's: with credentials set (a session cookie or an API key), cookies
        # expire max_session_age after they were issued and every cookie request refreshes it.
        self.sessions = sessions or SessionStore()
        world.max_session_age = self.sessions.max_age
        if session_cookie is not None:  # the cookie Stash handed to the task, issued now
            self.sessions.register(session_cookie)
        self.auth_log: list[tuple] = []  # (operation, how authenticated, session cookies sent)
        # Hook dispatch is opt-in: only a fake given a plugins folder starts hook processes.
        self.plugins = PluginHost(Path(plugins_dir)) if plugins_dir is not None else None
        world.plugin_host = self.plugins
        self.tls = tls
        self.executor = GraphQLExecutor(world)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set = set()
        self._lock = threading.Lock()
        self._faults: list[dict] = []
        self.request_log: list[tuple] = []
        self.op_counts: Counter = Counter()
        self._before_request: list = []

    # ------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def graphql_url(self) -> str:
        return self.url + "/graphql"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> "FakeStash":
        if self._server is not None:
            return self
        server = _Server((self.host, self.port), _Handler)
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        server.fake = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"fake-stash-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _register_conn(self, conn):
        with self._lock:
            self._conns.add(conn)

    def _unregister_conn(self, conn):
        with self._lock:
            self._conns.discard(conn)

    # ------------------------------------------------------------ auth, sessions, hooks
    def _authenticate(self, headers):
        """Decide one request as Stash does (see ``stash_sessions``); ages the session clock."""
        self.sessions.tick()
        api_key = self.api_key or self.world.api_key or None  # configuration.general.apiKey is accepted
        credentials = self.session_cookie is not None or bool(api_key)
        if self.session_cookie is not None and self.sessions.issued_at(self.session_cookie) is None:
            self.sessions.register(self.session_cookie)
        outcome = authenticate(self.sessions if credentials else None, api_key, headers)
        with self._lock:
            self.auth_log.append((outcome.kind, outcome.session_cookies_sent))
        return outcome

    def plugin_cookie(self) -> dict | None:
        """A fresh ``SessionCookie`` for a plugin process, as Stash makes one per task or hook."""
        if self.session_cookie is None and not (self.api_key or self.world.api_key):
            return None
        return {"Name": "session", "Value": self.sessions.issue(), "Path": "", "Domain": "",
                "Expires": "0001-01-01T00:00:00Z", "RawExpires": "", "MaxAge": 0, "Secure": False,
                "HttpOnly": False, "SameSite": 0, "Raw": "", "Unparsed": None}

    def server_connection(self, plugin_dir: str | Path) -> dict:
        """``server_connection`` exactly as Stash writes it for a task or hook of a plugin."""
        return {"Scheme": "https" if self.tls else "http", "Host": "0.0.0.0", "Port": self.port,
                "SessionCookie": self.plugin_cookie(), "Dir": str(plugin_dir), "PluginDir": str(plugin_dir)}

    def run_hooks(self, events) -> None:
        """Start the hook processes of committed mutations (nothing without a plugins folder)."""
        if self.plugins is not None and events:
            self.plugins.dispatch(events, lambda: self.server_connection(self.plugins.plugins_dir))

    def fire_scan(self, scene_ids, created: bool = False) -> None:
        """The hooks a library scan fires for these scenes (input null), waiting for each."""
        self.run_hooks(scan_events(scene_ids, created))

    # ------------------------------------------------------------ log
    def _log(self, op_name, variables):
        with self._lock:
            self.request_log.append((op_name, copy.deepcopy(variables)))
            self.op_counts[op_name] += 1

    def requests(self, operation: str | None = None) -> list[tuple]:
        """Copy of the request log, optionally only one operation name."""
        with self._lock:
            log = list(self.request_log)
        if operation is None:
            return log
        return [e for e in log if e[0] == operation]

    def count(self, operation: str | None = None) -> int:
        with self._lock:
            if operation is None:
                return len(self.request_log)
            return self.op_counts.get(operation, 0)

    def clear_log(self) -> None:
        with self._lock:
            self.request_log.clear()
            self.op_counts.clear()

    # ------------------------------------------------------------ world changes between requests
    def before_request(self, callback) -> None:
        """Call ``callback(operation_name, variables)`` before executing each later request, so a
        test can change the world while a client pages (remove it with ``clear_before_request``)."""
        with self._lock:
            self._before_request.append(callback)

    def clear_before_request(self) -> None:
        with self._lock:
            self._before_request.clear()

    def _run_before_request(self, op_name, variables) -> None:
        with self._lock:
            callbacks = list(self._before_request)
        for callback in callbacks:
            callback(op_name, variables)

    # ------------------------------------------------------------ faults
    def fail_next(self, n: int = 1, status: int = 503, body: str | bytes = "",
                  operation: str | None = None) -> None:
        """The next ``n`` requests (only those whose operation name equals
        ``operation`` when given) get ``status`` with ``body`` instead of being
        executed. ``status=0`` drops the connection without any answer."""
        with self._lock:
            self._faults.append({"kind": "fail", "left": n, "status": status,
                                 "body": body, "op": operation})

    def delay_next(self, n: int = 1, seconds: float = 1.0,
                   operation: str | None = None) -> None:
        """Delay the next ``n`` (matching) requests by ``seconds``."""
        with self._lock:
            self._faults.append({"kind": "delay", "left": n, "seconds": seconds,
                                 "op": operation})

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, op_name):
        with self._lock:
            delay, fail = 0.0, None
            for f in self._faults:
                if f["left"] <= 0 or (f["op"] is not None and f["op"] != op_name):
                    continue
                if f["kind"] == "delay" and not delay:
                    delay = f["seconds"]
                    f["left"] -= 1
                elif f["kind"] == "fail" and fail is None:
                    fail = (f["status"], f["body"])
                    f["left"] -= 1
            self._faults = [f for f in self._faults if f["left"] > 0]
            if not delay and fail is None:
                return None
            return delay, fail


# ====================================================================== CLI

def main(argv=None) -> int:
    from tests.fakes.library import generate_library

    ap = argparse.ArgumentParser(description="Run a fake Stash GraphQL server.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--tags", type=int, default=60)
    ap.add_argument("--performers", type=int, default=40)
    ap.add_argument("--studios", type=int, default=10)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--galleries", type=int, default=20)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--endpoint", default="https://stashdb.org/graphql")
    ap.add_argument("--session-cookie", default=None)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--plugin-settings", default=None,
                    help="JSON object: plugin id -> settings")
    ap.add_argument("--dump-stashdb", default=None,
                    help="write the matching StashDB data as JSON to this path")
    args = ap.parse_args(argv)

    lib = generate_library(seed=args.seed, scenes=args.scenes, tags=args.tags,
                           performers=args.performers, studios=args.studios,
                           groups=args.groups, galleries=args.galleries,
                           images=args.images, endpoint=args.endpoint)
    if args.plugin_settings:
        lib.world.plugin_settings.update(json.loads(args.plugin_settings))
    if args.dump_stashdb:
        Path(args.dump_stashdb).write_text(json.dumps(lib.stashdb), encoding="utf-8")
    fake = FakeStash(lib.world, session_cookie=args.session_cookie,
                     api_key=args.api_key, port=args.port, host=args.host)
    fake.start()
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(json.dumps({"url": fake.url, "port": fake.port}), flush=True)
    while not stop.wait(0.5):
        pass
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
