"""Schema of the sidecar SQLite cache: tables, indexes, write-guard triggers and migrations.

The schema lives only here. Entity, link and file tables are built from the entity specs
(``entities.SPECS``): a column is declared once, there. ``PRAGMA user_version`` holds the version
of a cache file; ``migrate()`` applies the missing steps of ``MIGRATIONS`` in order, each step
together with its version bump in one transaction, and refuses a file written by a newer version.

Version 3 adds soft retention (``deleted_at`` on every entity table and a ``live_<type>`` view of
the present ones), the change log ``sync_changes`` and per-run change counts in ``sync_runs``.
Version 4 adds the watch service's tables (``watch_heartbeat``, ``sync_run_origin``) and moves the
marker of an interrupted full sync into ``sync_state.full_run_pending``.
Version 5 adds ``mirror_signals``: per file-owning type, the cursor of the file-change window and
the position of the rolling re-verification (see ``signals.py``).
Version 7 adds ``sync_state.checked_epoch`` (see ``cursor.py``) and ``mirror_signals.phash_missing``.
Version 8 widens each entity table's update-time index with ``updated_at`` and ``deleted_at`` and
adds ``sync_state.live_count``.

Every mirror table carries three guard triggers (INSERT, UPDATE, DELETE) that abort unless the
connection has attached the in-memory database ``cache_writer`` — which only the sync's own
connection does (``enable_writes``). Any other connection, a plain ``sqlite3`` shell included,
gets the read-only-mirror message. The watch tables are written by the watch's own plain
connection and carry no guard.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from tagman_base.errors import CacheSchemaError
from tagman_base.sqlite_util import atomic, apply_migrations, schema_signature, schema_version  # noqa: F401 (the file's own version and signature)
from tagman_mirror.entities import LINKS, SPECS

SCHEMA_VERSION = 8
WRITER_SCHEMA = "cache_writer"
READ_ONLY_MESSAGE = (
    "stash cache is a read-only mirror of Stash: change the data in Stash, then run "
    "'Cache: Smart Sync' (only the cache sync may write here)"
)

# updated_at stays exactly as Stash sent it; updated_epoch is its instant (UTC seconds).
_EPOCH = "updated_epoch INTEGER GENERATED ALWAYS AS (CAST(strftime('%s', updated_at) AS INTEGER)) VIRTUAL"
_COMMON = "created_at TEXT NOT NULL, updated_at TEXT NOT NULL, content_hash TEXT NOT NULL, " + _EPOCH

ENTITY_TABLES = tuple(spec.table for spec in SPECS)
FILE_TABLES = tuple(spec.files.table for spec in SPECS if spec.files)


def _entity_ddl(version: int) -> list[str]:
    """CREATE TABLE of every entity table with the columns of schema ``version``."""
    out = []
    for spec in SPECS:
        columns = ", ".join(f"{c.name} {c.sql}" for c in spec.fields if c.since <= version)
        out.append(f"CREATE TABLE {spec.table} (\n        id INTEGER PRIMARY KEY, {columns}, {_COMMON})")
    return out


def _added_columns(version: int) -> list[str]:
    """ALTER TABLE for the spec columns that schema ``version`` adds (none of version 1)."""
    if version == 1:
        return []
    return [f"ALTER TABLE {spec.table} ADD COLUMN {c.name} {c.sql}"
            for spec in SPECS for c in spec.fields if c.since == version]


def _files_ddl() -> list[str]:
    """CREATE TABLE of every files table (owner, position, the spec's columns)."""
    out = []
    for spec in SPECS:
        if spec.files:
            f = spec.files
            columns = ", ".join(f"{name} {sql}" for name, sql in f.columns)
            out.append(f"CREATE TABLE {f.table} (\n        {f.owner} INTEGER NOT NULL, position INTEGER NOT NULL, "
                       f"{columns}, PRIMARY KEY ({f.owner}, position)) WITHOUT ROWID")
    return out


_V1_FILES = _files_ddl() + [
    """CREATE TABLE stash_ids (
        entity_type TEXT NOT NULL, entity_id INTEGER NOT NULL, endpoint TEXT NOT NULL, stash_id TEXT NOT NULL,
        PRIMARY KEY (entity_type, entity_id, endpoint, stash_id)) WITHOUT ROWID""",
    "CREATE INDEX stash_ids_stash_id ON stash_ids (stash_id)",
    "CREATE INDEX stash_ids_entity_id ON stash_ids (entity_id)",
    "CREATE INDEX scene_files_path ON scene_files (path)",
    "CREATE INDEX scene_files_oshash ON scene_files (oshash)",
    "CREATE INDEX scene_files_phash ON scene_files (phash)",
    "CREATE INDEX image_files_path ON image_files (path)",
]

_V1_SYNC = [
    """CREATE TABLE sync_state (
        entity_type TEXT PRIMARY KEY, cursor TEXT, last_full_sync TEXT, last_incremental_sync TEXT,
        full_next_page INTEGER, full_cursor TEXT)""",
    """CREATE TABLE sync_runs (
        id INTEGER PRIMARY KEY, mode TEXT NOT NULL, started TEXT NOT NULL, finished TEXT,
        status TEXT NOT NULL, fetched INTEGER NOT NULL DEFAULT 0, upserted INTEGER NOT NULL DEFAULT 0,
        deleted INTEGER NOT NULL DEFAULT 0, skipped INTEGER NOT NULL DEFAULT 0,
        stash_requests INTEGER NOT NULL DEFAULT 0, per_type TEXT NOT NULL DEFAULT '{}', error TEXT)""",
    "CREATE TABLE cache_meta (key TEXT PRIMARY KEY, value TEXT)",
]


def _link_ddl() -> list[str]:
    """CREATE statements of every link table with an index on each of its two columns (version 1)."""
    out = []
    for link in LINKS.values():
        extra = "".join(f", {name} {sql}" for name, sql in link.extra)
        out.append(f"CREATE TABLE {link.table} ({link.owner} INTEGER NOT NULL, {link.target} INTEGER NOT NULL{extra}, "
                   f"PRIMARY KEY ({link.owner}, {link.target})) WITHOUT ROWID")
        out.append(f"CREATE INDEX {link.table}_{link.owner} ON {link.table} ({link.owner})")
        out.append(f"CREATE INDEX {link.table}_{link.target} ON {link.table} ({link.target})")
    return out


def _entity_indexes() -> list[str]:
    """Indexes on the columns that syncs and typical queries filter on."""
    out = [f"CREATE INDEX {t}_updated_epoch ON {t} (updated_epoch)" for t in ENTITY_TABLES]
    out += [f"CREATE INDEX {t}_studio_id ON {t} (studio_id)" for t in ("groups", "galleries", "scenes", "images")]
    out += ["CREATE INDEX studios_parent_id ON studios (parent_id)",
            "CREATE INDEX tags_name ON tags (name COLLATE NOCASE)",
            "CREATE INDEX performers_name ON performers (name COLLATE NOCASE)"]
    return out


V1_TABLES = (*ENTITY_TABLES, *FILE_TABLES, "stash_ids", *LINKS, "sync_state", "sync_runs", "cache_meta")

_V2_DERIVED = [
    """CREATE TABLE image_inherited (
        image_id INTEGER PRIMARY KEY, gallery_id INTEGER NOT NULL, studio_id INTEGER, date TEXT,
        photographer TEXT, details TEXT)""",
    "CREATE INDEX image_inherited_gallery_id ON image_inherited (gallery_id)",
    "CREATE INDEX image_inherited_studio_id ON image_inherited (studio_id)",
    """CREATE TABLE image_inherited_performers (
        image_id INTEGER NOT NULL, performer_id INTEGER NOT NULL, gallery_id INTEGER NOT NULL,
        PRIMARY KEY (image_id, performer_id)) WITHOUT ROWID""",
    "CREATE INDEX image_inherited_performers_performer_id ON image_inherited_performers (performer_id)",
    """CREATE TABLE image_inherited_tags (
        image_id INTEGER NOT NULL, tag_id INTEGER NOT NULL, gallery_id INTEGER NOT NULL,
        PRIMARY KEY (image_id, tag_id)) WITHOUT ROWID""",
    "CREATE INDEX image_inherited_tags_tag_id ON image_inherited_tags (tag_id)",
    """CREATE TABLE scene_inherited_tags (
        scene_id INTEGER NOT NULL, tag_id INTEGER NOT NULL, source_type TEXT NOT NULL, source_id INTEGER NOT NULL,
        PRIMARY KEY (scene_id, tag_id, source_type, source_id)) WITHOUT ROWID""",
    "CREATE INDEX scene_inherited_tags_tag_id ON scene_inherited_tags (tag_id)",
    """CREATE TABLE image_counts (
        entity_type TEXT NOT NULL, entity_id INTEGER NOT NULL, image_count INTEGER NOT NULL,
        PRIMARY KEY (entity_type, entity_id)) WITHOUT ROWID""",
    """CREATE TABLE pending_reread (
        entity_type TEXT NOT NULL, entity_id INTEGER NOT NULL, PRIMARY KEY (entity_type, entity_id)) WITHOUT ROWID""",
    """CREATE TABLE dirty (
        entity_type TEXT NOT NULL, entity_id INTEGER NOT NULL, PRIMARY KEY (entity_type, entity_id)) WITHOUT ROWID""",
    """CREATE VIEW image_effective_links (image_id, entity_type, entity_id) AS
        SELECT image_id, 'tag', tag_id FROM image_tags
        UNION SELECT image_id, 'tag', tag_id FROM image_inherited_tags
        UNION SELECT image_id, 'performer', performer_id FROM image_performers
        UNION SELECT image_id, 'performer', performer_id FROM image_inherited_performers
        UNION SELECT id, 'studio', studio_id FROM images WHERE studio_id IS NOT NULL
        UNION SELECT image_id, 'studio', studio_id FROM image_inherited WHERE studio_id IS NOT NULL
        UNION SELECT image_id, 'gallery', gallery_id FROM image_galleries""",
]

V2_TABLES = ("image_inherited", "image_inherited_performers", "image_inherited_tags",
             "scene_inherited_tags", "image_counts", "pending_reread", "dirty")

DELETED_IMAGES = "(SELECT id FROM images WHERE deleted_at IS NOT NULL)"

_V3_CHANGES = (
    [f"ALTER TABLE {t} ADD COLUMN deleted_at TEXT" for t in ENTITY_TABLES]
    # partial indexes: only soft-deleted rows are indexed, so they cost nothing when the setting is off
    + [f"CREATE INDEX {t}_deleted_at ON {t} (deleted_at) WHERE deleted_at IS NOT NULL" for t in ENTITY_TABLES]
    + [f"CREATE VIEW live_{t} AS SELECT * FROM {t} WHERE deleted_at IS NULL" for t in ENTITY_TABLES]
    + ["""CREATE TABLE sync_changes (
        id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL, entity_type TEXT NOT NULL, entity_id INTEGER NOT NULL,
        change TEXT NOT NULL, field TEXT, old_value, new_value)""",
       "CREATE INDEX sync_changes_run_id ON sync_changes (run_id)",
       "CREATE INDEX sync_changes_entity ON sync_changes (entity_type, entity_id)",
       "ALTER TABLE sync_runs ADD COLUMN created INTEGER NOT NULL DEFAULT 0",
       "ALTER TABLE sync_runs ADD COLUMN updated INTEGER NOT NULL DEFAULT 0",
       "ALTER TABLE sync_runs ADD COLUMN unchanged INTEGER NOT NULL DEFAULT 0",
       "ALTER TABLE sync_runs ADD COLUMN rows_written INTEGER",
       "ALTER TABLE sync_runs ADD COLUMN entities TEXT",
       # image counts and other derived data ignore soft-deleted images
       "DROP VIEW image_effective_links",
       f"""CREATE VIEW image_effective_links (image_id, entity_type, entity_id) AS
        SELECT image_id, 'tag', tag_id FROM image_tags WHERE image_id NOT IN {DELETED_IMAGES}
        UNION SELECT image_id, 'tag', tag_id FROM image_inherited_tags
        UNION SELECT image_id, 'performer', performer_id FROM image_performers WHERE image_id NOT IN {DELETED_IMAGES}
        UNION SELECT image_id, 'performer', performer_id FROM image_inherited_performers
        UNION SELECT id, 'studio', studio_id FROM images WHERE studio_id IS NOT NULL AND deleted_at IS NULL
        UNION SELECT image_id, 'studio', studio_id FROM image_inherited WHERE studio_id IS NOT NULL
        UNION SELECT image_id, 'gallery', gallery_id FROM image_galleries WHERE image_id NOT IN {DELETED_IMAGES}"""]
)

V3_TABLES = ("sync_changes",)
LIVE_VIEWS = tuple(f"live_{t}" for t in ENTITY_TABLES)

# Older versions created the watch tables on the fly (and added next_full_sync later); the
# heartbeat holds only the last minutes of state, so it is simply created anew.
_V4_WATCH = [
    "DROP TABLE IF EXISTS watch_heartbeat",
    """CREATE TABLE watch_heartbeat (
        pid INTEGER NOT NULL, host TEXT NOT NULL, started TEXT NOT NULL, last_heartbeat TEXT NOT NULL,
        last_heartbeat_epoch REAL NOT NULL, last_run TEXT, last_run_id INTEGER, last_run_status TEXT,
        state TEXT NOT NULL, interval_s REAL NOT NULL, heartbeat_s REAL NOT NULL, next_full_sync TEXT,
        PRIMARY KEY (host, pid))""",
    """CREATE TABLE IF NOT EXISTS sync_run_origin (
        run_id INTEGER PRIMARY KEY, created_by TEXT NOT NULL)""",
    "ALTER TABLE sync_state ADD COLUMN full_run_pending INTEGER NOT NULL DEFAULT 0",
    # the marker was a comma-separated list of types, or '1' for every type
    """UPDATE sync_state SET full_run_pending = 1 WHERE EXISTS (
        SELECT 1 FROM cache_meta WHERE key = 'full_run_pending'
        AND (value = '1' OR ',' || value || ',' LIKE '%,' || sync_state.entity_type || ',%'))""",
    "DELETE FROM cache_meta WHERE key = 'full_run_pending'",
]
WATCH_TABLES_SINCE = 4  # schema version that has them

# files_cursor: newest file updated_at (Stash's text) the file-change window has covered;
# verify_after: the rolling re-verification resumes after this entity id (0: from the start)
_V5_SIGNALS = ["""CREATE TABLE mirror_signals (
    entity_type TEXT PRIMARY KEY, files_cursor TEXT, verify_after INTEGER NOT NULL DEFAULT 0)"""]
V5_TABLES = ("mirror_signals",)


# A link table's primary key (owner, target) already serves every lookup by owner; a separate
# index on the owner column only doubled the work of each link written (the bulk of a sync's rows).
_V6_LINK_INDEXES = [f"DROP INDEX IF EXISTS {link.table}_{link.owner}" for link in LINKS.values()]

# checked_epoch: Stash's clock (its Date header) before the last pass that re-read the cursor's
# second and listed the cursor's window; NULL once the cursor moved or another writer wrote rows.
# mirror_signals.phash_missing: the mirror's count of live scenes missing a phash (NULL once scenes
# were written since), so an idle sync need not count them again
_V7_CHECKED = ["ALTER TABLE sync_state ADD COLUMN checked_epoch INTEGER",
               "ALTER TABLE mirror_signals ADD COLUMN phash_missing INTEGER"]

# sync_state.live_count: the mirror's count of the type's live entities (NULL once rows of the type
# were written since), so an idle sync need not count them again.
# The update-time index also holds each row's updated_at text and deletion mark: a smart sync
# compares a listed window with the mirror from the index alone (``store.live_stamps_since``)
_V8_INDEX_AND_COUNT = [sql for t in ENTITY_TABLES for sql in (
    f"DROP INDEX {t}_updated_epoch",
    f"CREATE INDEX {t}_updated_epoch ON {t} (updated_epoch, updated_at, deleted_at)")] + [
    "ALTER TABLE sync_state ADD COLUMN live_count INTEGER"]

MIRROR_TABLES = V1_TABLES + V2_TABLES + V3_TABLES + V5_TABLES


def _sql_text(text: str) -> str:
    """Escape text for a single-quoted SQL literal."""
    return text.replace("'", "''")


GUARDED_EVENTS = ("INSERT", "UPDATE", "DELETE")


def guard_trigger_name(table: str, event: str) -> str:
    """The name of the guard trigger of one table and event."""
    return f"{table}_read_only_{event.lower()}"


def guard_triggers(table: str) -> list[str]:
    """The three triggers that make ``table`` read-only outside the sync's connection."""
    condition = f"NOT EXISTS (SELECT 1 FROM pragma_database_list WHERE name = '{WRITER_SCHEMA}')"
    return [
        f"CREATE TRIGGER {guard_trigger_name(table, event)} BEFORE {event} ON {table} "
        f"WHEN {condition} BEGIN SELECT RAISE(ABORT, '{_sql_text(READ_ONLY_MESSAGE)}'); END"
        for event in GUARDED_EVENTS
    ]


def _guards(tables: tuple[str, ...]) -> list[str]:
    """Guard triggers of every table in ``tables``."""
    return [sql for t in tables for sql in guard_triggers(t)]


MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "mirror tables, links, files, stash ids and sync bookkeeping",
     _entity_ddl(1) + _V1_FILES + _link_ddl() + _entity_indexes() + _V1_SYNC + _guards(V1_TABLES)),
    (2, "derived data (image inheritance, scene inherited tags, image counts) and sync work queues",
     _V2_DERIVED + _guards(V2_TABLES) + _added_columns(2)
     # caches from version 1 have no derived data yet: have the next sync compute all of it
     + ["INSERT OR REPLACE INTO cache_meta (key, value) "
        "SELECT 'derived_full', '1' WHERE EXISTS (SELECT 1 FROM sync_state)"]),
    # content hashes of older files cover Stash's raw answer, not the mirrored content: the first
    # fetch of such an entity compares its content and rewrites only the hash when nothing changed
    (3, "soft retention (deleted_at, live_* views), change log and per-run change counts",
     _V3_CHANGES + _guards(V3_TABLES) + _added_columns(3)),
    (4, "watch service tables; the interrupted full sync marked per type in sync_state",
     _V4_WATCH + _added_columns(4)),
    (5, "file-change window cursors and rolling re-verification positions",
     _V5_SIGNALS + _guards(V5_TABLES) + _added_columns(5)),
    (6, "link tables: drop the index on the owner column (the primary key starts with it)",
     _V6_LINK_INDEXES + _added_columns(6)),
    (7, "when Stash's clock last confirmed each type's cursor; the mirror's count of scenes missing a phash",
     _V7_CHECKED + _added_columns(7)),
    (8, "the update-time index holds the updated_at text and deletion mark (window comparisons read it alone); "
        "the mirror's stored count of each type's live entities",
     _V8_INDEX_AND_COUNT + _added_columns(8)),
]


def enable_writes(conn: sqlite3.Connection) -> None:
    """Switch this connection's write guard on (outside any transaction)."""
    attached = {row[1] for row in conn.execute("PRAGMA database_list")}
    if WRITER_SCHEMA not in attached:
        conn.execute(f"ATTACH DATABASE ':memory:' AS {WRITER_SCHEMA}")


# Below this many rows the two statements per trigger cost more than the guard's check saves.
GUARD_LIFT_MIN_ROWS = 500


@contextmanager
def guard_lifted(conn: sqlite3.Connection, tables: Iterable[str],
                 events: Iterable[str] = GUARDED_EVENTS) -> Iterator[None]:
    """Inside the writer's open transaction, drop the guard triggers of ``tables`` (those of ``events``)
    and put them back before it ends.

    For bulk writes: the guard's check runs for every row written, and SQLite prepares a PRAGMA
    statement for each one, which doubles the cost of writing a link row. No other connection
    can tell the guard was lifted: SQLite admits one writer at a time, readers see the last
    committed schema (with the triggers), and a rollback (an error, a killed process) brings the
    triggers back with everything else. The triggers are restored from their own stored SQL.
    """
    if not conn.in_transaction:
        raise CacheSchemaError("guard_lifted needs the writer's open transaction")
    names = tuple(dict.fromkeys(guard_trigger_name(t, e) for t in tables for e in events))
    marks = ",".join("?" * len(names))
    saved = conn.execute(f"SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name IN ({marks})",
                         names).fetchall()
    for name, _sql in saved:
        conn.execute(f'DROP TRIGGER "{name}"')
    try:
        yield
    finally:
        if conn.in_transaction:  # else SQLite rolled the transaction back, drops included
            for _name, sql in saved:
                conn.execute(sql)


# cache_meta keys of the indexes a first fill dropped: the key names the index, the value is its SQL
DEFERRED_INDEX_PREFIX = "deferred_index:"
INDEX_BUILD_CACHE_KIB = 4 * 1024


def defer_indexes(conn: sqlite3.Connection, tables: Iterable[str]) -> list[str]:
    """Inside the writer's open transaction, drop the secondary indexes of ``tables``; returns their names.

    For filling empty tables: rows arrive in id order, but the keys of most indexes (update times,
    studios, link targets, hashes) land all over their index, so each page of rows rewrites pages
    of every index; an index built once over the filled table costs a fraction of that. Each
    index's SQL is kept in ``cache_meta`` in the same transaction, so ``restore_indexes`` brings
    it back even after the process was killed in between. Readers meanwhile see every row, only
    without those indexes' speed.
    """
    if not conn.in_transaction:
        raise CacheSchemaError("defer_indexes needs the writer's open transaction")
    names = tuple(dict.fromkeys(tables))
    marks = ",".join("?" * len(names))
    indexes = conn.execute(f"SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                           f"AND tbl_name IN ({marks}) ORDER BY name", names).fetchall()
    for name, sql in indexes:
        conn.execute("INSERT OR REPLACE INTO cache_meta (key, value) VALUES (?, ?)", (DEFERRED_INDEX_PREFIX + name, sql))
        conn.execute(f'DROP INDEX "{name}"')
    return [name for name, _sql in indexes]


def restore_indexes(conn: sqlite3.Connection) -> list[str]:
    """Create every index ``defer_indexes`` dropped, in one transaction; returns their names."""
    deferred = conn.execute("SELECT key, value FROM cache_meta WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key",
                            (DEFERRED_INDEX_PREFIX,)).fetchall()
    if not deferred:
        return []
    # SQLite sorts an index's keys in as much memory as the page cache may use, on top of that
    # cache: built with a small cache, the memory the cache gives back is what the sort takes
    cache_size = conn.execute("PRAGMA cache_size").fetchone()[0]
    conn.execute(f"PRAGMA cache_size = -{INDEX_BUILD_CACHE_KIB}")
    try:
        with atomic(conn):
            for key, sql in deferred:
                name = key[len(DEFERRED_INDEX_PREFIX):]
                exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (name,))
                if exists.fetchone() is None:
                    conn.execute(sql)
                conn.execute("DELETE FROM cache_meta WHERE key = ?", (key,))
    finally:
        conn.execute(f"PRAGMA cache_size = {int(cache_size)}")
    return [key[len(DEFERRED_INDEX_PREFIX):] for key, _sql in deferred]


def disable_writes(conn: sqlite3.Connection) -> None:
    """Switch this connection's write guard off again."""
    attached = {row[1] for row in conn.execute("PRAGMA database_list")}
    if WRITER_SCHEMA in attached:
        conn.execute(f"DETACH DATABASE {WRITER_SCHEMA}")


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the file up to ``target``; returns the version found before. Refuses newer files."""
    found = schema_version(conn)
    if found > SCHEMA_VERSION:
        raise CacheSchemaError(
            f"The cache file was written by a newer version of tagManager (schema {found}, this version "
            f"understands up to {SCHEMA_VERSION}). Update the plugin, or delete the cache file and run "
            "'Cache: Full Sync'."
        )
    if found == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        raise CacheSchemaError(
            "The cache path points at an SQLite file that is not a tagManager cache. "
            "Choose another cacheDbPath or move that file away."
        )
    if 0 < found < target:
        restore_indexes(conn)  # migrations may change indexes: they expect every one in place
    apply_migrations(conn, MIGRATIONS, found, target)
    return found
