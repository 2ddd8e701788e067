"""The plugin run exactly as Stash runs it: one process, JSON on stdin, one JSON document out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import (
    ROOT, SESSION_COOKIE, STASHDB_API_KEY, PluginRun, expected_additions, mutations_sent, refusing_port, run_plugin,
    scene_tags, stash_input, wait_for,
)
from tests.kill_harness import kill_then_rerun, start_plugin


def assert_protocol(run: PluginRun) -> None:
    """stdout is one JSON document; every stderr line speaks Stash's log protocol; no secret leaks."""
    json.loads(run.stdout)
    assert run.stdout.count("\n") <= 1
    for line in run.stderr.splitlines():
        assert line[:1] == "\x01" and line[2:3] == "\x02" and line[1] in "tdiwep", repr(line)
    progress = [float(p) for p in run.log_lines("p")]
    assert all(0.0 <= p <= 1.0 for p in progress)
    for secret in (SESSION_COOKIE, STASHDB_API_KEY):
        assert secret not in run.stdout and secret not in run.stderr


def test_full_sync_through_stdin(servers, tmp_path):
    expected = expected_additions(servers)
    before = scene_tags(servers)
    run = run_plugin(stash_input(servers, tmp_path))
    assert run.returncode == 0, run.stderr
    assert_protocol(run)
    output = run.document["output"]
    after = scene_tags(servers)
    assert {sid: after[sid] - before[sid] for sid in after if after[sid] != before[sid]} == expected
    assert output["tags_added"] == sum(map(len, expected.values()))
    assert output["dry_run"] is False and output["errors"] == 0
    assert [float(p) for p in run.log_lines("p")][-1] == 1.0
    assert any("Scene tag sync (applied)" in line for line in run.log_lines("i"))


def test_preview_through_stdin_changes_nothing(servers, tmp_path):
    before = scene_tags(servers)
    run = run_plugin(stash_input(servers, tmp_path, dry_run="true"))
    assert run.returncode == 0, run.stderr
    assert_protocol(run)
    output = run.document["output"]
    assert output["dry_run"] is True and mutations_sent(servers) == 0
    assert scene_tags(servers) == before
    report = (tmp_path / "reports").glob("scene_tag_preview_*.csv")
    assert [str(p) for p in report] == [output["report_path"]]
    assert any("would gain" in line for line in run.log_lines("i"))


@pytest.mark.parametrize("stdin, message", [
    ("{not json", "not valid JSON"),
    ('{"args": {"mode": "sync_scene_tags"}}', "no server_connection"),
])
def test_malformed_input_is_a_one_line_error(stdin, message):
    run = run_plugin(stdin)
    assert run.returncode == 1
    assert message in run.document["error"] and "\n" not in run.document["error"]


def test_unknown_mode(servers, tmp_path):
    run = run_plugin({"server_connection": servers.server_connection(tmp_path), "args": {"mode": "explode"}})
    assert run.returncode == 1 and "Unknown mode 'explode'" in run.document["error"]
    assert "sync_scene_tags" in run.document["error"]


def test_stash_unreachable(tmp_path):
    with refusing_port() as port:
        connection = {"Scheme": "http", "Host": "127.0.0.1", "Port": port,
                      "SessionCookie": {"Name": "session", "Value": SESSION_COOKIE}, "PluginDir": str(tmp_path)}
        run = run_plugin({"server_connection": connection, "args": {"mode": "sync_scene_tags"}})
    assert run.returncode == 1 and "Could not reach Stash" in run.document["error"]
    assert SESSION_COOKIE not in run.stdout + run.stderr


@pytest.mark.parametrize("settings, message", [
    ({"maxRequestsPerMinute": "fast"}, "maxRequestsPerMinute"),
    ({"maxRequestsPerMinute": -3}, "maxRequestsPerMinute"),
    ({"tagBlacklist": "ok, /[unclosed/"}, "tagBlacklist has an invalid regular expression"),
    ({"stashBoxEndpoint": "https://elsewhere.example/graphql"}, "stashBoxEndpoint"),
])
def test_bad_settings_stop_before_any_write(servers, tmp_path, settings, message):
    servers.library.world.plugin_settings["tagManager"] = settings
    run = run_plugin(stash_input(servers, tmp_path))
    assert run.returncode == 1 and message in run.document["error"]
    assert mutations_sent(servers) == 0 and servers.stashdb.requests == 0


def test_no_stash_box_configured(servers, tmp_path):
    servers.library.world.stash_boxes = []
    run = run_plugin(stash_input(servers, tmp_path))
    assert run.returncode == 1 and "No stash-box is configured" in run.document["error"]


def test_session_expiring_mid_run_stops_with_a_clear_error(servers, tmp_path):
    servers.stash.fail_next(1, status=401, operation="TagSyncScenes")
    run = run_plugin(stash_input(servers, tmp_path))
    assert run.returncode == 1 and "HTTP 401" in run.document["error"]
    assert_protocol(run)


def test_stash_going_away_and_back_mid_run(servers, tmp_path):
    expected = expected_additions(servers)
    before = scene_tags(servers)

    def bounce():
        wait_for(lambda: servers.stash.count("TagSyncScenes") >= 2, timeout=30, step=0.01)
        servers.stash.stop()
        time.sleep(2.5)  # the outage itself: Stash stays away this long, whatever the plugin does
        servers.stash.start()

    bouncer = threading.Thread(target=bounce)
    bouncer.start()
    run = run_plugin(stash_input(servers, tmp_path))
    bouncer.join()
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    after = scene_tags(servers)
    assert {sid: after[sid] - before[sid] for sid in after if after[sid] != before[sid]} == expected
    assert any("retrying" in line for line in run.log_lines("w"))


def test_second_concurrent_sync_is_refused(servers, tmp_path):
    servers.stash.delay_next(1, seconds=4, operation="TagSyncLinkedSceneIds")
    first = start_plugin(stash_input(servers, tmp_path), capture=True)
    assert wait_for(lambda: servers.stash.count("TagSyncLinkedSceneIds") >= 1)
    second = run_plugin(stash_input(servers, tmp_path))
    assert second.returncode == 1 and "already running" in second.document["error"]
    assert first.wait(timeout=60) == 0
    assert json.loads(first.stdout.read())["output"]["errors"] == 0


def test_killed_run_leaves_no_stale_lock(servers, tmp_path):
    servers.stash.delay_next(1, seconds=5, operation="TagSyncLinkedSceneIds")
    killed, run = kill_then_rerun(stash_input(servers, tmp_path),
                                  lambda: servers.stash.count("TagSyncLinkedSceneIds") >= 1)
    assert killed and run.returncode == 0, run.stderr


def test_command_line_with_api_key(tmp_path):
    from tests.conftest import start_servers

    servers = start_servers(scenes=120, seed=3)
    servers.stash.session_cookie = None
    servers.stash.api_key = "stash-API-key-SECRET-9"
    try:
        env = dict(os.environ, STASH_API_KEY="stash-API-key-SECRET-9")
        done = subprocess.run([sys.executable, str(ROOT / "tag_manager.py"), "sync_scene_tags", "--stash-url",
                               servers.stash.url, "--dry-run", "--plugin-dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        output = json.loads(done.stdout)["output"]
        assert output["dry_run"] is True and output["scenes_seen"] > 0
        assert "%" in done.stderr and "\x01" not in done.stderr
        assert "stash-API-key-SECRET-9" not in done.stdout + done.stderr
        refused = subprocess.run([sys.executable, str(ROOT / "tag_manager.py"), "sync_scene_tags", "--stash-url",
                                  servers.stash.url, "--api-key", "wrong", "--plugin-dir", str(tmp_path)],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and "refused" in json.loads(refused.stdout)["error"]
    finally:
        servers.stash.stop()
        servers.stashdb.stop()


def test_missing_dependency_names_the_pip_command(monkeypatch):
    import importlib.util

    import tag_manager
    from tagman_base.errors import SettingsError

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "stashapi" else real_find_spec(name))
    with pytest.raises(SettingsError, match=r"-m pip install .*stashapp-tools"):
        tag_manager.check_runtime_dependencies()
