"""The cache file: where it lives, opening (creating and migrating) it, and the one-sync-at-a-time lock."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tagman_base import file_lock, plugin_log
from tagman_base.errors import CacheError, CacheLockedError, CacheSchemaError
from tagman_base.settings import Settings
from tagman_mirror import schema

log = logging.getLogger(plugin_log.LOGGER_NAME + ".mirror")


def default_cache_path(plugin_dir: Path) -> Path:
    """Where the cache lives unless ``cacheDbPath`` says otherwise."""
    return Path(plugin_dir) / "data" / "stash_cache.sqlite3"


def cache_path(settings: Settings, plugin_dir: Path) -> Path:
    """The cache file of a run: the ``cacheDbPath`` setting or the default in the plugin folder."""
    return Path(settings.cache_db_path) if settings.cache_db_path else default_cache_path(plugin_dir)


def lock_path(db_path: Path) -> Path:
    """The lock file of a cache (``<cache>.lock``)."""
    return Path(str(db_path) + ".lock")


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


def _configure(conn: sqlite3.Connection, db_path: Path, writer: bool) -> None:
    """WAL, synchronous NORMAL and the write guard; a writer also migrates, a reader refuses newer files."""
    conn.execute("PRAGMA busy_timeout = 30000")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] if writer else "wal"
    if str(mode).lower() != "wal":
        log.warning(f"SQLite refused WAL mode for {db_path} (journal mode {mode})")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = OFF")
    if writer:
        schema.enable_writes(conn)
        schema.migrate(conn)
    elif schema.schema_version(conn) > schema.SCHEMA_VERSION:
        schema.migrate(conn)  # raises the newer-version error


# SQLite's default page cache is 2 MB. A sync inserts into indexes all over a file of hundreds of
# MB (link targets, file paths, the change log); with 32 MB the pages it keeps returning to stay in
# memory, which saves about a fifth of the CPU of writing a large library. Filled only as used.
SYNC_PAGE_CACHE_KIB = 32 * 1024
# SQLite copies the WAL into the file every 1,000 pages by default. A sync commits a page of
# entities at a time, and the same index pages come back in commit after commit: copied every
# 10,000 pages (a WAL of about 40 MB; SQLite removes it when the last connection closes), each
# is copied once instead of many times, a third less CPU in commits.
SYNC_CHECKPOINT_PAGES = 10_000


def use_sync_page_cache(conn: sqlite3.Connection) -> None:
    """Give the sync's connection the larger page cache and the rarer WAL checkpoints (hooks and
    readers keep SQLite's defaults)."""
    conn.execute(f"PRAGMA cache_size = -{SYNC_PAGE_CACHE_KIB}")
    conn.execute(f"PRAGMA wal_autocheckpoint = {SYNC_CHECKPOINT_PAGES}")


def open_cache(db_path: Path, writer: bool = True) -> sqlite3.Connection:
    """Open (creating and migrating when ``writer``) the cache; the writer's guard is switched on."""
    db_path = Path(db_path)
    if writer:
        _prepare_file(db_path)
    elif not db_path.exists():
        raise CacheError(f"There is no cache at {db_path} yet: run 'Cache: Full Sync' first.")
    try:
        conn = sqlite3.connect(str(db_path), isolation_level=None, timeout=30.0, check_same_thread=False)
        _configure(conn, db_path, writer)
    except CacheSchemaError:
        raise
    except sqlite3.DatabaseError as exc:
        raise CacheSchemaError(
            f"{db_path} is not a usable SQLite cache ({exc}). Move it away or delete it, "
            "then run 'Cache: Full Sync'."
        ) from None
    return conn


@contextmanager
def read_cache(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the cache for other tools (the guard stays on)."""
    conn = open_cache(Path(db_path), writer=False)
    try:
        yield conn
    finally:
        conn.close()


def read_only(db_path: Path) -> sqlite3.Connection:
    """A read-only connection that never creates, migrates or waits long (hooks, status, watch)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=2.0, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 2000")
    return conn


def table_exists(conn: sqlite3.Connection, name: str) -> bool:
    """Whether the file has a table of that name."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


@contextmanager
def sync_lock(db_path: Path) -> Iterator[None]:
    """Hold the cache's sync lock (``<cache>.lock``, an OS lock dropped with its process) or raise CacheLockedError."""
    path = lock_path(db_path)
    try:
        fd = file_lock.acquire(path)
    except file_lock.LockHeld as held:
        holder = f" (pid {held.pid} since {held.since})" if held.since else ""
        raise CacheLockedError(
            f"Another cache sync{holder} is running on {Path(db_path)}; "
            "this run changed nothing. Wait for it to finish (or cancel it) and try again."
        ) from None
    except OSError as exc:
        raise CacheError(f"Cannot create the cache lock file {path} ({exc.strerror or exc}). "
                         "Set cacheDbPath to a writable location.") from None
    try:
        yield
    finally:
        file_lock.release(fd)


def sync_running(db_path: Path) -> bool:
    """Whether a sync holds the cache's lock right now (the OS lock itself, so a reused pid cannot fool it)."""
    return file_lock.is_held(lock_path(db_path))
