"""CPU of an idle smart sync (the sync itself, in process) at each given library scale.

    .venv/bin/python bench/idle_smart_cpu.py 1 3

Per scale: the fake Stash in its own process, a full sync in a child (as the cache bench runs it),
two smart syncs to settle, then the median of three steady-state idle smart syncs timed with
``time.process_time`` (interpreter start and imports excluded). The bound: the same at every scale.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_cache  # noqa: E402

from tagman_base.stash_client import StashClient  # noqa: E402
from tagman_mirror.runs import cache_smart_sync  # noqa: E402


def idle_cpu(scale: float) -> float:
    """CPU seconds of an idle smart sync (median of three) after a full sync and two settling smart syncs."""
    server = bench_cache.FakeServer(bench_cache.scaled(scale))
    try:
        with tempfile.TemporaryDirectory() as folder:
            db = Path(folder) / "cache.sqlite3"
            bench_cache.child("full", server.url, str(db))
            stash = StashClient(requests.Session(), server.url)
            for _ in range(2):  # until Stash's clock has confirmed every type's cursor
                cache_smart_sync(stash, db)
            runs = []
            for _ in range(3):
                started = time.process_time()
                cache_smart_sync(stash, db)
                runs.append(time.process_time() - started)
            return statistics.median(runs)
    finally:
        server.stop()


def main(argv: list[str]) -> int:
    for scale in map(float, argv or ["1", "3"]):
        print(f"scale {scale:g}: idle smart sync {idle_cpu(scale):.3f} s CPU", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
