"""Switch the companion hook plugin on and off, so that hooks cost Stash nothing unless asked.

Stash starts one plugin process per entity for every create, update and destroy, for every enabled
plugin whose manifest declares the trigger, and waits for each before it answers (a scan, a bulk
edit, our own tag sync). tagManager's hooks therefore live in a companion manifest,
``tagManagerLiveCache.yml`` (plugin id ``tagManagerLiveCache``), whose enabled state tagManager
keeps equal to the ``liveCache`` setting through Stash's own ``setPluginsEnabled`` mutation:

- every tagManager task that reads its settings calls ``keep_in_step`` (wanted: ``liveCache`` on
  and no scene tag sync holding its run lock);
- the companion's hook, finding ``liveCache`` off, switches its own plugin off (at most one
  process per install: Stash skips a disabled plugin's hooks from the next entity on);
- the scene tag sync switches the companion off before its writes and back in step at the end; a
  sync killed in between leaves it off only until the next run of any tagManager task.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hook_gate
from tagman_base import file_lock
from tagman_base.errors import StashError

log = logging.getLogger(__name__)

COMPANION_ID = "tagManagerLiveCache"

PLUGINS_QUERY = """
query TagManagerPlugins {
  plugins { id enabled }
}"""

SET_PLUGINS_ENABLED_MUTATION = """
mutation TagManagerSetPluginsEnabled($enabledMap: BoolMap!) {
  setPluginsEnabled(enabledMap: $enabledMap)
}"""


def companion_enabled(stash: Any) -> bool | None:
    """Whether Stash has the companion plugin enabled; None when Stash has not loaded it."""
    for plugin in stash.call(PLUGINS_QUERY).get("plugins") or ():
        if str(plugin.get("id", "")).lower() == COMPANION_ID.lower():  # Stash compares ids ignoring case
            return bool(plugin.get("enabled"))
    return None


def set_companion(stash: Any, enabled: bool) -> None:
    """Enable or disable the companion plugin (Stash skips a disabled plugin's hooks)."""
    stash.call(SET_PLUGINS_ENABLED_MUTATION, {"enabledMap": {COMPANION_ID: enabled}})


def tag_sync_running(plugin_dir: Path) -> bool:
    """True while a scene tag sync holds its run lock (the OS drops it when the sync dies)."""
    return file_lock.is_held(Path(plugin_dir) / hook_gate.TAG_SYNC_LOCK)


def wanted_state(plugin_dir: Path, live_cache: bool) -> bool:
    """The companion should run hooks only with liveCache on and no tag sync writing."""
    return bool(live_cache) and not tag_sync_running(plugin_dir)


def keep_in_step(stash: Any, plugin_dir: Path, live_cache: bool) -> bool | None:
    """Bring the companion's enabled state to what the settings want; return that state.

    None when Stash does not list the companion (not installed). A failure is logged, never
    raised: the task itself must not fail because the switch could not be set.
    """
    wanted = wanted_state(plugin_dir, live_cache)
    try:
        current = companion_enabled(stash)
        if current is None:
            log.debug(f"Stash has no plugin {COMPANION_ID}: live cache hooks are not installed")
            return None
        if current != wanted:
            set_companion(stash, wanted)
            log.info(f"Live cache hooks ({COMPANION_ID}) switched {'on' if wanted else 'off'}"
                     + ("" if live_cache else " (setting liveCache is off)")
                     + (" while the scene tag sync writes" if live_cache and not wanted else ""))
        return wanted
    except StashError as exc:
        log.warning(f"Could not switch the live cache hooks ({COMPANION_ID}) {'on' if wanted else 'off'}: {exc}")
        return None


def switch_off_for_hook(stash: Any) -> None:
    """From the companion's own hook, with liveCache off: disable the companion for good."""
    try:
        set_companion(stash, False)
        log.info(f"Setting liveCache is off: switched the live cache hooks ({COMPANION_ID}) off; "
                 "turning liveCache on switches them back on with the next tagManager task.")
    except StashError as exc:
        log.warning(f"Could not switch the live cache hooks ({COMPANION_ID}) off: {exc}")
