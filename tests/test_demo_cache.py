"""The cache half of `make demo`, on a small library: every step runs and every check holds."""

from __future__ import annotations

import sqlite3

from bench import demo_cache
from bench.common import start_fakes


def test_readme_example_query_is_the_outdoor_query():
    query = demo_cache.readme_example_query()
    assert query.startswith("-- scenes tagged") and query.rstrip().endswith(";")
    assert f"'{demo_cache.DEMO_TAG}'" in query


def test_cache_demo_passes_its_checks(tmp_path, capsys):
    fakes = start_fakes(120, seed=3, rate_per_minute=1200, galleries=5, images=30)
    try:
        demo_tag = demo_cache.add_demo_tag(fakes.world)
        problems: list[str] = []
        figures = demo_cache.run_cache_demo(fakes, tmp_path, demo_tag, problems)
    finally:
        fakes.stop()
    assert problems == []
    shown = capsys.readouterr().out
    assert "Cache: Full Sync" in shown and "Cache: Smart Sync" in shown and "Cache: Status" in shown
    assert f"scenes {figures['edited_scene']} updated title" in shown
    assert 0 < figures["smart_requests"] <= demo_cache.SMART_SYNC_MAX_REQUESTS


def test_cache_demo_reports_a_smart_sync_that_misses_the_edit(tmp_path):
    """The smart sync check fails when the mirror does not hold the edit."""
    problems: list[str] = []
    output = {"per_type": {t: {"created": 0, "updated": 0, "deleted": 0} for t in demo_cache.CACHE_TYPES},
              "stash_requests": 14, "run_id": 1}
    db_path = tmp_path / "cache.sqlite3"
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE sync_changes (run_id, entity_type, entity_id, change, field, old_value, new_value)")
        conn.execute("CREATE TABLE scenes (id INTEGER PRIMARY KEY, title TEXT)")
        conn.execute("INSERT INTO scenes VALUES (7, 'old title')")
    demo_cache.check_smart_sync(output, db_path, 7, problems)
    assert any("scenes created/updated/deleted (0, 0, 0)" in p for p in problems)
    assert any("change log names []" in p for p in problems)
    assert any("title" in p and "old title" in p for p in problems)
