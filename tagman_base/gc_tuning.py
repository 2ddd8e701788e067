"""Fewer garbage collections during a bulk run.

Decoding one page of Stash's answer allocates some 100,000 objects that all live until the page
is written, so the collector's default (a young-generation pass every 700 allocations, and full
passes over everything alive, the interpreter's own objects included) spends its time walking
objects that cannot be garbage. Pages hold no reference cycles; reference counting frees them.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

BULK_YOUNG_THRESHOLD = 50_000


@contextmanager
def fewer_collections(young_threshold: int = BULK_YOUNG_THRESHOLD) -> Iterator[None]:
    """Collect less often inside the block (objects alive at its start are left out); the settings come back after."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(young_threshold, thresholds[0]), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
