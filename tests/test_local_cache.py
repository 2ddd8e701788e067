"""The sidecar cache against the fake Stash: every mode equals the fake's data, table by table."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
from graphql import parse, validate

import cache_schema
import local_cache
from local_cache import cache_full_sync, cache_incremental_sync, cache_smart_sync
from stash_client import StashClient
from tests.fakes.fake_stash import FakeStash, fake_schema
from tests.fakes.library import generate_library
from tm_errors import CacheError, CacheSchemaError, SettingsError

SMALL = dict(scenes=40, images=50, tags=24, performers=14, studios=6, groups=5, galleries=10)


class Clock:
    """A settable clock for the fake world (later writes get this time)."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float = 1.0) -> None:
        """Advance the clock."""
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc))


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


@pytest.fixture
def stash(fake) -> StashClient:
    return StashClient(requests.Session(), fake.url, sleep=lambda _s: None, backoff=(0.0,))


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "cache" / "stash_cache.sqlite3"


# ------------------------------------------------------------------------------------------
# expected mirror content computed independently from the fake's world


def _j(values) -> str:
    return json.dumps(list(values or []), ensure_ascii=False, separators=(",", ":"))


def _b(value) -> int:
    return 1 if value else 0


def expected_tables(world) -> dict[str, set]:
    """What every mirror table must hold for the world's current data."""
    t = world.tables()
    exist = {k: {r["id"] for r in rows} for k, rows in t.items()}
    out: dict[str, set] = {name: set() for name in
                           ("studios", "tags", "performers", "groups", "galleries", "scenes", "images",
                            "scene_files", "image_files", "gallery_files", "stash_ids", *cache_schema.LINK_TABLES)}

    def live(kind, ids):
        return [i for i in dict.fromkeys(ids) if i in exist[kind]]

    for r in t["studio"]:
        parent = r["parent_id"] if r["parent_id"] in exist["studio"] else None
        out["studios"].add((r["id"], r["name"], parent, _j(r["aliases"]), _j(r["urls"]), r["details"],
                            r["rating100"], _b(r["favorite"]), _b(r["ignore_auto_tag"]), r["created_at"],
                            r["updated_at"]))
        out["studio_tags"] |= {(r["id"], x) for x in live("tag", r["tag_ids"])}
        out["stash_ids"] |= {("studio", r["id"], s["endpoint"], s["stash_id"]) for s in r["stash_ids"]}
    for r in t["tag"]:
        out["tags"].add((r["id"], r["name"], r["sort_name"], r["description"], _j(r["aliases"]), _b(r["favorite"]),
                         _b(r["ignore_auto_tag"]), r["created_at"], r["updated_at"]))
        out["tag_parents"] |= {(r["id"], x) for x in live("tag", r["parent_ids"])}
        out["stash_ids"] |= {("tag", r["id"], s["endpoint"], s["stash_id"]) for s in r["stash_ids"]}
    for r in t["performer"]:
        out["performers"].add((r["id"], r["name"], r["disambiguation"], r["gender"], r["birthdate"],
                               _j(r["alias_list"]), _j(r["urls"]), r["details"], r["rating100"], _b(r["favorite"]),
                               _b(r["ignore_auto_tag"]), r["created_at"], r["updated_at"]))
        out["performer_tags"] |= {(r["id"], x) for x in live("tag", r["tag_ids"])}
        out["stash_ids"] |= {("performer", r["id"], s["endpoint"], s["stash_id"]) for s in r["stash_ids"]}
    for r in t["group"]:
        studio = r["studio_id"] if r["studio_id"] in exist["studio"] else None
        out["groups"].add((r["id"], r["name"], r["aliases"], r["date"], r["rating100"], studio, r["director"],
                           r["synopsis"], _j(r["urls"]), r["created_at"], r["updated_at"]))
        out["group_tags"] |= {(r["id"], x) for x in live("tag", r["tag_ids"])}
    for r in t["gallery"]:
        studio = r["studio_id"] if r["studio_id"] in exist["studio"] else None
        out["galleries"].add((r["id"], r["title"], r["code"], r["date"], r["details"], r["photographer"],
                              r["rating100"], _b(r["organized"]), studio, _j(r["urls"]),
                              (r["folder"] or {}).get("path"), r["created_at"], r["updated_at"]))
        out["gallery_tags"] |= {(r["id"], x) for x in live("tag", r["tag_ids"])}
        out["gallery_performers"] |= {(r["id"], x) for x in live("performer", r["performer_ids"])}
        out["gallery_files"] |= {(r["id"], pos, f["path"]) for pos, f in enumerate(r["files"])}
    for r in t["scene"]:
        studio = r["studio_id"] if r["studio_id"] in exist["studio"] else None
        out["scenes"].add((r["id"], r["title"], r["code"], r["details"], r["director"], r["date"], r["rating100"],
                           _b(r["organized"]), studio, _j(r["urls"]), r["created_at"], r["updated_at"]))
        out["scene_tags"] |= {(r["id"], x) for x in live("tag", r["tag_ids"])}
        out["scene_performers"] |= {(r["id"], x) for x in live("performer", r["performer_ids"])}
        out["scene_galleries"] |= {(r["id"], x) for x in live("gallery", r["gallery_ids"])}
        seen = set()
        for g in r["groups"]:
            if g["group_id"] in exist["group"] and g["group_id"] not in seen:
                seen.add(g["group_id"])
                out["scene_groups"].add((r["id"], g["group_id"], g["scene_index"]))
        for pos, f in enumerate(r["files"]):
            fp = {x["type"]: x["value"] for x in f["fingerprints"]}
            out["scene_files"].add((r["id"], pos, f["path"], f["size"], f["duration"], fp.get("oshash"),
                                    fp.get("phash"), fp.get("md5")))
        out["stash_ids"] |= {("scene", r["id"], s["endpoint"], s["stash_id"]) for s in r["stash_ids"]}
    for r in t["image"]:
        studio = r["studio_id"] if r["studio_id"] in exist["studio"] else None
        out["images"].add((r["id"], r["title"], r["code"], r["date"], r["details"], r["photographer"],
                           r["rating100"], _b(r["organized"]), studio, _j(r["urls"]), r["created_at"],
                           r["updated_at"]))
        out["image_tags"] |= {(r["id"], x) for x in live("tag", r["tag_ids"])}
        out["image_performers"] |= {(r["id"], x) for x in live("performer", r["performer_ids"])}
        out["image_galleries"] |= {(r["id"], x, pos) for pos, x in enumerate(live("gallery", r["gallery_ids"]))}
        out["image_files"] |= {(r["id"], pos, f["path"], f["size"]) for pos, f in enumerate(r["files"])}
    return out


def mirror_tables(db: Path) -> dict[str, set]:
    """The same tables read from the cache file."""
    out = {}
    with sqlite3.connect(db) as conn:
        for spec in local_cache.SPECS:
            cols = ", ".join((*spec.columns, "created_at", "updated_at"))
            out[spec.table] = set(conn.execute(f"SELECT {cols} FROM {spec.table}"))
        for table in ("scene_files", "image_files", "gallery_files", "stash_ids", *cache_schema.LINK_TABLES):
            out[table] = set(conn.execute(f"SELECT * FROM {table}"))
    return out


def assert_mirror_equals(db: Path, world) -> None:
    """Every table of the mirror equals the fake's data."""
    expected, actual = expected_tables(world), mirror_tables(db)
    for table in expected:
        missing, extra = expected[table] - actual[table], actual[table] - expected[table]
        assert not missing and not extra, f"{table}: missing {sorted(missing)[:3]} extra {sorted(extra)[:3]}"


DERIVED = ("image_inherited", "image_inherited_performers", "image_inherited_tags", "scene_inherited_tags",
           "image_counts")


def derived_tables(db: Path) -> dict[str, set]:
    """Contents of the derived tables."""
    with sqlite3.connect(db) as conn:
        return {t: set(conn.execute(f"SELECT * FROM {t}")) for t in DERIVED}


def fresh_full(stash: StashClient, tmp_path: Path, name: str) -> Path:
    """A full sync into a new file (the reference for derived data)."""
    path = tmp_path / name / "cache.sqlite3"
    cache_full_sync(stash, path)
    return path


# ------------------------------------------------------------------------------------------
# queries


def test_every_query_is_a_named_operation_valid_against_the_real_and_fake_schema():
    from tests.reference import real_stash_schema  # skips when ../shared/reference is absent

    real = real_stash_schema()
    for query in local_cache.ALL_QUERIES:
        document = parse(query)
        assert len(document.definitions) == 1 and document.definitions[0].name is not None
        assert not validate(real, document), query
        assert not validate(fake_schema(), document), query


def test_window_lower_bound_is_below_any_rendering_at_or_after_the_instant():
    epoch = int(datetime(2025, 11, 2, 6, 30, tzinfo=timezone.utc).timestamp())
    lower = local_cache.window_lower_bound(epoch)
    for hours in range(-12, 15):
        for later in (0, 1, 3600):
            tz = timezone(timedelta(hours=hours))
            text = datetime.fromtimestamp(epoch + later, tz).strftime("%Y-%m-%dT%H:%M:%S") + (
                "Z" if hours == 0 else f"{'+' if hours > 0 else '-'}{abs(hours):02d}:00")
            assert text > lower, (text, lower)


def test_since_must_be_rfc3339(stash, db):
    with pytest.raises(SettingsError, match="RFC3339"):
        cache_incremental_sync(stash, db, since="yesterday")
    with pytest.raises(SettingsError):
        cache_incremental_sync(stash, db, since="2024-05-01T12:00:00")


# ------------------------------------------------------------------------------------------
# full sync


def test_full_sync_equals_the_fake(stash, world, db, fake):
    result = cache_full_sync(stash, db)
    assert result.status == "ok"
    assert_mirror_equals(db, world)
    assert oct(db.stat().st_mode & 0o777) == "0o600"
    assert result.stash_requests == fake.count()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        run = conn.execute("SELECT mode, status, upserted, stash_requests FROM sync_runs").fetchall()
        assert run == [("cache_full_sync", "ok", result.upserted, result.stash_requests)]
        states = dict(conn.execute("SELECT entity_type, cursor FROM sync_state"))
    assert set(states) == {s.table for s in local_cache.SPECS}
    latest_scene = max(world.tables()["scene"], key=lambda r: r["updated_at"])["updated_at"]
    assert states["scenes"] == latest_scene
    assert json.loads(json.dumps(result.as_dict()))["upserted"] == result.upserted
    assert "full sync ok" in str(result)


def test_small_pages_and_a_second_full_sync_write_nothing(stash, world, db):
    cache_full_sync(stash, db, per_page=7)
    assert_mirror_equals(db, world)
    again = cache_full_sync(stash, db, per_page=7)
    assert again.upserted == 0 and again.deleted == 0
    assert_mirror_equals(db, world)


def test_full_sync_removes_what_stash_deleted(stash, world, db):
    cache_full_sync(stash, db)
    for sid in (1, 2, 3):
        world.delete_entity("scene", sid)
    world.delete_entity("performer", 4)
    result = cache_full_sync(stash, db)
    assert result.per_type["scenes"].deleted == 3
    assert_mirror_equals(db, world)


# ------------------------------------------------------------------------------------------
# incremental and smart


@pytest.mark.parametrize("mode", ["incremental", "smart"])
def test_changes_show_up(mode, stash, world, db, clock, tmp_path):
    run = cache_incremental_sync if mode == "incremental" else cache_smart_sync
    cache_full_sync(stash, db)
    clock.tick(3600)
    world.update_entity("scene", 5, title="Edited title", tag_ids=[1, 2])
    world.update_entity("image", 3, performer_ids=[1])
    new_tag = world.add_entity("tag", name="Brand new tag", parent_ids=[1])
    world.add_entity("scene", title="New scene", tag_ids=[new_tag], performer_ids=[2],
                     files=[{"path": "/new.mp4", "size": 5, "duration": 1.5, "oshash": "abc"}])
    world.delete_entity("scene", 7)
    world.delete_entity("gallery", 2)
    world.merge_tags([3, 4], 5)
    world.update_entity("performer", 2, tag_ids=[6, 7])  # changes scenes' inherited tags
    result = run(stash, db)
    assert result.status == "ok"
    assert_mirror_equals(db, world)
    assert derived_tables(db) == derived_tables(fresh_full(stash, tmp_path, "ref"))


def test_idle_smart_sync_makes_two_requests_per_type_and_writes_nothing(stash, world, db, fake, clock):
    cache_full_sync(stash, db)
    world.update_entity("scene", 9, title="x")  # leaves something in every window
    cache_smart_sync(stash, db)
    with sqlite3.connect(db) as conn:
        before = conn.execute("SELECT total_changes()").fetchone()
        snapshot = {t: set(conn.execute(f"SELECT * FROM {t}")) for t in cache_schema.MIRROR_TABLES
                    if t not in ("sync_runs", "sync_state")}
    fake.clear_log()
    result = cache_smart_sync(stash, db)
    assert result.stash_requests == fake.count() <= 2 * len(local_cache.SPECS) + 1  # + mirror_signals' one
    assert result.upserted == 0 and result.deleted == 0
    assert all(s.skipped for s in result.per_type.values())
    with sqlite3.connect(db) as conn:
        after = {t: set(conn.execute(f"SELECT * FROM {t}")) for t in snapshot}
    assert after == snapshot and before is not None


def test_edit_in_the_same_second_as_the_cursor(stash, world, db, clock):
    cache_full_sync(stash, db)
    clock.tick(100)
    world.update_entity("scene", 11, title="first edit")
    cache_smart_sync(stash, db)
    world.update_entity("scene", 11, title="second edit, same second")  # clock not advanced
    world.update_entity("tag", 2, description="same second too")
    result = cache_smart_sync(stash, db)
    assert_mirror_equals(db, world)
    assert result.per_type["scenes"].upserted == 1
    clock.tick(1)
    world.update_entity("scene", 12, title="incremental after same second")
    cache_incremental_sync(stash, db)
    world.update_entity("scene", 12, title="again in that second")
    cache_incremental_sync(stash, db)
    assert_mirror_equals(db, world)


@pytest.mark.parametrize("offsets", [(-4, -5), (2, -7), (0, 14), (14, -12)])
def test_offset_change_between_runs(offsets, stash, world, db, clock):
    world.set_offset(timedelta(hours=offsets[0]))
    world.update_entity("scene", 1, title="before")
    cache_full_sync(stash, db)
    cache_smart_sync(stash, db)
    world.set_offset(timedelta(hours=offsets[1]))  # DST ends or the server moved
    clock.tick(60)
    world.update_entity("scene", 2, title="after the offset change")
    world.update_entity("performer", 3, name="Renamed after the change")
    cache_smart_sync(stash, db)
    assert_mirror_equals(db, world)
    clock.tick(1)
    world.update_entity("scene", 3, title="and once more")
    cache_incremental_sync(stash, db)
    assert_mirror_equals(db, world)


def test_incremental_since_rereads_from_that_time(stash, world, db, clock):
    cache_full_sync(stash, db)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version")  # readable by anyone
    result = cache_incremental_sync(stash, db, since="2024-12-01T00:00:00+00:00")
    assert result.status == "ok"
    assert_mirror_equals(db, world)


def test_incremental_without_a_previous_full_sync_reads_everything(stash, world, db):
    result = cache_incremental_sync(stash, db)
    assert result.status == "ok"
    assert_mirror_equals(db, world)


def test_mass_deletion_is_refused_outside_a_full_sync(stash, world, db):
    cache_full_sync(stash, db)
    for sid in range(1, 40):
        world.delete_entity("scene", sid)
    result = cache_smart_sync(stash, db)
    assert result.per_type["scenes"].deleted == 0
    assert any("refusing" in w for w in result.warnings)
    cache_full_sync(stash, db)
    assert_mirror_equals(db, world)


def test_derived_data_is_the_same_whichever_mode_produced_it(stash, world, db, clock, tmp_path):
    cache_smart_sync(stash, db)  # first run without a cursor
    clock.tick(10)
    world.update_entity("gallery", 1, performer_ids=[1, 2], tag_ids=[3], date="2020-01-01")
    world.update_entity("studio", 2, tag_ids=[8])
    world.update_entity("group", 1, tag_ids=[9, 10])
    cache_incremental_sync(stash, db)
    full = fresh_full(stash, tmp_path, "full")
    assert derived_tables(db) == derived_tables(full)
    with sqlite3.connect(full) as conn:
        assert conn.execute("SELECT count(*) FROM scene_inherited_tags").fetchone()[0] > 0
        assert conn.execute("SELECT count(*) FROM image_inherited").fetchone()[0] > 0
        # a gallery's image count equals the number of its images
        counts = dict(conn.execute("SELECT entity_id, image_count FROM image_counts WHERE entity_type='gallery'"))
        direct = dict(conn.execute("SELECT gallery_id, count(*) FROM image_galleries GROUP BY gallery_id"))
    assert counts == direct


def test_image_inherits_only_what_it_lacks(stash, world, db):
    gid = world.add_entity("gallery", title="G", studio_id=1, date="2001-02-03", photographer="P",
                           details="D", performer_ids=[1], tag_ids=[2])
    bare = world.add_entity("image", title="bare", gallery_ids=[gid])
    own = world.add_entity("image", title="own", gallery_ids=[gid], studio_id=2, date="1999-01-01",
                           performer_ids=[3], tag_ids=[4])
    cache_full_sync(stash, db)
    with sqlite3.connect(db) as conn:
        rows = {r[0]: r[1:] for r in conn.execute(
            "SELECT image_id, gallery_id, studio_id, date, photographer, details FROM image_inherited "
            "WHERE image_id IN (?, ?)", (bare, own))}
        assert rows[bare] == (gid, 1, "2001-02-03", "P", "D")
        assert rows[own] == (gid, None, None, "P", "D")
        assert conn.execute("SELECT performer_id FROM image_inherited_performers WHERE image_id = ?",
                            (bare,)).fetchall() == [(1,)]
        assert conn.execute("SELECT count(*) FROM image_inherited_tags WHERE image_id = ?", (own,)).fetchone() == (0,)
        assert conn.execute("SELECT studio_id FROM images WHERE id = ?", (own,)).fetchone() == (2,)


# ------------------------------------------------------------------------------------------
# file handling


def test_unwritable_path_is_a_cache_error(stash, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="cacheDbPath"):
        cache_full_sync(stash, blocker / "sub" / "cache.sqlite3")


def test_a_non_sqlite_file_is_refused(stash, tmp_path):
    path = tmp_path / "cache.sqlite3"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(CacheSchemaError, match="not a usable SQLite cache"):
        cache_full_sync(stash, path)


def test_a_foreign_sqlite_file_is_refused(stash, tmp_path):
    path = tmp_path / "other.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (x)")
    with pytest.raises(CacheSchemaError, match="not a tagManager cache"):
        cache_full_sync(stash, path)


def test_default_path():
    assert local_cache.default_cache_path(Path("/p")) == Path("/p/data/stash_cache.sqlite3")
