"""A linked StashDB scene merged into another is reported as a probable merge, never re-linked."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tagman_base import stash_client
from tagman_base.settings import Settings
from tagman_base.run_context import RunContext
from tag_manager import run_sync_scene_tags
from tests.conftest import run_plugin


@pytest.fixture
def servers(fast_servers):
    """This file's tests run on the library whose StashDB never makes the limiter wait long."""
    return fast_servers


def context(servers, tmp_path: Path, **args) -> RunContext:
    """A sync run context as the entry script wires it."""
    stash = stash_client.connect(servers.server_connection(tmp_path), lean=True)
    return RunContext(stash, Settings(), {"mode": "sync_scene_tags", **args}, tmp_path, lambda f: None, lambda s: None)


def merge_some(servers, count: int = 3) -> dict[int, tuple[str, str]]:
    """Merge the StashDB scenes of ``count`` normal scenes into new live scenes; scene -> (old id, new id)."""
    lib = servers.library
    merged = {}
    for k, scene_id in enumerate(lib.scenes_of_kind("normal")[:count]):
        old_id = lib.scene_link[scene_id]
        new_id = f"00000000-0000-4000-8000-{k:012d}"
        lib.stashdb["scenes"][new_id] = {"id": new_id, "title": "Merge target", "deleted": False,
                                         "tags": list(lib.stashdb["scenes"][old_id]["tags"]), "fingerprints": []}
        servers.stashdb.merge_scenes(old_id, new_id)
        merged[scene_id] = (old_id, new_id)
    return merged


def stash_links(servers) -> dict[int, list]:
    """Every scene's stash ids in the fake Stash."""
    return {sid: [(s["endpoint"], s["stash_id"]) for s in row["stash_ids"]]
            for sid, row in servers.library.world.table("scene").items()}


def test_merged_scene_is_reported_with_both_ids_and_left_alone(servers, tmp_path):
    merged = merge_some(servers)
    links_before = stash_links(servers)
    tags_before = {sid: set(servers.library.world.get("scene", sid)["tag_ids"]) for sid in merged}
    result = run_sync_scene_tags(context(servers, tmp_path))
    assert result.probable_merges == len(merged)
    assert {(sid, old, new) for sid, (old, new) in merged.items()} == set(result.merged_scenes)
    assert stash_links(servers) == links_before
    for sid in merged:
        assert set(servers.library.world.get("scene", sid)["tag_ids"]) == tags_before[sid]


def test_wrong_fingerprint_hits_are_not_merges(servers, tmp_path):
    assert servers.library.scenes_of_kind("wrong_hit")
    result = run_sync_scene_tags(context(servers, tmp_path))
    assert result.probable_merges == 0 and result.merged_scenes == ()


def test_merge_is_in_the_log_and_the_preview_csv(servers, tmp_path):
    merged = merge_some(servers, count=len(servers.library.scenes_of_kind("normal")))
    run = run_plugin({"server_connection": servers.server_connection(tmp_path),
                      "args": {"mode": "sync_scene_tags", "dry_run": "true"}})
    assert run.returncode == 0, run.stderr
    output = run.document["output"]
    rows = list(csv.DictReader(Path(output["report_path"]).open(encoding="utf-8")))
    notes = {int(r["scene_id"]): r["note"] for r in rows if r["note"].startswith("probable merge")}
    assert notes and output["probable_merges"] == len(notes)
    warnings = "\n".join(run.log_lines("w"))
    for sid, note in notes.items():
        old, new = merged[sid]
        assert old in note and new in note
        assert f"Scene {sid} " in warnings and new in warnings
