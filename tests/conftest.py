"""Shared fixtures: a generated library served by a fake Stash and a fake StashDB on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes.fake_stash import FakeStash
from tests.fakes.fake_stashdb import FakeStashDB
from tests.fakes.library import Library, generate_library

ROOT = Path(__file__).resolve().parents[1]
SESSION_COOKIE = "cookie-SECRET-4f1d2c9e"
STASHDB_API_KEY = "stashdb-SECRET-key-77ab31"
STASHDB_RATE_PER_MINUTE = 1200


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Servers:
    """A library with its fake Stash and fake StashDB running."""

    library: Library
    stash: FakeStash
    stashdb: FakeStashDB

    def server_connection(self, plugin_dir: Path) -> dict:
        """The server_connection object exactly as Stash writes it to a plugin's stdin."""
        return {
            "Scheme": "http", "Host": "0.0.0.0", "Port": self.stash.port,
            "SessionCookie": {"Name": "session", "Value": SESSION_COOKIE, "Path": "", "Domain": "",
                              "Expires": "0001-01-01T00:00:00Z", "RawExpires": "", "MaxAge": 0,
                              "Secure": False, "HttpOnly": False, "SameSite": 0, "Raw": "", "Unparsed": None},
            "Dir": str(plugin_dir), "PluginDir": str(plugin_dir),
        }


def start_servers(scenes: int = 300, seed: int = 7, rate: float | None = STASHDB_RATE_PER_MINUTE,
                  stash_options: dict | None = None, **sizes) -> Servers:
    """Generate a library whose stash-box is a fake StashDB on loopback, and start both fakes.

    ``stash_options`` go to ``FakeStash`` (``plugins_dir`` for hook dispatch, ``sessions``, ``api_key``, ``tls``).
    """
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/graphql"
    library = generate_library(seed=seed, scenes=scenes, endpoint=endpoint, **sizes)
    library.world.stash_boxes = [{"endpoint": endpoint, "api_key": STASHDB_API_KEY, "name": "StashDB",
                                  "max_requests_per_minute": int(rate or 0)}]
    stashdb = FakeStashDB(library.stashdb, api_key=STASHDB_API_KEY, max_requests_per_minute=rate, port=port).start()
    stash = FakeStash(library.world, session_cookie=SESSION_COOKIE, **(stash_options or {})).start()
    return Servers(library, stash, stashdb)


@pytest.fixture
def servers():
    """A 300-scene library with both fakes running."""
    running = start_servers()
    yield running
    running.stash.stop()
    running.stashdb.stop()


@dataclass
class PluginRun:
    """What one plugin process printed."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def document(self) -> dict:
        """The single JSON document on stdout."""
        return json.loads(self.stdout)

    def log_lines(self, level: str) -> list[str]:
        """Messages of one Stash log level (t d i w e p) from stderr."""
        prefix = f"\x01{level}\x02"
        return [line[len(prefix):] for line in self.stderr.splitlines() if line.startswith(prefix)]


def run_plugin(stdin_document: dict | str, cwd: Path = ROOT, timeout: float = 120) -> PluginRun:
    """Run tag_manager.py exactly as Stash does: a process with one JSON document on stdin."""
    text = stdin_document if isinstance(stdin_document, str) else json.dumps(stdin_document)
    done = subprocess.run([sys.executable, str(ROOT / "tag_manager.py")], input=text, capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)
    return PluginRun(done.returncode, done.stdout, done.stderr)


def plugin_folder(plugins_dir: Path) -> Path:
    """A Stash plugins folder holding this plugin as ``tagManager/`` (links to the runtime files)."""
    folder = plugins_dir / "tagManager"
    folder.mkdir(parents=True)
    for path in ROOT.iterdir():
        if path.suffix in (".py", ".yml") and path.is_file():
            (folder / path.name).symlink_to(path)
    return folder


def wait_for(condition, timeout: float = 60.0, interval: float = 0.02) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` passes; return its last value."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True
