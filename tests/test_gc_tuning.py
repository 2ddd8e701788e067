"""fewer_collections: a higher young-generation threshold inside the block, the old settings after it."""

from __future__ import annotations

import gc

import pytest

from tagman_base.gc_tuning import fewer_collections


def test_fewer_collections_raises_the_threshold_and_restores_it():
    before = gc.get_threshold()
    with fewer_collections(young_threshold=before[0] + 12_345):
        assert gc.get_threshold() == (before[0] + 12_345, *before[1:])
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_fewer_collections_restores_the_settings_after_an_error():
    before = gc.get_threshold()
    with pytest.raises(RuntimeError):
        with fewer_collections():
            raise RuntimeError("sync failed")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
