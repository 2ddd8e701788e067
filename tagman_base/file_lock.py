"""One run at a time: an OS file lock that the kernel drops when its process dies.

Stash cancels a task with SIGKILL, so a lock must never depend on cleanup code: ``flock`` (or
``msvcrt.locking`` on Windows) is released by the OS with the process, so a lock left by a killed
run is never stale.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: hooks import this module and every millisecond counts
    from collections.abc import Iterator
    from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt


class LockHeld(Exception):
    """Another live process holds the lock (``str()`` is its pid; ``since`` when it took the lock)."""

    def __init__(self, pid: str, since: str = "") -> None:
        super().__init__(pid)
        self.pid = pid
        self.since = since


def try_lock(fd: int) -> bool:
    """Take an exclusive, non-blocking lock on an open file; False when someone else holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            os.lseek(fd, 0, os.SEEK_SET)  # msvcrt locks bytes from the current position
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def lock_within(fd: int, attempts: int = 5, pause_s: float = 0.05) -> bool:
    """``try_lock`` a few times: another process may be probing the lock (``is_held``) for an instant."""
    for attempt in range(attempts):
        if try_lock(fd):
            return True
        if attempt < attempts - 1:
            time.sleep(pause_s)
    return False


def unlock(fd: int) -> None:
    """Release a lock taken with ``try_lock`` (closing the file releases it too)."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (on Windows, where signal 0 would kill it, assume yes)."""
    if pid == os.getpid():
        return True
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_holder(fd: int) -> tuple[str, str]:
    """(pid, since) the current holder wrote into the open lock file ('?' and '' when unknown)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)  # (os.pread does not exist on Windows)
        words = os.read(fd, 200).decode(errors="replace").split()
    except OSError:
        return "?", ""
    return (words[0] if words else "?"), (words[1] if len(words) > 1 else "")


def is_held(path: Path) -> bool:
    """Whether another process holds the lock on ``path`` right now (a brief probe; no file, no lock)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        if not try_lock(fd):
            return True
        unlock(fd)
        return False
    finally:
        os.close(fd)


def acquire(path: Path, attempts: int = 5, pause_s: float = 0.05) -> int:
    """Take the exclusive lock on ``path`` and return its open fd; raise ``LockHeld`` if another process has it.

    A few quick attempts absorb a probe (``is_held``) that holds the lock for an instant. The
    holder writes ``<pid> <local time>`` into the file for the message of the next one refused.
    """
    from tagman_base.timestamps import now_text  # only when a lock is taken: hooks merely probe

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    if not lock_within(fd, attempts, pause_s):
        pid, since = read_holder(fd)
        os.close(fd)
        raise LockHeld(pid, since)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {now_text()}\n".encode())
    return fd


def release(fd: int) -> None:
    """Drop a lock taken with ``acquire`` (the file stays; an unlocked file means nobody runs)."""
    unlock(fd)
    os.close(fd)


@contextlib.contextmanager
def exclusive(path: Path, attempts: int = 5, pause_s: float = 0.05) -> Iterator[None]:
    """Hold the exclusive lock on ``path`` for the block (see ``acquire``)."""
    fd = acquire(path, attempts, pause_s)
    try:
        yield
    finally:
        release(fd)
