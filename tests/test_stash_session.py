"""Long runs keep their Stash session: API key when Stash has one, else the refreshed cookie, never two."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys

import pytest

from tagman_base import stash_auth
from tagman_base import stash_client
from tests.conftest import ROOT, run_plugin, start_servers, wait_for
from tests.fakes.fake_stash import FakeStash, World
from tests.fakes.stash_sessions import SessionStore
from tagman_base.errors import StashError, StashUnavailable

STASH_API_KEY = "stash-key-SECRET-31d7"


def ageing_sessions(max_age: float = 300, seconds_per_request: float = 60) -> SessionStore:
    """Sessions that expire after a few requests: every request ages the fake's clock by a minute."""
    return SessionStore(max_age=max_age, seconds_per_request=seconds_per_request)


@pytest.fixture
def world():
    w = World()
    for i in range(30):
        w.add_entity("tag", name=f"tag {i}")
    return w


def ping(client) -> dict:
    return client.call("query Ping { version { version } }")


@pytest.mark.parametrize("lean", [True, False])
def test_refreshed_cookie_replaces_the_original_and_two_are_never_sent(world, tmp_path, lean):
    with FakeStash(world, session_cookie="unused", sessions=ageing_sessions()) as fake:
        client = stash_client.connect(fake.server_connection(tmp_path), lean=lean)
        for _ in range(20):  # 20 minutes of fake time, sessions last 5
            ping(client)
        assert client.session.credential_kind == "cookie" and client.session.refreshes >= 20
        kinds = {kind for kind, _ in fake.auth_log}
        assert kinds == {"cookie"} and max(sent for _, sent in fake.auth_log) == 1


@pytest.mark.parametrize("lean", [True, False])
def test_api_key_read_with_the_cookie_at_start_replaces_it(world, tmp_path, lean):
    world.api_key = STASH_API_KEY
    with FakeStash(world, session_cookie="unused", sessions=ageing_sessions()) as fake:
        client = stash_client.connect(fake.server_connection(tmp_path), lean=lean)
        fake.auth_log.clear()
        for _ in range(10):
            ping(client)
        assert client.session.credential_kind == "apikey"
        assert fake.auth_log == [("apikey", 0)] * 10
        assert STASH_API_KEY not in repr(client) + repr(client.session)


def test_a_stash_without_login_needs_no_credential(world, tmp_path):
    with FakeStash(world) as fake:
        client = stash_client.connect(fake.server_connection(tmp_path), lean=True)
        assert ping(client) and client.session.credential_kind == "none"


class RecordingSession:
    """An inner HTTP session that records what it was asked to send."""

    def __init__(self):
        self.headers, self.cookies, self.sent = {"ApiKey": "stale"}, {}, []

    def post(self, url, **kwargs):
        self.sent.append((url, kwargs))

        class Answer:
            cookies = {"session": "refreshed"}
        return Answer()


def test_credentials_go_only_to_the_stash_that_started_us():
    inner = RecordingSession()
    session = stash_auth.StashSession(inner, "https://127.0.0.1:9999", cookie="first-cookie")
    session.post("https://127.0.0.1:9999/graphql", json={})
    session.post("https://127.0.0.1:9999/graphql", json={})
    with pytest.raises(StashError, match="refusing"):
        session.post("https://stash.example:9999/graphql", json={})
    assert [kwargs["headers"] for _, kwargs in inner.sent] == [{"Cookie": "session=first-cookie"},
                                                                {"Cookie": "session=refreshed"}]
    assert all(kwargs["allow_redirects"] is False for _, kwargs in inner.sent)
    assert "ApiKey" not in inner.headers


def test_keeper_pings_stash_when_it_heard_nothing_for_half_the_session_age():
    now = [0.0]
    inner = RecordingSession()
    session = stash_auth.StashSession(inner, "http://127.0.0.1:9999", cookie="c", clock=lambda: now[0])
    keeper = stash_auth.SessionKeeper(session, lambda: session.post("http://127.0.0.1:9999/graphql"), 3600,
                                      clock=lambda: now[0])
    now[0] = 1799
    keeper.tick()
    assert keeper.pings == 0
    now[0] = 1800
    keeper.tick()
    keeper.tick()  # the ping itself counts as Stash hearing from us
    assert keeper.pings == 1 and len(inner.sent) == 1


# ---------------------------------------------------------------- HTTPS



@pytest.mark.parametrize("lean", [True, False])
def test_https_stash_with_a_self_signed_host_name_certificate(world, tmp_path, certificate, lean):
    with FakeStash(world, session_cookie="unused", tls=certificate) as fake:
        connection = fake.server_connection(tmp_path)
        assert (connection["Scheme"], connection["Host"]) == ("https", "0.0.0.0")
        client = stash_client.connect(connection, lean=lean)
        assert client.url.startswith("https://127.0.0.1:") and ping(client)


def test_https_from_the_command_line_verifies_the_certificate(world, certificate):
    with FakeStash(world, tls=certificate) as fake:
        with pytest.raises(StashUnavailable):
            stash_client.connect({"Scheme": "https", "Host": "127.0.0.1", "Port": fake.port})


def test_https_task_through_stdin(tmp_path, certificate):
    servers = start_servers(scenes=30, seed=5, stash_options={"tls": certificate})
    try:
        run = run_plugin({"server_connection": servers.stash.server_connection(tmp_path),
                          "args": {"mode": "sync_scene_tags", "dry_run": "true"}})
        assert run.returncode == 0, run.stderr
        assert "Warning" not in run.stderr  # no urllib3 warning lands in Stash's log
    finally:
        servers.stash.stop()
        servers.stashdb.stop()


# ---------------------------------------------------------------- long runs through stdin

@pytest.fixture(params=["cookie", "apikey"])
def expiring(request):
    """Both fakes; Stash's sessions last 5 fake minutes and every request ages them by one."""
    servers = start_servers(scenes=80, seed=13, images=40, galleries=6,
                            stash_options={"sessions": ageing_sessions()})
    if request.param == "apikey":
        servers.library.world.api_key = STASH_API_KEY
    servers.kind = request.param
    yield servers
    servers.stash.stop()
    servers.stashdb.stop()


def task(servers, tmp_path, mode: str, **args) -> dict:
    return {"server_connection": servers.stash.server_connection(tmp_path), "args": {"mode": mode, **args}}


def assert_session_outlived(servers) -> None:
    """The run's requests went on long after its first cookie had expired, with one credential each."""
    assert servers.stash.count() > 10  # > 5 requests: the task's own cookie expired on the way
    assert "refused" not in {kind for kind, _ in servers.stash.auth_log}
    assert max(sent for _, sent in servers.stash.auth_log) <= 1


def test_scene_tag_sync_outlives_its_session(expiring, tmp_path):
    run = run_plugin(task(expiring, tmp_path, "sync_scene_tags"))
    assert run.returncode == 0, run.stderr
    assert run.document["output"]["scenes_updated"] > 0
    assert_session_outlived(expiring)
    assert STASH_API_KEY not in run.stdout + run.stderr


def test_cache_full_sync_outlives_its_session(expiring, tmp_path):
    db = tmp_path / "cache.sqlite3"
    expiring.library.world.plugin_settings["tagManager"] = {"cacheDbPath": str(db)}
    run = run_plugin(task(expiring, tmp_path, "cache_full_sync"))
    assert run.returncode == 0, run.stderr
    assert_session_outlived(expiring)
    assert STASH_API_KEY.encode() not in db.read_bytes()


def test_watch_mode_outlives_its_session(expiring, tmp_path):
    db = tmp_path / "cache.sqlite3"
    expiring.library.world.plugin_settings["tagManager"] = {"cacheDbPath": str(db)}
    process = subprocess.Popen([sys.executable, str(ROOT / "tag_manager.py")], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdin.write(json.dumps(task(expiring, tmp_path, "cache_watch", interval="0.05", heartbeat="0.05")))
    process.stdin.close()
    process.stdin = None  # written whole: communicate() must not touch it again

    def runs_done() -> int:
        if not db.exists():
            return 0
        with sqlite3.connect(db) as conn:
            try:
                return conn.execute("SELECT count(*) FROM sync_runs WHERE status = 'ok'").fetchone()[0]
            except sqlite3.OperationalError:
                return 0

    try:
        assert wait_for(lambda: runs_done() >= 4 or process.poll() is not None)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    summary = json.loads(out)["output"]
    # the run that SIGTERM interrupts counts as failed; a refused session would log a warning
    assert summary["runs"] - summary["failed_runs"] >= 4, err
    assert not [line for line in err.splitlines() if line.startswith(("\x01w", "\x01e"))], err
    assert_session_outlived(expiring)
