"""The cache's sync modes against the fake Stash: every mode equals the fake's data, table by table."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta

import pytest

from tagman_mirror import schema
from tagman_mirror.entities import SPECS
from tagman_mirror.results import CacheOptions
from tagman_mirror.runs import cache_full_sync, cache_incremental_sync, cache_smart_sync
from tests.conftest import read_rows
from tests.mirror_oracle import assert_mirror_equals, derived_tables, fresh_full


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
    assert set(states) == {s.table for s in SPECS}
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
        snapshot = {t: set(conn.execute(f"SELECT * FROM {t}")) for t in schema.MIRROR_TABLES
                    if t not in ("sync_runs", "sync_state")}
    fake.clear_log()
    result = cache_smart_sync(stash, db)
    assert result.stash_requests == fake.count() <= 2 * len(SPECS) + 1  # + the signals' one
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


def test_image_counts_equal_the_distinct_pairs_of_the_effective_links_view(stash, world, db, clock):
    gid = world.add_entity("gallery", title="G", studio_id=1, performer_ids=[1, 2], tag_ids=[2, 3])
    world.add_entity("image", title="inherits", gallery_ids=[gid])
    world.add_entity("image", title="own links", gallery_ids=[gid], studio_id=2, performer_ids=[1], tag_ids=[2, 4])
    gone = world.add_entity("image", title="soft-deleted", gallery_ids=[gid], tag_ids=[4])
    cache_full_sync(stash, db, options=CacheOptions(soft_delete=True))
    clock.tick(10)
    world.delete_entity("image", gone)
    world.update_entity("gallery", gid, tag_ids=[3, 5])
    cache_smart_sync(stash, db, options=CacheOptions(soft_delete=True))
    with sqlite3.connect(db) as conn:
        counts = set(conn.execute("SELECT entity_type, entity_id, image_count FROM image_counts"))
        view = set(conn.execute("SELECT entity_type, entity_id, count(DISTINCT image_id) FROM image_effective_links "
                                "GROUP BY entity_type, entity_id"))
        assert conn.execute("SELECT count(*) FROM images WHERE deleted_at IS NOT NULL").fetchone()[0] == 1
    assert counts == view


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


def test_an_image_inherits_from_its_first_live_gallery(stash, world, db, clock):
    later = world.add_entity("gallery", title="second in id order", studio_id=1, date="2002-02-02")
    first = world.add_entity("gallery", title="first in the image's list", studio_id=3, date="2003-03-03")
    image = world.add_entity("image", title="two galleries", gallery_ids=[first, later])
    assert first > later
    options = CacheOptions(soft_delete=True)
    cache_full_sync(stash, db, options=options)
    inherited = "SELECT gallery_id, studio_id, date FROM image_inherited WHERE image_id = ?"
    assert read_rows(db, inherited, (image,)) == [(first, 3, "2003-03-03")]
    clock.tick(10)
    world.delete_entity("gallery", first)  # kept soft-deleted: the image inherits from the next gallery
    cache_smart_sync(stash, db, options=options)
    assert read_rows(db, "SELECT count(*) FROM galleries WHERE deleted_at IS NOT NULL") == [(1,)]
    assert read_rows(db, inherited, (image,)) == [(later, 1, "2002-02-02")]
