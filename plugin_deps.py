"""The plugin's Python dependencies: found in Stash's Python, else installed by PythonDepManager, else a pip command.

Stash runs the plugin with whatever Python it has (often a Docker image's, with no terminal at
hand). When the community plugin PythonDepManager is installed, its ``ensure_import`` installs
each requirement of ``requirements.txt`` into its own folder and puts it on ``sys.path``; without
it the task stops with the pip command to run. Only the full modes call this: hooks and the other
lean modes need neither ``requests`` nor ``stashapi`` and import nothing from here.

Stash appends the folder above the plugin's folder to ``PYTHONPATH``. A plugin installed from this
source lives in ``<plugins>/<source local path>/tagManager`` while PythonDepManager lives in the
community source's folder (``<plugins>/community/PythonDepManager``), so the sibling source folders
are searched too.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from tagman_base.errors import SettingsError

PLUGIN_ROOT = Path(__file__).resolve().parent
REQUIREMENTS_FILE = PLUGIN_ROOT / "requirements.txt"
DEP_MANAGER = "PythonDepManager"
IMPORT_NAMES = {"stashapp-tools": "stashapi"}  # distributions whose import name is not their own
# PythonDepManager understands a bare name, `==` and `>=` only (its parse_package_spec).
REQUIREMENT_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:(?P<op>==|>=)\s*(?P<version>[0-9][0-9A-Za-z.]*))?$")

log = logging.getLogger("tagManager")


@dataclass(frozen=True)
class Requirement:
    """One line of requirements.txt: a distribution, optionally with ``==`` or ``>=`` a version."""

    distribution: str
    operator: str = ""
    version: str = ""

    @property
    def import_name(self) -> str:
        """The module name the plugin imports."""
        return IMPORT_NAMES.get(self.distribution.lower(), self.distribution.lower().replace("-", "_"))

    @property
    def pip_spec(self) -> str:
        """The requirement as pip reads it."""
        return f"{self.distribution}{self.operator}{self.version}"

    @property
    def dep_manager_spec(self) -> str:
        """The requirement as PythonDepManager's ``ensure_import`` reads it (``import:dist>=v``)."""
        prefix = "" if self.import_name == self.distribution else f"{self.import_name}:"
        return prefix + self.pip_spec


def read_requirements(path: Path = REQUIREMENTS_FILE) -> tuple[Requirement, ...]:
    """Parse requirements.txt (comments, blank lines and ``-r`` includes skipped)."""
    requirements = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = REQUIREMENT_LINE.match(line)
        if not match:
            raise SettingsError(f"{path.name}: {line!r} is not `name`, `name==version` or `name>=version`, "
                                "the forms PythonDepManager installs.")
        requirements.append(Requirement(match["name"], match["op"] or "", match["version"] or ""))
    return tuple(requirements)


def version_key(version: str) -> tuple[int, ...]:
    """The numeric release parts of a version (``0.2.58rc1`` → (0, 2, 58))."""
    parts = []
    for piece in version.split("."):
        digits = re.match(r"\d+", piece)
        if not digits:
            break
        parts.append(int(digits.group()))
        if digits.group() != piece:
            break
    return tuple(parts)


def version_matches(requirement: Requirement, installed: str | None) -> bool:
    """Does the installed version meet the requirement (unknown versions are given the benefit)?"""
    if not requirement.operator or installed is None:
        return True
    have, want = version_key(installed), version_key(requirement.version)
    return have == want if requirement.operator == "==" else have >= want


def installed_version(distribution: str) -> str | None:
    """The version of an installed distribution, or None when its metadata is not found."""
    import importlib.metadata

    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_satisfied(requirement: Requirement) -> bool:
    """Is the requirement importable at a version it allows?"""
    if importlib.util.find_spec(requirement.import_name) is None:
        return False
    return version_matches(requirement, installed_version(requirement.distribution))


def dep_manager_candidates(plugin_root: Path) -> list[Path]:
    """Folders that may hold PythonDepManager: beside the plugin, or in a sibling source's folder."""
    above, plugins = plugin_root.parent, plugin_root.parent.parent
    candidates = [above / DEP_MANAGER, *sorted(above.glob(f"*/{DEP_MANAGER}")), *sorted(plugins.glob(f"*/{DEP_MANAGER}"))]
    return [folder for folder in dict.fromkeys(candidates) if (folder / "__init__.py").is_file()]


def load_dep_manager(plugin_root: Path = PLUGIN_ROOT) -> ModuleType | None:
    """Import PythonDepManager from ``sys.path`` or a folder near the plugin; None when absent."""
    if DEP_MANAGER in sys.modules:
        return sys.modules[DEP_MANAGER]
    if importlib.util.find_spec(DEP_MANAGER) is not None:
        return importlib.import_module(DEP_MANAGER)
    for folder in dep_manager_candidates(plugin_root):
        spec = importlib.util.spec_from_file_location(DEP_MANAGER, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[DEP_MANAGER] = module  # its own modules import `from PythonDepManager import ...`
        try:
            spec.loader.exec_module(module)
        except Exception:
            del sys.modules[DEP_MANAGER]
            raise
        return module
    return None


def pip_command(requirements: Sequence[Requirement]) -> str:
    """The command that installs the requirements into the Python running this plugin."""
    return f"{shlex.quote(sys.executable)} -m pip install " + " ".join(shlex.quote(r.pip_spec) for r in requirements)


def ensure_runtime_dependencies(requirements: Sequence[Requirement] | None = None, plugin_root: Path = PLUGIN_ROOT,
                                satisfied: Callable[[Requirement], bool] = is_satisfied) -> str:
    """Make every requirement importable; return how ("present" or "PythonDepManager"), else raise."""
    requirements = read_requirements() if requirements is None else tuple(requirements)
    missing = [req for req in requirements if not satisfied(req)]
    if not missing:
        return "present"
    names = ", ".join(req.pip_spec for req in missing)
    manager = load_dep_manager(plugin_root)
    if manager is None:
        raise SettingsError(
            f"Missing Python package(s) for tagManager: {names}. Install the PythonDepManager plugin "
            "(Settings › Plugins › Available Plugins › Community) to have them installed automatically, "
            f"or install them into the Python that Stash uses: {pip_command(missing)}")
    log.info(f"Loading {names} through PythonDepManager (installed on first use)")
    try:
        manager.ensure_import(*(req.dep_manager_spec for req in missing))
    except Exception as exc:  # PythonDepManager raises bare Exception/RuntimeError on pip or git failures
        raise SettingsError(f"PythonDepManager could not install {names} ({exc}). Install them into the Python "
                            f"that Stash uses: {pip_command(missing)}") from None
    importlib.invalidate_caches()
    still_missing = [req for req in missing if not satisfied(req)]
    if still_missing:
        raise SettingsError(
            f"PythonDepManager did not provide {', '.join(r.pip_spec for r in still_missing)}. Install them into "
            f"the Python that Stash uses: {pip_command(still_missing)}")
    return DEP_MANAGER
