"""Benchmark of the scene tag sync against the fakes, with the acceptance bounds.

    .venv/bin/python bench/bench_tag_sync.py [--scenes 100000] [--small 10000] [--rate 900] [--quick]

For each library size (``--small`` and ``--scenes`` linked scenes, 2 % of them needing the by-id
fallback) a child process generates the library and serves it with a fake Stash and a fake StashDB
that answers instantly but enforces ``--rate`` requests per minute (the stash-box's configured
limit is the same rate). The plugin then runs exactly as Stash runs it: ``python tag_manager.py``
with the JSON document on stdin, inside a fresh wrapper process whose ``RUSAGE_CHILDREN`` gives
the plugin's own peak RSS. Figures, each beside its bound:

* StashDB requests <= ceil(N/40) + fallbacks, where fallbacks are the scenes pass 1 left for a
  look-up by id (summary: matched_by_id + not_found; checked against the generator's count);
* Stash mutations <= distinct tag sets added (computed from the fake's tags before and after);
* wall time (plugin process, start to exit) <= 1.10 x floor, floor = (requests - 1) / rate
  (the limiter's first token is free);
* HTTP 429 answers from the fake StashDB = 0;
* peak RSS at N <= 1.5 x peak RSS at the small size.

Exits 1 when a bound fails (or the sync did not add exactly the expected tags).
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

from bench.common import PLUGIN_SCRIPT, FakesProcess, bench_library_options, parse_log_line, plugin_stdin  # noqa: E402

FINGERPRINT_BATCH = 40
WALL_SLACK = 1.10
RSS_RATIO_BOUND = 1.5
MUTATION_CHUNK = 500  # tagman_tagsync.writes.MUTATION_CHUNK, for the explanatory figure only


def run_size(scenes: int, rate: float, seed: int, fallback_share: float, tags: int, workdir: Path) -> dict:
    """Generate, serve, sync once as Stash would, and collect every figure for one library size."""
    print(f"\n[{scenes} scenes] generating the library and starting the fakes ...", flush=True)
    fakes = FakesProcess(scenes, seed, rate, bench_library_options(fallback_share, tags=tags))
    try:
        info = fakes.info
        print(f"[{scenes} scenes] generated in {info['generate_s']} s: {info['kinds']}", flush=True)
        fakes.ask("snapshot")
        plugin_dir = workdir / f"plugin-{scenes}"
        plugin_dir.mkdir()
        stdin_path = workdir / f"stdin-{scenes}.json"
        stdin_path.write_text(json.dumps(plugin_stdin(info["stash_port"], plugin_dir)), encoding="utf-8")
        measured = workdir / f"measure-{scenes}.json"
        stdout_path, stderr_path = workdir / f"stdout-{scenes}.json", workdir / f"stderr-{scenes}.log"
        expected_requests = math.ceil(info["linked"] / FINGERPRINT_BATCH) + info["pass2_expected"]
        timeout = 3 * expected_requests * 60.0 / rate + 300
        print(f"[{scenes} scenes] running the plugin (about {expected_requests} StashDB requests at "
              f"{rate:g}/min, floor {(expected_requests - 1) * 60.0 / rate:.1f} s) ...", flush=True)
        with stdin_path.open("rb") as stdin, stdout_path.open("wb") as stdout:
            phases = run_timed([sys.executable, "-m", "bench.common", "measure", "--out", str(measured),
                                "--timeout", str(timeout), "--", sys.executable, str(PLUGIN_SCRIPT)],
                               stdin, stdout, stderr_path, timeout + 60)
        report = fakes.ask("report")
    finally:
        fakes.stop()
    run = json.loads(measured.read_text(encoding="utf-8"))
    answer = json.loads(stdout_path.read_text(encoding="utf-8") or "{}")
    if run["returncode"] != 0 or "output" not in answer:
        tail = stderr_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"the plugin failed at {scenes} scenes (exit {run['returncode']}): {answer}\n{tail}")
    summary = answer["output"]
    levels: dict[str, int] = {}
    with stderr_path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            level = parse_log_line(line)[0] or "?"
            levels[level] = levels.get(level, 0) + 1
    result = {"scenes": scenes, "info": info, "run": run, "summary": summary, "fakes": report, "log_lines": levels,
              "phases": phases}
    print(f"[{scenes} scenes] done: wall {run['wall_s']:.1f} s, sync {summary['elapsed_s']:.1f} s, "
          f"peak RSS {run['peak_rss_mb']:.1f} MB, CPU {run['user_s'] + run['system_s']:.1f} s", flush=True)
    return result


def run_timed(cmd: list[str], stdin, stdout, stderr_path: Path, timeout: float) -> dict[str, float]:
    """Run ``cmd`` with its stderr copied to ``stderr_path``; note when the sync's phases end (seconds from start).

    start: the linked scenes are snapshotted; pass1: the fingerprint pass is done; pass2: the last
    progress below 100 % (every look-up done, only the pending writes left); end: progress 100 %.
    """
    started = time.perf_counter()
    phases: dict[str, float] = {}
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        with stderr_path.open("wb") as copy:
            for raw in proc.stderr:  # ends when the plugin (and the wrapper) exit
                copy.write(raw)
                level, message = parse_log_line(raw.decode("utf-8", errors="replace"))
                now = time.perf_counter() - started
                if level == "p":
                    phases["end" if float(message or 0) >= 1.0 else "pass2"] = now
                elif level == "i" and "linked to" in message and "to check" in message:
                    phases["start"] = now
                elif level == "i" and message.startswith("Fingerprint pass done"):
                    phases["pass1"] = now
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    if proc.returncode != 0:
        raise SystemExit(f"the measuring wrapper failed (exit {proc.returncode})")
    return {k: round(v, 2) for k, v in phases.items()}


def figures(result: dict, rate: float, check_wall: bool) -> list[tuple[str, str, str, bool | None]]:
    """Rows (figure, measured, bound, ok) for one size; ok None = shown for information."""
    n = result["scenes"]
    s, f, run = result["summary"], result["fakes"], result["run"]
    linked = s["scenes_seen"]
    fallbacks = s["matched_by_id"] + s["not_found"] + s["deleted_on_stashdb"]
    requests = f["stashdb_requests"]
    request_bound = math.ceil(linked / FINGERPRINT_BATCH) + fallbacks
    floor = (requests - 1) * 60.0 / rate
    chunked = sum(math.ceil(g / MUTATION_CHUNK) for g in f["groups"])
    ops = f["stashdb_operations"]
    rows: list[tuple[str, str, str, bool | None]] = [
        (f"[{n}] linked scenes N", f"{linked}", f"= generated {result['info']['linked']}",
         linked == result["info"]["linked"]),
        (f"[{n}] fallbacks (pass 2)", f"{fallbacks} (by id {s['matched_by_id']} + not found {s['not_found']} + deleted {s['deleted_on_stashdb']})",
         f"= generated {result['info']['pass2_expected']}", fallbacks == result["info"]["pass2_expected"]),
        (f"[{n}] StashDB requests", f"{requests} (fingerprint {ops.get('FindScenesBySceneFingerprints', 0)}"
         f" + by id {ops.get('FindScene', 0)})", f"<= ceil(N/40)+fallbacks = {request_bound}", requests <= request_bound),
        (f"[{n}] Stash mutations", f"{f['stash_mutations']}", f"<= distinct tag sets = {f['distinct_tag_sets']}",
         f["stash_mutations"] <= f["distinct_tag_sets"]),
        (f"[{n}]   (distinct sets in {MUTATION_CHUNK}-scene chunks)", f"{chunked}",
         f"largest group {f['largest_tag_set_group']} scenes", None),
        (f"[{n}] wall time (process)", f"{run['wall_s']:.2f} s",
         f"<= 1.10 x floor {floor:.2f} s = {WALL_SLACK * floor:.2f} s", run["wall_s"] <= WALL_SLACK * floor
         if check_wall else None),
        (f"[{n}]   sync time (summary elapsed_s)", f"{s['elapsed_s']:.2f} s",
         f"{s['elapsed_s'] / floor:.3f} x floor" if floor > 0 else "-", None),
        (f"[{n}]   phases (s from process start)", phase_text(result.get("phases") or {}),
         "setup | pass 1 | pass 2 | final writes", None),
        (f"[{n}] HTTP 429 from StashDB", f"{f['stashdb_throttled']}", "= 0", f["stashdb_throttled"] == 0),
        (f"[{n}] tags added as expected", f"{f['scenes_changed']} scenes / {f['tags_added']} tags, "
         f"{f['scenes_lost_tags']} lost, {f['differing_from_expected']} differ",
         f"= {f['expected_scenes']} / {f['expected_tags']}, 0 lost, 0 differ",
         f["scenes_lost_tags"] == 0 and f["differing_from_expected"] == 0 and s["errors"] == 0),
        (f"[{n}] peak RSS (plugin process)", f"{run['peak_rss_mb']:.1f} MB", "", None),
    ]
    return rows


def phase_text(phases: dict[str, float]) -> str:
    """Durations of setup, pass 1, pass 2 and the final writes, from the phase end times."""
    marks = [0.0] + [phases.get(k) for k in ("start", "pass1", "pass2", "end")]
    if any(m is None for m in marks):
        return "-"
    return " | ".join(f"{b - a:.1f}" for a, b in zip(marks, marks[1:]))


def print_table(rows: list[tuple[str, str, str, bool | None]]) -> None:
    widths = [max(len(r[i]) for r in rows + [("figure", "measured", "bound", None)]) for i in range(3)]
    head = ("figure", "measured", "bound", "ok")
    print(" | ".join(h.ljust(w) for h, w in zip(head, widths + [2])))
    print("-+-".join("-" * w for w in widths + [4]))
    for name, measured, bound, ok in rows:
        mark = "info" if ok is None else ("yes" if ok else "NO")
        print(" | ".join([name.ljust(widths[0]), measured.ljust(widths[1]), bound.ljust(widths[2]), mark]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=100_000, help="linked scenes of the main run")
    parser.add_argument("--small", type=int, default=10_000, help="linked scenes of the RSS reference run")
    parser.add_argument("--rate", type=float, default=900,
                        help="StashDB requests per minute, configured and enforced (default 900: the fakes take "
                             "about 50 ms per fingerprint batch, so above ~1000/min they would set the pace, "
                             "not the limiter)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fallback-share", type=float, default=0.02)
    parser.add_argument("--tags", type=int, default=60, help="local tags in the generated library")
    parser.add_argument("--quick", action="store_true", help="2,000 and 20,000 scenes")
    parser.add_argument("--json", type=Path, default=None, help="also write every raw figure to this file")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the plugin's stdin, stdout and log of every run in this (new) folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.small, args.scenes = 2_000, 20_000

    started = time.perf_counter()
    print(f"Scene tag sync benchmark: {args.small} and {args.scenes} linked scenes, "
          f"{args.fallback_share:.0%} needing the by-id fallback, StashDB at {args.rate:g} requests/min", flush=True)
    with tempfile.TemporaryDirectory(prefix="tagmanager-bench-") as tmp:
        workdir = Path(tmp)
        if args.keep:
            args.keep.mkdir(parents=True)
            workdir = args.keep
        small = run_size(args.small, args.rate, args.seed, args.fallback_share, args.tags, workdir)
        large = run_size(args.scenes, args.rate, args.seed, args.fallback_share, args.tags, workdir)

    rows = figures(small, args.rate, check_wall=False) + figures(large, args.rate, check_wall=True)
    ratio = large["run"]["peak_rss_mb"] / small["run"]["peak_rss_mb"]
    rows.append((f"peak RSS ratio {args.scenes} / {args.small}", f"{ratio:.3f}", f"<= {RSS_RATIO_BOUND}",
                 ratio <= RSS_RATIO_BOUND))
    print()
    print_table(rows)
    if args.json:
        for result in (small, large):
            result["fakes"].pop("groups", None)
        args.json.write_text(json.dumps({"small": small, "large": large, "rss_ratio": ratio}, indent=1), encoding="utf-8")
    failed = [r[0] for r in rows if r[3] is False]
    print(f"\n{'FAILED: ' + ', '.join(failed) if failed else 'All bounds met.'} "
          f"(benchmark took {time.perf_counter() - started:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
