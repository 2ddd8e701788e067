"""Plugin loading and hook dispatch as the real Stash does them, for the fake Stash (opt-in).

- Every ``*.yml`` under the plugins folder, recursively, is a plugin manifest; its id is the file
  name without ``.yml``.
- ``setPluginsEnabled(enabledMap)`` writes the disabled list; ``plugins { id name enabled }`` lists
  the loaded plugins.
- After a mutation commits, for each entity it touched and for each *enabled* plugin whose
  manifest declares the trigger, Stash starts the manifest's ``exec`` as a process with the hook's
  stdin JSON (``server_connection`` + the hook's ``defaultArgs`` + ``hookContext``) and waits for it
  before it answers the request. The disabled list is read again for every entity, so a hook that
  disables its own plugin stops the remaining hooks of the same bulk update.
- Scans fire ``Scene.Create.Post`` / ``Scene.Update.Post`` with ``input: null`` (``fire_scan``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass(frozen=True)
class HookEvent:
    """One post-commit hook event for one entity (``HookContext`` in Stash)."""

    trigger: str
    entity_id: int
    input: object = None
    input_fields: tuple[str, ...] = ()

    def context(self) -> dict:
        """``args.hookContext`` as Stash marshals it (id omitted when 0, inputFields when empty)."""
        context = {"type": self.trigger, "input": self.input}
        if self.entity_id:
            context["id"] = self.entity_id
        if self.input_fields:
            context["inputFields"] = list(self.input_fields)
        return context


@dataclass(frozen=True)
class HookSpec:
    """One ``hooks:`` entry of a manifest."""

    name: str
    triggers: frozenset[str]
    default_args: dict


@dataclass(frozen=True)
class Manifest:
    """A loaded plugin manifest."""

    id: str
    name: str
    folder: Path
    exec: tuple[str, ...]
    hooks: tuple[HookSpec, ...]


@dataclass
class HookRun:
    """What one hook process did."""

    plugin_id: str
    trigger: str
    entity_id: int
    returncode: int
    stdout: str
    stderr: str


def load_manifest(path: Path) -> Manifest:
    """Read one ``*.yml`` manifest."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    hooks = tuple(HookSpec(h.get("name", ""), frozenset(h.get("triggeredBy") or ()), dict(h.get("defaultArgs") or {}))
                  for h in data.get("hooks") or ())
    return Manifest(path.stem, str(data.get("name") or path.stem), path.parent, tuple(data.get("exec") or ()), hooks)


def load_manifests(plugins_dir: Path) -> dict[str, Manifest]:
    """Every manifest under the folder, recursively (hidden folders skipped), by plugin id."""
    found = {}
    for path in sorted(Path(plugins_dir).rglob("*.yml")):
        if any(part.startswith(".") for part in path.relative_to(plugins_dir).parts[:-1]):
            continue
        manifest = load_manifest(path)
        found[manifest.id] = manifest
    return found


@dataclass
class PluginHost:
    """The plugins of a fake Stash: manifests, the disabled list, hook processes and their counts."""

    plugins_dir: Path
    python: str = sys.executable
    timeout_s: float = 120.0
    manifests: dict[str, Manifest] = field(default_factory=dict)
    disabled: set[str] = field(default_factory=set)
    started: Counter = field(default_factory=Counter)  # plugin id -> hook processes started
    runs: list[HookRun] = field(default_factory=list)
    keep_runs: bool = True

    def __post_init__(self) -> None:
        self.plugins_dir = Path(self.plugins_dir)
        self.manifests = load_manifests(self.plugins_dir)
        self._lock = threading.Lock()

    def listing(self) -> list[dict]:
        """``plugins { id name enabled }``."""
        with self._lock:
            return [{"id": m.id, "name": m.name, "enabled": m.id not in self.disabled}
                    for m in self.manifests.values()]

    def set_enabled(self, enabled_map: dict) -> bool:
        """``setPluginsEnabled``: plugins not in the map are not affected."""
        with self._lock:
            for plugin_id, enabled in (enabled_map or {}).items():
                if enabled:
                    self.disabled.discard(plugin_id)
                else:
                    self.disabled.add(plugin_id)
        return True

    def is_enabled(self, plugin_id: str) -> bool:
        """Whether a plugin is enabled right now."""
        with self._lock:
            return plugin_id not in self.disabled

    def dispatch(self, events: Iterable[HookEvent], server_connection: Callable[[], dict]) -> None:
        """Run every enabled plugin's hooks for each event, one process per entity, waiting for each."""
        for event in events:
            for manifest in list(self.manifests.values()):
                for hook in manifest.hooks:
                    if event.trigger in hook.triggers and self.is_enabled(manifest.id):
                        self.run_hook(manifest, hook, event, server_connection())

    def run_hook(self, manifest: Manifest, hook: HookSpec, event: HookEvent, connection: dict) -> HookRun:
        """Start the manifest's exec with the hook's stdin JSON and wait for it."""
        plugin_dir = str(manifest.folder)
        connection = {**connection, "PluginDir": plugin_dir}
        args = {**hook.default_args, "hookContext": event.context()}
        command = [self.python if part == "python" else part.replace("{pluginDir}", plugin_dir)
                   for part in manifest.exec]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(manifest.folder.parent)) if p)
        with self._lock:
            self.started[manifest.id] += 1
        done = subprocess.run(command, input=json.dumps({"server_connection": connection, "args": args}),
                              capture_output=True, text=True, cwd=plugin_dir, env=env, timeout=self.timeout_s)
        run = HookRun(manifest.id, event.trigger, event.entity_id, done.returncode, done.stdout, done.stderr)
        if self.keep_runs:
            with self._lock:
                self.runs.append(run)
        return run

    def total_started(self) -> int:
        """Hook processes started, all plugins together."""
        with self._lock:
            return sum(self.started.values())


def scan_events(scene_ids: Iterable[int], created: bool = False) -> list[HookEvent]:
    """The hook events a library scan fires for these scenes (``input: null``)."""
    trigger = "Scene.Create.Post" if created else "Scene.Update.Post"
    return [HookEvent(trigger, int(i), None) for i in scene_ids]
