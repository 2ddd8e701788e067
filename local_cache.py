"""Sidecar SQLite mirror of Stash's entities ("Cache: Full / Incremental / Smart Sync").

How a type is synced (studios, tags, performers, groups, galleries, scenes, images, in that order):

* Full: pages of every entity sorted by id; each page commits with its links and the page
  marker, so a killed run resumes at its last committed page. The type's cursor becomes the
  newest ``updated_at`` Stash held when the pass started.
* Incremental / smart: one *probe* request (total count, count of the cursor window, and the
  full content of the "recheck" entities), then one *listing* request (ids + ``updated_at`` of
  the window). Entities whose ``updated_at`` differs from the mirror are fetched by id, oldest
  first, each chunk committed with the advanced cursor. Smart skips the type when the window
  is empty; an idle smart sync thus makes two requests per type and writes no entity rows.
* After the types: ``mirror_signals.check`` (one more request) for what Stash changes without a
  new ``updated_at`` — moved or modified files, generated phashes, a rolling re-verification.

Why no update is missed (the cursor is always a text Stash returned, never this machine's clock):

* Stash compares ``updated_at`` as text in the offset the row was written in. The window's lower
  bound is the cursor instant minus one second rendered at UTC-12:00, the smallest offset in use:
  any row written at or after the cursor instant, in any offset from -12:00 to +14:00, has a
  larger local date-time part and therefore a larger text (DST and time-zone moves included).
* An entity edited again in the same second after it was fetched keeps its ``updated_at``.
  That can only happen to entities whose ``updated_at`` is at or after the cursor instant,
  because the cursor never exceeds Stash's clock at the time of fetching; those "recheck"
  entities are re-read in full on every run and compared by content hash.
* Deletions leave no trace: when Stash's count differs from the mirror's, the id sets are
  compared and vanished entities removed; whatever linked to them is queued for re-reading,
  which also repairs links rewritten by tag merges (which do not touch ``updated_at``); removed
  tags also queue every remaining tag (``mirror_signals.queue_absorbers``: a merge destination).
  A full pass always compares the id sets at its end (LIMIT/OFFSET paging can skip a row while
  the counts agree).

Steering and accounting:

* ``entities`` limits a run to some types (``parse_entities``): only they are requested, their
  cursors advanced and their derived data refreshed; other types, and their re-read queues, wait.
* A fetched entity is compared with the mirror by the digest of its mirrored content (row and
  link sets, order-free); identical ones are not rewritten. Every run counts, per type, created /
  updated / unchanged / deleted (+ revived / purged), stores them in ``sync_runs`` and logs what
  changed in ``sync_changes`` (one row per changed field; links as removed and added ids),
  pruned after ``CacheOptions.change_log_days``. ``rows_written`` is SQLite's ``total_changes()``
  over the run's work (its own ``sync_runs`` record excluded): 0 for an idle smart sync.
* With ``CacheOptions.soft_delete`` vanished entities keep their rows and links with
  ``deleted_at`` set (``live_<type>`` views hide them; derived data ignores them), come back when
  Stash has them again, and are purged after ``soft_delete_days``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import cache_schema
import plugin_log
import run_lock
from cache_schema import LINK_TABLES, atomic
from settings import Settings
from stash_client import StashClient
from tm_errors import CacheError, CacheLockedError, CacheSchemaError, SettingsError

log = logging.getLogger(__name__)

DEFAULT_PER_PAGE = 1000
FULL, INCREMENTAL, SMART = "cache_full_sync", "cache_incremental_sync", "cache_smart_sync"
MIN_OFFSET = timedelta(hours=-12)
Progress = Callable[[float], None]


def _no_progress(_fraction: float) -> None:
    """Default progress callback."""


# ---------------------------------------------------------------------------------------------
# entity specifications and the GraphQL queries built from them


_STASH_IDS = "stash_ids { endpoint stash_id }"


@dataclass(frozen=True)
class EntitySpec:
    """How one Stash entity type is queried and stored."""

    table: str            # plural: table name and type name in sync_state
    kind: str             # singular, used in stash_ids.entity_type and image_counts
    operation: str        # CamelCase part of the operation names
    find: str             # findScenes
    filter_arg: str       # scene_filter
    filter_type: str      # SceneFilterType
    list_key: str         # scenes
    fields: str           # GraphQL selection of one entity
    columns: tuple[str, ...]
    links: tuple[str, ...]          # link tables this type owns
    files_table: str | None = None
    has_stash_ids: bool = False


SPECS: tuple[EntitySpec, ...] = (
    EntitySpec(
        "studios", "studio", "Studios", "findStudios", "studio_filter", "StudioFilterType", "studios",
        "id name urls aliases details rating100 favorite ignore_auto_tag created_at updated_at "
        f"parent_studio {{ id }} tags {{ id }} {_STASH_IDS}",
        ("id", "name", "parent_id", "aliases", "urls", "details", "rating100", "favorite", "ignore_auto_tag"),
        ("studio_tags",), has_stash_ids=True),
    EntitySpec(
        "tags", "tag", "Tags", "findTags", "tag_filter", "TagFilterType", "tags",
        "id name sort_name description aliases favorite ignore_auto_tag created_at updated_at "
        f"parents {{ id }} {_STASH_IDS}",
        ("id", "name", "sort_name", "description", "aliases", "favorite", "ignore_auto_tag"),
        ("tag_parents",), has_stash_ids=True),
    EntitySpec(
        "performers", "performer", "Performers", "findPerformers", "performer_filter", "PerformerFilterType",
        "performers",
        "id name disambiguation gender birthdate alias_list urls details rating100 favorite ignore_auto_tag "
        f"created_at updated_at tags {{ id }} {_STASH_IDS}",
        ("id", "name", "disambiguation", "gender", "birthdate", "aliases", "urls", "details", "rating100",
         "favorite", "ignore_auto_tag"),
        ("performer_tags",), has_stash_ids=True),
    EntitySpec(
        "groups", "group", "Groups", "findGroups", "group_filter", "GroupFilterType", "groups",
        "id name aliases date rating100 director synopsis urls created_at updated_at studio { id } tags { id }",
        ("id", "name", "aliases", "date", "rating100", "studio_id", "director", "synopsis", "urls"),
        ("group_tags",)),
    EntitySpec(
        "galleries", "gallery", "Galleries", "findGalleries", "gallery_filter", "GalleryFilterType", "galleries",
        "id title code date details photographer rating100 organized urls created_at updated_at "
        "studio { id } folder { path } files { path } tags { id } performers { id }",
        ("id", "title", "code", "date", "details", "photographer", "rating100", "organized", "studio_id", "urls",
         "folder_path"),
        ("gallery_tags", "gallery_performers"), files_table="gallery_files"),
    EntitySpec(
        "scenes", "scene", "Scenes", "findScenes", "scene_filter", "SceneFilterType", "scenes",
        "id title code details director date rating100 organized urls created_at updated_at studio { id } "
        "files { path size duration fingerprints { type value } } galleries { id } "
        f"groups {{ group {{ id }} scene_index }} tags {{ id }} performers {{ id }} {_STASH_IDS}",
        ("id", "title", "code", "details", "director", "date", "rating100", "organized", "studio_id", "urls"),
        ("scene_tags", "scene_performers", "scene_groups", "scene_galleries"), files_table="scene_files",
        has_stash_ids=True),
    EntitySpec(
        "images", "image", "Images", "findImages", "image_filter", "ImageFilterType", "images",
        "id title code date details photographer rating100 organized urls created_at updated_at studio { id } "
        "visual_files { ... on ImageFile { path size } ... on VideoFile { path size } } "
        "galleries { id } tags { id } performers { id }",
        ("id", "title", "code", "date", "details", "photographer", "rating100", "organized", "studio_id", "urls"),
        ("image_tags", "image_performers", "image_galleries"), files_table="image_files"),
)
SPEC_BY_TABLE = {spec.table: spec for spec in SPECS}
ENTITY_TYPES: tuple[str, ...] = tuple(spec.table for spec in SPECS)
_ENTITY_ALIASES = {**{spec.table: spec.table for spec in SPECS}, **{spec.kind: spec.table for spec in SPECS}}


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


@dataclass(frozen=True)
class CacheOptions:
    """How a sync keeps history; built from the plugin settings (defaults live in ``settings.Settings``)."""

    change_log_days: float = Settings.cache_change_log_days   # prune sync_changes of older runs; 0 keeps all
    soft_delete: bool = Settings.cache_soft_delete             # keep vanished entities with deleted_at set
    soft_delete_days: float = Settings.cache_soft_delete_days  # purge soft-deleted entities after; 0 keeps

    @classmethod
    def from_settings(cls, settings: Settings) -> CacheOptions:
        """The cache options of the plugin settings."""
        return cls(change_log_days=settings.cache_change_log_days, soft_delete=settings.cache_soft_delete,
                   soft_delete_days=settings.cache_soft_delete_days)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """A positive duration such as ``7d``, ``12h``, ``30m``, ``1d12h`` or ``2w`` (units s m h d w)."""
    compact = str(text or "").strip().lower().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise SettingsError(f"Duration {text!r} is not understood: use a number and a unit, "
                            "e.g. 7d, 12h, 30m or 1d12h (units s, m, h, d, w).")
    total = timedelta(seconds=sum(float(n) * _DURATION_UNITS[u] for n, u in parts))
    if total <= timedelta(0):
        raise SettingsError(f"Duration {text!r} must be longer than zero.")
    return total


def _page_query(spec: EntitySpec) -> str:
    """Full content of a page of entities, or of the entities with the given ids."""
    return (f"query TagManagerCache{spec.operation}Page($filter: FindFilterType, $ids: [ID!]) {{\n"
            f"  {spec.find}(filter: $filter, ids: $ids) {{ count {spec.list_key} {{ {spec.fields} }} }}\n}}")


def _probe_query(spec: EntitySpec) -> str:
    """Total count, count of the cursor window and the full content of the recheck entities."""
    return (f"query TagManagerCache{spec.operation}Probe($window: {spec.filter_type}, $recheck: [ID!], "
            f"$withRecheck: Boolean!) {{\n"
            f"  total: {spec.find}(filter: {{per_page: 0}}) {{ count }}\n"
            f"  window: {spec.find}({spec.filter_arg}: $window, filter: {{per_page: 0}}) {{ count }}\n"
            f"  recheck: {spec.find}(ids: $recheck, filter: {{per_page: -1}}) @include(if: $withRecheck) "
            f"{{ {spec.list_key} {{ {spec.fields} }} }}\n}}")


def _listing_query(spec: EntitySpec) -> str:
    """Ids and updated_at of the entities in a window (or of all entities)."""
    return (f"query TagManagerCache{spec.operation}Listing($window: {spec.filter_type}, $filter: FindFilterType) {{\n"
            f"  {spec.find}({spec.filter_arg}: $window, filter: $filter) {{ count {spec.list_key} {{ id updated_at }} }}\n}}")


def _latest_query(spec: EntitySpec) -> str:
    """The newest updated_at (as text) Stash holds for the type, with the total count."""
    return (f"query TagManagerCache{spec.operation}Latest {{\n"
            f"  {spec.find}(filter: {{per_page: 1, sort: \"updated_at\", direction: DESC}}) "
            f"{{ count {spec.list_key} {{ id updated_at }} }}\n}}")


STUDIOS_PAGE_QUERY = _page_query(SPEC_BY_TABLE["studios"])
STUDIOS_PROBE_QUERY = _probe_query(SPEC_BY_TABLE["studios"])
STUDIOS_LISTING_QUERY = _listing_query(SPEC_BY_TABLE["studios"])
STUDIOS_LATEST_QUERY = _latest_query(SPEC_BY_TABLE["studios"])
TAGS_PAGE_QUERY = _page_query(SPEC_BY_TABLE["tags"])
TAGS_PROBE_QUERY = _probe_query(SPEC_BY_TABLE["tags"])
TAGS_LISTING_QUERY = _listing_query(SPEC_BY_TABLE["tags"])
TAGS_LATEST_QUERY = _latest_query(SPEC_BY_TABLE["tags"])
PERFORMERS_PAGE_QUERY = _page_query(SPEC_BY_TABLE["performers"])
PERFORMERS_PROBE_QUERY = _probe_query(SPEC_BY_TABLE["performers"])
PERFORMERS_LISTING_QUERY = _listing_query(SPEC_BY_TABLE["performers"])
PERFORMERS_LATEST_QUERY = _latest_query(SPEC_BY_TABLE["performers"])
GROUPS_PAGE_QUERY = _page_query(SPEC_BY_TABLE["groups"])
GROUPS_PROBE_QUERY = _probe_query(SPEC_BY_TABLE["groups"])
GROUPS_LISTING_QUERY = _listing_query(SPEC_BY_TABLE["groups"])
GROUPS_LATEST_QUERY = _latest_query(SPEC_BY_TABLE["groups"])
GALLERIES_PAGE_QUERY = _page_query(SPEC_BY_TABLE["galleries"])
GALLERIES_PROBE_QUERY = _probe_query(SPEC_BY_TABLE["galleries"])
GALLERIES_LISTING_QUERY = _listing_query(SPEC_BY_TABLE["galleries"])
GALLERIES_LATEST_QUERY = _latest_query(SPEC_BY_TABLE["galleries"])
SCENES_PAGE_QUERY = _page_query(SPEC_BY_TABLE["scenes"])
SCENES_PROBE_QUERY = _probe_query(SPEC_BY_TABLE["scenes"])
SCENES_LISTING_QUERY = _listing_query(SPEC_BY_TABLE["scenes"])
SCENES_LATEST_QUERY = _latest_query(SPEC_BY_TABLE["scenes"])
IMAGES_PAGE_QUERY = _page_query(SPEC_BY_TABLE["images"])
IMAGES_PROBE_QUERY = _probe_query(SPEC_BY_TABLE["images"])
IMAGES_LISTING_QUERY = _listing_query(SPEC_BY_TABLE["images"])
IMAGES_LATEST_QUERY = _latest_query(SPEC_BY_TABLE["images"])

PAGE_QUERIES = {spec.table: globals()[f"{spec.table.upper()}_PAGE_QUERY"] for spec in SPECS}
PROBE_QUERIES = {spec.table: globals()[f"{spec.table.upper()}_PROBE_QUERY"] for spec in SPECS}
LISTING_QUERIES = {spec.table: globals()[f"{spec.table.upper()}_LISTING_QUERY"] for spec in SPECS}
LATEST_QUERIES = {spec.table: globals()[f"{spec.table.upper()}_LATEST_QUERY"] for spec in SPECS}
ALL_QUERIES: tuple[str, ...] = (*PAGE_QUERIES.values(), *PROBE_QUERIES.values(),
                                *LISTING_QUERIES.values(), *LATEST_QUERIES.values())

# target type -> (table, column, owning type) of every mirrored reference to it; whatever
# referenced a vanished entity is re-read, since Stash rewrites such links silently.
REFERENCES: dict[str, tuple[tuple[str, str, str, str], ...]] = {
    "studios": (("studios", "parent_id", "id", "studios"), ("groups", "studio_id", "id", "groups"),
                ("galleries", "studio_id", "id", "galleries"), ("scenes", "studio_id", "id", "scenes"),
                ("images", "studio_id", "id", "images")),
    "tags": (("tag_parents", "parent_id", "tag_id", "tags"), ("studio_tags", "tag_id", "studio_id", "studios"),
             ("performer_tags", "tag_id", "performer_id", "performers"),
             ("group_tags", "tag_id", "group_id", "groups"), ("gallery_tags", "tag_id", "gallery_id", "galleries"),
             ("scene_tags", "tag_id", "scene_id", "scenes"), ("image_tags", "tag_id", "image_id", "images")),
    "performers": (("gallery_performers", "performer_id", "gallery_id", "galleries"),
                   ("scene_performers", "performer_id", "scene_id", "scenes"),
                   ("image_performers", "performer_id", "image_id", "images")),
    "groups": (("scene_groups", "group_id", "scene_id", "scenes"),),
    "galleries": (("scene_galleries", "gallery_id", "scene_id", "scenes"),
                  ("image_galleries", "gallery_id", "image_id", "images")),
    "scenes": (),
    "images": (),
}


# ---------------------------------------------------------------------------------------------
# result


@dataclass(frozen=True)
class TypeStats:
    """What one run did to one entity type."""

    fetched: int = 0
    upserted: int = 0      # rows (re)written: created + updated + revived
    deleted: int = 0       # vanished from Stash (removed, or soft-deleted with cacheSoftDelete)
    skipped: bool = False
    note: str = ""
    created: int = 0
    updated: int = 0       # fetched with a different mirrored content (fields or links)
    unchanged: int = 0     # fetched with identical mirrored content: not rewritten
    revived: int = 0       # soft-deleted entities Stash has again
    purged: int = 0        # soft-deleted entities removed for good after cacheSoftDeleteDays
    soft_deleted: int = 0  # soft-deleted entities the mirror holds after the run

    def summary(self) -> str:
        """One line of counts."""
        text = f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged, {self.deleted} deleted"
        extra = [f"{n} {w}" for n, w in ((self.revived, "revived"), (self.purged, "purged"),
                                         (self.soft_deleted, "soft-deleted kept")) if n]
        text += "".join(f", {e}" for e in extra) + f" ({self.fetched} fetched"
        return text + (", idle)" if self.skipped else ")")


@dataclass(frozen=True)
class CacheSyncResult:
    """Summary of one cache sync run (``asdict()`` is the task's JSON output)."""

    mode: str
    status: str
    db_path: str
    started: str
    finished: str
    seconds: float
    stash_requests: int
    per_type: dict[str, TypeStats] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    run_id: int = 0
    entities: tuple[str, ...] = ()  # the types this run covered (all when the run had no scope)
    # SQLite total_changes() over the sync work: every row the run inserted, updated or deleted
    # in any table, except its own sync_runs record (written before and after the measurement)
    rows_written: int = 0

    @property
    def created(self) -> int:
        """Entities new to the mirror in total."""
        return sum(s.created for s in self.per_type.values())

    @property
    def updated(self) -> int:
        """Entities whose mirrored content changed in total."""
        return sum(s.updated for s in self.per_type.values())

    @property
    def unchanged(self) -> int:
        """Entities fetched with identical content in total."""
        return sum(s.unchanged for s in self.per_type.values())

    @property
    def fetched(self) -> int:
        """Entities read from Stash in total."""
        return sum(s.fetched for s in self.per_type.values())

    @property
    def upserted(self) -> int:
        """Entities written to the mirror in total."""
        return sum(s.upserted for s in self.per_type.values())

    @property
    def deleted(self) -> int:
        """Entities removed from the mirror in total."""
        return sum(s.deleted for s in self.per_type.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form with totals."""
        out = asdict(self)
        out.update(fetched=self.fetched, upserted=self.upserted, deleted=self.deleted, created=self.created,
                   updated=self.updated, unchanged=self.unchanged)
        return out

    def __str__(self) -> str:
        parts = []
        for table, s in self.per_type.items():
            if s.skipped and not (s.deleted or s.purged):
                parts.append(f"{table} unchanged")
            else:
                parts.append(f"{table} {s.created}+/{s.updated}~/{s.unchanged}=/{s.deleted}-")
        text = (f"Cache {self.mode.removeprefix('cache_').replace('_', ' ')} {self.status} in {self.seconds:.1f} s "
                f"with {self.stash_requests} Stash requests, {self.rows_written} rows written "
                "(created+/updated~/unchanged=/deleted-): " + ", ".join(parts) + ".")
        if self.warnings:
            text += " Warnings: " + " ".join(self.warnings)
        return text


# ---------------------------------------------------------------------------------------------
# time handling


def parse_stash_time(text: str) -> datetime:
    """Parse an RFC3339 timestamp as Stash renders it (offset or Z) into an aware datetime."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("timestamp without UTC offset")
    return value


def _instant(text: str | None) -> datetime | None:
    """A bookkeeping timestamp as an aware datetime, or None when it is missing or not one."""
    try:
        return parse_stash_time(text) if text else None
    except (ValueError, TypeError):
        return None


def epoch_of(text: str) -> int:
    """UTC seconds of a Stash timestamp (sub-seconds dropped, as Stash stores whole seconds)."""
    return int(parse_stash_time(text).timestamp() // 1)


def window_lower_bound(epoch: int) -> str:
    """Text L such that every row written at or after ``epoch``, in any UTC offset, compares > L."""
    instant = datetime.fromtimestamp(epoch - 1, timezone.utc).astimezone(timezone(MIN_OFFSET))
    return instant.strftime("%Y-%m-%dT%H:%M:%S") + "-12:00"


def parse_since(since: str | None) -> int | None:
    """Validate the ``since`` task argument; returns its epoch seconds."""
    if since is None or str(since).strip() == "":
        return None
    try:
        return epoch_of(str(since).strip())
    except (ValueError, TypeError):
        raise SettingsError(
            f"since must be an RFC3339 time with a UTC offset, e.g. 2024-05-01T12:00:00+02:00 (got {since!r})"
        ) from None


def _now_text() -> str:
    """This machine's time, used only for run bookkeeping (never as a cursor)."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# opening, locking


def default_cache_path(plugin_dir: Path) -> Path:
    """Where the cache lives unless ``cacheDbPath`` says otherwise."""
    return Path(plugin_dir) / "data" / "stash_cache.sqlite3"


def cache_path(settings: Settings, plugin_dir: Path) -> Path:
    """The cache file of a run: the ``cacheDbPath`` setting or the default in the plugin folder."""
    return Path(settings.cache_db_path) if settings.cache_db_path else default_cache_path(plugin_dir)


def _prepare_file(db_path: Path) -> None:
    """Create the folder and an owner-only file (without truncating an existing one)."""
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(db_path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(db_path, 0o600)
    except OSError as exc:
        raise CacheError(
            f"Cannot create the cache file {db_path} ({exc.strerror or exc}). "
            "Set cacheDbPath to a writable location."
        ) from None


def open_cache(db_path: Path, writer: bool = True) -> sqlite3.Connection:
    """Open (creating and migrating when ``writer``) the cache; the writer's guard is switched on."""
    db_path = Path(db_path)
    if writer:
        _prepare_file(db_path)
    elif not db_path.exists():
        raise CacheError(f"There is no cache at {db_path} yet: run 'Cache: Full Sync' first.")
    try:
        conn = sqlite3.connect(str(db_path), isolation_level=None, timeout=30.0, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] if writer else "wal"
        if str(mode).lower() != "wal":
            log.warning(f"SQLite refused WAL mode for {db_path} (journal mode {mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = OFF")
        if writer:
            cache_schema.enable_writes(conn)
            cache_schema.migrate(conn)
        elif cache_schema.schema_version(conn) > cache_schema.SCHEMA_VERSION:
            cache_schema.migrate(conn)  # raises the newer-version error
    except CacheSchemaError:
        raise
    except sqlite3.DatabaseError as exc:
        raise CacheSchemaError(
            f"{db_path} is not a usable SQLite cache ({exc}). Move it away or delete it, "
            "then run 'Cache: Full Sync'."
        ) from None
    return conn


class CacheLock:
    """Exclusive ``flock`` on ``<cache>.lock``; the kernel drops it when the holder dies (even SIGKILL)."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(str(db_path) + ".lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock at once or raise CacheLockedError."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise CacheError(f"Cannot create the cache lock file {self.path} ({exc.strerror or exc}). "
                             "Set cacheDbPath to a writable location.") from None
        if not run_lock.lock_within(fd):
            holder = _read_holder(fd)
            os.close(fd)
            raise CacheLockedError(
                f"Another cache sync{holder} is running on {self.path.with_suffix('')}; "
                "this run changed nothing. Wait for it to finish (or cancel it) and try again."
            )
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {_now_text()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        """Drop the lock (the lock file stays; an unlocked file means no sync is running)."""
        if self.fd is not None:
            run_lock.unlock(self.fd)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> CacheLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """' (pid N since T)' from the lock file, or ''."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)  # (os.pread does not exist on Windows)
        text = os.read(fd, 200).decode(errors="replace").split()
        return f" (pid {text[0]} since {text[1]})" if len(text) >= 2 else ""
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# turning Stash items into rows


def _flag(value: Any) -> int:
    """Booleans as 0/1."""
    return 1 if value else 0


def _json_list(value: Any) -> str:
    """A list as compact JSON text (None becomes [])."""
    if not value:
        return "[]"
    return json.dumps(list(value or []), ensure_ascii=False, separators=(",", ":"))


def _ref(value: Any) -> int | None:
    """The integer id of a ``{id}`` object, or None."""
    return int(value["id"]) if value else None


def _row(spec: EntitySpec, item: dict) -> tuple:
    """The entity table row of one item (columns of ``spec`` + created/updated, without the hash)."""
    t = spec.table
    if t == "studios":
        values = (item["name"], _ref(item.get("parent_studio")), _json_list(item.get("aliases")),
                  _json_list(item.get("urls")), item.get("details"), item.get("rating100"),
                  _flag(item.get("favorite")), _flag(item.get("ignore_auto_tag")))
    elif t == "tags":
        values = (item["name"], item.get("sort_name"), item.get("description"), _json_list(item.get("aliases")),
                  _flag(item.get("favorite")), _flag(item.get("ignore_auto_tag")))
    elif t == "performers":
        values = (item["name"], item.get("disambiguation"), item.get("gender"), item.get("birthdate"),
                  _json_list(item.get("alias_list")), _json_list(item.get("urls")), item.get("details"),
                  item.get("rating100"), _flag(item.get("favorite")), _flag(item.get("ignore_auto_tag")))
    elif t == "groups":
        values = (item["name"], item.get("aliases"), item.get("date"), item.get("rating100"),
                  _ref(item.get("studio")), item.get("director"), item.get("synopsis"), _json_list(item.get("urls")))
    elif t == "galleries":
        folder = item.get("folder") or {}
        values = (item.get("title"), item.get("code"), item.get("date"), item.get("details"),
                  item.get("photographer"), item.get("rating100"), _flag(item.get("organized")),
                  _ref(item.get("studio")), _json_list(item.get("urls")), folder.get("path"))
    elif t == "scenes":
        values = (item.get("title"), item.get("code"), item.get("details"), item.get("director"), item.get("date"),
                  item.get("rating100"), _flag(item.get("organized")), _ref(item.get("studio")),
                  _json_list(item.get("urls")))
    else:
        values = (item.get("title"), item.get("code"), item.get("date"), item.get("details"),
                  item.get("photographer"), item.get("rating100"), _flag(item.get("organized")),
                  _ref(item.get("studio")), _json_list(item.get("urls")))
    return (int(item["id"]), *values, item["created_at"], item["updated_at"])


def _ids(objs: Any) -> list[int]:
    """Distinct integer ids of a list of ``{id}`` objects, in Stash's order."""
    return list(dict.fromkeys(int(o["id"]) for o in objs or []))


def _links(spec: EntitySpec, item: dict) -> dict[str, list[tuple]]:
    """Rows of the link tables this item owns."""
    eid = int(item["id"])
    t = spec.table
    if t == "studios":
        return {"studio_tags": [(eid, x) for x in _ids(item.get("tags"))]}
    if t == "tags":
        return {"tag_parents": [(eid, x) for x in _ids(item.get("parents"))]}
    if t == "performers":
        return {"performer_tags": [(eid, x) for x in _ids(item.get("tags"))]}
    if t == "groups":
        return {"group_tags": [(eid, x) for x in _ids(item.get("tags"))]}
    if t == "galleries":
        return {"gallery_tags": [(eid, x) for x in _ids(item.get("tags"))],
                "gallery_performers": [(eid, x) for x in _ids(item.get("performers"))]}
    if t == "scenes":
        groups: dict[int, Any] = {}
        for g in item.get("groups") or []:
            groups.setdefault(int(g["group"]["id"]), g.get("scene_index"))
        return {"scene_tags": [(eid, x) for x in _ids(item.get("tags"))],
                "scene_performers": [(eid, x) for x in _ids(item.get("performers"))],
                "scene_groups": [(eid, gid, index) for gid, index in groups.items()],
                "scene_galleries": [(eid, x) for x in _ids(item.get("galleries"))]}
    return {"image_tags": [(eid, x) for x in _ids(item.get("tags"))],
            "image_performers": [(eid, x) for x in _ids(item.get("performers"))],
            "image_galleries": [(eid, x, pos) for pos, x in enumerate(_ids(item.get("galleries")))]}


def _files(spec: EntitySpec, item: dict) -> list[tuple]:
    """Rows of the files table this item owns."""
    eid = int(item["id"])
    if spec.table == "scenes":
        out = []
        for pos, f in enumerate(item.get("files") or []):
            prints = {fp["type"]: fp["value"] for fp in f.get("fingerprints") or []}
            out.append((eid, pos, f["path"], f.get("size"), f.get("duration"),
                        prints.get("oshash"), prints.get("phash"), prints.get("md5")))
        return out
    if spec.table == "images":
        return [(eid, pos, f["path"], f.get("size")) for pos, f in enumerate(item.get("visual_files") or [])
                if f and f.get("path") is not None]
    if spec.table == "galleries":
        return [(eid, pos, f["path"]) for pos, f in enumerate(item.get("files") or [])]
    return []


_FILE_COLUMNS = {"scene_files": 8, "image_files": 4, "gallery_files": 3}


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


@dataclass(frozen=True)
class Content:
    """What the mirror holds for one entity: its row and the sets it owns, with their digest.

    ``sets`` maps each owned link table, its files table and ``stash_ids`` to the rows the entity
    has there (deduplicated as the tables' keys do). The digest is stored as ``content_hash``;
    two items with the same mirrored fields and links have the same digest, whatever order Stash
    listed the links in.
    """

    row: tuple                       # id, columns..., created_at, updated_at
    sets: dict[str, list]
    digest: str

    @property
    def id(self) -> int:
        """The entity id."""
        return self.row[0]


def _sets(spec: EntitySpec, item: dict) -> dict[str, list]:
    """Rows of every link, file and stash-id table an item owns."""
    out = _links(spec, item)
    if spec.files_table:
        out[spec.files_table] = _files(spec, item)
    if spec.has_stash_ids:
        eid = int(item["id"])
        out["stash_ids"] = list(dict.fromkeys((spec.kind, eid, s["endpoint"], s["stash_id"])
                                              for s in item.get("stash_ids") or []))
    return out


def mirrored_content(spec: EntitySpec, item: dict) -> Content:
    """The mirrored content of one Stash item and its digest."""
    row = _row(spec, item)
    sets = _sets(spec, item)
    # rows of one table differ in their leading key columns, so sorting never compares a None
    canonical = repr((row, [sorted(values) for values in sets.values()]))
    return Content(row, sets, hashlib.blake2b(canonical.encode(), digest_size=12).hexdigest())


def _owned_tables(spec: EntitySpec) -> list[tuple[str, str]]:
    """(table, owner column) of every link and file table the type owns."""
    out = [(t, LINK_TABLES[t][0]) for t in spec.links]
    if spec.files_table:
        out.append((spec.files_table, f"{spec.kind}_id"))
    return out


def load_contents(conn: sqlite3.Connection, spec: EntitySpec, ids: Sequence[int]) -> dict[int, tuple[tuple, dict]]:
    """id -> (row, sets) as the mirror holds them (the same shapes as ``Content``), for the given ids."""
    cols = ", ".join(("id", *spec.columns[1:], "created_at", "updated_at"))
    out: dict[int, tuple[tuple, dict]] = {}
    for chunk in _chunks(list(ids), 900):
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(f"SELECT {cols} FROM {spec.table} WHERE id IN ({marks})", chunk):
            sets: dict[str, list] = {t: [] for t, _ in _owned_tables(spec)}
            if spec.has_stash_ids:
                sets["stash_ids"] = []
            out[row[0]] = (tuple(row), sets)
        for table, owner in _owned_tables(spec):
            for row in conn.execute(f"SELECT * FROM {table} WHERE {owner} IN ({marks})", chunk):
                if row[0] in out:
                    out[row[0]][1][table].append(tuple(row))
        if spec.has_stash_ids:
            for row in conn.execute(f"SELECT * FROM stash_ids WHERE entity_type = ? AND entity_id IN ({marks})",
                                    (spec.kind, *chunk)):
                if row[1] in out:
                    out[row[1]][1]["stash_ids"].append(tuple(row))
    return out


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


@dataclass
class ChangeRecorder:
    """Counts what writes did per type and, with a ``run_id``, logs each change in ``sync_changes``.

    Pass one to ``write_items`` / ``delete_entities`` to get change accounting; ``soft_delete``
    makes ``delete_entities`` keep entities with ``deleted_at`` set instead of removing them.
    """

    run_id: int | None = None
    soft_delete: bool = False
    now_text: Callable[[], str] = field(default=lambda: _now_text())
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, table: str, what: str, n: int = 1) -> None:
        """Add ``n`` to one counter of one type."""
        if n:
            per = self.counts.setdefault(table, {})
            per[what] = per.get(what, 0) + n

    def log(self, conn: sqlite3.Connection, rows: list[tuple]) -> None:
        """Insert (entity_type, entity_id, change, field, old, new) rows for this run."""
        if self.run_id is not None and rows:
            conn.executemany("INSERT INTO sync_changes (run_id, entity_type, entity_id, change, field, old_value, "
                             "new_value) VALUES (?, ?, ?, ?, ?, ?, ?)", [(self.run_id, *r) for r in rows])


# ---------------------------------------------------------------------------------------------
# writing


def _upsert_sql(spec: EntitySpec) -> str:
    """INSERT ... ON CONFLICT(id) DO UPDATE for the entity table (an upsert also revives the row)."""
    cols = (*spec.columns, "created_at", "updated_at", "content_hash")
    sets = ", ".join(f"{c} = excluded.{c}" for c in cols[1:])
    return (f"INSERT INTO {spec.table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT(id) DO UPDATE SET {sets}, deleted_at = NULL")


def _chunks(seq: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def _existing_states(conn: sqlite3.Connection, table: str, ids: Sequence[int]) -> dict[int, tuple[str, str | None]]:
    """id -> (content_hash, deleted_at) of the mirror rows among ``ids``."""
    out: dict[int, tuple[str, str | None]] = {}
    for chunk in _chunks(ids, 900):
        marks = ",".join("?" * len(chunk))
        out.update((r[0], (r[1], r[2])) for r in conn.execute(
            f"SELECT id, content_hash, deleted_at FROM {table} WHERE id IN ({marks})", chunk))
    return out


def write_items(conn: sqlite3.Connection, spec: EntitySpec, items: Iterable[dict], mark_dirty: bool = True,
                recorder: ChangeRecorder | None = None) -> int:
    """Write the items whose mirrored content changed, replacing their links, files and stash ids.

    An item whose fields and links equal the mirror's is not rewritten (a soft-deleted one only has
    its ``deleted_at`` cleared). Returns how many entities were created, updated or revived. Must run
    inside a transaction. ``mark_dirty`` queues them for the derived-data refresh; ``recorder``
    counts created/updated/unchanged/revived and logs the changes.
    """
    contents = list({c.id: c for c in (mirrored_content(spec, item) for item in items)}.values())
    if not contents:
        return 0
    existing = _existing_states(conn, spec.table, [c.id for c in contents])
    rewrite: list[Content] = []        # created, or content changed
    touch: list[tuple[str, int]] = []  # content equal: store the digest / clear deleted_at only
    changes: list[tuple] = []
    counts = {"created": 0, "updated": 0, "unchanged": 0, "revived": 0}
    compare = [c for c in contents if c.id in existing and existing[c.id][0] != c.digest]
    old = load_contents(conn, spec, [c.id for c in compare]) if compare else {}
    for c in contents:
        state = existing.get(c.id)
        if state is None:
            rewrite.append(c)
            counts["created"] += 1
            changes.append((spec.table, c.id, "created", None, None, None))
            continue
        revived = state[1] is not None
        diff = content_diff(spec, old[c.id], c) if state[0] != c.digest else []
        if revived:
            counts["revived"] += 1
            changes.append((spec.table, c.id, "revived", None, None, None))
        counts["updated" if diff else "unchanged"] += not revived
        if diff:
            rewrite.append(c)
            changes.extend((spec.table, c.id, "updated", f, a, b) for f, a, b in diff)
        elif revived or state[0] != c.digest:
            touch.append((c.digest, c.id))
    if recorder is not None:
        for what, n in counts.items():
            recorder.count(spec.table, what, n)
        recorder.log(conn, changes)
    if touch:
        conn.executemany(f"UPDATE {spec.table} SET content_hash = ?, deleted_at = NULL WHERE id = ?", touch)
    if rewrite:
        _rewrite(conn, spec, rewrite, [c.id for c in rewrite if c.id in existing])
    revived_ids = [c.id for c in contents if c.id in existing and existing[c.id][1] is not None]
    if mark_dirty:
        conn.executemany("INSERT OR IGNORE INTO dirty VALUES (?, ?)",
                         [(spec.table, i) for i in dict.fromkeys([c.id for c in rewrite] + revived_ids)])
    return counts["created"] + counts["updated"] + counts["revived"]


def _rewrite(conn: sqlite3.Connection, spec: EntitySpec, contents: list[Content], old_ids: list[int]) -> None:
    """Upsert rows and replace everything they own."""
    conn.executemany(_upsert_sql(spec), [(*c.row, c.digest) for c in contents])
    if old_ids:
        params = [(i,) for i in old_ids]
        for table, owner in _owned_tables(spec):
            conn.executemany(f"DELETE FROM {table} WHERE {owner} = ?", params)
        if spec.has_stash_ids:
            conn.executemany("DELETE FROM stash_ids WHERE entity_type = ? AND entity_id = ?",
                             [(spec.kind, i) for i in old_ids])
    for table, _owner in _owned_tables(spec):
        rows = [r for c in contents for r in c.sets[table]]
        if rows:
            marks = ",".join("?" * len(rows[0]))
            verb = "INSERT" if table == spec.files_table else "INSERT OR IGNORE"
            conn.executemany(f"{verb} INTO {table} VALUES ({marks})", rows)
    if spec.has_stash_ids:
        rows = [r for c in contents for r in c.sets["stash_ids"]]
        if rows:
            conn.executemany("INSERT OR IGNORE INTO stash_ids VALUES (?, ?, ?, ?)", rows)


def _remove_rows(conn: sqlite3.Connection, spec: EntitySpec, ids: Sequence[int]) -> int:
    """Delete entity rows with their own links, files and stash ids; returns how many rows went."""
    params = [(i,) for i in ids]
    for table, owner in _owned_tables(spec):
        conn.executemany(f"DELETE FROM {table} WHERE {owner} = ?", params)
    conn.executemany("DELETE FROM stash_ids WHERE entity_type = ? AND entity_id = ?", [(spec.kind, i) for i in ids])
    before = conn.total_changes
    conn.executemany(f"DELETE FROM {spec.table} WHERE id = ?", params)
    return conn.total_changes - before


def _present(conn: sqlite3.Connection, spec: EntitySpec, ids: Sequence[int], live_only: bool) -> list[int]:
    """The ids among ``ids`` the mirror holds (only those not soft-deleted when ``live_only``)."""
    out: list[int] = []
    where = " AND deleted_at IS NULL" if live_only else ""
    for chunk in _chunks(list(ids), 900):
        marks = ",".join("?" * len(chunk))
        out += [r[0] for r in conn.execute(f"SELECT id FROM {spec.table} WHERE id IN ({marks}){where}", chunk)]
    return sorted(out)


def delete_entities(conn: sqlite3.Connection, spec: EntitySpec, ids: Sequence[int],
                    recorder: ChangeRecorder | None = None) -> int:
    """Remove entities Stash no longer has (with their own links, files and stash ids); queue whatever linked to them.

    With a recorder whose ``soft_delete`` is set, the entities are kept with ``deleted_at`` set
    (links included) instead. Must run inside a transaction. Returns how many entities went.
    """
    if not ids:
        return 0
    soft = recorder is not None and recorder.soft_delete
    gone = set(ids)
    for table, column, owner, owner_type in REFERENCES[spec.table]:
        for chunk in _chunks(list(ids), 900):
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(f"SELECT DISTINCT {owner} FROM {table} WHERE {column} IN ({marks})", chunk).fetchall()
            queued = [(owner_type, r[0]) for r in rows if not (owner_type == spec.table and r[0] in gone)]
            conn.executemany("INSERT OR IGNORE INTO pending_reread VALUES (?, ?)", queued)
    conn.executemany("DELETE FROM pending_reread WHERE entity_type = ? AND entity_id = ?",
                     [(spec.table, i) for i in ids])
    present = _present(conn, spec, ids, live_only=True) if recorder is not None else None
    if soft:
        stamp = recorder.now_text()
        conn.executemany(f"UPDATE {spec.table} SET deleted_at = ? WHERE id = ?", [(stamp, i) for i in present])
        removed = len(present)
    else:
        removed = _remove_rows(conn, spec, ids)
    conn.executemany("INSERT OR IGNORE INTO dirty VALUES (?, ?)", [(spec.table, i) for i in ids])
    if recorder is not None:
        recorder.count(spec.table, "deleted", len(present))
        recorder.log(conn, [(spec.table, i, "deleted", None, None, None) for i in present])
    return removed


def purge_soft_deleted(conn: sqlite3.Connection, spec: EntitySpec, older_than: datetime | None,
                       recorder: ChangeRecorder | None = None) -> int:
    """Remove for good the type's soft-deleted entities (deleted before ``older_than``; all when None)."""
    rows = conn.execute(f"SELECT id, deleted_at FROM {spec.table} WHERE deleted_at IS NOT NULL").fetchall()
    ids = [eid for eid, stamp in rows if older_than is None or (_instant(stamp) or older_than) < older_than]
    if not ids:
        return 0
    removed = _remove_rows(conn, spec, ids)
    conn.executemany("DELETE FROM pending_reread WHERE entity_type = ? AND entity_id = ?",
                     [(spec.table, i) for i in ids])
    if recorder is not None:
        recorder.count(spec.table, "purged", removed)
        recorder.log(conn, [(spec.table, i, "purged", None, None, None) for i in ids])
    return removed


def soft_deleted_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """How many soft-deleted entities the mirror keeps, per type."""
    return {t: conn.execute(f"SELECT count(*) FROM {t} WHERE deleted_at IS NOT NULL").fetchone()[0]
            for t in ENTITY_TYPES}


# ---------------------------------------------------------------------------------------------
# derived data


def _fill_temp(conn: sqlite3.Connection, name: str, sql: str, params: Sequence = ()) -> int:
    """(Re)create TEMP table ``name(id)`` from a SELECT of ids; returns its size."""
    conn.execute(f"DROP TABLE IF EXISTS temp.{name}")
    conn.execute(f"CREATE TEMP TABLE {name} (id INTEGER PRIMARY KEY)")
    conn.execute(f"INSERT OR IGNORE INTO temp.{name} (id) {sql}", params)
    return conn.execute(f"SELECT count(*) FROM temp.{name}").fetchone()[0]


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    """A value of cache_meta."""
    row = conn.execute("SELECT value FROM cache_meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def refresh_derived(conn: sqlite3.Connection) -> dict[str, int]:
    """Recompute derived data for what changed since the last refresh (everything after a full sync).

    The single place derived data is computed, whatever the mode: image inheritance from the first
    gallery, scene tags inherited from performers/studio/groups, and image counts.
    """
    with atomic(conn):
        full = _meta(conn, "derived_full") == "1"
        if full:
            n_images = _fill_temp(conn, "aff_images", "SELECT id FROM images")
            n_scenes = _fill_temp(conn, "aff_scenes", "SELECT id FROM scenes")
        else:
            n_images = _fill_temp(conn, "aff_images", """
                SELECT entity_id FROM dirty WHERE entity_type = 'images'
                UNION SELECT ig.image_id FROM image_galleries ig
                  JOIN dirty d ON d.entity_type = 'galleries' AND d.entity_id = ig.gallery_id""")
            n_scenes = _fill_temp(conn, "aff_scenes", """
                SELECT entity_id FROM dirty WHERE entity_type = 'scenes'
                UNION SELECT sp.scene_id FROM scene_performers sp
                  JOIN dirty d ON d.entity_type = 'performers' AND d.entity_id = sp.performer_id
                UNION SELECT s.id FROM scenes s
                  JOIN dirty d ON d.entity_type = 'studios' AND d.entity_id = s.studio_id
                UNION SELECT sg.scene_id FROM scene_groups sg
                  JOIN dirty d ON d.entity_type = 'groups' AND d.entity_id = sg.group_id""")
        if n_images:
            _refresh_image_inheritance(conn)
        if n_scenes:
            _refresh_scene_inherited_tags(conn)
        counts = _refresh_image_counts(conn) if (n_images or full) else 0
        conn.execute("DELETE FROM dirty")
        conn.execute("DELETE FROM cache_meta WHERE key = 'derived_full'")
        conn.execute("DROP TABLE IF EXISTS temp.aff_images")
        conn.execute("DROP TABLE IF EXISTS temp.aff_scenes")
    return {"images": n_images, "scenes": n_scenes, "image_counts": counts}


def _refresh_image_inheritance(conn: sqlite3.Connection) -> None:
    """Images take studio, date, photographer, details, performers and tags from their first gallery."""
    for table in ("image_inherited", "image_inherited_performers", "image_inherited_tags"):
        conn.execute(f"DELETE FROM {table} WHERE image_id IN (SELECT id FROM temp.aff_images)")
    conn.execute("""
        INSERT INTO image_inherited (image_id, gallery_id, studio_id, date, photographer, details)
        SELECT i.id, g.id,
               CASE WHEN i.studio_id IS NULL THEN g.studio_id END,
               CASE WHEN coalesce(i.date, '') = '' THEN nullif(g.date, '') END,
               CASE WHEN coalesce(i.photographer, '') = '' THEN nullif(g.photographer, '') END,
               CASE WHEN coalesce(i.details, '') = '' THEN nullif(g.details, '') END
        FROM temp.aff_images a
        JOIN images i ON i.id = a.id AND i.deleted_at IS NULL
        JOIN image_galleries ig ON ig.image_id = i.id
        JOIN galleries g ON g.id = ig.gallery_id AND g.deleted_at IS NULL
        WHERE ig.position = (SELECT min(ig2.position) FROM image_galleries ig2
                             JOIN galleries g2 ON g2.id = ig2.gallery_id AND g2.deleted_at IS NULL
                             WHERE ig2.image_id = i.id)""")
    conn.execute("""
        INSERT INTO image_inherited_performers (image_id, performer_id, gallery_id)
        SELECT ii.image_id, gp.performer_id, ii.gallery_id
        FROM image_inherited ii JOIN gallery_performers gp ON gp.gallery_id = ii.gallery_id
        WHERE ii.image_id IN (SELECT id FROM temp.aff_images)
          AND NOT EXISTS (SELECT 1 FROM image_performers ip WHERE ip.image_id = ii.image_id)""")
    conn.execute("""
        INSERT INTO image_inherited_tags (image_id, tag_id, gallery_id)
        SELECT ii.image_id, gt.tag_id, ii.gallery_id
        FROM image_inherited ii JOIN gallery_tags gt ON gt.gallery_id = ii.gallery_id
        WHERE ii.image_id IN (SELECT id FROM temp.aff_images)
          AND NOT EXISTS (SELECT 1 FROM image_tags it WHERE it.image_id = ii.image_id)""")


def _refresh_scene_inherited_tags(conn: sqlite3.Connection) -> None:
    """Scenes inherit the tags of their performers, studio and groups (with the source).

    Soft-deleted scenes inherit nothing and soft-deleted sources pass nothing on, so derived data
    is the same with and without soft retention.
    """
    conn.execute("DELETE FROM scene_inherited_tags WHERE scene_id IN (SELECT id FROM temp.aff_scenes)")
    conn.execute("DROP TABLE IF EXISTS temp.aff_live_scenes")
    conn.execute("""CREATE TEMP TABLE aff_live_scenes AS SELECT a.id FROM temp.aff_scenes a
                    JOIN scenes s ON s.id = a.id AND s.deleted_at IS NULL""")
    conn.execute("""
        INSERT OR IGNORE INTO scene_inherited_tags (scene_id, tag_id, source_type, source_id)
        SELECT sp.scene_id, pt.tag_id, 'performer', sp.performer_id
          FROM scene_performers sp JOIN performer_tags pt ON pt.performer_id = sp.performer_id
         WHERE sp.scene_id IN (SELECT id FROM temp.aff_live_scenes)
           AND sp.performer_id NOT IN (SELECT id FROM performers WHERE deleted_at IS NOT NULL)
        UNION ALL
        SELECT s.id, st.tag_id, 'studio', s.studio_id
          FROM scenes s JOIN studio_tags st ON st.studio_id = s.studio_id
         WHERE s.id IN (SELECT id FROM temp.aff_live_scenes)
           AND s.studio_id NOT IN (SELECT id FROM studios WHERE deleted_at IS NOT NULL)
        UNION ALL
        SELECT sg.scene_id, gt.tag_id, 'group', sg.group_id
          FROM scene_groups sg JOIN group_tags gt ON gt.group_id = sg.group_id
         WHERE sg.scene_id IN (SELECT id FROM temp.aff_live_scenes)
           AND sg.group_id NOT IN (SELECT id FROM groups WHERE deleted_at IS NOT NULL)""")
    conn.execute("DROP TABLE temp.aff_live_scenes")


def _refresh_image_counts(conn: sqlite3.Connection) -> int:
    """Distinct images per tag, performer, studio and gallery (own or inherited links); rewrites only changes."""
    conn.execute("DROP TABLE IF EXISTS temp.new_counts")
    conn.execute("""CREATE TEMP TABLE new_counts AS
        SELECT entity_type, entity_id, count(*) AS image_count FROM image_effective_links
        GROUP BY entity_type, entity_id""")
    before = conn.total_changes
    conn.execute("""DELETE FROM image_counts WHERE NOT EXISTS (
        SELECT 1 FROM temp.new_counts n WHERE n.entity_type = image_counts.entity_type
        AND n.entity_id = image_counts.entity_id)""")
    conn.execute("""INSERT INTO image_counts (entity_type, entity_id, image_count)
        SELECT entity_type, entity_id, image_count FROM temp.new_counts WHERE true
        ON CONFLICT (entity_type, entity_id) DO UPDATE SET image_count = excluded.image_count
        WHERE image_count != excluded.image_count""")
    conn.execute("DROP TABLE temp.new_counts")
    return conn.total_changes - before


# ---------------------------------------------------------------------------------------------
# the sync engine


@dataclass
class _TypeRun:
    """Mutable counters for one type during a run."""

    fetched: int = 0
    upserted: int = 0
    deleted: int = 0
    skipped: bool = False
    notes: list[str] = field(default_factory=list)

    def frozen(self, counts: dict[str, int] | None = None, soft_deleted: int = 0) -> TypeStats:
        """The immutable summary, with the recorder's counts of the type."""
        c = counts or {}
        return TypeStats(self.fetched, self.upserted, c.get("deleted", 0), self.skipped, " ".join(self.notes),
                         created=c.get("created", 0), updated=c.get("updated", 0), unchanged=c.get("unchanged", 0),
                         revived=c.get("revived", 0), purged=c.get("purged", 0), soft_deleted=soft_deleted)


def _utc_now() -> datetime:
    """This machine's clock (aware)."""
    return datetime.now(timezone.utc)


class CacheSync:
    """One sync run over an open, locked cache connection.

    ``entities`` limits the run to those types (all when empty); ``options`` sets soft retention
    and change-log pruning; ``clock`` (aware datetimes) stamps bookkeeping, never cursors.
    """

    def __init__(self, stash: StashClient, conn: sqlite3.Connection, mode: str, since: int | None = None,
                 per_page: int = DEFAULT_PER_PAGE, progress: Progress = _no_progress,
                 entities: Sequence[str] = (), options: CacheOptions | None = None,
                 clock: Callable[[], datetime] | None = None, run_id: int | None = None) -> None:
        self.stash = stash
        self.conn = conn
        self.mode = mode
        self.since = since
        self.per_page = max(1, min(int(per_page), 1000))
        self.progress = progress
        self.warnings: list[str] = []
        self.stats: dict[str, _TypeRun] = {}
        scope = parse_entities(entities) if entities else ()
        self.scoped = bool(scope) and len(scope) < len(SPECS)
        self.specs: tuple[EntitySpec, ...] = tuple(SPEC_BY_TABLE[t] for t in scope) if self.scoped else SPECS
        self.options = options or CacheOptions()
        self.clock = clock or _utc_now
        self.recorder = ChangeRecorder(run_id=run_id, soft_delete=self.options.soft_delete, now_text=self._now_text)

    def _now_text(self) -> str:
        """The run's clock as local ISO text (bookkeeping only)."""
        return self.clock().astimezone().isoformat(timespec="seconds")

    def type_stats(self) -> dict[str, TypeStats]:
        """Per-type summary of the run so far."""
        soft = {t: 0 for t in self.stats}
        if self.stats:
            try:
                for t in self.stats:
                    soft[t] = self.conn.execute(f"SELECT count(*) FROM {t} WHERE deleted_at IS NOT NULL").fetchone()[0]
            except sqlite3.Error:
                pass
        return {t: s.frozen(self.recorder.counts.get(t), soft[t]) for t, s in self.stats.items()}

    # -- helpers ---------------------------------------------------------------------------

    def _state(self, spec: EntitySpec) -> dict[str, Any]:
        """The type's sync_state row as a dict (empty values when never synced)."""
        cur = self.conn.execute("SELECT cursor, last_full_sync, last_incremental_sync, full_next_page, full_cursor "
                                "FROM sync_state WHERE entity_type = ?", (spec.table,))
        row = cur.fetchone() or (None, None, None, None, None)
        return dict(zip(("cursor", "last_full_sync", "last_incremental_sync", "full_next_page", "full_cursor"), row))

    def _set_state(self, spec: EntitySpec, **values: Any) -> None:
        """Update columns of the type's sync_state row (inside the caller's transaction)."""
        self.conn.execute("INSERT OR IGNORE INTO sync_state (entity_type) VALUES (?)", (spec.table,))
        for column, value in values.items():
            self.conn.execute(f"UPDATE sync_state SET {column} = ? WHERE entity_type = ?", (value, spec.table))

    def _advance_cursor(self, spec: EntitySpec, candidate: str | None) -> None:
        """Move the type's cursor to ``candidate`` when it is a later instant (inside a transaction)."""
        if candidate is None:
            return
        current = self._state(spec)["cursor"]
        if current is None or epoch_of(candidate) > epoch_of(current):
            self._set_state(spec, cursor=candidate)

    def _mirror_count(self, spec: EntitySpec) -> int:
        """How many entities of the type the mirror holds (soft-deleted ones not counted)."""
        return self.conn.execute(f"SELECT (SELECT count(*) FROM {spec.table}) - "
                                 f"(SELECT count(*) FROM {spec.table} WHERE deleted_at IS NOT NULL)").fetchone()[0]

    def _call(self, query: str, variables: dict[str, Any] | None = None) -> dict:
        """One Stash request."""
        return self.stash.call(query, variables)

    # -- run -------------------------------------------------------------------------------

    def run(self) -> None:
        """Sync the run's types in dependency order, then retention, change-log pruning and derived data."""
        if self.mode == FULL:
            self._start_full_run()
        count = len(self.specs)
        for index, spec in enumerate(self.specs):
            self.stats[spec.table] = _TypeRun()
            base, share = index / count, 0.95 / count
            self._sync_type(spec, lambda f, b=base, s=share: self.progress(min(1.0, b * 0.95 + f * s)))
            self.progress((index + 1) / count * 0.95)
        import mirror_signals  # (imports this module)
        mirror_signals.check(self)  # changes no updated_at reveals: file moves, phashes, re-verification
        for spec in self.specs:
            # deletions found in later types (e.g. a merged tag) queue earlier ones (e.g. studios);
            # types outside the run's scope keep their queue for a later run
            self._process_rereads(spec)
        self._apply_retention()
        derived = refresh_derived(self.conn)
        log.debug(f"derived data refreshed: {derived}")
        if self.mode == FULL:
            self._finish_full_run()
        self._prune_change_log()
        for table, stats in self.type_stats().items():
            log.info(f"cache {table}: {stats.summary()}")
        self.progress(1.0)

    def _pending_full(self) -> set[str]:
        """Types of an interrupted full run ('1' is every type, as older versions wrote it)."""
        value = _meta(self.conn, "full_run_pending")
        if not value:
            return set()
        return set(ENTITY_TYPES) if value == "1" else {t for t in value.split(",") if t in SPEC_BY_TABLE}

    def _start_full_run(self) -> None:
        """Mark the run's types for a full read, except those an interrupted full run is resuming."""
        scope = {spec.table for spec in self.specs}
        with atomic(self.conn):
            if not self.scoped:  # a full run rebuilds all derived data; a scoped one refreshes what changed
                self.conn.execute("INSERT OR REPLACE INTO cache_meta VALUES ('derived_full', '1')")
            pending = self._pending_full()
            if pending & scope:
                log.info(f"resuming the interrupted full sync of {', '.join(t for t in ENTITY_TYPES if t in pending & scope)}")
            for spec in self.specs:
                if spec.table not in pending:
                    self._set_state(spec, full_next_page=1, full_cursor=None)
            value = ",".join(t for t in ENTITY_TYPES if t in pending | scope)
            self.conn.execute("INSERT OR REPLACE INTO cache_meta VALUES ('full_run_pending', ?)", (value,))

    def _finish_full_run(self) -> None:
        """Forget the pending full run, keeping types of an interrupted one this run did not cover."""
        scope = {spec.table for spec in self.specs}
        left = [t for t in ENTITY_TYPES if t in self._pending_full() - scope
                and self._state(SPEC_BY_TABLE[t])["full_next_page"] is not None]
        with atomic(self.conn):
            if left:
                self.conn.execute("INSERT OR REPLACE INTO cache_meta VALUES ('full_run_pending', ?)", (",".join(left),))
            else:
                self.conn.execute("DELETE FROM cache_meta WHERE key = 'full_run_pending'")

    def _apply_retention(self) -> None:
        """Purge soft-deleted entities of the run's types: older than cacheSoftDeleteDays, or all when it is off."""
        days = self.options.soft_delete_days
        if self.options.soft_delete and not days:
            return
        cutoff = self.clock() - timedelta(days=days) if self.options.soft_delete else None
        for spec in self.specs:
            with atomic(self.conn):
                purged = purge_soft_deleted(self.conn, spec, cutoff, self.recorder)
            if purged:
                log.info(f"cache {spec.table}: purged {purged} soft-deleted entities")

    def _prune_change_log(self) -> None:
        """Drop sync_changes rows of runs that started more than cacheChangeLogDays ago."""
        days = self.options.change_log_days
        if not days:
            return
        first = self.conn.execute("SELECT min(run_id) FROM sync_changes").fetchone()[0]
        if first is None:
            return
        cutoff = self.clock() - timedelta(days=days)
        old = [rid for rid, started in self.conn.execute("SELECT id, started FROM sync_runs WHERE id >= ?", (first,))
               if rid != self.recorder.run_id and (_instant(started) or cutoff) < cutoff]
        if not old:
            return
        with atomic(self.conn):
            for chunk in _chunks(old, 500):
                self.conn.execute(f"DELETE FROM sync_changes WHERE run_id IN ({','.join('?' * len(chunk))})", chunk)

    def _sync_type(self, spec: EntitySpec, progress: Progress) -> None:
        """Sync one entity type according to the mode."""
        state = self._state(spec)
        stats = self.stats[spec.table]
        if self.mode == FULL and state["full_next_page"] is None:
            stats.skipped = True
            stats.notes.append("read completely by the interrupted full sync.")
        elif self.mode == FULL or (state["cursor"] is None and self.since is None):
            if self.mode != FULL:
                stats.notes.append("no cursor yet: read in full.")
            self._full_pass(spec, state, progress)
        else:
            self._window_pass(spec, state, progress)
        self._process_rereads(spec)

    # -- full ------------------------------------------------------------------------------

    def _full_pass(self, spec: EntitySpec, state: dict[str, Any], progress: Progress) -> None:
        """Read every entity page by page (resuming a killed full pass), then reconcile deletions."""
        stats = self.stats[spec.table]
        page, target = state["full_next_page"] or 1, state["full_cursor"]
        resumed = page > 1
        if resumed:
            log.info(f"cache {spec.table}: resuming the full read at page {page}")
        if target is None:
            newest = self._call(LATEST_QUERIES[spec.table])[spec.find][spec.list_key]
            target = newest[0]["updated_at"] if newest else None
            with atomic(self.conn):
                self._set_state(spec, full_next_page=page, full_cursor=target)
        mark_dirty = self.mode != FULL or self.scoped
        for page, result in self._pages(spec, page):
            items = result[spec.list_key]
            with atomic(self.conn):
                stats.upserted += write_items(self.conn, spec, items, mark_dirty=mark_dirty, recorder=self.recorder)
                self._set_state(spec, full_next_page=page + 1)
            stats.fetched += len(items)
            log.debug(f"cache {spec.table}: page {page} ({len(items)} items)")
            progress(min(1.0, page * self.per_page / max(result["count"], 1)))
        # Stash pages with LIMIT/OFFSET: a row deleted below the offset while paging hides the next
        # one, and a creation meanwhile keeps the counts equal, so the id sets are always compared.
        self._reconcile(spec, allow_mass_delete=True)
        if resumed and target is not None:
            # pages read before the interruption may have changed since: catch up from the start
            self._window_pass(spec, {"cursor": target}, progress)
        with atomic(self.conn):
            self._set_state(spec, full_next_page=None, full_cursor=None, last_full_sync=self._now_text())
            if target is not None and not resumed:
                self._set_state(spec, cursor=target)

    def _pages(self, spec: EntitySpec, first: int) -> Iterator[tuple[int, dict]]:
        """Yield (page number, result) from ``first`` on, fetching the next page while the caller writes."""
        def fetch(number: int) -> dict:
            find_filter = {"page": number, "per_page": self.per_page, "sort": "id", "direction": "ASC"}
            return self._call(PAGE_QUERIES[spec.table], {"filter": find_filter})[spec.find]

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-prefetch") as pool:
            page, pending = first, pool.submit(fetch, first)
            while True:
                result = pending.result()
                more = len(result[spec.list_key]) == self.per_page and page * self.per_page < result["count"]
                if more:
                    pending = pool.submit(fetch, page + 1)
                yield page, result
                if not more:
                    return
                page += 1

    # -- incremental / smart ---------------------------------------------------------------

    def _window_pass(self, spec: EntitySpec, state: dict[str, Any], progress: Progress) -> None:
        """Probe, list the window, fetch what differs, reconcile deletions, advance the cursor."""
        stats = self.stats[spec.table]
        cursor = state["cursor"]
        cursor_epoch = epoch_of(cursor) if cursor else None
        lower = self.since if self.since is not None else cursor_epoch
        window = {"updated_at": {"value": window_lower_bound(lower), "modifier": "GREATER_THAN"}}
        recheck = [] if cursor_epoch is None else [r[0] for r in self.conn.execute(
            f"SELECT id FROM {spec.table} WHERE updated_epoch >= ? AND deleted_at IS NULL ORDER BY id",
            (cursor_epoch,))]
        probe = self.stash.call_by_ids(
            PROBE_QUERIES[spec.table], {"window": window, "recheck": [str(i) for i in recheck], "withRecheck": bool(recheck)},
            ids_key="recheck", empty=lambda variables: {**variables, "withRecheck": False})
        stash_total, window_count = probe["total"]["count"], probe["window"]["count"]
        recheck_items = (probe.get("recheck") or {}).get(spec.list_key) or []
        stats.fetched += len(recheck_items)
        if recheck_items:
            with atomic(self.conn):
                stats.upserted += write_items(self.conn, spec, recheck_items, recorder=self.recorder)
        missing_recheck = set(recheck) - {int(i["id"]) for i in recheck_items}
        pending = self.conn.execute("SELECT count(*) FROM pending_reread WHERE entity_type = ?",
                                    (spec.table,)).fetchone()[0]
        if (self.mode == SMART and window_count == 0 and not missing_recheck and not pending
                and stash_total == self._mirror_count(spec)):
            stats.skipped = stats.upserted == 0
            self._finish_window(spec, None)
            return
        listing: list[dict] = []
        if window_count:
            listing = self._call(LISTING_QUERIES[spec.table],
                                 {"window": window, "filter": {"per_page": -1, "sort": "id", "direction": "ASC"}}
                                 )[spec.find][spec.list_key]
        to_fetch = self._changed(spec, listing)
        newest = max(listing, key=lambda i: epoch_of(i["updated_at"]))["updated_at"] if listing else None
        if to_fetch:
            self._fetch_ids(spec, to_fetch, progress, advance_cursor=self.since is None or
                            (cursor_epoch is not None and self.since <= cursor_epoch))
        elif self.mode == SMART and not stats.upserted and stash_total == self._mirror_count(spec) and not pending:
            stats.skipped = True
        if stash_total != self._mirror_count(spec) or missing_recheck:
            self._reconcile(spec, allow_mass_delete=False)
        may_advance = self.since is None or (cursor_epoch is not None and self.since <= cursor_epoch)
        self._finish_window(spec, newest if may_advance else None)

    def _finish_window(self, spec: EntitySpec, newest: str | None) -> None:
        """Advance the cursor to the newest listed instant and record the pass time.

        A smart pass that found the type unchanged writes nothing at all (its check is recorded
        in the run's sync_runs row only), so an idle smart sync leaves every table untouched.
        """
        with atomic(self.conn):
            self._advance_cursor(spec, newest)
            if not self.stats[spec.table].skipped:
                self._set_state(spec, last_incremental_sync=self._now_text())

    def _changed(self, spec: EntitySpec, listing: list[dict]) -> list[tuple[int, str]]:
        """(id, updated_at) of listed entities to fetch, oldest first: new, changed, or forced by ``since``."""
        if not listing:
            return []
        pairs = [(int(i["id"]), i["updated_at"]) for i in listing]
        known: dict[int, str] = {}
        for chunk in _chunks([p[0] for p in pairs], 900):
            marks = ",".join("?" * len(chunk))
            known.update(self.conn.execute(f"SELECT id, updated_at FROM {spec.table} WHERE id IN ({marks}) "
                                           "AND deleted_at IS NULL", chunk).fetchall())
        out = []
        for eid, updated in pairs:
            forced = self.since is not None and epoch_of(updated) >= self.since
            if forced or known.get(eid) != updated:
                out.append((eid, updated))
        out.sort(key=lambda p: (epoch_of(p[1]), p[0]))
        return out

    def _fetch_ids(self, spec: EntitySpec, wanted: list[tuple[int, str | None]], progress: Progress,
                   advance_cursor: bool) -> None:
        """Fetch entities by id in chunks; each chunk commits with its links and the advanced cursor."""
        stats = self.stats[spec.table]
        done = 0
        for chunk in _chunks(wanted, self.per_page):
            ids = [eid for eid, _ in chunk]
            data = self.stash.call_by_ids(PAGE_QUERIES[spec.table], {"ids": [str(i) for i in ids], "filter": {"per_page": -1}})
            items = data[spec.find][spec.list_key] if data else []  # ids Stash no longer has are left out
            stamps = [u for _, u in chunk if u is not None]
            with atomic(self.conn):
                stats.upserted += write_items(self.conn, spec, items, recorder=self.recorder)
                self.conn.executemany("DELETE FROM pending_reread WHERE entity_type = ? AND entity_id = ?",
                                      [(spec.table, i) for i in ids])
                if advance_cursor and stamps:
                    self._advance_cursor(spec, max(stamps, key=epoch_of))
            stats.fetched += len(items)
            done += len(chunk)
            progress(done / len(wanted))
            log.debug(f"cache {spec.table}: fetched {len(items)} by id")

    def _process_rereads(self, spec: EntitySpec) -> None:
        """Re-read entities whose links Stash may have rewritten silently (after deletions and merges)."""
        ids = [r[0] for r in self.conn.execute(
            "SELECT entity_id FROM pending_reread WHERE entity_type = ? ORDER BY entity_id", (spec.table,))]
        if not ids:
            return
        self.stats[spec.table].skipped = False
        self._fetch_ids(spec, [(i, None) for i in ids], _no_progress, advance_cursor=False)
        # entities that vanished meanwhile are found by the next count comparison
        with atomic(self.conn):
            self.conn.executemany("DELETE FROM pending_reread WHERE entity_type = ? AND entity_id = ?",
                                  [(spec.table, i) for i in ids])

    def _reconcile(self, spec: EntitySpec, allow_mass_delete: bool) -> None:
        """Compare the id sets: delete what Stash no longer has (with its links), fetch what the mirror lacks."""
        import mirror_signals  # (imports this module)

        stats = self.stats[spec.table]
        listing = self._call(LISTING_QUERIES[spec.table],
                             {"window": None, "filter": {"per_page": -1, "sort": "id", "direction": "ASC"}}
                             )[spec.find][spec.list_key]
        stash_ids = {int(i["id"]) for i in listing}
        mirror_ids = {r[0] for r in self.conn.execute(f"SELECT id FROM {spec.table} WHERE deleted_at IS NULL")}
        gone = sorted(mirror_ids - stash_ids)
        missing = sorted(stash_ids - mirror_ids)
        stats.skipped = False
        if gone and not allow_mass_delete and len(gone) * 2 > len(mirror_ids):
            message = (f"{spec.table}: Stash lacks {len(gone)} of the mirror's {len(mirror_ids)} entries; "
                       "refusing to delete more than half of a type outside a full sync. "
                       "Run 'Cache: Full Sync' if this is intended.")
            log.warning(message)
            self.warnings.append(message)
            stats.notes.append("mass deletion refused.")
            gone = []
        for chunk in _chunks(gone, 1000):
            with atomic(self.conn):
                stats.deleted += delete_entities(self.conn, spec, chunk, recorder=self.recorder)
                mirror_signals.queue_absorbers(self.conn, spec, chunk)  # a tag merge's destination
        if gone:
            how = "marked deleted" if self.options.soft_delete else "removed"
            log.info(f"cache {spec.table}: {how} {len(gone)} entities Stash no longer has")
        if missing:
            updated = {int(i["id"]): i["updated_at"] for i in listing}
            self._fetch_ids(spec, [(i, updated[i]) for i in missing], _no_progress, advance_cursor=False)


# ---------------------------------------------------------------------------------------------
# run bookkeeping and public API


def _start_run(conn: sqlite3.Connection, mode: str, started: str, entities: Sequence[str] = ()) -> int:
    """Record a new run (and mark runs left 'running' by killed processes)."""
    with atomic(conn):
        conn.execute("UPDATE sync_runs SET status = 'interrupted' WHERE status = 'running'")
        cur = conn.execute("INSERT INTO sync_runs (mode, started, status, entities) VALUES (?, ?, 'running', ?)",
                           (mode, started, ",".join(entities) or None))
        return int(cur.lastrowid)


def _finish_run(conn: sqlite3.Connection, run_id: int, result: CacheSyncResult, error: str | None) -> None:
    """Store the run's outcome with its per-type counts."""
    per_type = {t: asdict(s) for t, s in result.per_type.items()}
    skipped = sum(1 for s in result.per_type.values() if s.skipped)
    with atomic(conn):
        conn.execute(
            "UPDATE sync_runs SET finished = ?, status = ?, fetched = ?, upserted = ?, deleted = ?, skipped = ?, "
            "stash_requests = ?, per_type = ?, error = ?, created = ?, updated = ?, unchanged = ?, rows_written = ? "
            "WHERE id = ?",
            (result.finished, result.status, result.fetched, result.upserted, result.deleted, skipped,
             result.stash_requests, json.dumps(per_type), error, result.created, result.updated, result.unchanged,
             result.rows_written, run_id))


def run_sync(stash: StashClient, db_path: Path, mode: str, since: str | None = None,
             progress: Progress = _no_progress, per_page: int = DEFAULT_PER_PAGE, *,
             entities: str | Sequence[str] | None = None, options: CacheOptions | None = None,
             clock: Callable[[], datetime] | None = None) -> CacheSyncResult:
    """Lock the cache, run one sync of ``mode`` and record it in sync_runs.

    ``entities`` limits the run to those types (see ``parse_entities``; None or empty: all),
    ``options`` carries the retention settings, ``clock`` replaces this machine's clock for
    bookkeeping (tests).
    """
    since_epoch = parse_since(since) if mode == INCREMENTAL else None
    scope = parse_entities(entities)
    db_path = Path(db_path)
    clock = clock or _utc_now
    started_at = time.monotonic()
    started = clock().astimezone().isoformat(timespec="seconds")
    requests_before = stash.requests_sent
    with CacheLock(db_path):
        conn = open_cache(db_path)
        try:
            run_id = _start_run(conn, mode, started, scope)
            changes_before = conn.total_changes  # this run's own sync_runs record is not counted
            sync = CacheSync(stash, conn, mode, since_epoch, per_page, progress, entities=scope, options=options,
                             clock=clock, run_id=run_id)
            error: BaseException | None = None
            try:
                sync.run()
            except BaseException as exc:  # recorded, then re-raised unchanged
                error = exc
            rows_written = conn.total_changes - changes_before
            result = CacheSyncResult(
                mode=mode, status="failed" if error else "ok", db_path=str(db_path), started=started,
                finished=clock().astimezone().isoformat(timespec="seconds"),
                seconds=round(time.monotonic() - started_at, 3),
                stash_requests=stash.requests_sent - requests_before,
                per_type=sync.type_stats(), warnings=tuple(sync.warnings),
                run_id=run_id, entities=tuple(s.table for s in sync.specs), rows_written=rows_written)
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                _finish_run(conn, run_id, result, None if error is None
                            else plugin_log.redactor.redact(f"{type(error).__name__}: {error}"))
            except sqlite3.Error as exc:
                log.warning(f"could not record the sync run: {exc}")
            if error is not None:
                if isinstance(error, sqlite3.Error):
                    raise CacheError(f"The cache at {db_path} failed during the sync ({error}). "
                                     "Run 'Cache: Full Sync'; if it fails again, delete the file.") from error
                raise error
            log.info(str(result))
            return result
        finally:
            conn.close()


def cache_full_sync(stash: StashClient, db_path: Path, progress: Progress = _no_progress,
                    per_page: int = DEFAULT_PER_PAGE, *, entities: str | Sequence[str] | None = None,
                    options: CacheOptions | None = None,
                    clock: Callable[[], datetime] | None = None) -> CacheSyncResult:
    """Read every entity of Stash (of ``entities`` only, when given) into the cache ("Cache: Full Sync")."""
    return run_sync(stash, db_path, FULL, progress=progress, per_page=per_page, entities=entities, options=options,
                    clock=clock)


def cache_incremental_sync(stash: StashClient, db_path: Path, since: str | None = None,
                           progress: Progress = _no_progress, per_page: int = DEFAULT_PER_PAGE, *,
                           entities: str | Sequence[str] | None = None, options: CacheOptions | None = None,
                           clock: Callable[[], datetime] | None = None) -> CacheSyncResult:
    """Read what changed since each type's cursor, or since ``since`` ("Cache: Incremental Sync")."""
    return run_sync(stash, db_path, INCREMENTAL, since=since, progress=progress, per_page=per_page,
                    entities=entities, options=options, clock=clock)


def cache_smart_sync(stash: StashClient, db_path: Path, progress: Progress = _no_progress,
                     per_page: int = DEFAULT_PER_PAGE, *, entities: str | Sequence[str] | None = None,
                     options: CacheOptions | None = None,
                     clock: Callable[[], datetime] | None = None) -> CacheSyncResult:
    """Like incremental, but skip types Stash reports unchanged ("Cache: Smart Sync")."""
    return run_sync(stash, db_path, SMART, progress=progress, per_page=per_page, entities=entities, options=options,
                    clock=clock)


# ---------------------------------------------------------------------------------------------
# schedules and status


def next_full_sync_at(conn: sqlite3.Connection, full_every: timedelta,
                      entities: str | Sequence[str] | None = None) -> datetime | None:
    """When the next scheduled full sync is due: the oldest last full sync of the types plus ``full_every``.

    None when some type was never fully synced (a full sync is due now).
    """
    types = parse_entities(entities) or ENTITY_TYPES
    stamps = dict(conn.execute("SELECT entity_type, last_full_sync FROM sync_state"))
    instants = [_instant(stamps.get(t)) for t in types]
    if any(i is None for i in instants):
        return None
    return min(instants) + full_every


def full_sync_due(conn: sqlite3.Connection, full_every: timedelta, now: datetime | None = None,
                  entities: str | Sequence[str] | None = None) -> bool:
    """True when the last full sync of any of the types is older than ``full_every`` (or never happened)."""
    due = next_full_sync_at(conn, full_every, entities)
    return due is None or (now or _utc_now()) >= due


_COUNT_KEYS = ("created", "updated", "unchanged", "deleted", "revived", "purged", "fetched", "skipped")


def last_run_type_counts(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Per type: the counts of the last finished run that covered it, and the soft-deleted entities kept.

    ``{"scenes": {"run_id", "mode", "status", "finished", "created", "updated", "unchanged", "deleted",
    "revived", "purged", "fetched", "skipped", "soft_deleted"}, ...}``; created/updated/unchanged are
    None for runs of versions without change accounting, and every value but soft_deleted is None
    for a type no run has covered yet.
    """
    out: dict[str, dict[str, Any]] = {}
    rows = conn.execute("SELECT id, mode, status, finished, per_type FROM sync_runs "
                        "WHERE finished IS NOT NULL ORDER BY id DESC")
    for run_id, mode, status, finished, per_type in rows:
        for table, stats in json.loads(per_type or "{}").items():
            if table in SPEC_BY_TABLE and table not in out:
                counts = {k: stats.get(k) for k in _COUNT_KEYS}
                out[table] = {"run_id": run_id, "mode": mode, "status": status, "finished": finished, **counts}
        if len(out) == len(ENTITY_TYPES):
            break
    soft = soft_deleted_counts(conn)
    blank = dict.fromkeys(("run_id", "mode", "status", "finished", *_COUNT_KEYS))
    return {t: {**out.get(t, blank), "soft_deleted": soft[t]} for t in ENTITY_TYPES}


@contextmanager
def read_cache(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the cache for other tools (the guard stays on)."""
    conn = open_cache(Path(db_path), writer=False)
    try:
        yield conn
    finally:
        conn.close()
