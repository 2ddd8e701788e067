"""Build a plugin source for Stash's package manager: ``dist/tagManager.zip`` and ``dist/index.yaml``.

    python -m tools.package_source [--out dist]

Stash (Settings › Plugins › Available Plugins › Add Source) reads the index as a YAML list of
packages (``pkg/pkg/pkg.go`` RemotePackage: id, name, metadata, version, date, requires, path,
sha256), downloads ``path`` relative to the index, refuses it unless its SHA-256 matches, and
unpacks it into ``<plugins>/<source local path>/<id>/``. The zip therefore holds the plugin's
runtime files at its root, and the package id is the manifest's file name (Stash's plugin id).

The runtime files are derived by rule, not listed: every file git tracks, except development
folders and files (``DEV_FOLDERS``, ``DEV_FILES``, ``DEV_FILE_PATTERNS``) and anything hidden.
Entries carry the commit's time and mode 0644, so one commit always gives the same zip and the
same SHA-256, and Stash writes readable files (it applies each entry's mode as it unpacks).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "tagManager.yml"
INDEX_NAME = "index.yaml"  # never .yml: Stash loads every *.yml under the plugins folder as a manifest
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"  # Go's "2006-01-02 15:04:05", in UTC (pkg.TimeFormat)
REQUIRES = ("PythonDepManager",)  # installs requirements.txt into Stash's Python (see plugin_deps.py)
DEV_FOLDERS = frozenset({"tests", "bench", "tools", "dist", "docs", "scripts"})
DEV_FILES = frozenset({"Makefile", "pytest.ini", "setup.cfg", "tox.ini", "pyproject.toml", "conftest.py",
                       "noxfile.py", "mypy.ini", "ruff.toml"})
DEV_FILE_PATTERNS = ("requirements-*.txt",)  # dev and test requirement sets; requirements.txt is runtime
FILE_MODE = 0o100644  # regular file, rw-r--r--


@dataclass(frozen=True)
class BuiltSource:
    """What one build wrote: the index, the zip, the package entry and the files packed."""

    index_path: Path
    zip_path: Path
    package: dict
    files: tuple[str, ...]


def is_runtime_file(path: str) -> bool:
    """True when a tracked path belongs in the installed plugin (not tests, benchmarks or tooling)."""
    parts = PurePosixPath(path).parts
    if any(part.startswith(".") for part in parts):
        return False
    if len(parts) > 1 and parts[0] in DEV_FOLDERS:
        return False
    name = parts[-1]
    if name in DEV_FILES or any(fnmatch.fnmatch(name, pattern) for pattern in DEV_FILE_PATTERNS):
        return False
    return not (name.endswith((".pyc", ".pyo")) or "__pycache__" in parts)


def git(root: Path, *args: str) -> str:
    """Run one git command in ``root`` and return its stdout (a clear error when git cannot)."""
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        raise SystemExit(f"make package needs a git checkout of tagManager (git {' '.join(args)}: {detail})") from None
    return done.stdout


def runtime_files(root: Path = ROOT) -> list[str]:
    """The tracked files a plugin install needs, sorted (tracked but deleted files left out)."""
    tracked = git(root, "ls-files", "-z").split("\0")
    return sorted(path for path in tracked if path and is_runtime_file(path) and (root / path).is_file())


def commit_time(root: Path = ROOT) -> datetime:
    """When HEAD was committed, in UTC: the package's date and every zip entry's time."""
    return datetime.fromtimestamp(int(git(root, "log", "-1", "--format=%ct", "HEAD").strip()), tz=timezone.utc)


def write_zip(root: Path, files: list[str], zip_path: Path, when: datetime) -> None:
    """Pack ``files`` at the zip's root, in order, with one timestamp and mode 0644 each."""
    stamp = max(when, datetime(1980, 1, 1, tzinfo=timezone.utc)).timetuple()[:6]
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            entry = zipfile.ZipInfo(path, date_time=stamp)
            entry.create_system = 3  # Unix, so that Stash reads the mode below
            entry.external_attr = FILE_MODE << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, (root / path).read_bytes())


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, as Stash checks it before installing."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def package_entry(manifest: dict, package_id: str, when: datetime, zip_name: str, sha256: str) -> dict:
    """One index entry, with exactly the keys Stash's RemotePackage reads."""
    return {
        "id": package_id,
        "name": str(manifest["name"]),
        "metadata": {"description": str(manifest.get("description", ""))},
        "version": str(manifest["version"]),
        "date": when.strftime(DATE_FORMAT),
        "requires": list(REQUIRES),
        "path": zip_name,
        "sha256": sha256,
    }


def build(out_dir: Path, root: Path = ROOT) -> BuiltSource:
    """Write the zip and the index into ``out_dir`` (created, old files replaced)."""
    files = runtime_files(root)
    if MANIFEST not in files:
        raise SystemExit(f"{MANIFEST} is not tracked by git in {root}")
    manifest = yaml.safe_load((root / MANIFEST).read_text(encoding="utf-8"))
    package_id = PurePosixPath(MANIFEST).stem
    when = commit_time(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    zip_path = out_dir / f"{package_id}.zip"
    write_zip(root, files, zip_path, when)
    entry = package_entry(manifest, package_id, when, zip_path.name, sha256_of(zip_path))
    index_path = out_dir / INDEX_NAME
    index_path.write_text(yaml.safe_dump([entry], sort_keys=False, allow_unicode=True, width=1000), encoding="utf-8")
    return BuiltSource(index_path, zip_path, entry, tuple(files))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.package_source", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "dist"), help="folder to write the source into (default: dist)")
    args = parser.parse_args(argv)
    built = build(Path(args.out).resolve())
    size_kb = built.zip_path.stat().st_size / 1024
    print(f"{built.zip_path}  ({len(built.files)} files, {size_kb:.0f} KiB)")
    print(f"{built.index_path}  (tagManager {built.package['version']}, {built.package['date']} UTC, "
          f"sha256 {built.package['sha256'][:12]}…)")
    print(f"Upload both files of {built.index_path.parent} to the same folder; users add the URL of {INDEX_NAME} "
          "as a plugin source.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
