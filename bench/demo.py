"""Demo: both jobs against a fake Stash and a fake StashDB, run exactly as Stash runs them.

    .venv/bin/python -m bench.demo [--scenes 2000] [--seed 1] [--rate 600]

Generates a sample library, serves it on loopback, then runs ``python tag_manager.py`` with the
JSON document Stash writes to a plugin's stdin. Scene tag sync: a preview (dry run), then the real
sync, checked against the fake Stash's data (no scene lost a tag; every scene gained exactly the
tags Stash's Tagger would give it). Cache: a full sync, an edit saved in the fake Stash, a smart
sync that must pick up exactly that edit, "Cache: Status", and the README's first example query on
the mirror, each checked against the fake Stash (``bench/demo_cache.py``). Exits non-zero when
anything is off.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    plugin_stdin,
    start_fakes,
)
from bench.demo_cache import DEMO_TAG, add_demo_tag, banner, run_cache_demo, run_task  # noqa: E402

CSV_LINES_SHOWN = 6
SUMMARY_FIELDS = ("scenes_seen", "matched_by_fingerprint", "matched_by_id", "not_found", "deleted_on_stashdb",
                  "scenes_updated", "tags_added", "tags_unmatched", "tags_blacklisted", "tags_deleted_on_stashdb",
                  "tags_skipped_by_history", "probable_merges", "strategy", "scenes_from_feed", "scenes_rematched",
                  "errors", "stashdb_requests", "stash_mutations", "elapsed_s", "report_path")


def print_summary(output: dict) -> None:
    for key in SUMMARY_FIELDS:
        if output.get(key) is not None:
            print(f"    {key:<24} {output[key]}")
    if output.get("unmatched_tag_names"):
        names = ", ".join(output["unmatched_tag_names"][:8])
        print(f"    {'unmatched_tag_names':<24} {names}{' ...' if len(output['unmatched_tag_names']) > 8 else ''}")


def run(label: str, document: dict, problems: list[str]) -> dict:
    """Run the plugin once, print its log and summary; return its output (empty on failure)."""
    output, seconds = run_task(label, document, problems)
    if output is None:
        return {}
    print(f"  summary ({seconds:.1f} s including interpreter start):")
    print_summary(output)
    return output


def show_csv(path_text: str | None, problems: list[str]) -> None:
    if not path_text or not Path(path_text).is_file():
        problems.append(f"preview: no CSV report at {path_text!r}")
        return
    path = Path(path_text)
    lines = path.read_text(encoding="utf-8").splitlines()
    print(f"  preview report: {path}  ({len(lines) - 1} rows)")
    for line in lines[:CSV_LINES_SHOWN]:
        print(f"    {line[:150]}")
    if len(lines) > CSV_LINES_SHOWN:
        print("    ...")


def check_tag_sync(report: dict, applied: dict, elapsed: float, problems: list[str]) -> None:
    """Compare the fake Stash's data with what the generator expects and with the sync's own summary."""
    banner("Checking the fake Stash's data after the tag sync")
    print(f"  scenes that lost a tag            {report['scenes_lost_tags']}")
    print(f"  scenes that gained tags           {report['scenes_changed']}  (expected {report['expected_scenes']})")
    print(f"  tags added                        {report['tags_added']}  (expected {report['expected_tags']})")
    print(f"  scenes differing from expected    {report['differing_from_expected']}")
    print(f"  distinct tag sets added           {report['distinct_tag_sets']}")
    print(f"  Stash mutations                   {report['stash_mutations']}")
    print(f"  StashDB requests / 429 answers    {report['stashdb_requests']} / {report['stashdb_throttled']}")
    print(f"  sync wall time                    {elapsed:.1f} s")
    if report["scenes_lost_tags"]:
        problems.append(f"{report['scenes_lost_tags']} scenes lost tags, e.g. {report['lost_examples']}")
    if report["differing_from_expected"]:
        problems.append(f"{report['differing_from_expected']} scenes did not gain exactly the expected tags, "
                        f"e.g. {report['differing_examples']}")
    if report["stashdb_throttled"]:
        problems.append(f"StashDB answered 429 {report['stashdb_throttled']} times")
    if applied:
        for key, seen in (("scenes_updated", report["scenes_changed"]), ("tags_added", report["tags_added"]),
                          ("stash_mutations", report["stash_mutations"]),
                          ("stashdb_requests", report["stashdb_requests"])):
            if applied.get(key) != seen:
                problems.append(f"summary says {key}={applied.get(key)}, the fakes saw {seen}")
        if applied.get("errors"):
            problems.append(f"the sync reported {applied['errors']} errors")
    if report["stash_mutations"] > report["distinct_tag_sets"]:
        problems.append(f"{report['stash_mutations']} mutations for {report['distinct_tag_sets']} distinct tag sets")


def run_tag_sync(fakes, plugin_dir: Path, problems: list[str]) -> None:
    """Preview, then the real sync, each checked against the fakes."""
    fakes.snapshot()
    preview = run("Preview (dry run)", plugin_stdin(fakes.stash.port, plugin_dir, dry_run=True), problems)
    if preview:
        show_csv(preview.get("report_path"), problems)
    unchanged = fakes.report()
    if unchanged["stash_mutations"] or unchanged["scenes_changed"]:
        problems.append(f"preview changed data: {unchanged['stash_mutations']} mutations, "
                        f"{unchanged['scenes_changed']} scenes changed")
    if unchanged["stashdb_throttled"]:
        problems.append(f"preview: StashDB answered 429 {unchanged['stashdb_throttled']} times")

    fakes.snapshot()
    started = time.perf_counter()
    applied = run("Sync", plugin_stdin(fakes.stash.port, plugin_dir), problems)
    check_tag_sync(fakes.report(), applied, time.perf_counter() - started, problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=600, help="StashDB requests per minute")
    args = parser.parse_args(argv)
    problems: list[str] = []
    demo_started = time.perf_counter()

    banner(f"Generating a library of {args.scenes} scenes (seed {args.seed})")
    fakes = start_fakes(args.scenes, seed=args.seed, rate_per_minute=args.rate)
    try:
        demo_tag = add_demo_tag(fakes.world)
        info = fakes.info()
        print(f"  {info['scenes']} scenes, {info['linked']} linked to the fake StashDB; kinds: {info['kinds']}")
        print(f"  tag {DEMO_TAG!r} on scenes {', '.join(map(str, demo_tag.scene_ids))}, performer "
              f"{demo_tag.performer_id} and studio {demo_tag.studio_id}")
        print(f"  fake Stash    http://127.0.0.1:{fakes.stash.port}/graphql")
        print(f"  fake StashDB  {fakes.stashdb.url}  (enforces {args.rate:g} requests/min)")

        with tempfile.TemporaryDirectory(prefix="tagmanager-demo-") as tmp:
            plugin_dir = Path(tmp)
            print(f"  PluginDir     {plugin_dir}")
            run_tag_sync(fakes, plugin_dir, problems)
            run_cache_demo(fakes, plugin_dir, demo_tag, problems)
    finally:
        fakes.stop()

    if problems:
        banner("FAILED")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    banner(f"OK in {time.perf_counter() - demo_started:.0f} s: tag sync exact, cache exact")
    print("  Tag sync: no scene lost a tag; every scene gained exactly the expected tags.")
    print("  Cache: the full sync mirrored every entity; the smart sync picked up exactly the one edit;")
    print("  Cache: Status shows nothing pending; the README query returns exactly the expected scenes.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
