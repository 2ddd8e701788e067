"""Properties of the cache cursor: Stash compares timestamps as text, in whatever offset it wrote."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, strategies as st

from tagman_base.errors import SettingsError
from tagman_base.timestamps import epoch_of
from tagman_mirror.cursor import earliest_instant, window_lower_bound
from tagman_mirror.runs import cache_incremental_sync
from tests.fakes.fake_stash import render_timestamp


EPOCHS = st.integers(min_value=946684800, max_value=4102444800)  # 2000..2100
OFFSETS = st.integers(min_value=-12 * 4, max_value=14 * 4).map(lambda quarters: timedelta(minutes=15 * quarters))


@given(EPOCHS, st.integers(min_value=0, max_value=3 * 86400), OFFSETS)
def test_nothing_written_at_or_after_the_cursor_sorts_below_the_window(cursor_epoch, later_by, offset):
    written = render_timestamp(datetime.fromtimestamp(cursor_epoch + later_by, timezone.utc), offset)
    assert written > window_lower_bound(cursor_epoch)


@given(EPOCHS, OFFSETS)
def test_cursor_text_round_trips_to_the_same_instant(epoch, offset):
    assert epoch_of(render_timestamp(datetime.fromtimestamp(epoch, timezone.utc), offset)) == epoch


@given(EPOCHS, OFFSETS, OFFSETS)
def test_window_is_at_most_26_hours_wide(cursor_epoch, cursor_offset, offset):
    """The margin costs at most the offsets' span: rows from >26 h before the cursor stay out."""
    old = render_timestamp(datetime.fromtimestamp(cursor_epoch - 26 * 3600 - 2, timezone.utc), offset)
    assert old < window_lower_bound(cursor_epoch)


@given(st.lists(st.tuples(EPOCHS, OFFSETS), min_size=1, max_size=20))
def test_earliest_instant_is_at_or_below_every_text_and_at_most_26_hours_below_the_earliest(stamps):
    """The window comparison reads the mirror from this instant on: no listed entity may lie below it."""
    texts = [render_timestamp(datetime.fromtimestamp(epoch, timezone.utc), offset) for epoch, offset in stamps]
    earliest = min(epoch for epoch, _ in stamps)
    assert earliest - 26 * 3600 <= earliest_instant(texts) <= earliest


def test_window_lower_bound_is_below_any_rendering_at_or_after_the_instant():
    epoch = int(datetime(2025, 11, 2, 6, 30, tzinfo=timezone.utc).timestamp())
    lower = window_lower_bound(epoch)
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
