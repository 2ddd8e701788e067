"""Benchmark of the live cache against a fake Stash running in its own process.

    .venv/bin/python bench/bench_hook.py [--scenes 2000] [--hooks 40] [--watch-seconds 60]

1. Hook latency: wall time of one ``cache_hook`` process, from spawn to exit, for a scene update
   (the plugin started exactly as Stash starts it: one JSON document on stdin), with liveCache on
   and off (with the companion manifest, Stash starts such a hook at most once per install: it
   switches its own plugin off; here the fake has no plugin folder, so every run pays it). Bound: median <= 400 ms. Python's bytecode cache is on for the plugin
   processes, as in a Stash install (the first run writes it; ``PYTHONPYCACHEPREFIX`` keeps it in the
   temporary folder); ``--no-bytecode-cache`` measures with every module compiled on each start.
2. Freshness under watch mode: ``cache_watch --interval 5`` runs while 100 scene edits per minute
   hit the fake (liveCache off, so only the watch brings them in); for every edit, the time until
   the mirror shows it. Expected: about half the interval on average, at most interval + one sync.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PLUGIN = REPO / "tag_manager.py"
HOOK_MEDIAN_BOUND_S = 0.400
EDIT_MUTATION = """
mutation BenchHookEdit($input: SceneUpdateInput!) { sceneUpdate(input: $input) { id updated_at } }"""
CONFIGURE_MUTATION = """
mutation BenchHookConfigure($input: Map!) { configurePlugin(plugin_id: "tagManager", input: $input) }"""


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(share * len(ordered) + 0.5)) - 1))]


class FakeStashProcess:
    """``python -m tests.fakes.fake_stash`` in a child process."""

    def __init__(self, scenes: int, settings: dict) -> None:
        cmd = [sys.executable, "-m", "tests.fakes.fake_stash", "--port", "0", "--seed", "3", "--scenes", str(scenes),
               "--images", str(scenes // 2), "--galleries", str(max(1, scenes // 50)),
               "--plugin-settings", json.dumps({"tagManager": settings})]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("the fake Stash did not start")
        info = json.loads(line)
        self.url, self.port = info["url"], info["port"]
        import requests

        self.session = requests.Session()

    def call(self, query: str, variables: dict) -> dict:
        response = self.session.post(self.url + "/graphql", json={"query": query, "variables": variables}, timeout=30)
        body = response.json()
        if body.get("errors"):
            raise RuntimeError(body["errors"])
        return body["data"]

    def edit(self, scene_id: int, title: str) -> None:
        self.call(EDIT_MUTATION, {"input": {"id": str(scene_id), "title": title}})

    def configure(self, settings: dict) -> None:
        self.call(CONFIGURE_MUTATION, {"input": settings})

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


def hook_document(port: int, plugin_dir: Path, scene_id: int, title: str) -> str:
    """What Stash writes to the plugin's stdin for Scene.Update.Post."""
    return json.dumps({
        "server_connection": {"Scheme": "http", "Host": "0.0.0.0", "Port": port, "SessionCookie": None,
                              "Dir": str(plugin_dir), "PluginDir": str(plugin_dir)},
        "args": {"mode": "cache_hook", "hookContext": {"id": scene_id, "type": "Scene.Update.Post",
                                                       "input": {"id": str(scene_id), "title": title},
                                                       "inputFields": ["id", "title"]}},
    })


def run_status(port: int, plugin_dir: Path) -> None:
    """Run "Cache: Status" as Stash would (like any task, it reads the settings first)."""
    document = json.dumps({"server_connection": {"Scheme": "http", "Host": "0.0.0.0", "Port": port,
                                                 "SessionCookie": None, "Dir": str(plugin_dir),
                                                 "PluginDir": str(plugin_dir)},
                           "args": {"mode": "cache_status"}})
    done = subprocess.run([sys.executable, str(PLUGIN)], input=document, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"cache_status failed:\n{done.stdout}{done.stderr}")


def mirror_titles(db: Path, ids: list[int]) -> dict[int, str]:
    """Titles of these scenes in the mirror (read-only connection)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        marks = ",".join("?" * len(ids))
        return dict(conn.execute(f"SELECT id, title FROM scenes WHERE id IN ({marks})", ids).fetchall())
    finally:
        conn.close()


def plugin_env(work: Path, bytecode_cache: bool) -> dict[str, str]:
    """Environment of the measured plugin processes."""
    env = dict(os.environ)
    if bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def bench_hooks(fake: FakeStashProcess, db: Path, plugin_dir: Path, count: int, status: str,
                env: dict[str, str]) -> list[float]:
    """Wall times of ``count`` hook processes (one scene edit before each)."""
    times = []
    for n in range(count + 1):  # the first one warms the file cache and is not counted
        scene_id = 1 + n
        title = f"hook bench {status} {n} {time.time():.3f}"
        fake.edit(scene_id, title)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, str(PLUGIN)], input=hook_document(fake.port, plugin_dir, scene_id, title),
                              capture_output=True, text=True, cwd=REPO, timeout=60, env=env)
        elapsed = time.perf_counter() - started
        output = json.loads(done.stdout)["output"]
        if done.returncode != 0 or output["status"] != status:
            raise SystemExit(f"hook run {n}: exit {done.returncode}, {output}\n{done.stderr}")
        if status == "applied" and mirror_titles(db, [scene_id]).get(scene_id) != title:
            raise SystemExit(f"hook run {n}: the mirror does not show the edit")
        if n:
            times.append(elapsed)
    return times


def bench_watch(fake: FakeStashProcess, db: Path, plugin_dir: Path, seconds: float, per_minute: float,
                interval: float, first_scene: int) -> dict:
    """Freshness lag of the mirror under ``cache_watch`` while edits arrive at ``per_minute``."""
    watch = subprocess.Popen([sys.executable, str(PLUGIN), "cache_watch", "--stash-url", fake.url,
                              "--interval", str(interval), "--heartbeat", "2"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(watch.stderr), daemon=True)
    reader.start()
    edits: dict[int, tuple[str, float]] = {}
    seen: dict[int, float] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.1):
            pending = [sid for sid in list(edits) if sid not in seen]
            if not pending:
                continue
            try:
                titles = mirror_titles(db, pending)
            except sqlite3.Error:
                continue
            now = time.perf_counter()
            for sid in pending:
                if titles.get(sid) == edits[sid][0]:
                    seen[sid] = now

    poller = threading.Thread(target=poll, daemon=True)
    try:
        deadline = time.monotonic() + 120
        while "Watching the cache" not in "".join(stderr_lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(interval / 2)  # start the edits in the middle of an interval
        poller.start()
        gap = 60.0 / per_minute
        started = time.perf_counter()
        n = 0
        while time.perf_counter() - started < seconds:  # bounded by ``seconds``
            target = started + n * gap
            time.sleep(max(0.0, target - time.perf_counter()))
            scene_id = first_scene + n  # a scene per edit: each lag is measured on its own
            title = f"watch bench {n}"
            edits[scene_id] = (title, time.perf_counter())
            fake.edit(scene_id, title)
            n += 1
        settle = time.monotonic() + 3 * interval + 30
        while len(seen) < len(edits) and time.monotonic() < settle:
            time.sleep(0.2)
    finally:
        stop.set()
        watch.send_signal(signal.SIGTERM)
        try:
            out, _ = watch.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            watch.kill()
            out, _ = watch.communicate(timeout=30)
        reader.join(timeout=5)
    lags = [seen[sid] - edits[sid][1] for sid in edits if sid in seen]
    summary = json.loads(out)["output"] if out.strip() else {}
    return {"edits": len(edits), "seen": len(lags), "lags": lags, "watch_exit": watch.returncode,
            "watch_runs": summary.get("runs"), "runs_with_changes": summary.get("runs_with_changes")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=2000)
    parser.add_argument("--hooks", type=int, default=40, help="measured hook processes (liveCache on)")
    parser.add_argument("--off-hooks", type=int, default=5,
                        help="measured hook processes with liveCache off (the once-per-install switch-off)")
    parser.add_argument("--watch-seconds", type=float, default=60.0)
    parser.add_argument("--edits-per-minute", type=float, default=100.0)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="compile every module on each plugin start (PYTHONDONTWRITEBYTECODE=1)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_hook_"))
    db = work / "cache.sqlite3"
    settings = {"liveCache": True, "cacheDbPath": str(db)}
    print(f"Fake Stash with {args.scenes} scenes in its own process; cache {db}")
    fake = FakeStashProcess(args.scenes, settings)
    try:
        started = time.perf_counter()
        sync = subprocess.run([sys.executable, str(PLUGIN), "cache_full_sync", "--stash-url", fake.url],
                              capture_output=True, text=True, cwd=REPO, timeout=1800)
        if sync.returncode != 0:
            raise SystemExit(f"full sync failed:\n{sync.stderr}")
        print(f"full sync: {time.perf_counter() - started:.1f} s")

        env = plugin_env(work, not args.no_bytecode_cache)
        run_status(fake.port, work)
        on = bench_hooks(fake, db, work, args.hooks, "applied", env)
        fake.configure({"cacheDbPath": str(db), "liveCache": False})
        run_status(fake.port, work)
        off = bench_hooks(fake, db, work, args.off_hooks, "off", env)
        print(f"\nHook process wall time (spawn to exit), Scene.Update.Post, bytecode cache "
              f"{'off' if args.no_bytecode_cache else 'on'}, load average {os.getloadavg()[0]:.2f} on "
              f"{os.cpu_count()} cores:")
        print(f"  liveCache on  ({len(on)} runs): median {statistics.median(on) * 1000:6.0f} ms   "
              f"p95 {percentile(on, 0.95) * 1000:6.0f} ms   max {max(on) * 1000:6.0f} ms   "
              f"bound: median <= {HOOK_MEDIAN_BOUND_S * 1000:.0f} ms -> "
              f"{'OK' if statistics.median(on) <= HOOK_MEDIAN_BOUND_S else 'OVER'}")
        print(f"  liveCache off, the one hook that switches the companion off ({len(off)} runs): median {statistics.median(off) * 1000:6.0f} ms   "
              f"p95 {percentile(off, 0.95) * 1000:6.0f} ms")

        if args.watch_seconds > 0:
            print(f"\nWatch mode, --interval {args.interval:g}, {args.edits_per_minute:g} edits/min "
                  f"for {args.watch_seconds:g} s ...")
            first = args.hooks + 10
            if first + args.edits_per_minute * args.watch_seconds / 60 > args.scenes:
                raise SystemExit("not enough scenes for one scene per edit: raise --scenes")
            watch = bench_watch(fake, db, work, args.watch_seconds, args.edits_per_minute, args.interval, first)
            lags = watch["lags"]
            print(f"  edits {watch['edits']}, seen in the mirror {watch['seen']}; watch runs {watch['watch_runs']} "
                  f"({watch['runs_with_changes']} with changes); watch exit code after SIGTERM {watch['watch_exit']}")
            if lags:
                print(f"  freshness lag: median {statistics.median(lags):.2f} s   p95 {percentile(lags, 0.95):.2f} s   "
                      f"max {max(lags):.2f} s   (expected about {args.interval / 2:g} s median, "
                      f"under {args.interval:g} s + one sync)")
    finally:
        fake.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
