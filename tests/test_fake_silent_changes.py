"""The fake Stash changes what the real one changes without moving an entity's updated_at.

Each behaviour is read from Stash's source (see ../shared/reference/stash-behaviour.md and the
docstrings in tests/fakes/fake_stash.py) and pinned here, so that the cache's checks are tested
against the real server's behaviour.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import requests

from tests.fakes.fake_stash import GENERATED_FILE_TIME, FakeStash, FakeStashError, World, render_timestamp

T0 = datetime(2026, 3, 8, 7, 0, 0, tzinfo=timezone.utc)


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def world(clock):
    return World(clock=clock)


@pytest.fixture
def fake(world):
    with FakeStash(world) as server:
        yield server


def gql(fake, query, variables=None):
    """One request; the data (errors fail the test)."""
    body = requests.post(fake.graphql_url, json={"query": query, "variables": variables or {}}, timeout=10).json()
    assert "errors" not in body, body
    return body["data"]


def later(clock, seconds=60) -> str:
    """Move the clock on; the new time as the fake renders it."""
    clock.now += timedelta(seconds=seconds)
    return render_timestamp(clock.now, timedelta(0))


def scene_with_file(world, path="/v/a.mp4", phash=None, **fields):
    """A scene with one file; returns (scene id, file id)."""
    f = {"path": path, "size": 10, "duration": 5.0, "oshash": "0a" * 8}
    if phash:
        f["phash"] = phash
    sid = world.add_entity("scene", files=[f], **fields)
    return sid, world.get("scene", sid)["files"][0]["id"]


def test_fake_tag_merge_moves_aliases_stash_ids_parents_without_bump(world, clock):
    top = world.add_entity("tag", name="Top")
    dest = world.add_entity("tag", name="Dest", stash_ids=[("https://a", "d-1")])
    src = world.add_entity("tag", name="Src", aliases=["Source alias"], parent_ids=[top],
                           stash_ids=[("https://a", "s-1")])
    child = world.add_entity("tag", name="Child", parent_ids=[src])
    sid = world.add_entity("scene", tag_ids=[src])
    stamps = {t: world.get("tag", t)["updated_at"] for t in (dest, child)}
    scene_stamp = world.get("scene", sid)["updated_at"]
    later(clock)
    world.merge_tags([src], dest)
    merged = world.get("tag", dest)
    assert merged["aliases"] == ["Src", "Source alias"]
    assert [s["stash_id"] for s in merged["stash_ids"]] == ["d-1", "s-1"]
    assert merged["parent_ids"] == [top]
    assert world.get("tag", child)["parent_ids"] == [dest]
    assert world.get("scene", sid)["tag_ids"] == [dest]
    assert {t: world.get("tag", t)["updated_at"] for t in (dest, child)} == stamps
    assert world.get("scene", sid)["updated_at"] == scene_stamp


def test_fake_tag_merge_of_the_destinations_parent_leaves_no_self_link(world):
    parent = world.add_entity("tag", name="Parent")
    child = world.add_entity("tag", name="Child", parent_ids=[parent])
    world.merge_tags([parent], child)
    assert world.get("tag", child)["parent_ids"] == []


def test_fake_file_move_changes_only_the_file_row_with_the_scan_time(world, clock):
    sid, fid = scene_with_file(world)
    before = world.get("scene", sid)["updated_at"]
    scan = later(clock)
    world.move_file(fid, "/v/renamed.mp4")
    scene = world.get("scene", sid)
    assert scene["updated_at"] == before
    assert scene["files"][0]["path"] == "/v/renamed.mp4" and scene["files"][0]["basename"] == "renamed.mp4"
    assert scene["files"][0]["updated_at"] == scan


def test_fake_file_modification_changes_size_fingerprints_and_file_times_only(world, clock):
    sid, fid = scene_with_file(world, phash="ff")
    before = world.get("scene", sid)["updated_at"]
    scan = later(clock)
    world.modify_file(fid, size=99, oshash="1b" * 8)
    f = world.get("scene", sid)["files"][0]
    assert (f["size"], f["mod_time"], f["updated_at"]) == (99, scan, scan)
    assert {p["type"]: p["value"] for p in f["fingerprints"]} == {"oshash": "1b" * 8, "phash": "ff"}
    assert world.get("scene", sid)["updated_at"] == before


def test_fake_phash_generation_changes_only_the_fingerprint(world, clock):
    sid, fid = scene_with_file(world)
    file_before = dict(world.get("scene", sid)["files"][0])
    scene_before = world.get("scene", sid)["updated_at"]
    later(clock)
    world.set_phash(fid, "abc")
    f = world.get("scene", sid)["files"][0]
    assert {p["type"]: p["value"] for p in f["fingerprints"]}["phash"] == "abc"
    assert f["updated_at"] == file_before["updated_at"] and f["mod_time"] == file_before["mod_time"]
    assert world.get("scene", sid)["updated_at"] == scene_before


def test_fake_scene_assign_file_moves_the_file_without_bump(world, clock, fake):
    a, fid = scene_with_file(world, "/v/a.mp4")
    b, _ = scene_with_file(world, "/v/b.mp4")
    stamps = [world.get("scene", i)["updated_at"] for i in (a, b)]
    later(clock)
    gql(fake, "mutation A($i: AssignSceneFileInput!) { sceneAssignFile(input: $i) }",
        {"i": {"scene_id": str(b), "file_id": str(fid)}})
    assert world.get("scene", a)["files"] == []
    assert [f["path"] for f in world.get("scene", b)["files"]] == ["/v/b.mp4", "/v/a.mp4"]
    assert [world.get("scene", i)["updated_at"] for i in (a, b)] == stamps


def test_fake_scene_merge_moves_files_bumps_destination_and_destroys_sources(world, clock, fake):
    dest, _ = scene_with_file(world, "/v/dest.mp4")
    src, _ = scene_with_file(world, "/v/src.mp4", tag_ids=[world.add_entity("tag", name="T")])
    now = later(clock)
    data = gql(fake, "mutation M($i: SceneMergeInput!) { sceneMerge(input: $i) { id updated_at files { path } } }",
               {"i": {"source": [str(src)], "destination": str(dest)}})
    assert data["sceneMerge"] == {"id": str(dest), "updated_at": now,
                                  "files": [{"path": "/v/dest.mp4"}, {"path": "/v/src.mp4"}]}
    assert world.get("scene", src) is None
    with pytest.raises(FakeStashError):
        world.merge_scenes([dest], dest)


def test_fake_performer_merge_moves_links_and_tags_bumps_destination_only(world, clock, fake):
    t1, t2 = world.add_entity("tag", name="T1"), world.add_entity("tag", name="T2")
    dest = world.add_entity("performer", name="Dest", tag_ids=[t1])
    src = world.add_entity("performer", name="Src", tag_ids=[t1, t2])
    sid = world.add_entity("scene", performer_ids=[src])
    iid = world.add_entity("image", performer_ids=[dest, src])
    stamps = [world.get("scene", sid)["updated_at"], world.get("image", iid)["updated_at"]]
    now = later(clock)
    gql(fake, "mutation P($i: PerformerMergeInput!) { performerMerge(input: $i) { id } }",
        {"i": {"source": [str(src)], "destination": str(dest)}})
    assert world.get("performer", src) is None
    assert world.get("performer", dest)["tag_ids"] == [t1, t2]
    assert world.get("performer", dest)["updated_at"] == now
    assert world.get("scene", sid)["performer_ids"] == [dest]
    assert world.get("image", iid)["performer_ids"] == [dest]
    assert [world.get("scene", sid)["updated_at"], world.get("image", iid)["updated_at"]] == stamps


def test_fake_files_filter_finds_owners_of_files_updated_since(world, clock, fake):
    a, fid = scene_with_file(world, "/v/a.mp4")
    scene_with_file(world, "/v/b.mp4")
    since = later(clock)
    later(clock)
    gql(fake, "mutation M($i: MoveFilesInput!) { moveFiles(input: $i) }",
        {"i": {"ids": [str(fid)], "destination_folder": "/w"}})
    query = """query F($f: SceneFilterType) { findScenes(scene_filter: $f, filter: {per_page: -1}) {
        count scenes { id files { path updated_at mod_time created_at } } } }"""
    found = gql(fake, query, {"f": {"files_filter": {"updated_at": {"value": since, "modifier": "GREATER_THAN"}}}})
    assert found["findScenes"]["count"] == 1
    assert found["findScenes"]["scenes"][0]["id"] == str(a)
    assert found["findScenes"]["scenes"][0]["files"][0]["path"] == "/w/a.mp4"
    none = gql(fake, query, {"f": {"files_filter": {"mod_time": {"value": since, "modifier": "GREATER_THAN"}}}})
    assert none["findScenes"]["count"] == 0  # a move keeps the file's modification time


def test_fake_generated_files_carry_an_old_file_time(fake, world):
    world.add_entity("image", files=[{"path": "/i/x.jpg", "updated_at": None}])
    world._tables["image"][1]["files"][0].pop("updated_at")
    data = gql(fake, "query { findImages { images { visual_files { ... on ImageFile { updated_at } } } } }")
    assert data["findImages"]["images"][0]["visual_files"][0]["updated_at"] == GENERATED_FILE_TIME


def test_fake_is_missing_phash_counts_scenes_without_a_phash(world, fake):
    _, fid = scene_with_file(world, "/v/a.mp4")
    scene_with_file(world, "/v/b.mp4", phash="ee")
    world.add_entity("scene", title="no files")
    query = 'query { findScenes(scene_filter: {is_missing: "phash"}, filter: {per_page: 0}) { count } }'
    assert gql(fake, query)["findScenes"]["count"] == 2
    gql(fake, "mutation S($i: FileSetFingerprintsInput!) { fileSetFingerprints(input: $i) }",
        {"i": {"id": str(fid), "fingerprints": [{"type": "phash", "value": "12ab"}]}})
    assert gql(fake, query)["findScenes"]["count"] == 1
    gql(fake, "mutation S($i: FileSetFingerprintsInput!) { fileSetFingerprints(input: $i) }",
        {"i": {"id": str(fid), "fingerprints": [{"type": "phash", "value": None}]}})  # null removes it
    assert gql(fake, query)["findScenes"]["count"] == 2


def test_fake_offset_paging_skips_a_row_when_a_lower_row_is_deleted_between_pages(world, fake):
    for n in range(6):
        world.add_entity("scene", title=f"s{n}")
    query = "query P($f: FindFilterType) { findScenes(filter: $f) { count scenes { id } } }"
    changed = []

    def delete_then_create(op, variables):
        if variables and variables["f"]["page"] == 2 and not changed:
            changed.append(True)
            world.delete_entity("scene", 1)
            world.add_entity("scene", title="new")

    fake.before_request(delete_then_create)
    seen = []
    for page in (1, 2, 3):
        data = gql(fake, query, {"f": {"page": page, "per_page": 2, "sort": "id", "direction": "ASC"}})
        seen += [int(s["id"]) for s in data["findScenes"]["scenes"]]
        assert data["findScenes"]["count"] == 6  # the counts agree all along
    fake.clear_before_request()
    assert 3 not in seen and seen == [1, 2, 4, 5, 6, 7]
