"""Answer an idle hook before the plugin imports anything else.

Stash starts ``tag_manager.py`` once for every entity that an update touches, and waits for it before
it answers the update: a bulk edit of 1,000 scenes (or this plugin's own scene tag sync) starts 1,000
hook processes. When a hook has nothing to do it must cost little more than starting Python, so this
module uses the standard library only and decides from files in the plugin folder:

- ``data/live_cache.on`` is absent: ``liveCache`` is off (every cache run that reads the settings
  keeps the marker in step with them);
- ``data/scene_tag_sync.lock`` is held: this plugin's tag sync is running, and the next cache sync
  mirrors what it changes.
"""

from __future__ import annotations

import json
import os
import sys

LIVE_MARKER = os.path.join("data", "live_cache.on")
TAG_SYNC_LOCK = os.path.join("data", "scene_tag_sync.lock")
OFF_REASON = "liveCache is off (a change of the setting takes effect with the next cache sync or Cache: Status run)"
DEFERRED_REASON = "a scene tag sync is running; the next cache sync mirrors its changes"


def plugin_dir_of(document: dict) -> str:
    """The plugin folder named in Stash's input (this file's folder when absent)."""
    connection = document.get("server_connection") or {}
    return connection.get("PluginDir") or os.path.dirname(os.path.abspath(__file__))


def idle_hook_answer(document: object) -> dict | None:
    """The output of a hook that has nothing to do, or None when the hook must run (or is no hook)."""
    if not isinstance(document, dict) or not isinstance(document.get("args"), dict):
        return None
    if document["args"].get("mode") != "cache_hook":
        return None
    plugin_dir = plugin_dir_of(document)
    if not os.path.exists(os.path.join(plugin_dir, LIVE_MARKER)):
        return {"status": "off", "reason": OFF_REASON}
    from tagman_base import file_lock

    if file_lock.is_held(os.path.join(plugin_dir, TAG_SYNC_LOCK)):
        return {"status": "deferred", "reason": DEFERRED_REASON}
    return None


def exit_if_idle(stdin_text: str) -> None:
    """Print an idle hook's one JSON document and exit 0; return (doing nothing) in every other case."""
    try:
        answer = idle_hook_answer(json.loads(stdin_text))
    except (ValueError, OSError):
        return  # the full entry point reports malformed input properly
    if answer is None:
        return
    sys.stderr.write(f"\x01d\x02Cache hook: {answer['status']} ({answer['reason']}).\n")
    sys.stdout.write(json.dumps({"output": answer}) + "\n")
    sys.stdout.flush()
    sys.exit(0)
