"""Shared pieces of the demo and the tag sync benchmark.

* ``start_fakes`` generates a library and serves it with a fake Stash and a fake StashDB (threads).
* ``python -m bench.common host ...`` does the same in a process of its own and answers commands
  on stdin (``snapshot``, ``report``, ``quit``) with one JSON line each, so that a benchmark can
  keep the fakes out of the measured process.
* ``python -m bench.common measure --out FILE -- CMD...`` runs CMD (stdin/stdout/stderr passed
  through) and writes its wall time and peak RSS to FILE; a fresh wrapper per run keeps
  ``RUSAGE_CHILDREN`` (the maximum over every waited-for child) down to exactly that one run.
* ``plugin_stdin`` builds the JSON document Stash writes to the plugin, ``StashLogPrinter``
  turns the plugin's stderr protocol into readable lines, ``tag_changes`` compares scene tags.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SESSION_COOKIE = "demo-session-cookie-5e0c41"
STASHDB_API_KEY = "demo-stashdb-api-key-9b27f3"
PLUGIN_SCRIPT = ROOT / "tag_manager.py"
MUTATION_OPERATION = "TagSyncAddTags"
BATCH_MUTATION_OPERATION = "TagSyncAddTagsBatch"  # aliased bulkSceneUpdate fields, one per tag set
PASS2_KINDS = ("fallback", "wrong_hit", "missing", "deleted")  # by-id look-ups (StashDB never returns deleted scenes by fingerprint)
LINKED_KINDS = ("normal", "fallback", "wrong_hit", "deleted", "missing")
LEVEL_NAMES = {"t": "TRACE", "d": "DEBUG", "i": "INFO", "w": "WARN", "e": "ERROR"}
HOST_START_TIMEOUT_S = 900.0


def bench_library_options(fallback_share: float = 0.02, tags: int = 60) -> dict[str, Any]:
    """Generator options: every scene linked, ``fallback_share`` of them needing a by-id look-up.

    The share is split over the three kinds that need pass 2 (no fingerprint known on StashDB,
    fingerprints known for another scene, linked id gone); entities the sync never reads are kept
    tiny so generation stays quick.
    """
    return dict(
        linked_fraction=1.0, unlinked_known_fraction=0.0,
        fallback_fraction=fallback_share * 0.6, wrong_hit_fraction=fallback_share * 0.2,
        missing_fraction=fallback_share * 0.2, deleted_fraction=0.005,
        tags=tags, performers=20, studios=5, groups=2, galleries=0, images=0,
    )


# ---------------------------------------------------------------------------------------- fakes

class Fakes:
    """A generated library served by a fake Stash and a fake StashDB on loopback."""

    def __init__(self, scenes: int, seed: int, rate_per_minute: float, **options: Any) -> None:
        from tests.fakes.fake_stash import FakeStash
        from tests.fakes.fake_stashdb import FakeStashDB
        from tests.fakes.library import generate_library

        started = time.perf_counter()
        self.stashdb = FakeStashDB(None, api_key=STASHDB_API_KEY, max_requests_per_minute=rate_per_minute).start()
        endpoint = self.stashdb.url
        self.library = generate_library(seed=seed, scenes=scenes, endpoint=endpoint, **options)
        self.library.world.stash_boxes = [{"endpoint": endpoint, "api_key": STASHDB_API_KEY, "name": "StashDB",
                                           "max_requests_per_minute": int(rate_per_minute)}]
        self.generate_s = time.perf_counter() - started
        self.rate_per_minute = rate_per_minute
        self.stashdb.load_world(self.library.stashdb)
        self.stash = FakeStash(self.library.world, session_cookie=SESSION_COOKIE).start()
        self.before: dict[int, tuple[int, ...]] = {}

    @property
    def world(self):
        return self.library.world

    def stop(self) -> None:
        self.stash.stop()
        self.stashdb.stop()

    def info(self) -> dict[str, Any]:
        """What a client needs to know about the running fakes."""
        kinds = Counter(self.library.scene_kind.values())
        return {"stash_port": self.stash.port, "stashdb_url": self.stashdb.url, "scenes": len(self.world.table("scene")),
                "linked": sum(kinds[k] for k in LINKED_KINDS), "kinds": dict(kinds),
                "pass2_expected": sum(kinds[k] for k in PASS2_KINDS), "generate_s": round(self.generate_s, 2),
                "rate_per_minute": self.rate_per_minute}

    def snapshot(self) -> dict[str, Any]:
        """Remember every scene's tags and zero the request counters."""
        with self.world.lock:
            self.before = scene_tags(self.world)
        self.stash.clear_log()
        self.stashdb.reset_counters()
        return {"scenes": len(self.before)}

    def edit_stashdb(self, fraction: float, seed: int = 1) -> dict[str, Any]:
        """Apply a tags edit to ``fraction`` of the StashDB scenes that linked scenes match (one pool tag added)."""
        import random

        rng = random.Random(seed)
        pool = sorted(self.library.stashdb_tags)
        matched = sorted({self.library.scene_link[sid] for sid, kind in self.library.scene_kind.items()
                          if kind in ("normal", "fallback", "wrong_hit")})
        chosen = rng.sample(matched, max(1, round(fraction * len(matched))))
        for stashdb_id in chosen:
            tags = list(self.library.stashdb["scenes"][stashdb_id]["tags"])
            self.stashdb.edit_scene(stashdb_id, tags=tags + [self.library.stashdb_tags[rng.choice(pool)]])
        return {"edited": len(chosen), "of": len(matched)}

    def report(self) -> dict[str, Any]:
        """What changed since ``snapshot`` and what the fakes were asked, checked against the generator."""
        if not self.before:
            return {"error": "report before snapshot"}
        with self.world.lock:
            after = scene_tags(self.world)
        changes = tag_changes(self.before, after)
        expected = self.library.expected_tag_additions(self.before)
        wrong = [sid for sid in set(expected) | set(changes["added"])
                 if set(expected.get(sid, ())) != set(changes["added"].get(sid, ()))]
        ops = dict(self.stashdb.operations)
        report = {key: value for key, value in changes.items() if key != "added"}
        report.update(
            expected_scenes=len(expected), expected_tags=sum(len(v) for v in expected.values()),
            differing_from_expected=len(wrong), differing_examples=sorted(wrong)[:5],
            stashdb_requests=self.stashdb.requests, stashdb_throttled=self.stashdb.throttled,
            stashdb_unauthorized=self.stashdb.unauthorized, stashdb_operations=ops,
            stash_mutations=self.stash.count(MUTATION_OPERATION) + sum(
                len(variables) for _, variables in self.stash.requests(BATCH_MUTATION_OPERATION)),
            stash_mutation_requests=self.stash.count(MUTATION_OPERATION) + self.stash.count(BATCH_MUTATION_OPERATION),
            stash_requests=self.stash.count(),
            stash_operations={str(k): v for k, v in self.stash.op_counts.items()},
        )
        return report


def start_fakes(scenes: int, seed: int = 1, rate_per_minute: float = 600, **options: Any) -> Fakes:
    """Generate a library and start both fakes in this process (daemon threads)."""
    return Fakes(scenes, seed, rate_per_minute, **options)


def scene_tags(world) -> dict[int, tuple[int, ...]]:
    """Every scene's tag ids, as the fake Stash holds them now."""
    return {sid: tuple(row["tag_ids"]) for sid, row in world.table("scene").items()}


def tag_changes(before: Mapping[int, tuple[int, ...]], after: Mapping[int, tuple[int, ...]]) -> dict[str, Any]:
    """Compare two snapshots: scenes that lost tags, tags added, distinct added sets and their sizes."""
    lost = sorted(sid for sid, tags in before.items() if not set(tags) <= set(after.get(sid, ())))
    added = {}
    for sid, tags in after.items():
        gained = frozenset(tags) - frozenset(before.get(sid, ()))
        if gained:
            added[sid] = gained
    groups = Counter(added.values())
    return {
        "scenes_lost_tags": len(lost), "lost_examples": lost[:5], "scenes_missing": len(set(before) - set(after)),
        "scenes_changed": len(added), "tags_added": sum(len(v) for v in added.values()),
        "distinct_tag_sets": len(groups), "largest_tag_set_group": max(groups.values(), default=0),
        "groups": sorted(groups.values(), reverse=True), "added": added,
    }


def serve_host(argv: list[str]) -> int:
    """Host both fakes; print their info as one JSON line, then answer commands from stdin until EOF."""
    parser = argparse.ArgumentParser(prog="python -m bench.common host")
    parser.add_argument("--scenes", type=int, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, required=True, help="StashDB requests per minute (box setting and enforcement)")
    parser.add_argument("--options", default="{}", help="JSON: more generate_library options")
    args = parser.parse_args(argv)
    fakes = Fakes(args.scenes, args.seed, args.rate, **json.loads(args.options))
    out = sys.stdout
    out.write(json.dumps(fakes.info()) + "\n")
    out.flush()
    try:
        for line in sys.stdin:  # bounded by the parent closing stdin
            command = line.strip()
            if command == "quit":
                break
            if command == "snapshot":
                answer = fakes.snapshot()
            elif command == "report":
                answer = fakes.report()
            elif command.startswith("edit_stashdb "):
                answer = fakes.edit_stashdb(float(command.split()[1]))
            else:
                answer = {"error": f"unknown command {command!r}"}
            out.write(json.dumps(answer) + "\n")
            out.flush()
    finally:
        fakes.stop()
    return 0


class FakesProcess:
    """Both fakes in a child process (``python -m bench.common host``), driven over its stdin/stdout."""

    def __init__(self, scenes: int, seed: int, rate_per_minute: float, options: Mapping[str, Any]) -> None:
        cmd = [sys.executable, "-m", "bench.common", "host", "--scenes", str(scenes), "--seed", str(seed),
               "--rate", str(rate_per_minute), "--options", json.dumps(dict(options))]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()
        self.stash_port = self.info["stash_port"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait(timeout=30)
            raise RuntimeError(f"the fakes process stopped (exit code {code})")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


# ---------------------------------------------------------------------------------------- plugin

def plugin_stdin(stash_port: int, plugin_dir: Path, dry_run: bool = False, **extra_args: str) -> dict[str, Any]:
    """The JSON document Stash writes to a raw plugin's stdin for the scene tag sync task."""
    args: dict[str, Any] = {"mode": "sync_scene_tags", **extra_args}
    if dry_run:
        args["dry_run"] = "true"
    return {
        "server_connection": {
            "Scheme": "http", "Host": "0.0.0.0", "Port": stash_port,
            "SessionCookie": {"Name": "session", "Value": SESSION_COOKIE, "Path": "", "Domain": "",
                              "Expires": "0001-01-01T00:00:00Z", "RawExpires": "", "MaxAge": 0,
                              "Secure": False, "HttpOnly": False, "SameSite": 0, "Raw": "", "Unparsed": None},
            "Dir": str(plugin_dir), "PluginDir": str(plugin_dir),
        },
        "args": args,
    }


def parse_log_line(line: str) -> tuple[str, str]:
    """Split one stderr line of Stash's plugin protocol into (level code, message)."""
    line = line.rstrip("\n")
    if len(line) >= 3 and line[0] == "\x01" and line[2] == "\x02":
        return line[1], line[3:]
    return "", line


class StashLogPrinter:
    """Prints plugin log lines readably: progress every 10 %, repetitive per-scene lines capped."""

    PER_KIND = 4

    def __init__(self, stream: IO[str] = sys.stdout, show_debug: bool = False) -> None:
        self.stream = stream
        self.show_debug = show_debug
        self.next_progress = 0.1
        self.kinds: Counter = Counter()
        self.hidden: Counter = Counter()

    @staticmethod
    def kind(level: str, message: str) -> str:
        """Lines that differ only in ids, titles and numbers are of one kind."""
        text = re.sub(r"\(['\"].*?['\"]\)|'[^']*'|\"[^\"]*\"|[0-9a-f-]{36}|\d+", "#", message)
        return level + ":" + " ".join(text.split(":", 1)[0].split()[:8])

    def feed(self, line: str) -> None:
        level, message = parse_log_line(line)
        if level == "p":
            fraction = float(message or 0)
            if fraction >= self.next_progress or fraction >= 1.0:
                self.stream.write(f"    progress {fraction * 100:5.1f} %\n")
                self.next_progress = math.floor(fraction * 10 + 1) / 10
            return
        name = LEVEL_NAMES.get(level, "OUT")
        if level in ("d", "t") and not self.show_debug:
            self.hidden[name] += 1
            return
        kind = self.kind(level, message)
        self.kinds[kind] += 1
        if self.kinds[kind] > self.PER_KIND and level != "e":
            self.hidden[name] += 1
            return
        for text in message.splitlines() or [""]:
            self.stream.write(f"    {name:<5} {text}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.hidden:
            hidden = ", ".join(f"{count} {name.lower()}" for name, count in sorted(self.hidden.items()))
            self.stream.write(f"    ({hidden} lines not shown: repeated per-scene lines and debug detail)\n")
        self.stream.flush()


def run_plugin_streaming(document: dict, printer: StashLogPrinter, timeout_s: float = 600.0) -> tuple[int, str, float]:
    """Run ``tag_manager.py`` as Stash does (one JSON document on stdin), printing its log as it comes.

    Returns (exit code, stdout, seconds).
    """
    import threading

    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(PLUGIN_SCRIPT)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)
    reader.start()
    proc.stdin.write(json.dumps(document))
    proc.stdin.close()
    deadline = started + timeout_s
    for line in proc.stderr:  # ends when the plugin exits
        printer.feed(line)
        if time.perf_counter() > deadline:
            proc.kill()
            break
    printer.close()
    code = proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
    reader.join(timeout=30)
    return code, "".join(chunks), time.perf_counter() - started


def measure_main(argv: list[str]) -> int:
    """``measure --out FILE -- CMD...``: run CMD with inherited stdio; write wall time and peak RSS of it."""
    if "--" not in argv:
        raise SystemExit("usage: python -m bench.common measure --out FILE [--timeout S] -- CMD...")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m bench.common measure")
    parser.add_argument("--out", required=True)
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args(argv[:split])
    started = time.perf_counter()
    try:
        code = subprocess.run(argv[split + 1:], timeout=args.timeout).returncode
    except subprocess.TimeoutExpired:
        code = -9
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    Path(args.out).write_text(json.dumps({
        "returncode": code, "wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024,
        "user_s": usage.ru_utime, "system_s": usage.ru_stime,
    }), encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["host"]:
        return serve_host(argv[1:])
    if argv[:1] == ["measure"]:
        return measure_main(argv[1:])
    raise SystemExit("usage: python -m bench.common {host|measure} ...")


if __name__ == "__main__":
    sys.exit(main())
