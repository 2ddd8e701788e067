"""The plugin manifest: valid for the community index, and the only .yml Stash would load."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT.parent / "shared" / "reference" / "community-scripts" / "plugin.schema.json"


def manifest():
    return yaml.safe_load((ROOT / "tagManager.yml").read_text())


def test_manifest_validates_against_community_schema():
    jsonschema = pytest.importorskip("jsonschema")
    if not SCHEMA.exists():
        pytest.skip(f"reference schema not found at {SCHEMA} (../shared/reference is absent)")
    jsonschema.validate(manifest(), json.loads(SCHEMA.read_text()))


def test_only_one_yml_in_the_repository():
    tracked = subprocess.run(["git", "ls-files", "*.yml", "*.yaml"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    on_disk = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.yml") if ".venv" not in p.parts]
    assert tracked in ([], ["tagManager.yml"])
    assert on_disk == ["tagManager.yml"]


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
    for hook in data.get("hooks", []):
        assert hook["defaultArgs"]["mode"] in MODES
