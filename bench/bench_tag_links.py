"""Benchmark of the tag link run (mode ``link_tags``) against the fakes.

    .venv/bin/python bench/bench_tag_links.py [--stashdb-tags 20000] [--local-tags 2000] [--rate 240]

A generated library with ``--local-tags`` local tags is served by a fake Stash, and a fake StashDB
lists ``--stashdb-tags`` live tags (the library's own StashDB tags plus made-up ones) and enforces
``--rate`` requests per minute; the stash-box is configured with ``max_requests_per_minute: 0``,
Stash's default, which means 240. The plugin runs a preview and then a link run exactly as Stash
runs it (``python tag_manager.py`` with the JSON document on stdin). Figures:

* StashDB requests of each run = ceil(T / 1000) (the queryTags pages), with no HTTP 429;
* wall time of each run (process start to exit) beside the limiter's floor, (requests - 1) / rate;
* links written = the links an independent model of the rules expects, and no tag changed otherwise.

Exits 1 when a bound fails.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import PLUGIN_SCRIPT, STASHDB_API_KEY, SESSION_COOKIE, plugin_stdin  # noqa: E402
from tests.fakes.fake_stash import FakeStash  # noqa: E402
from tests.fakes.fake_stashdb import FakeStashDB  # noqa: E402
from tests.fakes.library import OTHER_ENDPOINT, generate_library  # noqa: E402
from tests.tag_link_model import ascii_lower  # noqa: E402

TAG_PAGE_SIZE = 1000  # stashdb_tag_links.TAG_PAGE_SIZE
RATE_SAFETY_FACTOR = 0.98  # tag_manager.RATE_SAFETY_FACTOR


def build_fakes(stashdb_tags: int, local_tags: int, rate: float, seed: int) -> tuple[FakeStash, FakeStashDB, object]:
    """Generate the library, pad StashDB's tag list to ``stashdb_tags`` live tags, start both fakes."""
    stashdb = FakeStashDB(None, api_key=STASHDB_API_KEY, max_requests_per_minute=rate).start()
    endpoint = stashdb.url
    library = generate_library(seed=seed, scenes=50, tags=local_tags, performers=5, studios=2, groups=1,
                               galleries=1, images=1, endpoint=endpoint)
    library.world.stash_boxes = [{"endpoint": endpoint, "api_key": STASHDB_API_KEY, "name": "StashDB",
                                  "max_requests_per_minute": 0}]
    pool = library.stashdb["tags"]
    live = sum(1 for tag in pool.values() if not tag["deleted"])
    for i in range(max(0, stashdb_tags - live)):
        tag_id = f"00000000-0000-4000-8000-{i:012d}"
        pool[tag_id] = {"id": tag_id, "name": f"Bench Tag {i:05d}",
                        "aliases": [f"bench alias {i:05d}"] if i % 3 == 0 else [], "deleted": False}
    unlinked = [tid for tid, row in sorted(library.world.table("tag").items()) if not row["stash_ids"]]
    for tid in unlinked[::5]:  # a fifth of the considered tags are linked on another stash-box already
        library.world.update_entity("tag", tid, stash_ids=[{"endpoint": OTHER_ENDPOINT, "stash_id": f"other-{tid}",
                                                             "updated_at": "2025-03-04T05:06:07Z"}])
    stashdb.load_world(library.stashdb)
    stash = FakeStash(library.world, session_cookie=SESSION_COOKIE).start()
    return stash, stashdb, library


def expected_links(tags: dict[int, dict], pool: dict[str, dict], endpoint: str) -> dict[int, str]:
    """Local tag id -> StashDB id to link, from a plain dictionary model of the rules."""
    owners: dict[str, set[str]] = {}
    for tag in pool.values():
        if not tag["deleted"]:
            for text in [tag["name"], *tag["aliases"]]:
                if text:
                    owners.setdefault(ascii_lower(text), set()).add(tag["id"])
    links = {}
    for tag_id, row in tags.items():
        if any(s["endpoint"] == endpoint for s in row["stash_ids"]):
            continue
        hits = set().union(*(owners.get(ascii_lower(t), set()) for t in [row["name"], *row["aliases"]] if t))
        if len(hits) == 1:
            links[tag_id] = hits.pop()
    return links


def run_plugin(document: dict) -> tuple[dict, float]:
    """Run tag_manager.py as Stash does; return its output document and wall time."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(PLUGIN_SCRIPT)], input=json.dumps(document), capture_output=True,
                          text=True, cwd=ROOT, timeout=900)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"plugin failed: {done.stdout}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)["output"], wall


def measure(stash: FakeStash, stashdb: FakeStashDB, document: dict, rate: float) -> dict:
    """One run with its StashDB requests, 429s, wall time and floor."""
    stash.clear_log()
    stashdb.reset_counters()
    output, wall = run_plugin(document)
    requests = stashdb.requests
    floor = (requests - 1) * 60.0 / (rate * RATE_SAFETY_FACTOR)
    return {"output": output, "wall_s": wall, "requests": requests, "throttled": stashdb.throttled,
            "query_tags": stashdb.operations["QueryTags"], "floor_s": floor,
            "tag_updates": sum(len(v) for _, v in stash.requests("TagLinkSetStashIdsBatch"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stashdb-tags", type=int, default=20_000)
    parser.add_argument("--local-tags", type=int, default=2_000)
    parser.add_argument("--rate", type=float, default=240, help="StashDB requests per minute (Stash's default)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    stash, stashdb, library = build_fakes(args.stashdb_tags, args.local_tags, args.rate, args.seed)
    try:
        world, endpoint = library.world, library.endpoint
        before = copy.deepcopy(world.table("tag"))
        wanted = expected_links(before, library.stashdb["tags"], endpoint)
        live = sum(1 for tag in library.stashdb["tags"].values() if not tag["deleted"])
        with tempfile.TemporaryDirectory(prefix="tagmanager-bench-links-") as tmp:
            preview = measure(stash, stashdb, plugin_stdin(stash.port, Path(tmp), dry_run=True) | {
                "args": {"mode": "link_tags", "dry_run": "true"}}, args.rate)
            unchanged = world.table("tag") == before
            link = measure(stash, stashdb, plugin_stdin(stash.port, Path(tmp)) | {"args": {"mode": "link_tags"}},
                           args.rate)
        after = world.table("tag")
        got = {tid: next(s["stash_id"] for s in row["stash_ids"] if s["endpoint"] == endpoint)
               for tid, row in after.items() if row["stash_ids"] != before[tid]["stash_ids"]}
        others_kept = all([s for s in after[tid]["stash_ids"] if s["endpoint"] != endpoint]
                          == [s for s in before[tid]["stash_ids"] if s["endpoint"] != endpoint] for tid in after)
        linked_with_other = sum(1 for tid in got if any(s["endpoint"] == OTHER_ENDPOINT for s in after[tid]["stash_ids"]))
    finally:
        stash.stop()
        stashdb.stop()

    pages = math.ceil(live / TAG_PAGE_SIZE)
    rows = [
        ("StashDB live tags", f"{live}", "", None),
        ("local tags", f"{len(before)} ({len(wanted)} to link)", "", None),
    ]
    for name, run in (("preview", preview), ("link run", link)):
        rows += [
            (f"{name}: StashDB requests", f"{run['requests']} ({run['query_tags']} queryTags)", f"= ceil(T/1000) = {pages}",
             run["requests"] == run["query_tags"] == pages),
            (f"{name}: HTTP 429", f"{run['throttled']}", "0", run["throttled"] == 0),
            (f"{name}: wall time", f"{run['wall_s']:.1f} s (floor {run['floor_s']:.1f} s, plugin's own {run['output']['elapsed_s']:.1f} s)",
             "", None),
        ]
    rows += [
        ("preview wrote nothing", f"{unchanged}", "True", unchanged),
        ("links written", f"{link['output']['linked']} ({link['tag_updates']} tagUpdate fields)",
         f"= model ({len(wanted)})", got == wanted and link["output"]["linked"] == len(wanted)),
        ("other stash-boxes' StashIDs kept", f"{others_kept} ({linked_with_other} linked tags had one)", "True",
         others_kept and linked_with_other > 0),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\nTag link benchmark: {live} StashDB tags at {args.rate:g} requests/min\n")
    for label, value, bound, ok in rows:
        mark = "" if ok is None else ("  ok" if ok else "  FAILED")
        print(f"{label:<{width}}  {value:<58} {bound}{mark}")
    failed = [r[0] for r in rows if r[3] is False]
    print("\n" + ("FAILED: " + ", ".join(failed) if failed else "All bounds met."))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
