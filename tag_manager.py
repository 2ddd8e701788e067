"""tagManager entry point: run by Stash as a plugin task (JSON on stdin) or from a shell.

Stash:  python tag_manager.py   < {"server_connection": {...}, "args": {"mode": "sync_scene_tags"}}
Shell:  python tag_manager.py sync_scene_tags --stash-url http://host:9999 [--api-key KEY] [--dry-run]

Exactly one JSON document goes to stdout: {"output": <summary>} or {"error": "<what and what to do>"}.
Logs and progress go to stderr (Stash's protocol as a plugin, plain text on a terminal).
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and len(sys.argv) == 1:
    # Stash starts this script for every entity an update touches (hooks): answer an idle hook
    # before importing anything else, so that it costs little more than starting Python.
    import hook_gate

    STDIN_TEXT: str | None = sys.stdin.read()
    hook_gate.exit_if_idle(STDIN_TEXT)
else:
    STDIN_TEXT = None

import argparse
import contextlib
import json
import logging
import os
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import local_cache
from tagman_base import plugin_log
from tagman_base.run_context import RunContext
from tagman_base.settings import Settings
from tagman_base.errors import RunLockedError, SettingsError, TagManagerError

PLUGIN_DIR = Path(__file__).resolve().parent
TRUE_WORDS = {"true", "1", "yes", "on"}
# Aim 2 % under the stash-box limit: scheduling jitter must never make two requests look too close.
RATE_SAFETY_FACTOR = 0.98

log = logging.getLogger(plugin_log.LOGGER_NAME)


@dataclass(frozen=True)
class Invocation:
    """One parsed request to run a mode, from Stash's stdin or from the command line."""

    mode: str
    args: Mapping[str, Any]
    server_connection: Mapping[str, Any]
    terminal: bool = False
    api_key: str | None = None
    plugin_dir: Path = PLUGIN_DIR


def parse_stdin(text: str) -> Invocation:
    """Parse the JSON document Stash writes to a raw plugin's stdin."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise SettingsError(f"The plugin input is not valid JSON ({exc.msg}). Run the task from Stash's Tasks page.") from None
    if not isinstance(document, dict) or not isinstance(document.get("server_connection"), dict):
        raise SettingsError("The plugin input has no server_connection. Run the task from Stash's Tasks page.")
    args = document.get("args") or {}
    if not isinstance(args, dict):
        raise SettingsError("The plugin input's args must be an object.")
    connection = document["server_connection"]
    plugin_dir = Path(connection.get("PluginDir") or PLUGIN_DIR)
    return Invocation(mode=str(args.get("mode") or ""), args=args, server_connection=connection, plugin_dir=plugin_dir)


def build_arg_parser() -> argparse.ArgumentParser:
    """The command-line interface for power users and cron."""
    parser = argparse.ArgumentParser(prog="tag_manager.py", description="tagManager for Stash, from a shell.")
    parser.add_argument("mode", choices=sorted(MODES), help="what to run")
    parser.add_argument("--stash-url", default=os.environ.get("STASH_URL", "http://localhost:9999"),
                        help="Stash's address (default: $STASH_URL or http://localhost:9999)")
    parser.add_argument("--api-key", default=None, help="Stash API key (default: $STASH_API_KEY)")
    parser.add_argument("--dry-run", action="store_true", help="preview only: change nothing")
    parser.add_argument("--since", default=None, help="cache_incremental_sync: RFC3339 time to sync from")
    parser.add_argument("--id", default=None, help="cache_sync_scene: the scene id")
    parser.add_argument("--entities", default=None,
                        help="cache modes: comma separated subset of studios,tags,performers,groups,galleries,scenes,images")
    parser.add_argument("--full-every", default=None, dest="full_every",
                        help="cache_watch: run a full sync instead of a smart one when the last is this old (7d, 12h)")
    parser.add_argument("--interval", default=None, help="cache_watch: seconds between smart syncs (default 300)")
    parser.add_argument("--heartbeat", default=None, help="cache_watch: seconds between heartbeats (default 30)")
    return parser


def parse_command_line(argv: list[str]) -> Invocation:
    """Parse ``tag_manager.py MODE --stash-url URL ...`` into an invocation."""
    options = build_arg_parser().parse_args(argv)
    url = urlsplit(options.stash_url if "://" in options.stash_url else f"http://{options.stash_url}")
    connection = {"Scheme": url.scheme or "http", "Host": url.hostname or "localhost", "Port": url.port or 9999}
    args: dict[str, Any] = {"mode": options.mode}
    if options.dry_run:
        args["dry_run"] = "true"
    for name in ("since", "id", "interval", "heartbeat", "entities", "full_every"):
        if getattr(options, name) is not None:
            args[name] = getattr(options, name)
    api_key = options.api_key or os.environ.get("STASH_API_KEY") or None
    return Invocation(mode=options.mode, args=args, server_connection=connection, terminal=True, api_key=api_key)


def is_true(value: Any) -> bool:
    """Read a task argument that Stash passes as text ("true") or a JSON boolean."""
    return value is True or str(value).strip().lower() in TRUE_WORDS


def run_sync_scene_tags(ctx: RunContext):
    """Mode ``sync_scene_tags``: StashDB tags onto linked scenes (or a preview of it)."""
    from tagman_base.settings import TagBlacklist
    from tagman_base.stash_client import select_stash_box
    from stashdb_api import StashDBClient, TokenBucket, effective_rate_per_minute
    from stashdb_scene_sync import SceneTagSync

    boxes, exclude_patterns = ctx.stash.stash_boxes_and_exclusions()
    for box in boxes:
        plugin_log.redactor.add(box.api_key)
    box = select_stash_box(boxes, ctx.settings.stash_box_endpoint)
    blacklist = TagBlacklist.parse(ctx.settings.tag_blacklist, exclude_patterns)
    rate_per_minute = effective_rate_per_minute(box.max_requests_per_minute, ctx.settings.max_requests_per_minute)
    limiter = TokenBucket(rate_per_minute * RATE_SAFETY_FACTOR / 60.0)
    stashdb = StashDBClient(box.endpoint, box.api_key, limiter, sleep=ctx.sleep)
    dry_run = ctx.settings.sync_dry_run or is_true(ctx.args.get("dry_run"))
    log.info(f"Syncing scene tags from {box.endpoint} at up to {rate_per_minute:g} requests/min"
             + (" (dry run)" if dry_run else ""))
    sync = SceneTagSync(ctx.stash, stashdb, box, blacklist, dry_run, ctx.plugin_dir / "reports", progress=ctx.progress)
    if dry_run:
        return sync.run()
    import hook_gate

    with single_run(ctx.plugin_dir / hook_gate.TAG_SYNC_LOCK, "A scene tag sync"):
        return sync.run()


@contextlib.contextmanager
def single_run(lock_path: Path, job: str):
    """Refuse to start while another process runs the same job (the OS drops the lock on SIGKILL)."""
    from tagman_base import file_lock

    try:
        with file_lock.exclusive(lock_path):
            yield
    except file_lock.LockHeld as held:
        raise RunLockedError(
            f"{job} is already running (process {held}); this run changed nothing. "
            "Wait for it to finish, or cancel it in Stash's Tasks page, then run again."
        ) from None


MODES: dict[str, Callable[[RunContext], Any]] = {
    "sync_scene_tags": run_sync_scene_tags,
    "cache_full_sync": local_cache.full_sync,
    "cache_incremental_sync": local_cache.incremental_sync,
    "cache_smart_sync": local_cache.smart_sync,
    "cache_hook": local_cache.hook,
    "cache_sync_scene": local_cache.sync_scene,
    "cache_status": local_cache.status,
    "cache_watch": local_cache.watch,
}
HOOK_MODES = {"cache_hook"}  # never fail: a hook runs inside the user's own edit in Stash
LEAN_MODES = {"cache_hook", "cache_sync_scene", "cache_status", "cache_watch"}  # no stashapi start-up


def check_runtime_dependencies() -> None:
    """Make requests and stashapi importable (through PythonDepManager when needed) or fail with the pip command."""
    import plugin_deps

    plugin_deps.ensure_runtime_dependencies()


def live_marker(plugin_dir: Path) -> Path:
    """File that exists while the last run that read the settings saw ``liveCache`` on."""
    import hook_gate

    return plugin_dir / hook_gate.LIVE_MARKER


def remember_live_cache(plugin_dir: Path, live_cache: bool) -> None:
    """Keep the marker in step with the setting, so that hooks can answer without asking Stash."""
    marker = live_marker(plugin_dir)
    try:
        if live_cache:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        else:
            marker.unlink(missing_ok=True)
    except OSError as exc:
        log.debug(f"could not update {marker}: {exc}")


@dataclass(frozen=True)
class QuickHookAnswer:
    """A hook answered from local files (same JSON keys as a full hook result's status and reason)."""

    status: str
    reason: str
    log_level: int = logging.DEBUG

    def as_dict(self) -> dict:
        """JSON-ready form."""
        return {"status": self.status, "reason": self.reason}

    def __str__(self) -> str:
        return f"Cache hook: {self.status} ({self.reason})."


def quick_hook_answer(invocation: Invocation) -> QuickHookAnswer | None:
    """A hook's answer when it has nothing to do, decided from local files alone (see ``hook_gate``)."""
    import hook_gate

    document = {"server_connection": {"PluginDir": str(invocation.plugin_dir)}, "args": dict(invocation.args)}
    answer = hook_gate.idle_hook_answer(document)
    return QuickHookAnswer(answer["status"], answer["reason"]) if answer else None


def execute(invocation: Invocation, progress: Callable[[float], None]) -> Any:
    """Connect to Stash, read the settings and run the requested mode."""
    if invocation.mode not in MODES:
        raise SettingsError(f"Unknown mode {invocation.mode!r}. Known modes: {', '.join(sorted(MODES))}.")
    if invocation.mode in HOOK_MODES and (answer := quick_hook_answer(invocation)) is not None:
        return answer
    if invocation.mode in HOOK_MODES:
        return local_cache.run_hook_safely(lambda: connect_and_run(invocation, progress), invocation.args)
    return connect_and_run(invocation, progress)


def connect_and_run(invocation: Invocation, progress: Callable[[float], None]) -> Any:
    """Connect (lean for the cache's live modes), read the settings, run the mode."""
    if invocation.mode not in LEAN_MODES:  # the lean modes need neither requests nor stashapi
        check_runtime_dependencies()
    from tagman_base import stash_client

    plugin_log.redactor.add(invocation.api_key)
    plugin_log.redactor.add((invocation.server_connection.get("SessionCookie") or {}).get("Value"))
    stash = stash_client.connect(invocation.server_connection, api_key=invocation.api_key,
                                 lean=invocation.mode in LEAN_MODES)
    if invocation.mode in HOOK_MODES:
        local_cache.prepare_hook_client(stash)
    settings = Settings.from_plugin_config(stash.plugin_settings())
    if invocation.mode.startswith("cache_"):
        remember_live_cache(invocation.plugin_dir, settings.live_cache)
    ctx = RunContext(stash, settings, invocation.args, invocation.plugin_dir, progress)
    return MODES[invocation.mode](ctx)


def to_output(result: Any) -> Any:
    """Turn a mode's result into JSON-ready data (its ``as_dict()`` when it has one)."""
    if hasattr(result, "as_dict"):
        return result.as_dict()
    return asdict(result) if is_dataclass(result) else result


def main(argv: list[str] | None = None, stdin_text: str | None = None) -> int:
    """Run one invocation and print exactly one JSON document; return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    terminal = bool(argv)
    progress = plugin_log.configure(terminal=terminal)
    try:
        invocation = parse_command_line(argv) if terminal else parse_stdin(sys.stdin.read() if stdin_text is None else stdin_text)
        result = execute(invocation, progress.report)
    except TagManagerError as exc:
        message = plugin_log.redactor.redact(str(exc))
        log.error(message)
        print(json.dumps({"error": message}))
        return 1
    except Exception as exc:  # a bug: still answer Stash with one JSON document
        message = plugin_log.redactor.redact(f"Unexpected {type(exc).__name__}: {exc}")
        log.error(message + "\n" + plugin_log.redactor.redact(traceback.format_exc()))
        print(json.dumps({"error": message}))
        return 1
    log.log(getattr(result, "log_level", logging.INFO), plugin_log.redactor.redact(str(result)))
    print(json.dumps({"output": to_output(result)}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(stdin_text=STDIN_TEXT))
