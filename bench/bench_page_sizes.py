"""Page sizes by measurement: Stash has no cap on ``per_page``, so how large should our pages be?

    .venv/bin/python bench/bench_page_sizes.py [--scenes 20000] [--sizes 250,500,1000,2500,5000]

Against a fake Stash in its own process (the same generated library for every size), each size
runs in a fresh child process so that its peak RSS is its own:

1. a cache full sync (every type) with ``per_page`` = size: wall time, Stash requests, peak RSS;
2. the tag sync's snapshot of linked scene ids (``findScenes`` id pages) with pages of that size.

Prints one JSON line per size and a table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def start_fake(scenes: int) -> tuple[subprocess.Popen, int]:
    """The fake Stash in a child process; returns it and its port."""
    cmd = [sys.executable, "-m", "tests.fakes.fake_stash", "--port", "0", "--seed", "5", "--scenes", str(scenes),
           "--images", str(scenes), "--tags", "400", "--performers", str(max(40, scenes // 20)),
           "--galleries", str(max(1, scenes // 50)), "--endpoint", "https://stashdb.org/graphql"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    return proc, json.loads(proc.stdout.readline())["port"]


def measure(port: int, size: int) -> dict:
    """One child run: cache full sync and linked-id snapshot with pages of ``size``."""
    import requests

    import local_cache
    from tagman_base.stash_client import StashClient
    from tagman_tagsync import stash_scenes

    url = f"http://127.0.0.1:{port}"
    stash = StashClient(requests.Session(), url)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        local_cache.cache_full_sync(stash, Path(folder) / "cache.sqlite3", per_page=size)
        full_s = time.perf_counter() - started
    full_requests = stash.requests_sent
    stash.requests_sent = 0
    stash_scenes.SCENE_ID_PAGE_SIZE = size
    started = time.perf_counter()
    ids = stash_scenes.linked_scenes(stash, "https://stashdb.org/graphql")
    ids_s = time.perf_counter() - started
    return {"per_page": size, "full_sync_s": round(full_s, 2), "full_sync_requests": full_requests,
            "linked_ids_s": round(ids_s, 2), "linked_ids_requests": stash.requests_sent, "linked": len(ids),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=20000)
    parser.add_argument("--sizes", default="250,500,1000,2500,5000")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child)))
        return
    proc, port = start_fake(args.scenes)
    rows = []
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            done = subprocess.run([sys.executable, __file__, "--child", str(port), str(size)], cwd=REPO,
                                  capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"\n{args.scenes:,} scenes, {args.scenes:,} images")
    print("| per_page | full sync | requests | linked ids | requests | peak RSS |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['per_page']:,} | {r['full_sync_s']} s | {r['full_sync_requests']} | {r['linked_ids_s']} s "
              f"| {r['linked_ids_requests']} | {r['peak_rss_mb']} MB |")


if __name__ == "__main__":
    main()
