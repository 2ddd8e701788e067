"""Shared fixtures and helpers: a generated library served by a fake Stash and a fake StashDB on loopback.

- ``servers`` / ``small_servers``: both fakes over a generated library (for runs through the entry point);
- ``clock``, ``lib``, ``world``, ``fake``, ``stash``, ``db``, ``synced``: a small library in a fake Stash,
  a client of it and a cache path (for the cache in process);
- ``stash_input``: the one stdin document Stash writes for a task or hook; ``run_plugin`` runs it;
- ``Clock`` (the one fake clock), ``wait_for`` (the one poll), ``read_rows``;
- tag sync helpers (``tag_sync_context``, ``run_tag_sync``, ``expected_additions`` ...).
"""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from tagman_base import stash_client
from tagman_base.run_context import RunContext
from tagman_base.settings import Settings
from tagman_base.stash_client import StashClient
from tests.fakes.fake_stash import FakeStash
from tests.fakes.fake_stashdb import FakeStashDB
from tests.fakes.library import Library, generate_library

ROOT = Path(__file__).resolve().parents[1]
SESSION_COOKIE = "cookie-SECRET-4f1d2c9e"
STASHDB_API_KEY = "stashdb-SECRET-key-77ab31"
STASHDB_RATE_PER_MINUTE = 1200
SMALL = dict(scenes=40, images=50, tags=24, performers=14, studios=6, groups=5, galleries=10)

# the README's change-log queries, run by the tests as written there
LAST_RUN_CHANGES = """
SELECT entity_type, entity_id, change, field, old_value, new_value FROM sync_changes
WHERE run_id = (SELECT max(id) FROM sync_runs) ORDER BY entity_type, entity_id, field"""


SCENE_HISTORY = """
SELECT r.started, c.change, c.field, c.old_value, c.new_value
FROM sync_changes c JOIN sync_runs r ON r.id = c.run_id
WHERE c.entity_type = 'scenes' AND c.entity_id = :id ORDER BY c.run_id, c.id"""


@contextmanager
def refusing_port():
    """A loopback port that refuses connections while the block runs: bound, never listening, so no
    other test (or pytest worker) can take it meanwhile."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


# ------------------------------------------------------------------------------------------
# time


class Clock:
    """The one fake clock: returns ``now`` (aware UTC) until moved; the fake world stamps writes with it."""

    def __init__(self, start: datetime | str = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)) -> None:
        self.now = datetime.fromisoformat(start) if isinstance(start, str) else start

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float = 1.0) -> None:
        """Advance the clock."""
        self.now += timedelta(seconds=seconds)

    def set(self, iso: str) -> None:
        """Jump to an instant."""
        self.now = datetime.fromisoformat(iso)


def wait_for(condition: Callable[[], object], timeout: float = 20.0, step: float = 0.02) -> bool:
    """Poll until ``condition()`` holds (bounded); returns its last value as a bool."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return bool(condition())


# ------------------------------------------------------------------------------------------
# both fakes over a generated library, for runs through the entry point


@dataclass
class Servers:
    """A library with its fake Stash and fake StashDB running."""

    library: Library
    stash: FakeStash
    stashdb: FakeStashDB

    def server_connection(self, plugin_dir: Path) -> dict:
        """The server_connection object exactly as Stash writes it to a plugin's stdin."""
        return server_connection(self, plugin_dir)


def server_connection(target: Servers | FakeStash, plugin_dir: Path) -> dict:
    """``server_connection`` as Stash writes it: with a session cookie for ``Servers``, none for a bare fake."""
    cookie = None
    if isinstance(target, Servers):
        cookie = {"Name": "session", "Value": SESSION_COOKIE, "Path": "", "Domain": "",
                  "Expires": "0001-01-01T00:00:00Z", "RawExpires": "", "MaxAge": 0,
                  "Secure": False, "HttpOnly": False, "SameSite": 0, "Raw": "", "Unparsed": None}
    port = target.stash.port if isinstance(target, Servers) else target.port
    return {"Scheme": "http", "Host": "0.0.0.0", "Port": port, "SessionCookie": cookie,
            "Dir": str(plugin_dir), "PluginDir": str(plugin_dir)}


def stash_input(target: Servers | FakeStash, plugin_dir: Path, mode: str = "sync_scene_tags",
                hook: dict | str | None = None, **args) -> dict:
    """The whole stdin document Stash writes for a task (or, with ``hook``, a hook) of this plugin."""
    arguments = {"mode": mode, **args}
    if hook is not None:
        arguments["hookContext"] = hook
    return {"server_connection": server_connection(target, plugin_dir), "args": arguments}


def hook_context(eid, trigger: str, payload=None, fields=None) -> dict:
    """``args.hookContext`` as Stash's HookContext marshals it (id omitted when 0, inputFields when empty)."""
    context = {"type": trigger, "input": payload}
    if eid:
        context["id"] = eid
    if fields:
        context["inputFields"] = fields
    return context


def start_servers(scenes: int = 300, seed: int = 7, rate: float | None = STASHDB_RATE_PER_MINUTE,
                  stash_options: dict | None = None, **sizes) -> Servers:
    """Generate a library whose stash-box is a fake StashDB on loopback, and start both fakes.

    ``stash_options`` go to ``FakeStash`` (``plugins_dir`` for hook dispatch, ``sessions``, ``api_key``, ``tls``).
    """
    stashdb = FakeStashDB(None, api_key=STASHDB_API_KEY, max_requests_per_minute=rate).start()
    endpoint = stashdb.url  # listening before the library names it: no other test can take the port
    library = generate_library(seed=seed, scenes=scenes, endpoint=endpoint, **sizes)
    library.world.stash_boxes = [{"endpoint": endpoint, "api_key": STASHDB_API_KEY, "name": "StashDB",
                                  "max_requests_per_minute": int(rate or 0)}]
    stashdb.load_world(library.stashdb)
    stash = FakeStash(library.world, session_cookie=SESSION_COOKIE, **(stash_options or {})).start()
    return Servers(library, stash, stashdb)


@pytest.fixture
def servers():
    """A 300-scene library with both fakes running."""
    running = start_servers()
    yield running
    running.stash.stop()
    running.stashdb.stop()


@pytest.fixture
def fast_servers():
    """A 300-scene library with both fakes running; StashDB fast enough that its limiter never waits long."""
    running = start_servers(rate=6000)
    yield running
    running.stash.stop()
    running.stashdb.stop()


@pytest.fixture
def small_servers():
    """A small library (with images and galleries) for cache runs through the entry point."""
    running = start_servers(scenes=120, seed=9, images=150, galleries=15)
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


# Runs tag_manager.py as __main__ with time.sleep answering at once: retry back-offs (seconds each)
# are skipped, everything else is the plugin as Stash runs it.
WITHOUT_SLEEPS = """
import runpy, sys, time
time.sleep = lambda seconds: None
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_plugin(stdin_document: dict | str, cwd: Path = ROOT, timeout: float = 120,
               skip_sleeps: bool = False) -> PluginRun:
    """Run tag_manager.py exactly as Stash does: a process with one JSON document on stdin.

    ``skip_sleeps`` makes every ``time.sleep`` return at once, for runs that would wait out retry back-offs.
    """
    text = stdin_document if isinstance(stdin_document, str) else json.dumps(stdin_document)
    launcher = ["-c", WITHOUT_SLEEPS] if skip_sleeps else []
    done = subprocess.run([sys.executable, *launcher, str(ROOT / "tag_manager.py")], input=text,
                          capture_output=True, text=True, cwd=cwd, timeout=timeout)
    return PluginRun(done.returncode, done.stdout, done.stderr)


# ------------------------------------------------------------------------------------------
# a small library in a fake Stash, for the cache in process


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def lib(clock):
    return generate_library(seed=7, clock=clock, **SMALL)


@pytest.fixture
def world(lib):
    return lib.world


@pytest.fixture
def fake(world):
    with FakeStash(world) as server:
        yield server


def client_for(url: str) -> StashClient:
    """A new client of the (fake) Stash at ``url``, as a new plugin process makes one; retries without waiting."""
    return StashClient(requests.Session(), url, sleep=lambda _s: None, backoff=(0.0,))


@pytest.fixture
def stash(fake) -> StashClient:
    return client_for(fake.url)


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "cache" / "stash_cache.sqlite3"


def live_on(world, db: Path, on: bool = True) -> None:
    """Set liveCache as a user would.

    The hook processes of these tests run with the plugin folder ``tmp_path`` (the db's grandparent).
    """
    world.plugin_settings["tagManager"] = {"cacheDbPath": str(db), **({"liveCache": True} if on else {})}


@pytest.fixture
def synced(stash, db, world):
    """A mirror after a completed full sync, with liveCache on in the fake's plugin settings."""
    from tagman_mirror.runs import cache_full_sync

    cache_full_sync(stash, db)
    live_on(world, db)
    return db


def ctx_for(stash: StashClient, db: Path, args: dict, live: bool = True) -> RunContext:
    """The run context of a cache mode on ``db``."""
    return RunContext(stash, Settings(cache_db_path=str(db), live_cache=live), args, db.parent)


def hook_in_process(stash: StashClient, db: Path, context: dict, live: bool = True):
    """What the cache_hook mode does once Stash's input is parsed, in this process (fast)."""
    from tagman_mirror.hook import run_cache_hook, run_hook_safely

    ctx = ctx_for(stash, db, {"mode": "cache_hook", "hookContext": context}, live)
    return run_hook_safely(lambda: run_cache_hook(ctx), ctx.args)


def read_rows(db: Path, sql: str, params=()) -> list[tuple]:
    """Rows of a query, or [] while the file or table does not exist yet (never creates the file)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.OperationalError:
        return []
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def scene_title(db: Path, sid: int):
    """A scene's title in the mirror (None when absent)."""
    rows = read_rows(db, f"SELECT title FROM scenes WHERE id = {int(sid)} AND deleted_at IS NULL")
    return rows[0][0] if rows else None


def operations(fake) -> set[str]:
    """Operation names the fake Stash received."""
    return {op for op, _variables in fake.requests()}


def types_of(ops: set[str]) -> set[str]:
    """Entity types named by the cache's operation names (TagManagerCache<Type><Kind>)."""
    from tagman_mirror.entities import SPECS

    return {spec.table for op in ops for spec in SPECS if op.startswith(f"TagManagerCache{spec.operation}")}


class Crash(BaseException):
    """Stands in for the process dying in the middle of a request."""


class CrashingClient(StashClient):
    """A Stash client that dies at its Nth request."""

    def __init__(self, url: str, die_at: int) -> None:
        super().__init__(requests.Session(), url, sleep=lambda _s: None, backoff=(0.0,))
        self.die_at = die_at

    def call(self, query, variables=None):
        if self.requests_sent + 1 >= self.die_at:
            raise Crash(f"killed at request {self.die_at}")
        return super().call(query, variables)


# ------------------------------------------------------------------------------------------
# scene tag sync


def scene_tags(servers: Servers) -> dict[int, set[int]]:
    """Every scene's tag ids as the fake Stash holds them now."""
    return {sid: set(row["tag_ids"]) for sid, row in servers.library.world.table("scene").items()}


def mutations_sent(servers: Servers) -> int:
    """bulkSceneUpdate fields Stash received: single ones plus the aliased fields of batches."""
    batches = servers.stash.requests("TagSyncAddTagsBatch")
    return servers.stash.count("TagSyncAddTags") + sum(len(variables) for _, variables in batches)


def expected_additions(servers: Servers, blacklisted=lambda name: False) -> dict[int, set[int]]:
    """Oracle from the generator's own bookkeeping: tags each linked scene must gain."""
    return servers.library.expected_tag_additions(scene_tags(servers), blacklisted)


def no_sleep(seconds: float) -> None:
    """Retries back off instantly in tests (the limiter still spaces requests by real time)."""


def tag_sync_context(servers: Servers, tmp_path: Path, progress=lambda f: None, args=None, sleep=no_sleep,
                     **settings) -> RunContext:
    """A run context wired exactly as the entry script wires it, with the given settings."""
    stash = stash_client.connect(servers.server_connection(tmp_path), lean=True)
    return RunContext(stash, Settings(**settings), args or {"mode": "sync_scene_tags"}, tmp_path, progress, sleep)


def run_tag_sync(servers: Servers, tmp_path: Path, dry_run: bool = False, **settings):
    """Run one scene tag sync in-process."""
    from tag_manager import run_sync_scene_tags

    args = {"mode": "sync_scene_tags", "dry_run": "true"} if dry_run else None
    return run_sync_scene_tags(tag_sync_context(servers, tmp_path, args=args, **settings))


def plugin_folder(plugins_dir: Path) -> Path:
    """A Stash plugins folder holding this plugin as ``tagManager/`` (links to the runtime files and packages)."""
    folder = plugins_dir / "tagManager"
    folder.mkdir(parents=True)
    for path in ROOT.iterdir():
        runtime_package = path.is_dir() and path.name.startswith("tagman_")
        if runtime_package or (path.suffix in (".py", ".yml") and path.is_file()):
            (folder / path.name).symlink_to(path)
    return folder


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for the host name stash.example (not for 127.0.0.1), via openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    done = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                           "-subj", "/CN=stash.example", "-keyout", str(key), "-out", str(cert)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"openssl could not make a certificate: {done.stderr.strip()[:200]}")
    return str(cert), str(key)
