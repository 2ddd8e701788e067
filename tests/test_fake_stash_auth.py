"""The fake Stash's sessions, API key and hook dispatch behave as the real Stash's (stash-behaviour.md)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import requests

from tests.fakes.fake_stash import FakeStash, World
from tests.fakes.stash_sessions import SessionStore

VERSION_QUERY = {"query": "query Ping { version { hash } }"}


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world():
    w = World()
    w.add_entity("tag", name="Beach")
    for i in range(5):
        w.add_entity("scene", title=f"s{i}")
    return w


def post(fake, cookies=None, headers=None, body=VERSION_QUERY):
    """One raw request with explicit Cookie / ApiKey headers (no cookie jar)."""
    headers = dict(headers or {})
    if cookies:
        headers["Cookie"] = "; ".join(f"session={c}" for c in cookies)
    return requests.post(fake.graphql_url, json=body, headers=headers, timeout=10)


# ---------------------------------------------------------------- sessions

def test_fake_session_cookie_expires_after_max_session_age_with_401(world):
    clock = ManualClock()
    with FakeStash(world, session_cookie="plugin-cookie", sessions=SessionStore(max_age=60, clock=clock)) as fake:
        assert post(fake, ["plugin-cookie"]).status_code == 200
        clock.now += 60
        assert post(fake, ["plugin-cookie"]).status_code == 200
        clock.now += 1
        expired = post(fake, ["plugin-cookie"])
        assert (expired.status_code, expired.content) == (401, b"")


def test_fake_refreshes_session_cookie_on_every_authenticated_response(world):
    clock = ManualClock()
    with FakeStash(world, session_cookie="plugin-cookie", sessions=SessionStore(max_age=60, clock=clock)) as fake:
        first = post(fake, ["plugin-cookie"])
        refreshed = first.cookies["session"]
        assert refreshed != "plugin-cookie" and "Max-Age=60" in first.headers["Set-Cookie"]
        for _ in range(3):  # a client that always sends the latest cookie never expires
            clock.now += 50
            answer = post(fake, [refreshed])
            assert answer.status_code == 200
            refreshed = answer.cookies["session"]
        assert post(fake, ["plugin-cookie"]).status_code == 401
        assert "Set-Cookie" not in post(fake, ["plugin-cookie"]).headers


def test_fake_first_of_two_session_cookies_counts(world):
    clock = ManualClock()
    with FakeStash(world, session_cookie="plugin-cookie", sessions=SessionStore(max_age=60, clock=clock)) as fake:
        clock.now += 30
        refreshed = post(fake, ["plugin-cookie"]).cookies["session"]
        clock.now += 31
        assert post(fake, ["plugin-cookie", refreshed]).status_code == 401  # the stale one comes first
        assert post(fake, [refreshed, "plugin-cookie"]).status_code == 200
        assert [sent for _, sent in fake.auth_log[-2:]] == [2, 2]


def test_fake_seconds_per_request_ages_sessions_deterministically(world):
    sessions = SessionStore(max_age=100, seconds_per_request=30)
    with FakeStash(world, session_cookie="plugin-cookie", sessions=sessions) as fake:
        statuses = [post(fake, ["plugin-cookie"]).status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 401, 401]  # each request ages it by 30 s: 30, 60, 90, 120


def test_fake_wrong_api_key_is_401_beside_valid_cookie(world):
    with FakeStash(world, session_cookie="plugin-cookie", api_key="right-key") as fake:
        assert post(fake, ["plugin-cookie"], {"ApiKey": "wrong-key"}).status_code == 401
        answer = post(fake, headers={"ApiKey": "right-key"})
        assert answer.status_code == 200 and "Set-Cookie" not in answer.headers


def test_fake_api_key_and_max_session_age_are_readable_with_the_cookie(world):
    query = {"query": "query S { configuration { general { apiKey maxSessionAge } } }"}
    with FakeStash(world, session_cookie="plugin-cookie", api_key="right-key",
                   sessions=SessionStore(max_age=30)) as fake:
        general = post(fake, ["plugin-cookie"], body=query).json()["data"]["configuration"]["general"]
        assert general == {"apiKey": "right-key", "maxSessionAge": 30}


def test_fake_without_credentials_accepts_everything(world):
    with FakeStash(world) as fake:
        answer = post(fake)
        assert answer.status_code == 200 and "Set-Cookie" not in answer.headers
        assert post(fake, ["anything"]).status_code == 200


# ---------------------------------------------------------------- plugins and hooks

PROBE = textwrap.dedent('''
    import json, os, sys, urllib.request
    document = json.load(sys.stdin)
    folder = document["server_connection"]["PluginDir"]
    with open(os.path.join(folder, "calls.jsonl"), "a") as out:
        out.write(json.dumps(document) + "\\n")
    if document["args"].get("disable_self"):
        c = document["server_connection"]
        body = json.dumps({"query": "mutation { setPluginsEnabled(enabledMap: {probe: false}) }"}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{c['Port']}/graphql", body,
                                         {"Content-Type": "application/json"})
        urllib.request.urlopen(request).read()
    print(json.dumps({"output": "ok"}))
''')


def probe_plugins(folder: Path, disable_self: bool = False) -> Path:
    """A plugins folder with one probe plugin (hooks on scene updates) and one plugin without hooks."""
    plugin = folder / "probe"
    plugin.mkdir(parents=True)
    (plugin / "probe.py").write_text(PROBE)
    args = "\n      disable_self: true" if disable_self else ""
    (plugin / "probe.yml").write_text(textwrap.dedent(f'''
        name: Probe
        exec: [python, "{{pluginDir}}/probe.py"]
        interface: raw
        hooks:
          - name: probe
            triggeredBy: [Scene.Update.Post, Scene.Create.Post, Tag.Merge.Post]
            defaultArgs:
              mode: probe''') + args + "\n")
    (plugin / "quiet.yml").write_text("name: Quiet\nexec: [python, x.py]\ninterface: raw\n")
    return plugin


def calls(plugin: Path) -> list[dict]:
    """Every stdin document the probe plugin received."""
    path = plugin / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


BULK = {"query": "mutation B($input: BulkSceneUpdateInput!) { bulkSceneUpdate(input: $input) { id } }",
        "variables": {"input": {"ids": ["1", "2", "3"], "tag_ids": {"ids": ["1"], "mode": "ADD"}}}}


def test_fake_loads_every_yml_as_a_plugin_with_its_file_name_as_id(world, tmp_path):
    probe_plugins(tmp_path / "plugins")
    with FakeStash(world, plugins_dir=tmp_path / "plugins") as fake:
        listing = post(fake, body={"query": "{ plugins { id name enabled } }"}).json()["data"]["plugins"]
        assert listing == [{"id": "probe", "name": "Probe", "enabled": True},
                           {"id": "quiet", "name": "Quiet", "enabled": True}]


def test_fake_set_plugins_enabled_writes_the_disabled_list(world, tmp_path):
    probe_plugins(tmp_path / "plugins")
    with FakeStash(world, plugins_dir=tmp_path / "plugins") as fake:
        mutation = {"query": "mutation { setPluginsEnabled(enabledMap: {probe: false}) }"}
        assert post(fake, body=mutation).json()["data"] == {"setPluginsEnabled": True}
        listing = post(fake, body={"query": "{ plugins { id enabled } }"}).json()["data"]["plugins"]
        assert listing == [{"id": "probe", "enabled": False}, {"id": "quiet", "enabled": True}]


def test_fake_hook_runs_one_process_per_entity_before_answering(world, tmp_path):
    plugin = probe_plugins(tmp_path / "plugins")
    with FakeStash(world, plugins_dir=tmp_path / "plugins") as fake:
        assert post(fake, body=BULK).status_code == 200
        received = calls(plugin)  # read after the answer: every hook process had finished
        assert fake.plugins.started == {"probe": 3}
        assert [d["args"]["hookContext"]["id"] for d in received] == [1, 2, 3]


def test_fake_hook_stdin_is_what_stash_writes(world, tmp_path):
    plugin = probe_plugins(tmp_path / "plugins")
    with FakeStash(world, session_cookie="c", plugins_dir=tmp_path / "plugins") as fake:
        post(fake, ["c"], body={**BULK, "variables": {"input": {**BULK["variables"]["input"], "ids": ["4"]}}})
        document = calls(plugin)[0]
        connection = document["server_connection"]
        assert (connection["Scheme"], connection["Host"], connection["Port"]) == ("http", "0.0.0.0", fake.port)
        assert connection["PluginDir"] == str(plugin) and connection["SessionCookie"]["Name"] == "session"
        assert document["args"] == {"mode": "probe", "hookContext": {
            "type": "Scene.Update.Post", "id": 4, "input": {"ids": ["4"], "tag_ids": {"ids": ["1"], "mode": "ADD"}},
            "inputFields": ["ids", "tag_ids"]}}
        assert post(fake, [connection["SessionCookie"]["Value"]]).status_code == 200  # the hook's own cookie works


def test_fake_disabled_plugin_runs_no_hooks(world, tmp_path):
    plugin = probe_plugins(tmp_path / "plugins")
    with FakeStash(world, plugins_dir=tmp_path / "plugins") as fake:
        fake.plugins.set_enabled({"probe": False})
        post(fake, body=BULK)
        assert fake.plugins.total_started() == 0 and calls(plugin) == []


def test_fake_disabled_list_is_reread_for_every_entity(world, tmp_path):
    plugin = probe_plugins(tmp_path / "plugins", disable_self=True)
    with FakeStash(world, plugins_dir=tmp_path / "plugins") as fake:
        post(fake, body=BULK)  # three scenes; the first hook disables its own plugin
        assert fake.plugins.started == {"probe": 1} and len(calls(plugin)) == 1


def test_fake_scan_fires_create_and_update_hooks_with_null_input(world, tmp_path):
    plugin = probe_plugins(tmp_path / "plugins")
    with FakeStash(world, plugins_dir=tmp_path / "plugins") as fake:
        fake.fire_scan([1, 2], created=True)
        fake.fire_scan([3])
        contexts = [d["args"]["hookContext"] for d in calls(plugin)]
        assert contexts == [{"type": "Scene.Create.Post", "id": 1, "input": None},
                            {"type": "Scene.Create.Post", "id": 2, "input": None},
                            {"type": "Scene.Update.Post", "id": 3, "input": None}]


def test_fake_without_plugins_folder_starts_no_hooks(world):
    with FakeStash(world) as fake:
        assert post(fake, body=BULK).status_code == 200
        assert fake.plugins is None
        assert post(fake, body={"query": "{ plugins { id } }"}).json()["data"] == {"plugins": []}


def test_fake_tag_merge_hook_carries_source_and_destination(world, tmp_path):
    plugin = probe_plugins(tmp_path / "plugins")
    world.add_entity("tag", name="Sand")
    with FakeStash(world, plugins_dir=tmp_path / "plugins") as fake:
        merge = {"query": "mutation { tagsMerge(input: {source: [\"2\"], destination: \"1\"}) { id } }"}
        assert post(fake, body=merge).status_code == 200
        assert calls(plugin)[0]["args"]["hookContext"] == {
            "type": "Tag.Merge.Post", "id": 1, "input": {"source": ["2"], "destination": "1"},
            "inputFields": ["source", "destination"]}


# ---------------------------------------------------------------- TLS



@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_fake_serves_https_with_a_self_signed_host_name_certificate(world, certificate):
    with FakeStash(world, tls=certificate) as fake:
        assert fake.url.startswith("https://")
        with pytest.raises(requests.exceptions.SSLError):
            requests.post(fake.graphql_url, json=VERSION_QUERY, timeout=10)
        assert requests.post(fake.graphql_url, json=VERSION_QUERY, timeout=10, verify=False).status_code == 200
        assert fake.server_connection("/p")["Scheme"] == "https"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
