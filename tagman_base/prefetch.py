"""Read-ahead of numbered pages: a background thread fetches the next page while the caller works on this one.

    with PagePrefetch(fetch_page, first=1, more=lambda number, page: ...) as pages:
        for number, page in pages:
            write(page)

* Bounded: at most ``ahead`` pages are fetched (or being fetched) and not yet taken by the
  caller, so memory holds the caller's page plus ``ahead`` more, whatever the number of pages.
* Errors: an exception raised by ``fetch`` is raised again, unchanged, in the caller when it
  reaches that page (pages before it are delivered first); nothing is fetched after it.
* Shutdown: leaving the ``with`` block (a ``break``, an exception in the caller) stops the
  thread; ``close`` waits for the one request in flight, if any, and drops its result. The
  thread only fetches and never writes anywhere, so a process killed at any moment leaves no
  state of its own behind.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class _Failed:
    """The exception ``fetch`` raised for a page."""

    error: BaseException


_END = object()


class PagePrefetch(Generic[T]):
    """Iterate ``(number, fetch(number))`` from ``first`` on while ``more(number, page)`` holds, reading ahead."""

    def __init__(self, fetch: Callable[[int], T], first: int, more: Callable[[int, T], bool], ahead: int = 1,
                 name: str = "page-prefetch") -> None:
        if ahead < 1:
            raise ValueError("ahead must be at least 1")
        self._fetch = fetch
        self._first = first
        self._more = more
        self._slots = threading.Semaphore(ahead)   # pages fetched or in flight, not yet taken
        self._ready: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> PagePrefetch[T]:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[tuple[int, T]]:
        if self._thread.ident is None:
            self._thread.start()
        while True:
            entry = self._ready.get()
            if entry is _END:
                return
            self._slots.release()
            if isinstance(entry, _Failed):
                raise entry.error
            yield entry

    def close(self) -> None:
        """Stop reading ahead; waits for the request in flight (if any) to end."""
        self._stop.set()
        self._slots.release()  # wake the thread if it waits for a free slot
        if self._thread.ident is not None:
            self._thread.join()

    def _run(self) -> None:
        """The thread: fetch page after page while a slot is free, until the last page, an error or close."""
        number = self._first
        while True:
            self._slots.acquire()
            if self._stop.is_set():
                return
            try:
                page = self._fetch(number)
                last = not self._more(number, page)
            except BaseException as exc:  # delivered to the caller, which raises it
                self._ready.put(_Failed(exc))
                return
            if self._stop.is_set():
                return
            self._ready.put((number, page))
            if last:
                self._ready.put(_END)
                return
            number += 1
