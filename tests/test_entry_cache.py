"""Cache modes run exactly as Stash runs them: stdin JSON in, one JSON document out."""

from __future__ import annotations

import sqlite3
import stat

import pytest

from tests.conftest import SESSION_COOKIE, STASHDB_API_KEY, run_plugin, stash_input
from tests.kill_harness import kill_then_rerun
from tests.mirror_oracle import assert_mirror_equals


def test_full_then_smart_sync_through_stdin_with_default_path(small_servers, tmp_path):
    run = run_plugin(stash_input(small_servers, tmp_path, "cache_full_sync"))
    assert run.returncode == 0, run.stderr
    db = tmp_path / "data" / "stash_cache.sqlite3"
    assert run.document["output"]["db_path"] == str(db)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert_mirror_equals(db, small_servers.library.world)
    scene = min(small_servers.library.world.table("scene"))
    small_servers.library.world.update_entity("scene", scene, title="Edited through Stash")
    smart = run_plugin(stash_input(small_servers, tmp_path, "cache_smart_sync"))
    assert smart.returncode == 0, smart.stderr
    assert_mirror_equals(db, small_servers.library.world)
    for secret in (SESSION_COOKIE, STASHDB_API_KEY):
        assert secret.encode() not in db.read_bytes()
        assert secret not in run.stdout + run.stderr + smart.stdout + smart.stderr


def test_cache_path_setting_and_incremental_since(small_servers, tmp_path):
    target = tmp_path / "elsewhere" / "mirror.sqlite3"
    small_servers.library.world.plugin_settings["tagManager"] = {"cacheDbPath": str(target)}
    assert run_plugin(stash_input(small_servers, tmp_path, "cache_full_sync")).returncode == 0
    run = run_plugin(stash_input(small_servers, tmp_path, "cache_incremental_sync", since="2020-01-01T00:00:00Z"))
    assert run.returncode == 0, run.stderr
    assert_mirror_equals(target, small_servers.library.world)


@pytest.mark.parametrize("since", ["yesterday", "2024-13-45", "12:00"])
def test_bad_since_is_a_one_line_error_and_writes_nothing(small_servers, tmp_path, since):
    run = run_plugin(stash_input(small_servers, tmp_path, "cache_incremental_sync", since=since))
    assert run.returncode == 1
    assert "since" in run.document["error"] and "\n" not in run.document["error"]
    assert not (tmp_path / "data" / "stash_cache.sqlite3").exists()


def test_unwritable_cache_path(small_servers, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    small_servers.library.world.plugin_settings["tagManager"] = {"cacheDbPath": str(blocker / "cache.sqlite3")}
    run = run_plugin(stash_input(small_servers, tmp_path, "cache_full_sync"))
    assert run.returncode == 1
    assert str(blocker) in run.document["error"] and "\n" not in run.document["error"]


def test_not_sqlite_and_newer_schema_are_refused(small_servers, tmp_path):
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database, just some bytes " * 100)
    small_servers.library.world.plugin_settings["tagManager"] = {"cacheDbPath": str(junk)}
    run = run_plugin(stash_input(small_servers, tmp_path, "cache_full_sync"))
    assert run.returncode == 1 and "\n" not in run.document["error"]
    assert junk.read_bytes().startswith(b"this is not a database")

    newer = tmp_path / "newer.sqlite3"
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 999")
    small_servers.library.world.plugin_settings["tagManager"] = {"cacheDbPath": str(newer)}
    run = run_plugin(stash_input(small_servers, tmp_path, "cache_full_sync"))
    assert run.returncode == 1 and "newer" in run.document["error"]


@pytest.mark.parametrize("mode", ["cache_full_sync", "cache_smart_sync"])
def test_killed_cache_sync_converges(small_servers, tmp_path, mode):
    if mode == "cache_smart_sync":
        assert run_plugin(stash_input(small_servers, tmp_path, "cache_full_sync")).returncode == 0
        world = small_servers.library.world
        for sid in list(world.table("scene"))[:30]:
            world.update_entity("scene", sid, title=f"changed {sid}")
    start = small_servers.stash.count()
    killed, rerun = kill_then_rerun(stash_input(small_servers, tmp_path, mode),
                                    lambda: small_servers.stash.count() >= start + 6)
    assert rerun.returncode == 0, rerun.stderr
    assert_mirror_equals(tmp_path / "data" / "stash_cache.sqlite3", small_servers.library.world)
