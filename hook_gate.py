"""Answer an idle hook before the plugin imports anything else.

Stash starts ``tag_manager.py`` once for every entity that an update touches, for every enabled
plugin declaring the trigger, and waits for it before it answers the update. The hooks live in the
companion plugin ``tagManagerLiveCache`` (see ``hook_switch``), which tagManager keeps disabled
unless ``liveCache`` is on, so most events start no process at all. A hook that does start and has
nothing to do must cost little more than starting Python, so this module uses the standard library
only and decides from a file in the plugin folder:

- ``data/scene_tag_sync.lock`` is held: this plugin's tag sync is running (it switches the
  companion off for its writes; this covers the moment around the switch), and the next cache sync
  mirrors what it changes.

With ``liveCache`` off, the hook goes the full way once: it reads the settings and switches its own
plugin off, so no later event starts a process.
"""

from __future__ import annotations

import json
import os
import sys

TAG_SYNC_LOCK = os.path.join("data", "scene_tag_sync.lock")
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
