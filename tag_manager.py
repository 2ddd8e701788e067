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
    parser.add_argument("--full-recheck", action="store_true",
                        help="sync_scene_tags: check every scene by fingerprint instead of StashDB's change feed")
    parser.add_argument("--since", default=None, help="cache_incremental_sync: RFC3339 time to sync from")
    parser.add_argument("--id", default=None, help="cache_sync_scene: the scene id")
    parser.add_argument("--endpoint", default=None, help="reset_sync_history: forget only this stash-box (URL or name)")
    parser.add_argument("--entities", default=None,
                        help="cache modes: comma separated subset of studios,tags,performers,groups,galleries,scenes,images")
    parser.add_argument("--full-every", default=None, dest="full_every",
                        help="cache_watch: run a full sync instead of a smart one when the last is this old (7d, 12h)")
    parser.add_argument("--interval", default=None, help="cache_watch: seconds between smart syncs (default 300)")
    parser.add_argument("--heartbeat", default=None, help="cache_watch: seconds between heartbeats (default 30)")
    parser.add_argument("--plugin-dir", default=None, type=Path,
                        help="folder that holds data/ and reports/ (default: the folder of tag_manager.py)")
    return parser


def parse_command_line(argv: list[str]) -> Invocation:
    """Parse ``tag_manager.py MODE --stash-url URL ...`` into an invocation."""
    options = build_arg_parser().parse_args(argv)
    url = urlsplit(options.stash_url if "://" in options.stash_url else f"http://{options.stash_url}")
    connection = {"Scheme": url.scheme or "http", "Host": url.hostname or "localhost", "Port": url.port or 9999}
    args: dict[str, Any] = {"mode": options.mode}
    if options.dry_run:
        args["dry_run"] = "true"
    if options.full_recheck:
        args["full_recheck"] = "true"
    for name in ("since", "id", "interval", "heartbeat", "entities", "full_every", "endpoint"):
        if getattr(options, name) is not None:
            args[name] = getattr(options, name)
    api_key = options.api_key or os.environ.get("STASH_API_KEY") or None
    return Invocation(mode=options.mode, args=args, server_connection=connection, terminal=True, api_key=api_key,
                      plugin_dir=options.plugin_dir or PLUGIN_DIR)


def is_true(value: Any) -> bool:
    """Read a task argument that Stash passes as text ("true") or a JSON boolean."""
    return value is True or str(value).strip().lower() in TRUE_WORDS


def run_sync_scene_tags(ctx: RunContext):
    """Mode ``sync_scene_tags``: StashDB tags onto linked scenes of every stash-box (or a preview of it)."""
    from tagman_base.settings import TagBlacklist
    from tagman_base.stash_boxes import stash_boxes_to_sync
    from tagman_tagsync.change_feed import FeedPolicy
    from stashdb_scene_sync import sync_boxes

    boxes, exclude_patterns = ctx.stash.stash_boxes_and_exclusions()
    for box in boxes:
        plugin_log.redactor.add(box.api_key)
    chosen = stash_boxes_to_sync(boxes, ctx.settings.stash_box_endpoint)
    blacklist = TagBlacklist.parse(ctx.settings.tag_blacklist, exclude_patterns)
    dry_run = ctx.settings.sync_dry_run or is_true(ctx.args.get("dry_run"))

    policy = FeedPolicy(force_full=ctx.settings.tag_sync_full_recheck or is_true(ctx.args.get("full_recheck")),
                        full_every_days=ctx.settings.tag_sync_full_recheck_days)

    def run():
        return sync_boxes(ctx.stash, chosen, blacklist, ctx.settings, dry_run, ctx.plugin_dir,
                          progress=ctx.progress, sleep=ctx.sleep, policy=policy)

    if dry_run:
        return run()
    import hook_gate
    from tagman_base import hook_switch

    try:
        with single_run(ctx.plugin_dir / hook_gate.TAG_SYNC_LOCK, "A scene tag sync"):
            # Our lock is held: the companion goes off, so our writes start no hook process.
            hook_switch.keep_in_step(ctx.stash, ctx.plugin_dir, ctx.settings.live_cache)
            return run()
    finally:  # lock released: back in step (a killed sync is repaired by the next task's settings read)
        hook_switch.keep_in_step(ctx.stash, ctx.plugin_dir, ctx.settings.live_cache)


def run_reset_sync_history(ctx: RunContext):
    """Mode ``reset_sync_history``: forget which StashDB tags were settled (argument ``endpoint``: one box only)."""
    import hook_gate
    from stashdb_scene_sync import reset_sync_history

    with single_run(ctx.plugin_dir / hook_gate.TAG_SYNC_LOCK, "A scene tag sync"):
        return reset_sync_history(ctx.stash, ctx.plugin_dir, str(ctx.args.get("endpoint") or "").strip())


def run_link_tags(ctx: RunContext):
    """Mode ``link_tags``: give local tags the StashIDs of the stash-box tags they name (``dry_run``: preview)."""
    from tagman_base.stash_boxes import select_stash_box
    from stashdb_scene_sync import stashdb_client_for
    from stashdb_tag_links import TAG_LINK_LOCK, link_tags_for_box

    boxes, _ = ctx.stash.stash_boxes_and_exclusions()
    for box in boxes:
        plugin_log.redactor.add(box.api_key)
    box = select_stash_box(boxes, ctx.settings.stash_box_endpoint)
    stashdb = stashdb_client_for(box, ctx.settings, ctx.sleep)
    dry_run = is_true(ctx.args.get("dry_run"))
    log.info(f"Linking local tags to the tags of {box.endpoint}" + (" (preview)" if dry_run else ""))
    if dry_run:
        return link_tags_for_box(ctx.stash, stashdb, box, True, ctx.plugin_dir / "reports", ctx.progress)
    with single_run(ctx.plugin_dir / TAG_LINK_LOCK, "A tag link run"):
        return link_tags_for_box(ctx.stash, stashdb, box, False, ctx.plugin_dir / "reports", ctx.progress)


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
    "reset_sync_history": run_reset_sync_history,
    "cache_full_sync": local_cache.full_sync,
    "cache_incremental_sync": local_cache.incremental_sync,
    "cache_smart_sync": local_cache.smart_sync,
    "cache_hook": local_cache.hook,
    "cache_sync_scene": local_cache.sync_scene,
    "cache_status": local_cache.status,
    "cache_watch": local_cache.watch,
    "link_tags": run_link_tags,
}
HOOK_MODES = {"cache_hook"}  # never fail: a hook runs inside the user's own edit in Stash
LEAN_MODES = {"cache_hook", "cache_sync_scene", "cache_status", "cache_watch"}  # no stashapi start-up


def check_runtime_dependencies() -> None:
    """Make requests and stashapi importable (through PythonDepManager when needed) or fail with the pip command."""
    from tagman_base import plugin_deps

    plugin_deps.ensure_runtime_dependencies()


def keep_hooks_in_step(invocation: Invocation, stash: Any, settings: Settings) -> None:
    """Keep the companion hook plugin enabled exactly while ``liveCache`` is on (see ``hook_switch``)."""
    from tagman_base import hook_switch

    if invocation.mode not in HOOK_MODES:
        hook_switch.keep_in_step(stash, invocation.plugin_dir, settings.live_cache)
    elif not settings.live_cache:  # the companion's own hook: it is enabled, or it would not run
        hook_switch.switch_off_for_hook(stash)


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
                                 lean=invocation.mode in LEAN_MODES,
                                 establish_session=invocation.mode not in HOOK_MODES)  # a hook's cookie is fresh
    if invocation.mode in HOOK_MODES:
        local_cache.prepare_hook_client(stash)
    settings = Settings.from_plugin_config(stash.plugin_settings())
    keep_hooks_in_step(invocation, stash, settings)
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
