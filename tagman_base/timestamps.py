"""Time helpers: the one parser of Stash's RFC3339 timestamps, bookkeeping clocks and durations.

Stash writes ``updated_at`` as text in the server's offset at one-second precision; the cache
keeps that text as its cursor and uses these helpers only to compare instants. This machine's
clock stamps bookkeeping (run start and end, soft deletions), never a cursor.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

from tagman_base.errors import SettingsError

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_stash_time(text: str) -> datetime:
    """Parse an RFC3339 timestamp as Stash renders it (offset or Z) into an aware datetime."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("timestamp without UTC offset")
    return value


def instant_or_none(text: str | None) -> datetime | None:
    """A bookkeeping timestamp as an aware datetime, or None when it is missing or not one."""
    try:
        return parse_stash_time(text) if text else None
    except (ValueError, TypeError):
        return None


def epoch_of(text: str) -> int:
    """UTC seconds of a Stash timestamp (sub-seconds dropped, as Stash stores whole seconds)."""
    return int(parse_stash_time(text).timestamp() // 1)


def http_date_epoch(value: str | None) -> int | None:
    """UTC seconds of an HTTP ``Date`` header (whole seconds, as servers send it); None when absent or unreadable."""
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return int(moment.timestamp()) if moment.tzinfo is not None else None


def utc_now() -> datetime:
    """This machine's clock (aware)."""
    return datetime.now(timezone.utc)


def local_text(moment: datetime) -> str:
    """An instant as local ISO text with its offset, to the second (bookkeeping only)."""
    return moment.astimezone().isoformat(timespec="seconds")


def now_text() -> str:
    """This machine's time with its offset (bookkeeping only, never a cursor)."""
    return local_text(utc_now())


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
