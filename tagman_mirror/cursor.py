"""Per-type sync state as a typed record (``TypeCursor``), read and written by one small store.

The cursor is always a text Stash returned, never this machine's clock; it is written in the same
transaction as the rows it covers. ``window_lower_bound`` turns it into the text filter of the next
window.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone

from tagman_base.errors import SettingsError
from tagman_base.timestamps import epoch_of

MIN_OFFSET = timedelta(hours=-12)


@dataclass(frozen=True)
class TypeCursor:
    """One row of ``sync_state``: where the sync of one entity type stands."""

    entity_type: str
    cursor: str | None = None                 # newest updated_at Stash reported, as its text
    last_full_sync: str | None = None
    last_incremental_sync: str | None = None
    full_next_page: int | None = None         # page a killed full pass resumes at; None when not in one
    full_cursor: str | None = None            # newest updated_at when that full pass started
    full_run_pending: bool = False            # a full sync covering this type was interrupted


_COLUMNS = tuple(f.name for f in fields(TypeCursor))


class CursorStore:
    """Reads and writes ``sync_state`` rows (writes inside the caller's transaction)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def get(self, entity_type: str) -> TypeCursor:
        """The type's state (blank when never synced)."""
        row = self.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM sync_state WHERE entity_type = ?",
                                (entity_type,)).fetchone()
        if row is None:
            return TypeCursor(entity_type)
        return TypeCursor(*row[:-1], full_run_pending=bool(row[-1]))

    def set(self, entity_type: str, **values: object) -> None:
        """Update columns of the type's row, creating it when missing."""
        unknown = set(values) - set(_COLUMNS[1:])
        if unknown:
            raise ValueError(f"not sync_state columns: {sorted(unknown)}")
        self.conn.execute("INSERT OR IGNORE INTO sync_state (entity_type) VALUES (?)", (entity_type,))
        for column, value in values.items():
            self.conn.execute(f"UPDATE sync_state SET {column} = ? WHERE entity_type = ?", (value, entity_type))

    def advance(self, entity_type: str, candidate: str | None) -> None:
        """Move the type's cursor to ``candidate`` when it is a later instant."""
        if candidate is None:
            return
        current = self.get(entity_type).cursor
        if current is None or epoch_of(candidate) > epoch_of(current):
            self.set(entity_type, cursor=candidate)

    def pending_full(self) -> set[str]:
        """Types of an interrupted full sync."""
        return {r[0] for r in self.conn.execute("SELECT entity_type FROM sync_state WHERE full_run_pending")}


def window_lower_bound(epoch: int) -> str:
    """Text L such that every row written at or after ``epoch``, in any UTC offset, compares > L."""
    instant = datetime.fromtimestamp(epoch - 1, timezone.utc).astimezone(timezone(MIN_OFFSET))
    return instant.strftime("%Y-%m-%dT%H:%M:%S") + "-12:00"


def window_filter(epoch: int) -> dict:
    """Stash's ``updated_at`` filter of the window that starts at ``epoch``."""
    return {"updated_at": {"value": window_lower_bound(epoch), "modifier": "GREATER_THAN"}}


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
