"""The mirror's count of each type's live entities is stored between writes.

A smart sync compares Stash's total of each type with the mirror's; counting a table costs in
proportion to the library, so the count is kept in ``sync_state.live_count`` and forgotten in
the transaction of any write of that type's rows; a run that wrote counts again at its end.
These tests pin that an idle sync counts no table, and that after every kind of write the
stored count is either forgotten or true.
"""

from __future__ import annotations

import sqlite3

import pytest

from tagman_mirror import store
from tagman_mirror.entities import ENTITY_TYPES
from tagman_mirror.results import CacheOptions
from tagman_mirror.runs import cache_full_sync, cache_smart_sync
from tests.conftest import hook_context, hook_in_process, live_on
from tests.mirror_oracle import assert_live_equals


def stored_counts(db) -> dict[str, int | None]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT entity_type, live_count FROM sync_state"))


def assert_stored_counts_true(db) -> None:
    """Every stored count equals the mirror's live entities of its type (a forgotten one is None)."""
    with sqlite3.connect(db) as conn:
        actual = {t: conn.execute(f"SELECT count(*) FROM {t} WHERE deleted_at IS NULL").fetchone()[0]
                  for t in ENTITY_TYPES}
    for table, stored in stored_counts(db).items():
        assert stored is None or stored == actual[table], (table, stored, actual[table])


def counting(monkeypatch) -> list[str]:
    """The tables ``store.mirror_count`` counts from now on."""
    counted: list[str] = []
    real = store.mirror_count
    monkeypatch.setattr(store, "mirror_count", lambda conn, table: counted.append(table) or real(conn, table))
    return counted


def test_an_idle_smart_sync_counts_no_table(stash, db, clock, monkeypatch):
    cache_full_sync(stash, db)  # a run that wrote counts the types it wrote and stores the counts
    assert None not in stored_counts(db).values()
    assert_stored_counts_true(db)
    counted = counting(monkeypatch)
    clock.tick(60)
    cache_smart_sync(stash, db)
    assert counted == []
    assert_stored_counts_true(db)


@pytest.mark.parametrize("soft_delete", [False, True])
def test_every_kind_of_write_leaves_the_stored_counts_true(stash, db, world, clock, soft_delete):
    options = CacheOptions(soft_delete=soft_delete)

    def smart() -> None:
        clock.tick(30)
        cache_smart_sync(stash, db, options=options)
        assert_stored_counts_true(db)
        assert_live_equals(db, world)

    cache_full_sync(stash, db, options=options)
    smart()
    world.add_entity("performer", name="created in Stash")
    smart()
    world.delete_entity("performer", 3)  # a deletion between two idle syncs: the stored count must not hide it
    smart()
    world.delete_entity("scene", 4)
    world.add_entity("scene", title="one in, one out: Stash's total is unchanged")
    smart()
    world.merge_tags([1, 2], 6)  # no updated_at changes; the tags vanish
    smart()
    live_on(world, db)
    world.delete_entity("gallery", 2)
    hook_in_process(stash, db, hook_context(2, "Gallery.Destroy.Post", {"id": "2"}, ["id"]))
    assert_stored_counts_true(db)
    created = world.add_entity("studio", name="created with its hook")
    hook_in_process(stash, db, hook_context(created, "Studio.Create.Post", {}))
    assert_stored_counts_true(db)
    smart()
    cache_full_sync(stash, db, options=options)
    assert_stored_counts_true(db)
