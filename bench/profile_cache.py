"""Where a full cache sync spends its time: py-spy samples of every thread, summed by kind of work.

    .venv/bin/python bench/profile_cache.py --scale 0.1 --py-spy /path/to/py-spy

Starts the fake Stash in its own process, runs one full sync in a child process under
``py-spy record --native`` (all threads, native frames, so time inside SQLite is seen as such)
and sums the samples of each stack into the first category whose marker it contains, in the
order of ``CATEGORIES``. Samples of a thread waiting (on a socket, a lock) are counted as
waiting, and the shares of work are printed beside the shares of all samples. py-spy is a separate install
(``pip install py-spy``); with ``--raw FILE`` an existing py-spy raw file is summed instead.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (category, markers): a stack belongs to the first category one of whose markers it contains
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("waiting (socket, lock; not CPU)", ("internal_select", "PyThread_acquire_lock_timed", "pthread_cond_timedwait",
                                         "sem_wait", "sem_clockwait")),
    ("garbage collector", ("gc_collect_main",)),
    ("start-up and imports", ("_find_and_load", "<module> (bench_cache.py")),
    ("derived data (SQL)", ("refresh_derived",)),
    ("SQLite, writing a page", ("(libsqlite3", "pysqlite", "_sqlite3")),
    ("diffing with the mirror", ("load_contents", "content_diff", "_existing_states", "_plan_writes")),
    ("hashing", ("content_digest", "blake2b")),
    ("row mapping", ("mirrored_content", "_Mapper.row", "_Mapper.sets", "tagman_mirror/entities.py")),
    ("JSON parsing", ("json/decoder", "decoder.py", "loads (json", "Response.json", "LeanResponse.json",
                      "_parse (")),
    ("HTTP (client side)", ("requests/", "urllib3", "http/client", "socket.py", "ssl.py", "_attempt (")),
    ("change log and counts", ("ChangeRecorder", "ChangeCounts")),
)
OTHER = "other (sync bookkeeping, threads, allocator)"


def categorize(stack: str) -> str:
    """The category of one sampled stack (frames joined by ';')."""
    for name, markers in CATEGORIES:
        if any(marker in stack for marker in markers):
            return name
    return OTHER


def summarize(raw_lines: list[str]) -> tuple[Counter, Counter, int]:
    """Samples per category for the main thread and the fetching thread(s); and the total."""
    main, worker = Counter(), Counter()
    total = 0
    for line in raw_lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        side = worker if "Thread._bootstrap" in stack else main
        side[categorize(stack)] += n
    return main, worker, total


def print_summary(main: Counter, worker: Counter, total: int) -> None:
    """One line per category: share of all samples, split by thread."""
    waiting = CATEGORIES[0][0]
    working = total - main[waiting] - worker[waiting]
    print(f"{'category':<46} {'of work':>7}  {'main':>6}  {'fetch thread':>12}")
    names = [name for name, _ in CATEGORIES] + [OTHER]
    for name in sorted(names, key=lambda n: (n == waiting, -(main[n] + worker[n]))):
        both = main[name] + worker[name]
        if both:
            share = "" if name == waiting else f"{both / working:7.1%}"
            print(f"{name:<46} {share:>7}  {main[name] / total:6.1%}  {worker[name] / total:12.1%}  ({both} samples)")
    print(f"{'samples':<46} {total:7d}  (main and fetch thread columns: share of all samples)")


def record(scale: float, py_spy: str, out: Path, rate: int) -> None:
    """Full sync of a fresh cache at ``scale`` under py-spy, the fake Stash in its own process."""
    from bench.bench_cache import FakeServer, scaled

    server = FakeServer(scaled(scale))
    try:
        db = out.with_suffix(".sqlite3")
        cmd = [py_spy, "record", "--native", "-r", str(rate), "-f", "raw", "-o", str(out), "--",
               sys.executable, str(REPO / "bench" / "bench_cache.py"), "--child", "full", "--url", server.url,
               "--db", str(db)]
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--py-spy", default="py-spy")
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--raw", help="sum this py-spy raw file instead of recording")
    args = parser.parse_args(argv)
    if args.raw:
        raw = Path(args.raw)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="profile-cache-"))
        raw = workdir / "full-sync.txt"
        record(args.scale, args.py_spy, raw, args.rate)
        print(f"raw samples: {raw}")
    print_summary(*summarize(raw.read_text().splitlines()))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
