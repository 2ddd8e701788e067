"""The plugin's settings: one frozen value built from Stash's plugin configuration.

Stash omits every setting the user never touched, so each field has its default here and only
here. Bad values are rejected with a message that names the setting and what it accepts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from tagman_base.errors import SettingsError

TRUE_WORDS = {"true", "1", "yes", "on"}
FALSE_WORDS = {"false", "0", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    """Every plugin setting with its default (setting keys as Stash names them in the comments)."""

    sync_dry_run: bool = False  # syncDryRun
    stash_box_endpoint: str = ""  # stashBoxEndpoint; empty: the stashdb.org box, else the first
    tag_blacklist: str = ""  # tagBlacklist
    max_requests_per_minute: float | None = None  # maxRequestsPerMinute; None: the box's own limit
    cache_db_path: str = ""  # cacheDbPath; empty: <PluginDir>/data/stash_cache.sqlite3
    live_cache: bool = False  # liveCache
    cache_change_log_days: float = 30.0  # cacheChangeLogDays; 0 keeps the change log forever
    cache_soft_delete: bool = False  # cacheSoftDelete
    cache_soft_delete_days: float = 14.0  # cacheSoftDeleteDays; 0 keeps soft-deleted entities forever

    @classmethod
    def from_plugin_config(cls, config: Mapping[str, Any] | None) -> Settings:
        """Build settings from ``configuration.plugins.tagManager`` (absent keys keep defaults)."""
        config = config or {}
        values: dict[str, Any] = {}
        for field in fields(cls):
            key = SETTING_KEYS[field.name]
            if key in config and config[key] is not None:
                value = PARSERS[field.name](key, config[key])
                if value is not None:  # None: "not set", the default applies
                    values[field.name] = value
        return cls(**values)


def parse_bool(key: str, raw: Any) -> bool:
    """Accept a JSON boolean or a true/false word."""
    if isinstance(raw, bool):
        return raw
    word = str(raw).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise SettingsError(f"Setting {key} must be true or false, not {raw!r}.")


def parse_text(key: str, raw: Any) -> str:
    """Accept any scalar as trimmed text."""
    if isinstance(raw, (dict, list)):
        raise SettingsError(f"Setting {key} must be text, not {type(raw).__name__}.")
    return str(raw).strip()


def parse_rate(key: str, raw: Any) -> float | None:
    """Accept a positive number of requests per minute; 0 or empty means 'not set'."""
    if isinstance(raw, bool):
        raise SettingsError(f"Setting {key} must be a number of requests per minute, not {raw!r}.")
    text = str(raw).strip()
    if text == "":
        return None
    try:
        rate = float(text)
    except ValueError:
        raise SettingsError(f"Setting {key} must be a number of requests per minute (e.g. 120), not {raw!r}.") from None
    if math.isnan(rate) or math.isinf(rate) or rate < 0:
        raise SettingsError(f"Setting {key} must be a positive number of requests per minute, not {raw!r}.")
    return rate or None


def parse_days(key: str, raw: Any) -> float | None:
    """Accept a non-negative number of days; empty means 'not set' (the default applies)."""
    if isinstance(raw, bool):
        raise SettingsError(f"Setting {key} must be a number of days, not {raw!r}.")
    text = str(raw).strip()
    if text == "":
        return None
    try:
        days = float(text)
    except ValueError:
        raise SettingsError(f"Setting {key} must be a number of days (e.g. 30), not {raw!r}.") from None
    if math.isnan(days) or math.isinf(days) or days < 0:
        raise SettingsError(f"Setting {key} must be a number of days of 0 or more (0 keeps forever), not {raw!r}.")
    return days


SETTING_KEYS = {
    "sync_dry_run": "syncDryRun",
    "stash_box_endpoint": "stashBoxEndpoint",
    "tag_blacklist": "tagBlacklist",
    "max_requests_per_minute": "maxRequestsPerMinute",
    "cache_db_path": "cacheDbPath",
    "live_cache": "liveCache",
    "cache_change_log_days": "cacheChangeLogDays",
    "cache_soft_delete": "cacheSoftDelete",
    "cache_soft_delete_days": "cacheSoftDeleteDays",
}
PARSERS = {
    "sync_dry_run": parse_bool,
    "stash_box_endpoint": parse_text,
    "tag_blacklist": parse_text,
    "max_requests_per_minute": parse_rate,
    "cache_db_path": parse_text,
    "live_cache": parse_bool,
    "cache_change_log_days": parse_days,
    "cache_soft_delete": parse_bool,
    "cache_soft_delete_days": parse_days,
}


@dataclass(frozen=True)
class TagBlacklist:
    """Tag names to skip: case-insensitive literals and ``/regex/`` entries."""

    literals: frozenset[str] = frozenset()
    patterns: tuple[re.Pattern[str], ...] = ()

    def matches(self, name: str) -> bool:
        """Return True when ``name`` is blacklisted."""
        return name.casefold() in self.literals or any(p.search(name) for p in self.patterns)

    @classmethod
    def parse(cls, text: str, exclude_patterns: list[str] = (), setting: str = "tagBlacklist") -> TagBlacklist:
        """Parse the comma/newline separated setting plus Stash's regex ``excludeTagPatterns``."""
        literals: set[str] = set()
        patterns: list[re.Pattern[str]] = []
        for entry in split_blacklist(text):
            if len(entry) >= 2 and entry.startswith("/") and entry.endswith("/"):
                patterns.append(compile_pattern(entry[1:-1], setting))
            else:
                literals.add(entry.casefold())
        for pattern in exclude_patterns:
            if pattern.strip():
                patterns.append(compile_pattern(pattern, "scraping.excludeTagPatterns"))
        return cls(frozenset(literals), tuple(patterns))


def split_blacklist(text: str) -> list[str]:
    """Split on commas and newlines, except commas inside a ``/regex/`` entry."""
    entries: list[str] = []
    for line in text.splitlines():
        entries.extend(split_line(line))
    return [e for e in entries if e]


def split_line(line: str) -> list[str]:
    """Split one line on commas that are not inside a slash-delimited regex."""
    entries, current, in_regex = [], "", False
    for char in line:
        if char == "/" and not current.strip():
            in_regex = True
            current += char
        elif char == "/" and in_regex:
            in_regex = False
            current += char
        elif char == "," and not in_regex:
            entries.append(current.strip())
            current = ""
        else:
            current += char
    entries.append(current.strip())
    return entries


def compile_pattern(pattern: str, setting: str) -> re.Pattern[str]:
    """Compile a case-insensitive regex or raise a SettingsError naming the setting."""
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise SettingsError(f"Setting {setting} has an invalid regular expression /{pattern}/: {exc}.") from None
