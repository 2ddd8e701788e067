"""Tests of the fake Stash server (tests/fakes/fake_stash.py) and the library
generator (tests/fakes/library.py) that the other tests, the demo and the
benchmarks rely on."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLUnionType,
    Undefined,
    build_schema,
    is_non_null_type,
)

from tests.fakes.fake_stash import SDL_PATH, FakeStash, FakeStashError, World, render_timestamp
from tests.conftest import Clock
from tests.fakes.library import generate_library

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE = REPO_ROOT.parent / "shared" / "reference" / "stash-graphql"
ENDPOINT = "https://stashdb.org/graphql"


def gql(fake, query, variables=None, session=None, **kw):
    s = session or requests
    r = s.post(fake.url + "/graphql", json={"query": query, "variables": variables or {}},
               timeout=10, **kw)
    assert r.status_code == 200, (r.status_code, r.text)
    body = r.json()
    assert "errors" not in body, body
    return body["data"]


@pytest.fixture
def clock():
    return Clock("2026-03-08T06:59:59+00:00")


@pytest.fixture
def world(clock):
    return World(clock=clock)


@pytest.fixture
def fake(world):
    with FakeStash(world) as f:
        yield f


# ---------------------------------------------------------------- schema subset

def _real_schema():
    if not REFERENCE.is_dir():
        pytest.skip(f"../shared/reference not found: {REFERENCE}")
    parts = [(REFERENCE / "schema.graphql").read_text(encoding="utf-8")]
    parts += [p.read_text(encoding="utf-8") for p in sorted((REFERENCE / "types").glob("*.graphql"))]
    return build_schema("\n".join(parts))


def _required(arg_or_field) -> bool:
    return is_non_null_type(arg_or_field.type) and arg_or_field.default_value is Undefined


def subset_violations(fake, real) -> list[str]:
    errs = []
    for name, t in fake.type_map.items():
        if name.startswith("__"):
            continue
        r = real.type_map.get(name)
        if r is None:
            errs.append(f"type {name} does not exist in Stash's schema")
            continue
        if type(r) is not type(t):
            errs.append(f"{name} is a {type(t).__name__}, Stash has {type(r).__name__}")
            continue
        if isinstance(t, (GraphQLObjectType, GraphQLInterfaceType)):
            real_ifaces = {i.name for i in r.interfaces}
            for i in t.interfaces:
                if i.name not in real_ifaces:
                    errs.append(f"{name} implements {i.name}, Stash's does not")
            for fname, f in t.fields.items():
                rf = r.fields.get(fname)
                if rf is None:
                    errs.append(f"{name}.{fname} does not exist")
                    continue
                if str(rf.type) != str(f.type):
                    errs.append(f"{name}.{fname}: {f.type} != {rf.type}")
                for aname, a in f.args.items():
                    ra = rf.args.get(aname)
                    if ra is None:
                        errs.append(f"{name}.{fname}({aname}) does not exist")
                    elif str(ra.type) != str(a.type):
                        errs.append(f"{name}.{fname}({aname}): {a.type} != {ra.type}")
                for aname, ra in rf.args.items():
                    if aname not in f.args and _required(ra):
                        errs.append(f"{name}.{fname} lacks required argument {aname}")
        elif isinstance(t, GraphQLInputObjectType):
            for fname, f in t.fields.items():
                rf = r.fields.get(fname)
                if rf is None:
                    errs.append(f"input {name}.{fname} does not exist")
                elif str(rf.type) != str(f.type):
                    errs.append(f"input {name}.{fname}: {f.type} != {rf.type}")
            for fname, rf in r.fields.items():
                if fname not in t.fields and _required(rf):
                    errs.append(f"input {name} lacks required field {fname}")
        elif isinstance(t, GraphQLEnumType):
            extra = set(t.values) - set(r.values)
            if extra:
                errs.append(f"enum {name} has values Stash lacks: {sorted(extra)}")
        elif isinstance(t, GraphQLUnionType):
            extra = {m.name for m in t.types} - {m.name for m in r.types}
            if extra:
                errs.append(f"union {name} has members Stash lacks: {sorted(extra)}")
    for op in ("query_type", "mutation_type", "subscription_type"):
        ft, rt = getattr(fake, op), getattr(real, op)
        if ft is not None and (rt is None or ft.name != rt.name):
            errs.append(f"root {op} differs")
    return errs


def test_fake_sdl_is_a_strict_subset_of_the_real_stash_schema():
    real = _real_schema()
    fake = build_schema(SDL_PATH.read_text(encoding="utf-8"))
    assert subset_violations(fake, real) == []


def test_subset_check_catches_deviations():
    real = _real_schema()
    bad = build_schema("""
        type Query { findTag(id: ID): Tag  version: Version! }
        type Tag { id: ID! name: String aliases: [String!]!  bogus: Int }
        type Version { version: String }
        input TagDestroyInput { ids: [ID!] }
        enum GenderEnum { MALE ROBOT }
    """)
    errs = "\n".join(subset_violations(bad, real))
    assert "findTag(id): ID != ID!" in errs
    assert "Tag.name: String != String!" in errs
    assert "Tag.bogus does not exist" in errs
    assert "input TagDestroyInput.ids does not exist" in errs
    assert "lacks required field id" in errs
    assert "ROBOT" in errs


def test_unknown_field_fails_like_real_stash(fake):
    r = requests.post(fake.url + "/graphql",
                      json={"query": "{ findScenes { count scenes { id interactive } } }"})
    assert r.status_code == 200
    body = r.json()
    assert body["data"] is None
    assert "interactive" in body["errors"][0]["message"]
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


# ---------------------------------------------------------------- stashapi client

def test_stashinterface_constructs_against_the_fake(world):
    from stashapi.stashapp import StashInterface

    world.add_entity("tag", name="Beach")
    with FakeStash(world, session_cookie="cookie-123") as fake:
        stash = StashInterface({"Scheme": "http", "Host": "127.0.0.1", "Port": fake.port,
                                "SessionCookie": {"Name": "session", "Value": "cookie-123"},
                                "Logger": _QuietLog()})
        assert "Tag" in stash.fragments and "Scene" in stash.fragments
        assert fake.count("StashVersion") == 1 and fake.count("getApiKey") == 1
        tags = stash.call_GQL("query { findTags(filter: {per_page: -1}) { tags { id name } } }")
        assert tags["findTags"]["tags"] == [{"id": "1", "name": "Beach"}]


class _QuietLog:
    def __getattr__(self, name):
        return lambda *a, **k: None


# ---------------------------------------------------------------- queries

def _add_tags(world, names):
    return [world.add_entity("tag", name=n) for n in names]


def test_paging_defaults_no_per_page_cap_and_all(world, fake):
    for i in range(1, 1101):
        world.add_entity("tag", name=f"t{i:05d}")
    q = "query($f: FindFilterType){ findTags(filter: $f) { count tags { id } } }"
    d = gql(fake, q)["findTags"]
    assert d["count"] == 1100 and len(d["tags"]) == 25
    d = gql(fake, q, {"f": {"per_page": 5000}})["findTags"]
    assert len(d["tags"]) == 1100  # Stash has no upper limit on per_page
    d = gql(fake, q, {"f": {"per_page": 0}})["findTags"]
    assert d["tags"] == [] and d["count"] == 1100  # 0: only the count
    d = gql(fake, q, {"f": {"per_page": -1}})["findTags"]
    assert len(d["tags"]) == 1100
    d = gql(fake, q, {"f": {"per_page": 1000, "page": 2, "sort": "id"}})["findTags"]
    assert [t["id"] for t in d["tags"]] == [str(i) for i in range(1001, 1101)]
    d = gql(fake, q, {"f": {"per_page": 10, "page": 0, "sort": "id"}})["findTags"]
    assert d["tags"][0]["id"] == "1"  # page < 1 means page 1
    d = gql(fake, q, {"f": {"per_page": 10, "page": 500}})["findTags"]
    assert d["tags"] == [] and d["count"] == 1100


def test_sorting_ties_broken_by_id_ascending(world, fake, clock):
    a, b, c = _add_tags(world, ["b", "a", "B"])
    clock.tick(5)
    world.update_entity("tag", a)  # a: later updated_at; b, c share one second
    q = "query($f: FindFilterType){ findTags(filter: $f) { tags { id } } }"

    def ids(**f):
        return [int(t["id"]) for t in gql(fake, q, {"f": f})["findTags"]["tags"]]
    assert ids(sort="name") == [b, a, c]
    assert ids(sort="name", direction="DESC") == [a, c, b]
    assert ids(sort="updated_at") == [b, c, a]
    assert ids(sort="updated_at", direction="DESC") == [a, b, c]
    assert ids(sort="id", direction="DESC") == [c, b, a]
    r = requests.post(fake.url + "/graphql", json={
        "query": q, "variables": {"f": {"sort": "bogus"}}}).json()
    assert "invalid sort" in r["errors"][0]["message"]


def test_timestamps_are_second_precision_text_in_the_current_offset(world, clock):
    clock.set("2026-03-08T06:59:59.750000+00:00")
    world.set_offset(timedelta(hours=-5))
    t = world.add_entity("tag", name="x")
    assert world.get("tag", t)["updated_at"] == "2026-03-08T01:59:59-05:00"
    world.set_offset(timedelta(0))
    world.update_entity("tag", t, description="d")
    assert world.get("tag", t)["updated_at"] == "2026-03-08T06:59:59Z"
    assert render_timestamp(datetime(2026, 1, 1, tzinfo=timezone.utc),
                            timedelta(hours=5, minutes=30)) == "2026-01-01T05:30:00+05:30"


def test_timestamp_filters_compare_text(world, fake, clock):
    q = """query($f: SceneFilterType){ findScenes(scene_filter: $f, filter: {per_page: -1, sort: "id"})
           { count scenes { id updated_at } } }"""

    def ids(mod, value, value2=None, field="updated_at"):
        crit = {"modifier": mod, "value": value}
        if value2 is not None:
            crit["value2"] = value2
        return [int(s["id"]) for s in gql(fake, q, {"f": {field: crit}})["findScenes"]["scenes"]]

    clock.set("2026-03-08T10:00:00+00:00")
    s1 = world.add_entity("scene", title="one")
    cursor = world.get("scene", s1)["updated_at"]
    assert cursor == "2026-03-08T10:00:00Z"
    s2 = world.add_entity("scene", title="same second")  # same second as cursor
    clock.tick(1)
    s3 = world.add_entity("scene", title="next second")
    assert ids("GREATER_THAN", cursor) == [s3]  # the same-second write is missed
    assert ids("EQUALS", cursor) == [s1, s2]
    assert ids("NOT_EQUALS", cursor) == [s3]
    assert ids("LESS_THAN", "2026-03-08T10:00:01Z") == [s1, s2]
    assert ids("BETWEEN", cursor, "2026-03-08T10:00:01Z") == [s1, s2, s3]
    assert ids("NOT_BETWEEN", "2026-03-08T10:00:01Z", "2026-03-09") == [s1, s2]
    assert ids("BETWEEN", "2026-03-08T10:00:01Z") == [s3]  # value2 defaults to now+1 day
    assert ids("GREATER_THAN", "2026-03-08T09:59:59Z", field="created_at") == [s1, s2, s3]
    # the server moves to UTC-5 two hours later: the new text sorts BEFORE the
    # cursor although the write is later, exactly like Stash's text comparison
    world.set_offset(timedelta(hours=-5))
    clock.set("2026-03-08T12:00:00+00:00")
    world.update_entity("scene", s1, title="edited")
    assert world.get("scene", s1)["updated_at"] == "2026-03-08T07:00:00-05:00"
    assert ids("GREATER_THAN", "2026-03-08T10:00:00Z") == [s3]
    r = requests.post(fake.url + "/graphql", json={"query": q, "variables": {
        "f": {"updated_at": {"modifier": "INCLUDES", "value": "x"}}}}).json()
    assert r["data"] is None and "modifier" in r["errors"][0]["message"]


def test_id_stash_id_and_tag_filters(world, fake):
    t1, t2, t3 = _add_tags(world, ["a", "b", "c"])
    s1 = world.add_entity("scene", tag_ids=[t1, t2],
                          stash_ids=[{"endpoint": ENDPOINT, "stash_id": "u1"}])
    s2 = world.add_entity("scene", tag_ids=[t2],
                          stash_ids=[{"endpoint": "https://other/graphql", "stash_id": "u2"}])
    s3 = world.add_entity("scene", tag_ids=[])
    q = """query($f: SceneFilterType){ findScenes(scene_filter: $f, filter: {per_page: -1, sort: "id"})
           { count scenes { id } } }"""

    def ids(f):
        return [int(s["id"]) for s in gql(fake, q, {"f": f})["findScenes"]["scenes"]]
    sid = {"endpoint": ENDPOINT}
    assert ids({"stash_id_endpoint": {**sid, "modifier": "NOT_NULL"}}) == [s1]
    assert ids({"stash_id_endpoint": {**sid, "modifier": "IS_NULL"}}) == [s2, s3]
    assert ids({"stash_id_endpoint": {"modifier": "NOT_NULL"}}) == [s1, s2]
    assert ids({"stash_id_endpoint": {**sid, "stash_id": "u1", "modifier": "EQUALS"}}) == [s1]
    assert ids({"tags": {"value": [str(t1), str(t2)], "modifier": "INCLUDES"}}) == [s1, s2]
    assert ids({"tags": {"value": [str(t1), str(t2)], "modifier": "INCLUDES_ALL"}}) == [s1]
    assert ids({"tags": {"value": [str(t1)], "modifier": "EXCLUDES"}}) == [s2, s3]
    assert ids({"tags": {"value": [str(t3)], "modifier": "INCLUDES", "depth": -1}}) == []
    assert ids({"tags": {"modifier": "IS_NULL"}}) == [s3]
    assert ids({"id": {"value": s1, "modifier": "GREATER_THAN"}}) == [s2, s3]
    assert ids({"id": {"value": s1, "value2": s2, "modifier": "BETWEEN"}}) == [s1, s2]
    d = gql(fake, "{ findScenes(ids: [\"3\", \"1\"], filter: {sort: \"id\"}) { count scenes { id } } }")
    assert d["findScenes"] == {"count": 2, "scenes": [{"id": "1"}, {"id": "3"}]}
    # like Stash's FindMany, one id that does not exist fails the whole lookup
    missing = requests.post(fake.url + "/graphql", timeout=10,
                            json={"query": "{ findScenes(ids: [\"3\", \"99\"]) { count } }"}).json()
    assert missing["data"] is None and "scene with id 99 not found" in missing["errors"][0]["message"]
    d = gql(fake, "{ findTags(tag_filter: {stash_id_endpoint: {modifier: IS_NULL}}) { count } }")
    assert d["findTags"]["count"] == 3


def test_entity_fields_and_links(world, fake):
    t1 = world.add_entity("tag", name="Parent", aliases=["p"],
                          stash_ids=[(ENDPOINT, "tag-uuid")])
    t2 = world.add_entity("tag", name="Child", parent_ids=[t1])
    st = world.add_entity("studio", name="S", tag_ids=[t2])
    p = world.add_entity("performer", name="P", tag_ids=[t1], gender="FEMALE")
    g = world.add_entity("group", name="G", studio_id=st)
    gal = world.add_entity("gallery", title="Gal", folder="/g/1", studio_id=st)
    sc = world.add_entity("scene", title="Sc", tag_ids=[t2, t1], performer_ids=[p],
                          studio_id=st, groups=[(g, 3)], gallery_ids=[gal],
                          files=[{"path": "/v/a.mp4", "oshash": "0a0b0c0d0e0f1011",
                                  "phash": 0x00ff, "md5": "ab" * 16, "duration": 61.5}])
    world.add_entity("image", title="I", gallery_ids=[gal], files=["/i/1.jpg"])
    d = gql(fake, """{ findScene(id: 1) { id title studio { id } tags { id name }
        performers { id } groups { group { id } scene_index } galleries { id }
        files { basename duration fingerprints { type value } fingerprint(type: "phash") } }
      findTag(id: 1) { aliases stash_ids { endpoint stash_id updated_at } children { id }
        parents { id } scene_count }
      findGallery(id: 1) { folder { path } scenes { id } image_count }
      findImages { images { visual_files { ... on ImageFile { path } } galleries { id } } }
      findPerformers { performers { gender tags { name } } } }""")
    scene = d["findScene"]
    assert scene["tags"] == [{"id": str(t2), "name": "Child"}, {"id": str(t1), "name": "Parent"}]
    assert scene["groups"] == [{"group": {"id": str(g)}, "scene_index": 3}]
    assert scene["files"][0]["fingerprints"] == [
        {"type": "oshash", "value": "0a0b0c0d0e0f1011"}, {"type": "md5", "value": "ab" * 16},
        {"type": "phash", "value": "ff"}]
    assert scene["files"][0]["fingerprint"] == "ff"
    assert d["findTag"]["children"] == [{"id": str(t2)}]
    assert d["findTag"]["scene_count"] == 1
    assert d["findTag"]["stash_ids"][0]["updated_at"] == world.get("tag", t1)["created_at"]
    assert d["findGallery"] == {"folder": {"path": "/g/1"}, "scenes": [{"id": str(sc)}],
                                "image_count": 1}
    assert d["findImages"]["images"][0]["visual_files"] == [{"path": "/i/1.jpg"}]
    assert d["findPerformers"]["performers"][0]["gender"] == "FEMALE"
    with pytest.raises(FakeStashError):
        world.add_entity("scene", tag_ids=[999])


def test_configuration_and_version(world, fake):
    world.plugin_settings["tagManager"] = {"dryRun": True}
    world.stash_boxes = [{"endpoint": ENDPOINT, "api_key": "k", "name": "StashDB",
                          "max_requests_per_minute": 240}]
    world.exclude_tag_patterns = ["^ignore"]
    d = gql(fake, """{ version { version hash build_time }
        configuration { general { apiKey stashBoxes { endpoint api_key name max_requests_per_minute } }
          scraping { excludeTagPatterns }
          mine: plugins(include: ["tagManager"]) other: plugins(include: ["nope"]) all: plugins } }""")
    cfg = d["configuration"]
    assert cfg["mine"] == {"tagManager": {"dryRun": True}}
    assert cfg["other"] == {}
    assert cfg["all"] == {"tagManager": {"dryRun": True}}
    assert cfg["general"]["stashBoxes"][0]["endpoint"] == ENDPOINT
    assert cfg["scraping"]["excludeTagPatterns"] == ["^ignore"]
    assert d["version"]["version"].startswith("v0.")
    gql(fake, 'mutation { configurePlugin(plugin_id: "tagManager", input: {dryRun: false}) }')
    assert world.plugin_settings["tagManager"] == {"dryRun": False}


# ---------------------------------------------------------------- mutations

BULK = """mutation($input: BulkSceneUpdateInput!){ bulkSceneUpdate(input: $input) {
          id updated_at tags { id } } }"""


def test_bulk_scene_update_modes_and_updated_at(world, fake, clock):
    t1, t2, t3 = _add_tags(world, ["a", "b", "c"])
    s1 = world.add_entity("scene", tag_ids=[t1])
    s2 = world.add_entity("scene", tag_ids=[t1, t2])
    before = world.get("scene", s1)["updated_at"]
    clock.tick(10)
    now = render_timestamp(clock(), timedelta(0))

    def run(mode, tag_ids, ids=(s1, s2)):
        return gql(fake, BULK, {"input": {"ids": [str(i) for i in ids],
                                          "tag_ids": {"ids": [str(t) for t in tag_ids],
                                                      "mode": mode}}})["bulkSceneUpdate"]
    res = run("ADD", [t2])
    assert [r["tags"] for r in res] == [[{"id": str(t1)}, {"id": str(t2)}]] * 2
    assert world.get("scene", s1)["updated_at"] == now   # changed
    assert world.get("scene", s2)["updated_at"] == before  # already had t2
    clock.tick(10)
    run("REMOVE", [t1, t3])
    assert world.get("scene", s1)["tag_ids"] == [t2]
    assert world.get("scene", s2)["tag_ids"] == [t2]
    clock.tick(10)
    run("SET", [t3, t1])
    assert world.get("scene", s1)["tag_ids"] == [t3, t1]
    stamp = world.get("scene", s1)["updated_at"]
    clock.tick(10)
    run("SET", [t3, t1])
    assert world.get("scene", s1)["updated_at"] == stamp  # nothing changed
    world.touch_unchanged_on_update = True  # what real Stash does
    run("SET", [t3, t1])
    assert world.get("scene", s1)["updated_at"] != stamp
    # an unknown tag fails the whole mutation without changing anything
    r = requests.post(fake.url + "/graphql", json={"query": BULK, "variables": {"input": {
        "ids": [str(s1)], "tag_ids": {"ids": ["999"], "mode": "ADD"}}}}).json()
    assert r["data"] == {"bulkSceneUpdate": None} and "999" in r["errors"][0]["message"]
    assert world.get("scene", s1)["tag_ids"] == [t3, t1]
    d = gql(fake, """mutation { sceneUpdate(input: {id: "1", tag_ids: ["2"], title: "T"}) {
                     title tags { id } } }""")
    assert d["sceneUpdate"] == {"title": "T", "tags": [{"id": "2"}]}


def test_tag_mutations(world, fake):
    t1 = world.add_entity("tag", name="One", aliases=["uno"])
    d = gql(fake, 'mutation { tagCreate(input: {name: "Two", aliases: ["dos"]}) { id name } }')
    t2 = int(d["tagCreate"]["id"])
    r = requests.post(fake.url + "/graphql", json={
        "query": 'mutation { tagCreate(input: {name: "one"}) { id } }'}).json()
    assert "already exists" in r["errors"][0]["message"]
    gql(fake, f'mutation {{ tagUpdate(input: {{id: {t2}, description: "d"}}) {{ id }} }}')
    assert world.get("tag", t2)["description"] == "d"
    d = gql(fake, f'mutation {{ tagsMerge(input: {{source: [{t2}], destination: {t1}}}) {{ aliases }} }}')
    assert d["tagsMerge"]["aliases"] == ["uno", "Two", "dos"]
    assert gql(fake, f'mutation {{ tagDestroy(input: {{id: {t1}}}) }}')["tagDestroy"] is True
    assert world.table("tag") == {}


def test_merge_and_delete_do_not_touch_linked_entities(world, clock):
    t1, t2, t3, t4 = _add_tags(world, ["Keep", "Gone", "Other", "Top"])
    world.update_entity("tag", t3, parent_ids=[t2])
    world.update_entity("tag", t2, parent_ids=[t4])
    s1 = world.add_entity("scene", tag_ids=[t2, t3])
    s2 = world.add_entity("scene", tag_ids=[t1, t2])
    p = world.add_entity("performer", name="P", tag_ids=[t2])
    before = {k: [dict(r) for r in v] for k, v in world.tables().items()}
    clock.tick(60)
    world.merge_tags([t2], t1)
    assert world.get("tag", t2) is None
    assert world.get("scene", s1)["tag_ids"] == [t1, t3]
    assert world.get("scene", s2)["tag_ids"] == [t1]  # deduplicated
    assert world.get("performer", p)["tag_ids"] == [t1]
    assert world.get("tag", t3)["parent_ids"] == [t1]
    dest = world.get("tag", t1)
    assert dest["aliases"] == ["Gone"]
    assert dest["parent_ids"] == [t4]  # the source's parents move to the destination
    assert dest["updated_at"] == before["tag"][0]["updated_at"]  # tagsMerge moves no updated_at
    old = {r["id"]: r["updated_at"] for r in before["scene"]}
    assert all(world.get("scene", i)["updated_at"] == old[i] for i in (s1, s2))
    assert world.get("tag", t3)["updated_at"] == before["tag"][2]["updated_at"]
    clock.tick(60)
    world.delete_entity("tag", t3)
    assert world.get("scene", s1)["tag_ids"] == [t1]
    assert world.get("scene", s1)["updated_at"] == old[s1]
    world.delete_entity("performer", p)
    assert world.tables()["performer"] == []
    with pytest.raises(FakeStashError):
        world.delete_entity("performer", p)


# ---------------------------------------------------------------- HTTP behaviour

def test_auth_cookie_and_api_key(world):
    with FakeStash(world, session_cookie="sess", api_key="key") as fake:
        url = fake.url + "/graphql"
        q = {"query": "{ version { hash } }"}
        r = requests.post(url, json=q)
        assert r.status_code == 401 and r.content == b""
        assert requests.post(url, json=q, cookies={"session": "wrong"}).status_code == 401
        assert requests.post(url, json=q, cookies={"session": "sess"}).status_code == 200
        assert requests.post(url, json=q, headers={"ApiKey": "key"}).status_code == 200
        assert requests.get(url, params=q, headers={"ApiKey": "key"}).json()["data"]
        d = requests.post(url, json={"query": "{ configuration { general { apiKey } } }"},
                          headers={"ApiKey": "key"}).json()
        assert d["data"]["configuration"]["general"]["apiKey"] == "key"
        assert requests.post(fake.url + "/other", json=q).status_code == 404


def test_fault_injection_log_and_restart(world, fake):
    named = {"query": "query Ping { version { hash } }"}
    other = {"query": "query Other { version { hash } }"}
    url = fake.url + "/graphql"
    s = requests.Session()
    fake.fail_next(2, status=503, body="busy")
    r = s.post(url, json=named)
    assert (r.status_code, r.text) == (503, "busy")
    assert s.post(url, json=named).status_code == 503
    assert s.post(url, json=named).status_code == 200
    fake.fail_next(1, status=500, operation="Other")
    assert s.post(url, json=named).status_code == 200
    assert s.post(url, json=other).status_code == 500
    assert s.post(url, json=other).status_code == 200
    fake.delay_next(1, 0.3, operation="Ping")
    t = time.monotonic()
    s.post(url, json=named)
    assert time.monotonic() - t >= 0.3
    fake.fail_next(1, status=0)
    with pytest.raises(requests.ConnectionError):
        requests.post(url, json=named, timeout=5)
    assert fake.count("Ping") == 6 and fake.count("Other") == 2
    assert fake.requests("Other") == [("Other", None), ("Other", None)]
    s.post(url, json={**named, "variables": {"a": 1}})
    assert fake.request_log[-1] == ("Ping", {"a": 1})
    # Stash goes away (open keep-alive connections included) and comes back
    port = fake.port
    fake.stop()
    with pytest.raises(requests.ConnectionError):
        s.post(url, json=named, timeout=2)
    fake.start()
    assert fake.port == port
    assert s.post(url, json=named).status_code == 200
    fake.clear_log()
    assert fake.count() == 0


def test_bad_json_body(fake):
    r = requests.post(fake.url + "/graphql", data=b"{not json",
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["data"] is None


def test_cli_serves_until_sigterm(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    dump = tmp_path / "stashdb.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.fake_stash", "--port", "0", "--scenes", "50",
         "--images", "10", "--session-cookie", "X", "--dump-stashdb", str(dump)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = json.loads(proc.stdout.readline())
        r = requests.post(line["url"] + "/graphql", cookies={"session": "X"},
                          json={"query": "{ findScenes { count } }"}, timeout=5)
        assert r.json()["data"]["findScenes"]["count"] == 50
        assert json.loads(dump.read_text())["scenes"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- generator

def test_generator_is_deterministic():
    a = generate_library(seed=7, scenes=300, images=200)
    b = generate_library(seed=7, scenes=300, images=200)
    c = generate_library(seed=8, scenes=300, images=200)
    assert a.world.tables() == b.world.tables()
    assert a.stashdb == b.stashdb
    assert a.tag_matches == b.tag_matches
    assert a.stashdb != c.stashdb


def test_generator_correspondence():
    lib = generate_library(seed=3, scenes=1000, tags=80, images=300)
    w, sdb = lib.world, lib.stashdb["scenes"]
    fp_index = {}
    for s in sdb.values():
        assert set(s) == {"id", "title", "deleted", "tags", "fingerprints"}
        assert 0 <= len(s["tags"]) <= 12
        for f in s["fingerprints"]:
            assert f["algorithm"] in ("OSHASH", "PHASH", "MD5")
            assert isinstance(f["duration"], int)
            fp_index.setdefault(f["hash"], set()).add(s["id"])
        for t in s["tags"]:
            assert set(t) == {"id", "name", "aliases", "deleted"}
    kinds = lib.scene_kind
    linked = [i for i, k in kinds.items() if not k.startswith("unlinked")]
    assert len(linked) == 900
    for k in ("fallback", "wrong_hit", "deleted", "missing", "unlinked_known", "unlinked"):
        assert lib.scenes_of_kind(k), k
    for sid, kind in kinds.items():
        row = w.get("scene", sid)
        link = [x["stash_id"] for x in row["stash_ids"] if x["endpoint"] == ENDPOINT]
        fps = {f["type"]: f["value"] for f in row["files"][0]["fingerprints"]}
        assert fps["phash"] == format(int(fps["phash"], 16), "x")  # no leading zeros
        assert len(fps["oshash"]) == 16
        hits = fp_index.get(fps["oshash"], set())
        if kind.startswith("unlinked"):
            assert link == []
            assert hits == ({lib.fingerprint_match[sid]} if kind == "unlinked_known" else set())
            continue
        assert link == [lib.scene_link[sid]]
        if kind in ("normal", "deleted"):
            assert hits == {link[0]}
            assert sdb[link[0]]["deleted"] == (kind == "deleted")
        elif kind == "fallback":
            assert hits == set() and link[0] in sdb
        elif kind == "wrong_hit":
            assert hits == {lib.decoy[sid]} and lib.decoy[sid] != link[0] and link[0] in sdb
        elif kind == "missing":
            assert hits == set() and link[0] not in sdb
    # tags
    tags = {t["id"]: t for t in w.tables()["tag"]}
    assert all(t["aliases"] is not None for t in tags.values())
    assert any(t["aliases"] for t in tags.values())
    kinds_t = lib.tag_kind
    assert any(t["deleted"] for t in lib.stashdb_tags.values())
    for tid, kind in kinds_t.items():
        m, name = lib.tag_matches[tid], lib.stashdb_tags[tid]["name"]
        if kind in ("link", "link_clash"):
            assert len(m["link"]) == 1
            assert tags[m["link"][0]]["name"] != name
            assert bool(m["name"]) == (kind == "link_clash")
        elif kind == "name_case":
            assert len(m["name"]) == 1 and tags[m["name"][0]]["name"] != name
        elif kind == "alias":
            assert m["alias"] and not m["name"] and not m["link"]
        elif kind in ("shared_alias", "dup_name"):
            assert len(m["alias" if kind == "shared_alias" else "name"]) == 2
        elif kind == "name_vs_alias":
            assert len(m["name"]) == 1 and len(m["alias"]) == 1
            assert m["alias"][0] < m["name"][0]
        else:
            assert m == {"link": [], "name": [], "alias": []}
    assert set(kinds_t.values()) >= {"link", "link_clash", "name_case", "alias",
                                     "shared_alias", "dup_name", "name_vs_alias", "unmatched"}
    # links of other entities point at existing rows; some images inherit
    t = w.tables()
    ids = {k: {r["id"] for r in v} for k, v in t.items()}
    for img in t["image"]:
        assert set(img["gallery_ids"]) <= ids["gallery"]
        assert set(img["tag_ids"]) <= ids["tag"]
    assert any(img["gallery_ids"] and img["studio_id"] is None and img["date"] is None
               for img in t["image"])
    for sc in t["scene"]:
        assert set(sc["tag_ids"]) <= ids["tag"] and set(sc["performer_ids"]) <= ids["performer"]
    assert w.stash_boxes[0]["endpoint"] == ENDPOINT


def test_generated_library_served(tmp_path):
    lib = generate_library(seed=1)
    with FakeStash(lib.world) as fake:
        q = """query($f: FindFilterType, $sf: SceneFilterType){ findScenes(filter: $f, scene_filter: $sf)
               { count scenes { id updated_at stash_ids { endpoint stash_id } tags { id }
                 files { fingerprints { type value } } } } }"""
        seen, page = [], 1
        while True:
            d = gql(fake, q, {"f": {"page": page, "per_page": 60, "sort": "updated_at"},
                              "sf": {"stash_id_endpoint": {"endpoint": ENDPOINT,
                                                           "modifier": "NOT_NULL"}}})
            scenes = d["findScenes"]["scenes"]
            seen += scenes
            if len(scenes) < 60:
                break
            page += 1
        assert len(seen) == d["findScenes"]["count"] == 180
        stamps = [s["updated_at"] for s in seen]
        assert stamps == sorted(stamps)
        assert len({s["id"] for s in seen}) == 180


def test_fake_stash_binds_its_own_ephemeral_port():
    w = World()
    with FakeStash(w) as a, FakeStash(w) as b:
        assert a.port != b.port
        with socket.create_connection(("127.0.0.1", a.port), timeout=2):
            pass


def test_answers_carry_the_worlds_clock_in_a_date_header():
    # Go's net/http writes Date (UTC, whole seconds) on every answer, after the handler's reads
    from email.utils import parsedate_to_datetime

    moment = datetime(2025, 7, 1, 8, 30, 15, 600000, tzinfo=timezone.utc)
    w = World(clock=lambda: moment, offset=timedelta(hours=2))
    with FakeStash(w) as server:
        answer = requests.post(server.url, json={"query": "{ version { version } }"}, timeout=10)
    assert parsedate_to_datetime(answer.headers["Date"]) == moment.replace(microsecond=0)


@pytest.mark.parametrize("after, page, per_page", [(0, 1, 7), (5, 1, 7), (5, 2, 7), (12, 1, -1), (10_000, 1, 7),
                                                   (3, 3, 4)])
def test_keyset_pages_by_id_answer_as_a_full_filter_does(world, after, page, per_page):
    """``id > X`` ascending by id is answered from the primary key (as Stash's index does): same rows, same count."""
    for n in range(15):
        world.add_entity("scene", title=f"scene {n}")
    world.delete_entity("scene", sorted(world.table("scene"))[2])  # a hole in the ids
    criteria = {"id": {"value": after, "modifier": "GREATER_THAN"}}
    page_filter = {"page": page, "per_page": per_page, "sort": "id", "direction": "ASC"}
    expected = sorted(i for i in world.table("scene") if i > after)
    count, rows = world.find("scene", criteria, page_filter)
    start = 0 if per_page < 0 else (page - 1) * per_page
    assert count == len(expected)
    assert [r["id"] for r in rows] == (expected[start:] if per_page < 0 else expected[start:start + per_page])
    # the same question with a second criterion takes the general path: the same answer
    wide = {**criteria, "created_at": {"value": "1970-01-01T00:00:00Z", "modifier": "GREATER_THAN"}}
    assert world.find("scene", wide, page_filter) == (count, rows)
