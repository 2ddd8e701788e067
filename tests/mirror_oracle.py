"""What the mirror must hold, computed independently from the fake's world (a support module for tests)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tagman_base.stash_client import StashClient
from tagman_mirror.entities import LINKS, SPECS
from tagman_mirror.runs import cache_full_sync

OWNED_TABLES = ("scene_files", "image_files", "gallery_files", "stash_ids", *LINKS)
DERIVED = ("image_inherited", "image_inherited_performers", "image_inherited_tags", "scene_inherited_tags",
           "image_counts")


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
                            "scene_files", "image_files", "gallery_files", "stash_ids", *LINKS)}

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
        for spec in SPECS:
            cols = ", ".join((*spec.columns, "created_at", "updated_at"))
            out[spec.table] = set(conn.execute(f"SELECT {cols} FROM {spec.table}"))
        for table in OWNED_TABLES:
            out[table] = set(conn.execute(f"SELECT * FROM {table}"))
    return out


def assert_mirror_equals(db: Path, world) -> None:
    """Every table of the mirror equals the fake's data."""
    expected, actual = expected_tables(world), mirror_tables(db)
    for table in expected:
        missing, extra = expected[table] - actual[table], actual[table] - expected[table]
        assert not missing and not extra, f"{table}: missing {sorted(missing)[:3]} extra {sorted(extra)[:3]}"


def derived_tables(db: Path) -> dict[str, set]:
    """Contents of the derived tables."""
    with sqlite3.connect(db) as conn:
        return {t: set(conn.execute(f"SELECT * FROM {t}")) for t in DERIVED}


def fresh_full(stash: StashClient, tmp_path: Path, name: str) -> Path:
    """A full sync into a new file (the reference for derived data)."""
    path = tmp_path / name / "cache.sqlite3"
    cache_full_sync(stash, path)
    return path


def live_mirror(db: Path) -> dict[str, set]:
    """The mirror restricted to entities that are not soft-deleted (and what they own)."""
    with sqlite3.connect(db) as conn:
        live = {t: {r[0] for r in conn.execute(f"SELECT id FROM live_{t}")} for t in [s.table for s in SPECS]}
    table_type = {t: s.table for s in SPECS for t in (*(link.table for link in s.links), s.files.table if s.files else None) if t}
    kind_type = {s.kind: s.table for s in SPECS}
    out = {}
    for table, content in mirror_tables(db).items():
        if table in live:
            out[table] = {r for r in content if r[0] in live[table]}
        elif table == "stash_ids":
            out[table] = {r for r in content if r[1] in live[kind_type[r[0]]]}
        else:
            out[table] = {r for r in content if r[0] in live[table_type[table]]}
    return out


def assert_live_equals(db: Path, world) -> None:
    expected, actual = expected_tables(world), live_mirror(db)
    for table in expected:
        assert expected[table] == actual[table], table


def snapshot(db: Path) -> dict[str, set]:
    """Every mirror table's rows (the bookkeeping tables aside)."""
    with sqlite3.connect(db) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {n: set(conn.execute(f"SELECT * FROM {n}")) for n in names
                if n not in ("sync_runs", "watch_heartbeat", "sync_run_origin")}
