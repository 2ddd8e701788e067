"""The plugin manifests: valid for the community index, and the only .yml files Stash would load."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT.parent / "shared" / "reference" / "community-scripts" / "plugin.schema.json"
MANIFESTS = ["tagManager.yml", "tagManagerLiveCache.yml"]


def manifest(name: str = "tagManager.yml"):
    return yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_validates_against_community_schema(name):
    jsonschema = pytest.importorskip("jsonschema")
    if not SCHEMA.exists():
        pytest.skip(f"reference schema not found at {SCHEMA} (../shared/reference is absent)")
    jsonschema.validate(manifest(name), json.loads(SCHEMA.read_text()))


def test_only_the_two_manifests_end_in_yml():
    tracked = subprocess.run(["git", "ls-files", "*.yml", "*.yaml"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    on_disk = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.yml") if ".venv" not in p.parts)
    assert sorted(tracked) in ([], MANIFESTS)
    assert on_disk == MANIFESTS


def test_tasks_and_settings_the_plugin_understands():
    from tagman_base.settings import SETTING_KEYS
    from tag_manager import MODES

    data = manifest()
    assert data["interface"] == "raw"
    assert data["exec"] == ["python", "{pluginDir}/tag_manager.py"]
    modes = {task["defaultArgs"]["mode"] for task in data["tasks"]}
    assert modes <= set(MODES)
    tasks = {task["name"]: task["defaultArgs"] for task in data["tasks"]}
    assert tasks["Sync Scene Tags from StashDB"] == {"mode": "sync_scene_tags"}
    assert tasks["Preview Scene Tag Sync"] == {"mode": "sync_scene_tags", "dry_run": "true"}
    assert set(data["settings"]) <= set(SETTING_KEYS.values())


def test_hooks_live_only_in_the_companion_manifest():
    """tagManager itself declares no hook, so with the companion disabled no event starts a process."""
    from tagman_base.hook_switch import COMPANION_ID
    from tag_manager import HOOK_MODES

    assert "hooks" not in manifest()
    companion = manifest("tagManagerLiveCache.yml")
    assert Path("tagManagerLiveCache.yml").stem == COMPANION_ID  # Stash's plugin id is the file name
    assert companion["exec"] == manifest()["exec"] and companion["interface"] == "raw"
    assert "tasks" not in companion and "settings" not in companion
    triggers = [t for hook in companion["hooks"] for t in hook["triggeredBy"]]
    assert len(triggers) == len(set(triggers)) == 22 and "Tag.Merge.Post" in triggers
    assert {hook["defaultArgs"]["mode"] for hook in companion["hooks"]} <= HOOK_MODES


@pytest.mark.parametrize("name", MANIFESTS)
def test_one_version_constant_equals_each_manifest_version(name):
    from tagman_base.version import USER_AGENT, VERSION

    assert str(manifest(name)["version"]) == VERSION
    assert USER_AGENT == f"tagManager/{VERSION}"
