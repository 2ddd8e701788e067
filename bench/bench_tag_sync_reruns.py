"""Benchmark of scene tag sync re-runs (StashDB's change feed) against the fakes, with the bounds.

    .venv/bin/python bench/bench_tag_sync_reruns.py [--scenes 100000] [--rate 240] [--changed 0.01]

One library of ``--scenes`` linked scenes (2 % needing the by-id fallback) is served by a fake Stash
and a fake StashDB in a child process; the StashDB fake enforces ``--rate`` requests per minute and
the stash-box is configured with the same limit. The plugin runs three times exactly as Stash runs
it (``python tag_manager.py`` with the JSON document on stdin), with one history file:

1. first run: a full check (fingerprint batches + by-id look-ups);
2. after ``--changed`` of the StashDB scenes that linked scenes match got a tags edit;
3. with no change anywhere.

Each run's tag additions are compared with the generator's oracle (what a full run adds, computed
from the fake's own bookkeeping, not by the plugin). Bounds: run 1 <= ceil(N/40) + fallbacks + 1
(the feed mark); run 2 <= ceil(changed/100) + 5 requests and exactly the oracle's tags; run 3 <= 5
requests and 0 Stash mutations. Exits 1 when a bound fails.
"""

from __future__ import annotations

import argparse
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

from bench.common import PLUGIN_SCRIPT, FakesProcess, bench_library_options, plugin_stdin  # noqa: E402


def run_plugin(document: dict, log_path: Path, timeout: float) -> tuple[dict, float]:
    """Run the plugin once as Stash does; return its output summary and wall seconds."""
    started = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        done = subprocess.run([sys.executable, str(PLUGIN_SCRIPT)], input=json.dumps(document), text=True,
                              stdout=subprocess.PIPE, stderr=log, cwd=ROOT, timeout=timeout)
    wall = time.perf_counter() - started
    answer = json.loads(done.stdout or "{}")
    if done.returncode != 0 or "output" not in answer:
        raise SystemExit(f"the plugin failed (exit {done.returncode}): {answer}; log: {log_path}")
    return answer["output"], wall


def measured_run(fakes: FakesProcess, document: dict, name: str, workdir: Path, timeout: float) -> dict:
    """Snapshot, run, report: one row of figures."""
    fakes.ask("snapshot")
    print(f"[{name}] running the plugin ...", flush=True)
    summary, wall = run_plugin(document, workdir / f"{name}.log", timeout)
    report = fakes.ask("report")
    print(f"[{name}] {summary['strategy']} run: {report['stashdb_requests']} StashDB requests, "
          f"{report['stash_mutations']} Stash mutations, {report['tags_added']} tags added "
          f"(oracle {report['expected_tags']}, {report['differing_from_expected']} scenes differ), "
          f"wall {wall:.1f} s", flush=True)
    return {"summary": summary, "fakes": report, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=240, help="StashDB requests per minute (StashDB's own: 240)")
    parser.add_argument("--changed", type=float, default=0.01, help="share of matched StashDB scenes edited")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    print(f"Re-run benchmark: {args.scenes} linked scenes, StashDB at {args.rate:g} requests/min", flush=True)
    fakes = FakesProcess(args.scenes, args.seed, args.rate, bench_library_options(0.02))
    try:
        info = fakes.info
        print(f"generated in {info['generate_s']} s: {info['kinds']}", flush=True)
        with tempfile.TemporaryDirectory(prefix="tagmanager-reruns-") as tmp:
            workdir = Path(tmp)
            document = plugin_stdin(info["stash_port"], workdir)
            first_bound = math.ceil(info["linked"] / 40) + info["pass2_expected"] + 1
            timeout = 3 * first_bound * 60.0 / args.rate + 600
            first = measured_run(fakes, document, "first", workdir, timeout)
            edited = fakes.ask(f"edit_stashdb {args.changed}")
            print(f"edited {edited['edited']} of {edited['of']} matched StashDB scenes", flush=True)
            second = measured_run(fakes, document, "second", workdir, timeout)
            third = measured_run(fakes, document, "third", workdir, timeout)
    finally:
        fakes.stop()
    rows = bounds(first, second, third, first_bound, edited["edited"])
    for name, measured, bound, ok in rows:
        print(f"{name:<34} {measured:<48} {bound:<34} {'yes' if ok else 'NO' if ok is False else 'info'}")
    if args.json:
        args.json.write_text(json.dumps({"first": first, "second": second, "third": third, "edited": edited},
                                        indent=1, default=str), encoding="utf-8")
    failed = [r[0] for r in rows if r[3] is False]
    print(f"\n{'FAILED: ' + ', '.join(failed) if failed else 'All bounds met.'} "
          f"(benchmark took {time.perf_counter() - started:.0f} s)")
    return 1 if failed else 0


def exact(run: dict) -> bool:
    """The run added exactly the oracle's tags and lost none."""
    f = run["fakes"]
    return f["differing_from_expected"] == 0 and f["scenes_lost_tags"] == 0 and run["summary"]["errors"] == 0


def bounds(first: dict, second: dict, third: dict, first_bound: int, edited: int) -> list[tuple]:
    """(figure, measured, bound, ok) rows."""
    second_bound = math.ceil(edited / 100) + 5
    rows = []
    for name, run, bound in (("first run (full)", first, first_bound), ("second run (1 % changed)", second, second_bound),
                             ("third run (no change)", third, 5)):
        f = run["fakes"]
        rows.append((f"{name}: StashDB requests", f"{f['stashdb_requests']} ({run['summary']['strategy']}; "
                     f"{json.dumps(f['stashdb_operations'])})", f"<= {bound}", f["stashdb_requests"] <= bound))
        rows.append((f"{name}: tags added", f"{f['tags_added']} on {f['scenes_changed']} scenes",
                     f"= oracle {f['expected_tags']}", exact(run)))
        rows.append((f"{name}: Stash mutations", f"{f['stash_mutations']}", "= 0" if run is third else "",
                     f["stash_mutations"] == 0 if run is third else None))
        rows.append((f"{name}: wall time", f"{run['wall_s']:.1f} s", "", None))
    return rows


if __name__ == "__main__":
    sys.exit(main())
