"""Dependencies without a terminal: PythonDepManager's ensure_import when installed, else the pip command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

import plugin_deps
from plugin_deps import Requirement
from tests.conftest import ROOT
from tagman_base.errors import SettingsError

# A stand-in with PythonDepManager's API: `ensure_import(*specs)`, where a spec is `[import:]dist[==|>=version]`.
# It records each call; with TM_TEST_SITE set it "installs" by putting that folder on sys.path, as the real
# one puts its per-package folders on sys.path.
STAND_IN = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path

    CALLS = []
    if os.environ.get("TM_TEST_IMPORT_MARK"):
        Path(os.environ["TM_TEST_IMPORT_MARK"]).write_text("imported")

    def ensure_import(*deps):
        CALLS.append(deps)
        if os.environ.get("TM_TEST_CALLS"):
            Path(os.environ["TM_TEST_CALLS"]).write_text(json.dumps(list(deps)))
        if os.environ.get("TM_TEST_FAIL"):
            raise RuntimeError("PythonDepManager: pip failed")
        if os.environ.get("TM_TEST_SITE"):
            sys.path.insert(0, os.environ["TM_TEST_SITE"])
''')


def write_stand_in(folder: Path) -> Path:
    """Put a stand-in PythonDepManager package into ``folder``."""
    package = folder / "PythonDepManager"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(STAND_IN)
    return package


@pytest.fixture(autouse=True)
def forget_dep_manager():
    """Each test imports its own stand-in."""
    sys.modules.pop(plugin_deps.DEP_MANAGER, None)
    yield
    sys.modules.pop(plugin_deps.DEP_MANAGER, None)


def requirement_lines() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_requirements_file_is_read_not_duplicated():
    requirements = plugin_deps.read_requirements()
    assert [req.pip_spec for req in requirements] == requirement_lines()
    by_name = {req.distribution: req for req in requirements}
    assert by_name["stashapp-tools"].import_name == "stashapi"
    assert by_name["stashapp-tools"].dep_manager_spec == "stashapi:" + by_name["stashapp-tools"].pip_spec
    assert by_name["requests"].dep_manager_spec == by_name["requests"].pip_spec


@pytest.mark.parametrize("line", ["requests>=2.28,<3", "requests~=2.28", "requests[socks]>=2", "git+https://x/y.git"])
def test_requirement_forms_dep_manager_cannot_install_are_refused(tmp_path, line):
    path = tmp_path / "requirements.txt"
    path.write_text(f"# runtime\n{line}\n")
    with pytest.raises(SettingsError, match="PythonDepManager"):
        plugin_deps.read_requirements(path)


@pytest.mark.parametrize("spec, installed, ok", [
    ("requests>=2.28", "2.31.0", True), ("requests>=2.28", "2.28", True), ("requests>=2.28", "2.9.1", False),
    ("stashapp-tools>=0.2.50", "0.2.58", True), ("stashapp-tools>=0.2.50", "0.2.49", False),
    ("requests==2.31.0", "2.31.0", True), ("requests==2.31.0", "2.32.0", False), ("requests", "1.0", True),
    ("requests>=2.28", None, True),
])
def test_version_matches(spec, installed, ok, tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text(spec + "\n")
    (requirement,) = plugin_deps.read_requirements(path)
    assert plugin_deps.version_matches(requirement, installed) is ok


def test_present_packages_need_no_dep_manager(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(write_stand_in(tmp_path).parent))
    assert plugin_deps.ensure_runtime_dependencies(plugin_root=tmp_path / "plugins" / "tagManager") == "present"
    assert plugin_deps.DEP_MANAGER not in sys.modules


def test_missing_packages_come_from_dep_manager_at_the_required_versions(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(write_stand_in(tmp_path).parent))
    requirements = plugin_deps.read_requirements()

    def satisfied(req: Requirement) -> bool:  # requests is present; stashapi only once the stand-in was asked for it
        calls = getattr(sys.modules.get(plugin_deps.DEP_MANAGER), "CALLS", [])
        return req.distribution == "requests" or any(req.dep_manager_spec in call for call in calls)

    how = plugin_deps.ensure_runtime_dependencies(requirements, tmp_path / "x" / "tagManager", satisfied)
    assert how == "PythonDepManager"
    stashapi = next(req for req in requirements if req.import_name == "stashapi")
    assert sys.modules[plugin_deps.DEP_MANAGER].CALLS == [(stashapi.dep_manager_spec,)]


def test_dep_manager_in_the_community_source_folder_is_found(tmp_path):
    """Installed from this source, the plugin is <plugins>/<local path>/tagManager; PythonDepManager is in community/."""
    plugins = tmp_path / "plugins"
    write_stand_in(plugins / "community")
    plugin_root = plugins / "tagman-source" / "tagManager"
    plugin_root.mkdir(parents=True)
    assert plugin_deps.dep_manager_candidates(plugin_root) == [plugins / "community" / "PythonDepManager"]
    module = plugin_deps.load_dep_manager(plugin_root)
    assert module is not None and hasattr(module, "ensure_import")
    manual_root = plugins / "tagManager"  # copied by hand straight into the plugins folder
    assert plugin_deps.dep_manager_candidates(manual_root) == [plugins / "community" / "PythonDepManager"]


def test_without_dep_manager_the_message_gives_the_pip_command(tmp_path):
    requirements = plugin_deps.read_requirements()
    with pytest.raises(SettingsError) as raised:
        plugin_deps.ensure_runtime_dependencies(requirements, tmp_path / "plugins" / "tagManager", lambda req: False)
    message = str(raised.value)
    assert f"{sys.executable} -m pip install " in message and "PythonDepManager" in message
    for req in requirements:
        assert f"'{req.pip_spec}'" in message or f" {req.pip_spec}" in message


def test_dep_manager_failure_gives_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(write_stand_in(tmp_path).parent))
    monkeypatch.setenv("TM_TEST_FAIL", "1")
    with pytest.raises(SettingsError, match=r"could not install .*pip failed.*-m pip install"):
        plugin_deps.ensure_runtime_dependencies(plugin_deps.read_requirements(), tmp_path / "p" / "tagManager",
                                                lambda req: False)


# ----------------------------------------------------------------- as Stash runs it, with a bare Python

def run_bare(document: dict, pythonpath: Path, **env: str) -> subprocess.CompletedProcess:
    """tag_manager.py under a Python without site-packages (no requests, no stashapi), as in a fresh Docker image."""
    environment = {**os.environ, "PYTHONPATH": str(pythonpath), **env}
    return subprocess.run([sys.executable, "-S", str(ROOT / "tag_manager.py")], input=json.dumps(document),
                          capture_output=True, text=True, env=environment, timeout=120)


def preview_document(servers, plugin_dir: Path) -> dict:
    return {"server_connection": servers.server_connection(plugin_dir), "args": {"mode": "sync_scene_tags", "dry_run": "true"}}


def test_bare_python_without_dep_manager_names_the_pip_command(servers, tmp_path):
    done = run_bare(preview_document(servers, tmp_path), tmp_path / "empty")
    assert done.returncode == 1
    error = json.loads(done.stdout)["error"]
    assert "-m pip install" in error and "stashapp-tools" in error and "requests" in error
    assert servers.stash.count() == 0


def test_bare_python_with_dep_manager_runs_the_task(servers, tmp_path):
    stand_in_root = write_stand_in(tmp_path / "plugins").parent
    calls = tmp_path / "calls.json"
    done = run_bare(preview_document(servers, tmp_path), stand_in_root,
                    TM_TEST_SITE=sysconfig.get_paths()["purelib"], TM_TEST_CALLS=str(calls))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["output"]["scenes_seen"] > 0
    assert json.loads(calls.read_text()) == [req.dep_manager_spec for req in plugin_deps.read_requirements()]


@pytest.mark.parametrize("mode", ["cache_hook", "cache_status"])
def test_lean_modes_never_import_dep_manager(servers, tmp_path, mode):
    stand_in_root = write_stand_in(tmp_path / "plugins").parent
    mark = tmp_path / "imported"
    document = {"server_connection": servers.server_connection(tmp_path),
                "args": {"mode": mode, "hookContext": {"type": "Scene.Update.Post", "id": 1}}}
    done = run_bare(document, stand_in_root, TM_TEST_IMPORT_MARK=str(mark))
    assert done.returncode == 0, done.stderr
    assert "output" in json.loads(done.stdout)
    assert not mark.exists()
