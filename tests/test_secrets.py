"""Secrets never reach logs, stdout, reports, exceptions or the cache, in success and failure alike."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SESSION_COOKIE, STASHDB_API_KEY, run_plugin, start_servers
from tests.conftest import stash_input

STASH_API_KEY = "stash-apikey-SECRET-5e6f7a"
SECRETS = (SESSION_COOKIE, STASHDB_API_KEY, STASH_API_KEY)


@pytest.fixture
def secret_servers():
    running = start_servers(scenes=150, seed=21, images=60, galleries=8)
    running.library.world.api_key = STASH_API_KEY  # what configuration.general.apiKey answers
    yield running
    running.stash.stop()
    running.stashdb.stop()


def files_text(folder) -> bytes:
    """Every byte the runs left on disk (reports, cache, locks)."""
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


SCENARIOS = {
    "sync": lambda s: None,
    "preview": lambda s: None,
    "stashdb-401": lambda s: setattr(s.stashdb, "api_key", "another-key"),
    "stashdb-down": lambda s: s.stashdb.stop(),
    "stash-401-mid-run": lambda s: s.stash.fail_next(1, status=401, operation="TagSyncScenes"),
    "bad-setting": lambda s: s.library.world.plugin_settings.update(tagManager={"tagBlacklist": "/(/"}),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_tag_sync_never_shows_a_secret(secret_servers, tmp_path, scenario):
    SCENARIOS[scenario](secret_servers)
    args = {"dry_run": "true"} if scenario == "preview" else {}
    # StashDB down: its retry back-offs (about 30 s) are skipped; they are not what this test is about.
    run = run_plugin(stash_input(secret_servers, tmp_path, "sync_scene_tags", **args),
                     skip_sleeps=scenario == "stashdb-down")
    seen = run.stdout + run.stderr
    if scenario == "stashdb-down":
        assert "Check that StashDB is reachable" in run.document["error"]
    for secret in SECRETS:
        assert secret not in seen
        assert secret.encode() not in files_text(tmp_path)


@pytest.mark.parametrize("mode", ["cache_full_sync", "cache_incremental_sync", "cache_smart_sync"])
def test_cache_runs_never_show_a_secret(secret_servers, tmp_path, mode):
    run = run_plugin(stash_input(secret_servers, tmp_path, mode))
    assert run.returncode == 0, run.stderr
    for secret in SECRETS:
        assert secret not in run.stdout + run.stderr
        assert secret.encode() not in files_text(tmp_path)


def test_command_line_key_is_masked_even_in_errors(secret_servers, tmp_path):
    secret_servers.stash.api_key = STASH_API_KEY
    secret_servers.stash.fail_next(1, status=200, operation="TagSyncTags",
                                   body=json.dumps({"errors": [{"message": f"bad key {STASH_API_KEY}"}]}))
    done = subprocess.run([sys.executable, str(ROOT / "tag_manager.py"), "sync_scene_tags", "--stash-url",
                           secret_servers.stash.url, "--api-key", STASH_API_KEY, "--plugin-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1
    assert STASH_API_KEY not in done.stdout + done.stderr
    assert "***" in json.loads(done.stdout)["error"]


def test_reprs_hide_keys():
    import requests

    from tagman_base.stash_boxes import StashBox
    from tagman_base.stash_client import StashClient
    from stashdb_api import StashDBClient, TokenBucket

    client = StashDBClient("https://stashdb.org/graphql", STASHDB_API_KEY, TokenBucket(1.0))
    box = StashBox("https://stashdb.org/graphql", STASHDB_API_KEY, "StashDB", 240)
    for text in (repr(client), str(client), repr(box), repr(StashClient(requests.Session(), "http://x"))):
        assert STASHDB_API_KEY not in text


def test_live_cache_modes_never_show_a_secret(secret_servers, tmp_path):
    world = secret_servers.library.world
    world.plugin_settings["tagManager"] = {"liveCache": True}
    runs = [run_plugin(stash_input(secret_servers, tmp_path, "cache_full_sync")),
            run_plugin(stash_input(secret_servers, tmp_path, "cache_status"))]
    scene = min(world.table("scene"))
    runs.append(run_plugin(stash_input(secret_servers, tmp_path, "cache_hook", hookContext={
        "id": scene, "type": "Scene.Update.Post", "input": None, "inputFields": []})))
    runs.append(run_plugin(stash_input(secret_servers, tmp_path, "cache_sync_scene", id=str(scene))))
    secret_servers.stash.fail_next(3, status=500)
    runs.append(run_plugin(stash_input(secret_servers, tmp_path, "cache_hook", hookContext={
        "id": scene, "type": "Scene.Update.Post", "input": None, "inputFields": []})))
    assert runs[2].document["output"]["status"] == "applied"
    for run in runs:
        for secret in SECRETS:
            assert secret not in run.stdout + run.stderr
            assert secret.encode() not in files_text(tmp_path)
