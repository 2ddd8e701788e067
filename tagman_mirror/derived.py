"""Derived data, recomputed after every mode from what changed (everything after a full sync).

Image inheritance from the first gallery, scene tags inherited from performers, studio and
groups, and image counts. ``dirty`` lists the entities written since the last refresh;
``cache_meta.derived_full`` asks for a rebuild of everything.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from contextlib import nullcontext

from tagman_base.sqlite_util import atomic
from tagman_mirror.schema import DELETED_IMAGES, GUARD_LIFT_MIN_ROWS, guard_lifted

DERIVED_TABLES = ("image_inherited", "image_inherited_performers", "image_inherited_tags", "scene_inherited_tags",
                  "image_counts")


def meta_value(conn: sqlite3.Connection, key: str) -> str | None:
    """A value of cache_meta."""
    row = conn.execute("SELECT value FROM cache_meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def _fill_temp(conn: sqlite3.Connection, name: str, sql: str, params: Sequence = ()) -> int:
    """(Re)create TEMP table ``name(id)`` from a SELECT of ids; returns its size."""
    conn.execute(f"DROP TABLE IF EXISTS temp.{name}")
    conn.execute(f"CREATE TEMP TABLE {name} (id INTEGER PRIMARY KEY)")
    conn.execute(f"INSERT OR IGNORE INTO temp.{name} (id) {sql}", params)
    return conn.execute(f"SELECT count(*) FROM temp.{name}").fetchone()[0]


_DIRTY_IMAGES = """
    SELECT entity_id FROM dirty WHERE entity_type = 'images'
    UNION SELECT ig.image_id FROM image_galleries ig
      JOIN dirty d ON d.entity_type = 'galleries' AND d.entity_id = ig.gallery_id"""
_DIRTY_SCENES = """
    SELECT entity_id FROM dirty WHERE entity_type = 'scenes'
    UNION SELECT sp.scene_id FROM scene_performers sp
      JOIN dirty d ON d.entity_type = 'performers' AND d.entity_id = sp.performer_id
    UNION SELECT s.id FROM scenes s
      JOIN dirty d ON d.entity_type = 'studios' AND d.entity_id = s.studio_id
    UNION SELECT sg.scene_id FROM scene_groups sg
      JOIN dirty d ON d.entity_type = 'groups' AND d.entity_id = sg.group_id"""


def refresh_derived(conn: sqlite3.Connection) -> dict[str, int]:
    """Recompute derived data for what changed since the last refresh (everything after a full sync).

    The single place derived data is computed, whatever the mode.
    """
    with atomic(conn):
        full = meta_value(conn, "derived_full") == "1"
        n_images = _fill_temp(conn, "aff_images", "SELECT id FROM images" if full else _DIRTY_IMAGES)
        n_scenes = _fill_temp(conn, "aff_scenes", "SELECT id FROM scenes" if full else _DIRTY_SCENES)
        bulk = full or n_images + n_scenes >= GUARD_LIFT_MIN_ROWS
        with guard_lifted(conn, DERIVED_TABLES) if bulk else nullcontext():
            if n_images:
                _refresh_image_inheritance(conn, full)
            if n_scenes:
                _refresh_scene_inherited_tags(conn, full)
            counts = _refresh_image_counts(conn) if (n_images or full) else 0
        conn.execute("DELETE FROM dirty")
        conn.execute("DELETE FROM cache_meta WHERE key = 'derived_full'")
        conn.execute("DROP TABLE IF EXISTS temp.aff_images")
        conn.execute("DROP TABLE IF EXISTS temp.aff_scenes")
    return {"images": n_images, "scenes": n_scenes, "image_counts": counts}


def _clear(conn: sqlite3.Connection, table: str, owner: str, affected: str, full: bool) -> None:
    """Delete the derived rows of the affected entities (all rows in a full rebuild: one cheap statement)."""
    where = "" if full else f" WHERE {owner} IN (SELECT id FROM {affected})"
    conn.execute(f"DELETE FROM {table}{where}")


def _refresh_image_inheritance(conn: sqlite3.Connection, full: bool) -> None:
    """Images take studio, date, photographer, details, performers and tags from their first gallery."""
    for table in ("image_inherited", "image_inherited_performers", "image_inherited_tags"):
        _clear(conn, table, "image_id", "temp.aff_images", full)
    # the first live gallery of each image: min() makes SQLite take gallery_id from the row of the
    # smallest position (an image's positions are distinct)
    conn.execute("""
        WITH first_gallery AS (
            SELECT ig.image_id, ig.gallery_id, min(ig.position)
              FROM temp.aff_images a
              JOIN image_galleries ig ON ig.image_id = a.id
              JOIN galleries g ON g.id = ig.gallery_id AND g.deleted_at IS NULL
             GROUP BY ig.image_id)
        INSERT INTO image_inherited (image_id, gallery_id, studio_id, date, photographer, details)
        SELECT i.id, g.id,
               CASE WHEN i.studio_id IS NULL THEN g.studio_id END,
               CASE WHEN coalesce(i.date, '') = '' THEN nullif(g.date, '') END,
               CASE WHEN coalesce(i.photographer, '') = '' THEN nullif(g.photographer, '') END,
               CASE WHEN coalesce(i.details, '') = '' THEN nullif(g.details, '') END
        FROM first_gallery f
        JOIN images i ON i.id = f.image_id AND i.deleted_at IS NULL
        JOIN galleries g ON g.id = f.gallery_id""")
    conn.execute("""
        INSERT INTO image_inherited_performers (image_id, performer_id, gallery_id)
        SELECT ii.image_id, gp.performer_id, ii.gallery_id
        FROM image_inherited ii JOIN gallery_performers gp ON gp.gallery_id = ii.gallery_id
        WHERE ii.image_id IN (SELECT id FROM temp.aff_images)
          AND NOT EXISTS (SELECT 1 FROM image_performers ip WHERE ip.image_id = ii.image_id)""")
    conn.execute("""
        INSERT INTO image_inherited_tags (image_id, tag_id, gallery_id)
        SELECT ii.image_id, gt.tag_id, ii.gallery_id
        FROM image_inherited ii JOIN gallery_tags gt ON gt.gallery_id = ii.gallery_id
        WHERE ii.image_id IN (SELECT id FROM temp.aff_images)
          AND NOT EXISTS (SELECT 1 FROM image_tags it WHERE it.image_id = ii.image_id)""")


def _refresh_scene_inherited_tags(conn: sqlite3.Connection, full: bool) -> None:
    """Scenes inherit the tags of their performers, studio and groups (with the source).

    Soft-deleted scenes inherit nothing and soft-deleted sources pass nothing on, so derived data
    is the same with and without soft retention.
    """
    _clear(conn, "scene_inherited_tags", "scene_id", "temp.aff_scenes", full)
    conn.execute("DROP TABLE IF EXISTS temp.aff_live_scenes")
    conn.execute("""CREATE TEMP TABLE aff_live_scenes AS SELECT a.id FROM temp.aff_scenes a
                    JOIN scenes s ON s.id = a.id AND s.deleted_at IS NULL""")
    conn.execute("""
        INSERT OR IGNORE INTO scene_inherited_tags (scene_id, tag_id, source_type, source_id)
        SELECT sp.scene_id, pt.tag_id, 'performer', sp.performer_id
          FROM scene_performers sp JOIN performer_tags pt ON pt.performer_id = sp.performer_id
         WHERE sp.scene_id IN (SELECT id FROM temp.aff_live_scenes)
           AND sp.performer_id NOT IN (SELECT id FROM performers WHERE deleted_at IS NOT NULL)
        UNION ALL
        SELECT s.id, st.tag_id, 'studio', s.studio_id
          FROM scenes s JOIN studio_tags st ON st.studio_id = s.studio_id
         WHERE s.id IN (SELECT id FROM temp.aff_live_scenes)
           AND s.studio_id NOT IN (SELECT id FROM studios WHERE deleted_at IS NOT NULL)
        UNION ALL
        SELECT sg.scene_id, gt.tag_id, 'group', sg.group_id
          FROM scene_groups sg JOIN group_tags gt ON gt.group_id = sg.group_id
         WHERE sg.scene_id IN (SELECT id FROM temp.aff_live_scenes)
           AND sg.group_id NOT IN (SELECT id FROM groups WHERE deleted_at IS NOT NULL)""")
    conn.execute("DROP TABLE temp.aff_live_scenes")


# The counts of ``image_effective_links`` (a UNION: distinct image-entity pairs), computed per source
# table on its target index and summed. The sources of one kind never share a pair: an image
# inherits tags, performers or a studio only when it has none of its own, and each link table's key
# is unique. So the sums equal the view's distinct counts without building its 7-way UNION.
_IMAGE_COUNTS = f"""
    SELECT entity_type, entity_id, sum(n) AS image_count FROM (
        SELECT 'tag' AS entity_type, tag_id AS entity_id, count(*) AS n FROM image_tags
         WHERE image_id NOT IN {DELETED_IMAGES} GROUP BY tag_id
        UNION ALL SELECT 'tag', tag_id, count(*) FROM image_inherited_tags GROUP BY tag_id
        UNION ALL SELECT 'performer', performer_id, count(*) FROM image_performers
         WHERE image_id NOT IN {DELETED_IMAGES} GROUP BY performer_id
        UNION ALL SELECT 'performer', performer_id, count(*) FROM image_inherited_performers GROUP BY performer_id
        UNION ALL SELECT 'studio', studio_id, count(*) FROM images
         WHERE studio_id IS NOT NULL AND deleted_at IS NULL GROUP BY studio_id
        UNION ALL SELECT 'studio', studio_id, count(*) FROM image_inherited WHERE studio_id IS NOT NULL GROUP BY studio_id
        UNION ALL SELECT 'gallery', gallery_id, count(*) FROM image_galleries
         WHERE image_id NOT IN {DELETED_IMAGES} GROUP BY gallery_id)
    GROUP BY entity_type, entity_id"""


def _refresh_image_counts(conn: sqlite3.Connection) -> int:
    """Distinct images per tag, performer, studio and gallery (own or inherited links); rewrites only changes."""
    conn.execute("DROP TABLE IF EXISTS temp.new_counts")
    conn.execute(f"CREATE TEMP TABLE new_counts AS {_IMAGE_COUNTS}")  # not counted in total_changes
    # keyed: the DELETE below looks every stored count up here (unindexed, that was quadratic)
    conn.execute("CREATE UNIQUE INDEX temp.new_counts_key ON new_counts (entity_type, entity_id)")
    before = conn.total_changes
    conn.execute("""DELETE FROM image_counts WHERE NOT EXISTS (
        SELECT 1 FROM temp.new_counts n WHERE n.entity_type = image_counts.entity_type
        AND n.entity_id = image_counts.entity_id)""")
    conn.execute("""INSERT INTO image_counts (entity_type, entity_id, image_count)
        SELECT entity_type, entity_id, image_count FROM temp.new_counts WHERE true
        ON CONFLICT (entity_type, entity_id) DO UPDATE SET image_count = excluded.image_count
        WHERE image_count != excluded.image_count""")
    conn.execute("DROP TABLE temp.new_counts")
    return conn.total_changes - before

