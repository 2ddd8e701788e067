"""Per-type sync state as typed records (``TypeCursor``, ``SignalState``), read and written by one small store.

The cursor is always a text Stash returned, never this machine's clock; it is written in the same
transaction as the rows it covers. ``window_lower_bound`` turns it into the text filter of the next
window.

``checked_epoch`` is Stash's own clock (the HTTP ``Date`` of the answer before the pass's first
request) when a window pass last re-read the cursor's second and listed its window with nothing
left to fetch; moving the cursor or writing entity rows any other way clears it. It lets a smart
sync skip two costs that only guard against edits racing the previous read:

* **settled**: when Stash's clock had left the second of every mirrored row at or after the
  cursor, an edit of such a row gets a later ``updated_at`` and shows in the window, so the
  "recheck" re-read of those rows is unnecessary;
* **quiet**: when it had gone ``QUIET_AFTER_S`` (26 h, the whole span of UTC offsets) past the
  cursor, any later write, in any offset, renders a text greater than the cursor's own, so the
  window can start at the cursor's text instead of 26 h of offsets below it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone

from tagman_base.errors import SettingsError
from tagman_base.timestamps import epoch_of

MIN_OFFSET = timedelta(hours=-12)
MAX_OFFSET = timedelta(hours=14)
QUIET_AFTER_S = int((MAX_OFFSET - MIN_OFFSET).total_seconds()) + 1


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
    checked_epoch: int | None = None          # Stash's clock when the cursor was last confirmed (see above)
    live_count: int | None = None             # the mirror's live entities of the type; None once rows were written

    def settled(self, newest_mirrored_epoch: int | None) -> bool:
        """True when no mirrored row at or after the cursor can still change within its own second."""
        if self.checked_epoch is None or self.cursor is None:
            return False
        return newest_mirrored_epoch is None or self.checked_epoch > newest_mirrored_epoch

    def quiet(self) -> bool:
        """True when every later write, in any UTC offset, compares greater than the cursor's text."""
        return (self.checked_epoch is not None and self.cursor is not None
                and self.checked_epoch >= epoch_of(self.cursor) + QUIET_AFTER_S)


_COLUMNS = tuple(f.name for f in fields(TypeCursor))


@dataclass(frozen=True)
class SignalState:
    """One row of ``mirror_signals``: the files-window cursor and re-verification position of a type."""

    entity_type: str
    files_cursor: str | None = None   # newest file updated_at (Stash's text) the file window covered
    verify_after: int = 0             # the rolling re-verification resumes after this id (0: from the start)


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
        values = dict(zip(_COLUMNS, row))
        return TypeCursor(**{**values, "full_run_pending": bool(values["full_run_pending"])})

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
            self.set(entity_type, cursor=candidate, checked_epoch=None)

    def newest_at_cursor(self, state: TypeCursor) -> int | None:
        """The newest ``updated_epoch`` of the type's mirrored rows at or after the cursor's second."""
        return self.conn.execute(f"SELECT max(updated_epoch) FROM {state.entity_type} WHERE updated_epoch >= ?",
                                 (epoch_of(state.cursor),)).fetchone()[0]

    def recheck_ids(self, state: TypeCursor) -> list[int]:
        """Mirrored entities at or after the cursor's second that an edit racing their read could have left stale."""
        if state.cursor is None or state.settled(self.newest_at_cursor(state)):
            return []
        # sorted here: with ORDER BY id SQLite would scan the whole table in id order instead
        return sorted(r[0] for r in self.conn.execute(
            f"SELECT id FROM {state.entity_type} WHERE updated_epoch >= ? AND deleted_at IS NULL",
            (epoch_of(state.cursor),)))

    def confirm(self, entity_type: str, checked: int) -> None:
        """Store when Stash's clock confirmed the cursor, when that settles or quiets it further (else write nothing)."""
        state = self.get(entity_type)
        if state.cursor is None:
            return
        newest = self.newest_at_cursor(state)
        later = TypeCursor(entity_type, cursor=state.cursor, checked_epoch=checked)
        gains = (later.settled(newest) and not state.settled(newest)) or (later.quiet() and not state.quiet())
        if state.checked_epoch is None or gains:
            self.set(entity_type, checked_epoch=checked)

    def forget_for_written_rows(self, entity_type: str) -> None:
        """Rows of the type were written: forget when the cursor was confirmed and the stored live
        count (one statement; nothing written when both are already unknown)."""
        self.conn.execute("UPDATE sync_state SET checked_epoch = NULL, live_count = NULL WHERE entity_type = ? "
                          "AND (checked_epoch IS NOT NULL OR live_count IS NOT NULL)", (entity_type,))

    def signals(self, entity_type: str) -> SignalState:
        """The type's ``mirror_signals`` state (the initial one when none is stored)."""
        row = self.conn.execute("SELECT files_cursor, verify_after FROM mirror_signals WHERE entity_type = ?",
                                (entity_type,)).fetchone()
        return SignalState(entity_type, *row) if row else SignalState(entity_type)

    def set_signals(self, state: SignalState) -> None:
        """Store a type's ``mirror_signals`` state when it changed."""
        if self.signals(state.entity_type) == state:
            return
        self.conn.execute("INSERT INTO mirror_signals (entity_type, files_cursor, verify_after) VALUES (?, ?, ?) "
                          "ON CONFLICT(entity_type) DO UPDATE SET files_cursor = excluded.files_cursor, "
                          "verify_after = excluded.verify_after",
                          (state.entity_type, state.files_cursor, state.verify_after))

    def phash_missing(self) -> int | None:
        """The mirror's stored count of live scenes missing a phash (None: not counted since scenes were written)."""
        row = self.conn.execute("SELECT phash_missing FROM mirror_signals WHERE entity_type = 'scenes'").fetchone()
        return row[0] if row else None

    def set_phash_missing(self, count: int) -> None:
        """Store that count (on the scenes' ``mirror_signals`` row, created when missing)."""
        self.conn.execute("INSERT INTO mirror_signals (entity_type, phash_missing) VALUES ('scenes', ?) "
                          "ON CONFLICT(entity_type) DO UPDATE SET phash_missing = excluded.phash_missing", (count,))

    def forget_phash_missing(self) -> None:
        """Scenes were written: the stored count may be wrong."""
        self.conn.execute("UPDATE mirror_signals SET phash_missing = NULL WHERE entity_type = 'scenes' "
                          "AND phash_missing IS NOT NULL")

    def pending_full(self) -> set[str]:
        """Types of an interrupted full sync."""
        return {r[0] for r in self.conn.execute("SELECT entity_type FROM sync_state WHERE full_run_pending")}


def window_lower_bound(epoch: int) -> str:
    """Text L such that every row written at or after ``epoch``, in any UTC offset, compares > L."""
    instant = datetime.fromtimestamp(epoch - 1, timezone.utc).astimezone(timezone(MIN_OFFSET))
    return instant.strftime("%Y-%m-%dT%H:%M:%S") + "-12:00"


def earliest_instant(texts: Iterable[str]) -> int:
    """A lower bound of the instants (UTC seconds) of Stash's ``updated_at`` texts, without parsing each one.

    RFC3339 texts begin with a fixed-width local date and time, so the smallest text has the
    earliest local time; no offset is ahead of UTC by more than ``MAX_OFFSET``, so no text stands
    for an instant earlier than that local time read as UTC, minus ``MAX_OFFSET``.
    """
    local = datetime.fromisoformat(min(texts)[:19]).replace(tzinfo=timezone.utc)
    return int(local.timestamp() - MAX_OFFSET.total_seconds())


def window_filter(epoch: int) -> dict:
    """Stash's ``updated_at`` filter of the window that starts at ``epoch``."""
    return {"updated_at": {"value": window_lower_bound(epoch), "modifier": "GREATER_THAN"}}


def after_text_filter(cursor: str) -> dict:
    """Stash's ``updated_at`` filter of what compares greater than the cursor's own text (a quiet cursor)."""
    return {"updated_at": {"value": cursor, "modifier": "GREATER_THAN"}}


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
