"""`make package`: a plugin source Stash's package manager installs, holding the runtime files only."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from datetime import datetime
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from tests.conftest import ROOT, SESSION_COOKIE, STASHDB_API_KEY
from tools import package_source

# pkg/pkg/pkg.go RemotePackage: its yaml keys (PackageVersion and PackageLocation are inline).
REMOTE_PACKAGE_KEYS = {"id", "name", "requires", "metadata", "version", "date", "path", "sha256"}
SOURCE_LOCAL_PATH = "tagman-source"  # Settings › Plugins › Add Source › Local Path
OPTIONAL_IMPORTS = {"PythonDepManager"}  # imported only when installed beside the plugin


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> package_source.BuiltSource:
    """The source built once for this module."""
    return package_source.build(tmp_path_factory.mktemp("dist"))


def install_as_stash_does(built: package_source.BuiltSource, plugins: Path) -> Path:
    """Fetch the zip the index names, check its SHA-256, unpack it as pkg.Manager.installPackage does."""
    entry = yaml.safe_load(built.index_path.read_text(encoding="utf-8"))[0]
    zip_bytes = (built.index_path.parent / PurePosixPath(entry["path"])).read_bytes()
    assert hashlib.sha256(zip_bytes).hexdigest() == entry["sha256"]
    package_dir = plugins / SOURCE_LOCAL_PATH / entry["id"]
    with zipfile.ZipFile(built.zip_path) as archive:
        for info in archive.infolist():
            target = package_dir / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(info))
            os.chmod(target, (info.external_attr >> 16) & 0o777)  # Stash opens each file with the entry's mode
    (package_dir / "manifest").write_text(yaml.safe_dump({"id": entry["id"], "files": archive.namelist()}))
    return package_dir


def imported_top_names(source: str) -> set[str]:
    """Top-level names of every absolute import in a module's source."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def requirement_import_names() -> set[str]:
    """Import names of the packages requirements.txt lists."""
    from tagman_base import plugin_deps

    return {req.import_name for req in plugin_deps.read_requirements(ROOT / "requirements.txt")}


def test_index_has_the_format_stash_reads(built):
    entries = yaml.safe_load(built.index_path.read_text(encoding="utf-8"))
    assert built.index_path.name == "index.yaml" and isinstance(entries, list) and len(entries) == 1
    entry = entries[0]
    assert set(entry) == REMOTE_PACKAGE_KEYS
    manifest = yaml.safe_load((ROOT / "tagManager.yml").read_text(encoding="utf-8"))
    assert entry["id"] == "tagManager"  # Stash installs into <source>/<id>/, and the plugin id is the manifest's name
    assert entry["name"] == manifest["name"] and entry["version"] == str(manifest["version"])
    assert entry["metadata"] == {"description": manifest["description"]}
    assert entry["requires"] == ["PythonDepManager"]
    assert isinstance(entry["date"], str)
    datetime.strptime(entry["date"], "%Y-%m-%d %H:%M:%S")  # Go's 2006-01-02 15:04:05
    assert not urlsplit(entry["path"]).scheme and not PurePosixPath(entry["path"]).is_absolute()
    assert len(entry["sha256"]) == 64 and entry["sha256"] == hashlib.sha256(built.zip_path.read_bytes()).hexdigest()


def test_zip_holds_runtime_files_only(built):
    with zipfile.ZipFile(built.zip_path) as archive:
        names = archive.namelist()
        modes = {info.filename: info.external_attr >> 16 for info in archive.infolist()}
    assert names == sorted(names) == list(built.files)
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    manifests = [p for p in tracked if p.endswith(".yml") and package_source.is_runtime_file(p)]
    assert "tagManager.yml" in names and set(manifests) <= set(names)
    assert {"README.md", "requirements.txt", "tag_manager.py", "hook_gate.py"} <= set(names)
    for name in names:
        top = PurePosixPath(name).parts[0]
        assert top not in {"tests", "bench", "tools", ".ci", "dist"} and not top.startswith("."), name
        assert PurePosixPath(name).name not in {"Makefile", "pytest.ini", "requirements-dev.txt"}, name
        assert not name.endswith(".yaml"), name
        assert modes[name] == 0o100644, name  # Stash writes each file with its entry's mode


def test_every_import_of_the_runtime_is_packed(built):
    """Each module the runtime imports is in the zip, the standard library or requirements.txt."""
    with zipfile.ZipFile(built.zip_path) as archive:
        sources = {name: archive.read(name).decode("utf-8") for name in archive.namelist() if name.endswith(".py")}
    packed = {PurePosixPath(name).parts[0].removesuffix(".py") for name in sources}
    allowed = packed | set(sys.stdlib_module_names) | requirement_import_names() | OPTIONAL_IMPORTS
    missing = {name: sorted(imported_top_names(text) - allowed) for name, text in sources.items()}
    assert {name: found for name, found in missing.items() if found} == {}


@pytest.mark.parametrize("path, runtime", [
    ("tag_manager.py", True), ("tagManager.yml", True), ("requirements.txt", True), ("README.md", True),
    ("tagman_mirror/schema.py", True), ("tagManagerHooks.yml", True),
    ("tests/test_x.py", False), ("tests/fakes/fake_stash.py", False), ("bench/demo.py", False),
    ("tools/package_source.py", False), (".ci/run", False), (".gitignore", False), (".github/workflows/ci.yml", False),
    ("Makefile", False), ("pytest.ini", False), ("requirements-dev.txt", False), ("pyproject.toml", False),
    ("tagman_base/__pycache__/x.cpython-311.pyc", False),
])
def test_runtime_rule(path, runtime):
    assert package_source.is_runtime_file(path) is runtime


def test_same_commit_builds_the_same_zip(built, tmp_path):
    again = package_source.build(tmp_path)
    assert again.package["sha256"] == built.package["sha256"]


def test_installed_package_runs_a_task_through_stdin(built, servers, tmp_path):
    plugins = tmp_path / "plugins"
    plugin_dir = install_as_stash_does(built, plugins)
    document = {"server_connection": servers.server_connection(plugin_dir),
                "args": {"mode": "sync_scene_tags", "dry_run": "true"}}
    # Stash runs `python {pluginDir}/tag_manager.py` from its own working folder, with the folder above
    # the plugin's appended to PYTHONPATH (pkg/plugin/raw.go).
    env = {**os.environ, "PYTHONPATH": str(plugin_dir.parent)}
    done = subprocess.run([sys.executable, str(plugin_dir / "tag_manager.py")], input=json.dumps(document),
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)["output"]
    assert output["dry_run"] is True and output["scenes_seen"] > 0 and output["errors"] == 0
    assert Path(output["report_path"]).parent == plugin_dir / "reports"
    for secret in (SESSION_COOKIE, STASHDB_API_KEY):
        assert secret not in done.stdout and secret not in done.stderr
    assert sorted(p.name for p in plugins.rglob("*.yml")) == sorted(
        PurePosixPath(n).name for n in built.files if n.endswith(".yml"))
