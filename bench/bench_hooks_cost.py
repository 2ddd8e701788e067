"""What tagManager costs Stash in hook processes, and runs that outlive their session.

    .venv/bin/python bench/bench_hooks_cost.py [--scenes 1500] [--session-s 30] [--baseline]

Against the fakes on loopback, with this plugin installed in the fake Stash's plugins folder (every
``*.yml`` loaded, id = file name) and the fake starting hook processes exactly as Stash does (one
process per entity per enabled plugin declaring the trigger, waited for before it answers):

1. hook processes started per 1,000 scenes updated by the scene tag sync, liveCache off and on;
2. hook processes started per 1,000 scanned scenes (Scene.Create.Post, input null), liveCache off,
   on a fresh install (Stash enables a new plugin);
3. a scene tag sync and a cache full sync that run longer than a ``--session-s`` session (Stash
   with a login; once with an API key, once without), each through stdin as Stash runs them.

``--baseline`` also measures (1) and (2) with the hooks declared in ``tagManager.yml`` itself (the
layout before the companion manifest), for comparison.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import plugin_folder, start_servers  # noqa: E402
from tests.fakes.stash_sessions import SessionStore  # noqa: E402

PLUGIN = REPO / "tag_manager.py"


def run_task(servers, folder: Path, mode: str, **args) -> tuple[dict, float]:
    """Run one task as Stash does; return its JSON document and wall time."""
    document = {"server_connection": servers.stash.server_connection(folder), "args": {"mode": mode, **args}}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(PLUGIN)], input=json.dumps(document), capture_output=True,
                          text=True, timeout=3600)
    elapsed = time.perf_counter() - started
    return json.loads(done.stdout), elapsed


def baseline_folder(plugins: Path) -> Path:
    """The plugin as it was laid out before: the hooks in tagManager.yml, no companion manifest."""
    import yaml

    folder = plugin_folder(plugins)
    manifest = yaml.safe_load((REPO / "tagManager.yml").read_text())
    manifest["hooks"] = yaml.safe_load((REPO / "tagManagerLiveCache.yml").read_text())["hooks"]
    (folder / "tagManager.yml").unlink()
    (folder / "tagManagerLiveCache.yml").unlink()
    (folder / "tagManager.yml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return folder


def hooks_per_tag_sync(scenes: int, live: bool, baseline: bool = False) -> dict:
    """Hook processes started while the tag sync writes, per 1,000 scenes it updates."""
    with tempfile.TemporaryDirectory() as tmp:
        plugins = Path(tmp) / "plugins"
        folder = baseline_folder(plugins) if baseline else plugin_folder(plugins)
        servers = start_servers(scenes=scenes, seed=17, rate=6000, stash_options={"plugins_dir": plugins})
        try:
            servers.stash.plugins.keep_runs = False
            settings = servers.library.world.plugin_settings.setdefault("tagManager", {})
            if live:
                settings["liveCache"] = True
                run_task(servers, folder, "cache_full_sync")  # hooks would have real work to do
            before = servers.stash.plugins.total_started()
            output, elapsed = run_task(servers, folder, "sync_scene_tags")
            started = servers.stash.plugins.total_started() - before
            updated = output["output"]["scenes_updated"]
            return {"live_cache": live, "layout": "hooks in tagManager.yml" if baseline else "companion",
                    "scenes_updated": updated, "hook_processes": started,
                    "per_1000_scenes": round(1000 * started / max(updated, 1), 1), "sync_s": round(elapsed, 1)}
        finally:
            servers.stash.stop()
            servers.stashdb.stop()


def hooks_per_scan(scenes: int, baseline: bool = False) -> dict:
    """Hook processes a scan of ``scenes`` scenes starts with liveCache off, on a fresh install."""
    with tempfile.TemporaryDirectory() as tmp:
        plugins = Path(tmp) / "plugins"
        folder = baseline_folder(plugins) if baseline else plugin_folder(plugins)
        servers = start_servers(scenes=scenes, seed=17, stash_options={"plugins_dir": plugins})
        try:
            servers.stash.plugins.keep_runs = False
            ids = sorted(servers.library.world.table("scene"))
            started_at = time.perf_counter()
            servers.stash.fire_scan(ids, created=True)
            elapsed = time.perf_counter() - started_at
            started = servers.stash.plugins.total_started()
            del folder
            return {"live_cache": False, "layout": "hooks in tagManager.yml" if baseline else "companion",
                    "scanned_scenes": len(ids), "hook_processes": started,
                    "per_1000_scenes": round(1000 * started / len(ids), 1), "hook_time_in_stash_s": round(elapsed, 1)}
        finally:
            servers.stash.stop()
            servers.stashdb.stop()


def outlive_session(session_s: float, with_api_key: bool) -> list[dict]:
    """A tag sync and a cache full sync, each longer than the session, on a Stash with a login."""
    rows = []
    for mode in ("sync_scene_tags", "cache_full_sync"):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            # 2,000 scenes at 120 StashDB requests/min: the sync needs well over 30 s
            servers = start_servers(scenes=2000, seed=19, rate=120, images=400, galleries=20,
                                    stash_options={"sessions": SessionStore(max_age=session_s)})
            try:
                if with_api_key:
                    servers.library.world.api_key = "bench-stash-api-key"
                if mode == "cache_full_sync":
                    servers.stash.delay_next(60, session_s / 10)  # a slow Stash: about two sessions long
                servers.library.world.plugin_settings["tagManager"] = {"cacheDbPath": str(folder / "c.sqlite3")}
                output, elapsed = run_task(servers, folder, mode)
                refused = sum(1 for kind, _ in servers.stash.auth_log if kind == "refused")
                rows.append({"mode": mode, "credential": "API key" if with_api_key else "refreshed cookie",
                             "session_s": session_s, "run_s": round(elapsed, 1), "stash_requests": servers.stash.count(),
                             "http_401": refused, "result": "ok" if "output" in output else output.get("error")})
            finally:
                servers.stash.stop()
                servers.stashdb.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=1500)
    parser.add_argument("--scan", type=int, default=1000)
    parser.add_argument("--session-s", type=float, default=30.0)
    parser.add_argument("--baseline", action="store_true")
    args = parser.parse_args()
    rows = [hooks_per_tag_sync(args.scenes, live=False), hooks_per_tag_sync(args.scenes, live=True),
            hooks_per_scan(args.scan)]
    if args.baseline:
        rows += [hooks_per_tag_sync(args.scenes, live=False, baseline=True), hooks_per_scan(args.scan, baseline=True)]
    for row in rows:
        print(json.dumps(row), flush=True)
    for with_key in (False, True):
        for row in outlive_session(args.session_s, with_key):
            print(json.dumps(row), flush=True)
            if row["result"] != "ok" or row["run_s"] <= args.session_s:
                print(f"  !! {row['mode']} did not outlive the session as required", flush=True)


if __name__ == "__main__":
    main()
