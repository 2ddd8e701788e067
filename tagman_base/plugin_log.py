"""Logging and progress in Stash's plugin protocol, or as plain text on a terminal.

Stash reads a plugin's stderr line by line: ``\\x01`` + level (t d i w e p) + ``\\x02`` + message.
On the command line the same records are printed as ``LEVEL message`` and progress as a bar.
Every record passes a redaction filter so that registered secrets never reach the log.
"""

from __future__ import annotations

import logging
import sys
from typing import IO

LOGGER_NAME = "tagManager"
STASH_LEVEL_CODES = {logging.DEBUG: "d", logging.INFO: "i", logging.WARNING: "w", logging.ERROR: "e"}
REDACTED = "***"

log = logging.getLogger(LOGGER_NAME)


class SecretRedactor(logging.Filter):
    """Replaces every registered secret in a record's text by ``***``."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def add(self, secret: str | None) -> None:
        """Register a secret value (ignored when empty or too short to be one)."""
        if secret and len(secret) >= 4:
            self.secrets.add(secret)

    def redact(self, text: str) -> str:
        """Return ``text`` with every registered secret masked."""
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        """Freeze the record's message with secrets masked."""
        record.msg = self.redact(record.getMessage())
        record.args = None
        return True


redactor = SecretRedactor()


def stash_level_code(levelno: int) -> str:
    """Map a logging level to Stash's one-letter level (anything below DEBUG is trace)."""
    if levelno < logging.DEBUG:
        return "t"
    for level in (logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG):
        if levelno >= level:
            return STASH_LEVEL_CODES[level]
    return "d"


class StashProtocolHandler(logging.Handler):
    """Writes records to stderr in Stash's ``\\x01L\\x02message`` protocol."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stderr

    def emit(self, record: logging.LogRecord) -> None:
        """Write one protocol line per message line."""
        code = stash_level_code(record.levelno)
        for line in self.format(record).splitlines() or [""]:
            self.stream.write(f"\x01{code}\x02{line}\n")
        self.stream.flush()


class Progress:
    """Reports a run's progress as a fraction 0..1, to Stash or as a terminal bar."""

    def __init__(self, stream: IO[str] | None = None, terminal: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.terminal = terminal
        self.last_reported = -1.0

    def report(self, fraction: float) -> None:
        """Send a progress update when it moved by at least 0.1 % (or reached the end)."""
        fraction = min(max(float(fraction), 0.0), 1.0)
        if fraction - self.last_reported < 0.001 and fraction < 1.0:
            return
        self.last_reported = fraction
        if self.terminal:
            filled = int(fraction * 30)
            self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {fraction * 100:5.1f}%")
            if fraction >= 1.0:
                self.stream.write("\n")
        else:
            self.stream.write(f"\x01p\x02{fraction:.4f}\n")
        self.stream.flush()


def configure(terminal: bool, level: int = logging.DEBUG, stream: IO[str] | None = None) -> Progress:
    """Route the plugin's logging to stderr in the right format and return its progress reporter."""
    stream = stream or sys.stderr
    handler: logging.Handler
    if terminal:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(levelname)-7s %(message)s"))
    else:
        handler = StashProtocolHandler(stream)
    handler.addFilter(redactor)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    log.setLevel(level)
    for name in ("stashdb_api", "stashdb_scene_sync", "local_cache", "tagman_base", "tagman_mirror", "tagman_tagsync"):
        logging.getLogger(name).setLevel(level)
    return Progress(stream, terminal=terminal)
