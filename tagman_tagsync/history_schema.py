"""Schema of the scene tag sync history (``data/scene_tag_sync.sqlite3`` in the plugin folder).

The schema lives only here. ``PRAGMA user_version`` holds the version of a file; ``migrate()``
applies the missing steps of ``MIGRATIONS`` in order, each with its version bump in one
transaction, and refuses a file written by a newer version.

Tables (every key starts with the stash-box endpoint, so each box has its own history):

``scene_answers``  one row per (endpoint, scene, StashDB scene) the sync has settled: the StashDB
                   tags of its last answer (JSON ``[[id, name, deleted], ...]``) and StashDB's
                   ``updated`` text of that answer. A scene re-linked to another StashDB scene has
                   a new key and starts fresh.
``settled_tags``   per such scene, every StashDB tag the sync has settled: the local tag it
                   matched and whether the sync added it (``added``) or the scene already had it
                   (``present``). A settled tag is never added again, so a tag the user removed
                   stays removed.

Version 2 (change feed) adds ``scene_answers.answer_state`` (``live``, or ``deleted``/``missing``
when StashDB has the linked scene deleted or not at all) and ``box_state``: per endpoint the change
feed's high-water mark (StashDB ``updated`` text), when the last full re-check finished, when the
last run started (to notice a clock that went backwards), the by-id look-ups of the last full run
(for the cost comparison) and how many feed items lay inside the safety overlap below the mark
(the next run asks for that many more per page, so re-reading the overlap costs no extra request). ``box_state`` is written only at the end of a run without errors, so a
killed run leaves the previous mark and the next run re-reads the feed from there.

Migrations run through the project's one migration helper and ``atomic()`` (``tagman_base.sqlite_util``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tagman_base.sqlite_util import apply_migrations, schema_signature, schema_version  # noqa: F401 (the file's own version and signature)
from tagman_base.errors import SyncHistoryError

SCHEMA_VERSION = 2
HISTORY_FILE = Path("data") / "scene_tag_sync.sqlite3"
BUSY_TIMEOUT_MS = 30_000

_V1 = [
    """CREATE TABLE scene_answers (
        endpoint TEXT NOT NULL,
        scene_id INTEGER NOT NULL,
        stashdb_id TEXT NOT NULL,
        stashdb_updated TEXT,
        remote_tags TEXT NOT NULL,
        checked_at TEXT NOT NULL,
        PRIMARY KEY (endpoint, scene_id, stashdb_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE settled_tags (
        endpoint TEXT NOT NULL,
        scene_id INTEGER NOT NULL,
        stashdb_id TEXT NOT NULL,
        stashdb_tag_id TEXT NOT NULL,
        local_tag_id INTEGER NOT NULL,
        origin TEXT NOT NULL CHECK (origin IN ('added', 'present')),
        settled_at TEXT NOT NULL,
        PRIMARY KEY (endpoint, scene_id, stashdb_id, stashdb_tag_id)
    ) WITHOUT ROWID""",
]

_V2 = [
    "ALTER TABLE scene_answers ADD COLUMN answer_state TEXT NOT NULL DEFAULT 'live' "
    "CHECK (answer_state IN ('live', 'deleted', 'missing'))",
    """CREATE TABLE box_state (
        endpoint TEXT PRIMARY KEY,
        feed_mark TEXT,
        last_full_check TEXT,
        last_run_started TEXT,
        full_fallbacks INTEGER NOT NULL DEFAULT 0,
        overlap_items INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID""",
]

# (version, description, statements); each step runs in one transaction with its version bump.
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "settled StashDB tags and last StashDB answer per box, scene and StashDB scene", _V1),
    (2, "change feed: state of each answer and per-box feed mark", _V2),
]


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the file up to ``target``; returns the version found before. Refuses newer files."""
    found = schema_version(conn)
    if found > SCHEMA_VERSION:
        raise SyncHistoryError(
            f"The scene tag sync history was written by a newer version of tagManager (schema {found}, "
            f"this version understands up to {SCHEMA_VERSION}). Update the plugin, or run "
            "'Reset Scene Tag Sync History'."
        )
    if found == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        raise SyncHistoryError(
            "The scene tag sync history file holds tables tagManager did not create. "
            "Run 'Reset Scene Tag Sync History' to start a fresh history."
        )
    apply_migrations(conn, MIGRATIONS, found, target)
    return found


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the history file in WAL mode and bring its schema up to date."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")  # once, outside any transaction
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL stays consistent; a power cut may only lose the last commits
        migrate(conn)
    except sqlite3.DatabaseError as exc:
        raise SyncHistoryError(
            f"The scene tag sync history {path} cannot be read ({exc}). "
            "Run 'Reset Scene Tag Sync History' to start a fresh history."
        ) from None
    return conn
