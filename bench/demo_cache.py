"""The cache half of ``make demo``: full sync, an edit in the fake Stash, smart sync, Cache: Status, a query.

Every step runs ``python tag_manager.py`` with the JSON document Stash writes to a plugin's stdin, and
each outcome is checked against the fake Stash's own data; a problem is appended to ``problems``.
"""

from __future__ import annotations

import json
import re
import sqlite3
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import ROOT, SESSION_COOKIE, StashLogPrinter, plugin_stdin, run_plugin_streaming

CACHE_TYPES = {"studios": "studio", "tags": "tag", "performers": "performer", "groups": "group",
               "galleries": "gallery", "scenes": "scene", "images": "image"}  # mirror table -> fake Stash type
DEMO_TAG = "Outdoor"  # the tag of the README's first example query
EDITED_TITLE = "Picnic by the lake"
SMART_SYNC_MAX_REQUESTS = 2 * len(CACHE_TYPES) + 4  # README: at most 2 per unchanged type; a few to fetch the edit
QUERY_ROWS_SHOWN = 8
EDIT_MUTATION = ("mutation DemoSceneEdit($input: SceneUpdateInput!) "
                 "{ sceneUpdate(input: $input) { id title updated_at } }")


@dataclass(frozen=True)
class DemoTag:
    """The README query's tag in the library: on a few scenes, one performer and one studio."""

    tag_id: int
    scene_ids: tuple[int, ...]
    performer_id: int
    studio_id: int


def banner(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 76 - len(text)), flush=True)


def add_demo_tag(world) -> DemoTag:
    """Give the library an "Outdoor" tag, directly on three scenes and through a performer and a studio."""
    tag_id = world.add_entity("tag", name=DEMO_TAG)
    scene_ids = tuple(sorted(world.table("scene"))[3:30:12])
    for sid in scene_ids:
        world.update_entity("scene", sid, tag_ids=list(world.get("scene", sid)["tag_ids"]) + [tag_id])
    performer_id, studio_id = min(world.table("performer")), min(world.table("studio"))
    world.update_entity("performer", performer_id, tag_ids=list(world.get("performer", performer_id)["tag_ids"]) + [tag_id])
    world.update_entity("studio", studio_id, tag_ids=list(world.get("studio", studio_id)["tag_ids"]) + [tag_id])
    return DemoTag(tag_id, scene_ids, performer_id, studio_id)


def run_task(label: str, document: dict, problems: list[str],
             printer: StashLogPrinter | None = None) -> tuple[dict | None, float]:
    """Run the plugin once through stdin as Stash does, printing its log; its output (None on failure) and seconds."""
    banner(f"{label}: python tag_manager.py  (args {json.dumps(document['args'])})")
    code, stdout, seconds = run_plugin_streaming(document, printer or StashLogPrinter())
    try:
        answer = json.loads(stdout)
    except ValueError:
        problems.append(f"{label}: stdout is not one JSON document: {stdout[:200]!r}")
        return None, seconds
    if code != 0 or "output" not in answer:
        problems.append(f"{label}: exit code {code}, answer {answer}")
        return None, seconds
    return answer["output"], seconds


def run_mode(label: str, port: int, plugin_dir: Path, args: dict, problems: list[str],
             printer: StashLogPrinter | None = None) -> dict:
    """Run one task with ``args``; print its log; return its output (empty on failure)."""
    document = plugin_stdin(port, plugin_dir)
    document["args"] = args
    output, seconds = run_task(label, document, problems, printer)
    if output is None:
        return {}
    print(f"  ({seconds:.1f} s including interpreter start)")
    return output


def print_per_type(output: dict) -> None:
    """The run's per-type summary as a small table."""
    print(f"  {'type':<11}{'fetched':>8}{'created':>8}{'updated':>8}{'unchanged':>10}{'deleted':>8}  note")
    for table, stats in output.get("per_type", {}).items():
        note = "idle (skipped)" if stats.get("skipped") else stats.get("note") or ""
        print(f"  {table:<11}{stats['fetched']:>8}{stats['created']:>8}{stats['updated']:>8}"
              f"{stats['unchanged']:>10}{stats['deleted']:>8}  {note}")
    print(f"  Stash requests {output.get('stash_requests')}, rows written {output.get('rows_written')}, "
          f"{output.get('seconds', 0):.1f} s")


def check_full_sync(output: dict, world, problems: list[str]) -> None:
    """Every entity of the fake Stash was created in the mirror, nothing else happened."""
    for table, etype in CACHE_TYPES.items():
        stats = output.get("per_type", {}).get(table)
        expected = len(world.table(etype))
        if stats is None or (stats["created"], stats["updated"], stats["deleted"]) != (expected, 0, 0):
            problems.append(f"full sync: {table} {stats} (expected {expected} created)")


def edit_scene_in_stash(port: int, world, demo_tag: DemoTag) -> int:
    """Retitle a scene and add the demo tag to it, with the sceneUpdate request Stash's own UI sends."""
    scene_id = next(sid for sid, scene in sorted(world.table("scene").items())
                    if scene["title"] and demo_tag.tag_id not in scene["tag_ids"])
    tag_ids = [str(t) for t in world.get("scene", scene_id)["tag_ids"]] + [str(demo_tag.tag_id)]
    body = json.dumps({"operationName": "DemoSceneEdit", "query": EDIT_MUTATION,
                       "variables": {"input": {"id": str(scene_id), "title": EDITED_TITLE, "tag_ids": tag_ids}}})
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Cookie": f"session={SESSION_COOKIE}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    if answer.get("errors"):
        raise RuntimeError(f"the fake Stash refused the edit: {answer['errors']}")
    edited = answer["data"]["sceneUpdate"]
    print(f"  sceneUpdate: scene {edited['id']} is now titled {edited['title']!r} and tagged {DEMO_TAG!r} "
          f"(updated_at {edited['updated_at']})")
    return scene_id


def check_smart_sync(output: dict, db_path: Path, scene_id: int, problems: list[str]) -> None:
    """Exactly the edited scene was rewritten, and the change log names only it, for a handful of requests."""
    for table in CACHE_TYPES:
        stats = output.get("per_type", {}).get(table, {})
        changes = (stats.get("created"), stats.get("updated"), stats.get("deleted"))
        wanted = (0, 1, 0) if table == "scenes" else (0, 0, 0)
        if changes != wanted:
            problems.append(f"smart sync: {table} created/updated/deleted {changes}, expected {wanted}")
    if not output.get("stash_requests") or output["stash_requests"] > SMART_SYNC_MAX_REQUESTS:
        problems.append(f"smart sync sent {output.get('stash_requests')} Stash requests (bound {SMART_SYNC_MAX_REQUESTS})")
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        changes = conn.execute("SELECT entity_type, entity_id, change, field, old_value, new_value FROM sync_changes "
                               "WHERE run_id = ? ORDER BY field", (output.get("run_id"),)).fetchall()
        title = conn.execute("SELECT title FROM scenes WHERE id = ?", (scene_id,)).fetchone()
    print("  change log of this run (table sync_changes):")
    for entity_type, entity_id, change, field_name, old, new in changes:
        print(f"    {entity_type} {entity_id} {change} {field_name}: {old} -> {new}")
    if {(row[0], row[1]) for row in changes} != {("scenes", scene_id)}:
        problems.append(f"smart sync change log names {sorted({(r[0], r[1]) for r in changes})}, expected scene {scene_id}")
    fields = {row[3] for row in changes}
    if not {"title", "scene_tags"} <= fields <= {"title", "scene_tags", "updated_at"}:
        problems.append(f"smart sync changed fields {sorted(fields)}, expected title and scene_tags (and updated_at)")
    if not title or title[0] != EDITED_TITLE:
        problems.append(f"the mirror has title {title} for scene {scene_id}, expected {EDITED_TITLE!r}")


def check_status(output: dict, problems: list[str]) -> None:
    """After the smart sync the mirror holds what Stash holds, with nothing pending."""
    for table in CACHE_TYPES:
        status = output.get("types", {}).get(table)
        if not status or status["mirrored"] != status["stash"] or status["pending"] != 0:
            problems.append(f"Cache: Status for {table}: {status}")


def readme_example_query(readme: Path = ROOT / "README.md") -> str:
    """The first statement of the README's "Example queries", comment included."""
    text = readme.read_text(encoding="utf-8")
    match = re.search(r"### Example queries\s+```sql\n(.*?;)", text, re.S)
    if not match:
        raise RuntimeError("README.md has no SQL block under '### Example queries'")
    return match.group(1)


def scenes_with_tag(world, tag_id: int) -> set[int]:
    """Scenes tagged directly, or through one of their performers, their studio or one of their groups."""
    def has(etype: str, eid) -> bool:
        row = world.get(etype, eid) if eid is not None else None
        return bool(row) and tag_id in row["tag_ids"]

    return {sid for sid, scene in world.table("scene").items()
            if tag_id in scene["tag_ids"] or has("studio", scene["studio_id"])
            or any(has("performer", pid) for pid in scene["performer_ids"])
            or any(has("group", g["group_id"]) for g in scene["groups"])}


def run_query(db_path: Path, world, demo_tag: DemoTag, scene_id: int, problems: list[str]) -> None:
    """Run the README's first example query on the mirror, read-only as any other tool would."""
    query = readme_example_query()
    print("  " + "\n  ".join(query.splitlines()))
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        rows = conn.execute(query).fetchall()
    print(f"  -> {len(rows)} rows:")
    for scene_id_found, title in sorted(rows)[:QUERY_ROWS_SHOWN]:
        print(f"    {scene_id_found:>6}  {title}")
    if len(rows) > QUERY_ROWS_SHOWN:
        print("    ...")
    expected = scenes_with_tag(world, demo_tag.tag_id)
    found = {int(row[0]) for row in rows}
    print(f"  expected from the fake Stash: {len(expected)} scenes ({len(demo_tag.scene_ids) + 1} tagged directly, "
          f"the rest through performer {demo_tag.performer_id} or studio {demo_tag.studio_id})")
    if found != expected:
        problems.append(f"README query: {len(found)} scenes, expected {len(expected)}; "
                        f"missing {sorted(expected - found)[:5]}, extra {sorted(found - expected)[:5]}")
    if scene_id not in found:
        problems.append(f"README query does not list the edited scene {scene_id}")


def run_cache_demo(fakes, plugin_dir: Path, demo_tag: DemoTag, problems: list[str]) -> dict[str, Any]:
    """Full sync, edit, smart sync, status and a query; returns the figures the final summary prints."""
    port, world = fakes.stash.port, fakes.world
    db_path = plugin_dir / "data" / "stash_cache.sqlite3"  # the cacheDbPath default

    full = run_mode("Cache: Full Sync", port, plugin_dir, {"mode": "cache_full_sync"}, problems)
    if full:
        print_per_type(full)
        check_full_sync(full, world, problems)

    banner("An edit in the fake Stash (as a user saves a scene)")
    scene_id = edit_scene_in_stash(port, world, demo_tag)

    requests_before = fakes.stash.count()
    smart = run_mode("Cache: Smart Sync", port, plugin_dir, {"mode": "cache_smart_sync"}, problems)
    seen_by_stash = fakes.stash.count() - requests_before
    if smart:
        print_per_type(smart)
        print(f"  (the fake Stash saw {seen_by_stash} requests from this task, settings included)")
        rechecked = smart.get("per_type", {}).get("scenes", {}).get("unchanged", 0)
        if rechecked:
            print(f"  The {rechecked} unchanged scenes carry the same updated_at second as the cache's cursor (the tag\n"
                  "  sync wrote them together at its end): the cache re-reads such scenes in full and compares them\n"
                  "  by content, because Stash could have changed them again within that second. None was rewritten.")
        check_smart_sync(smart, db_path, scene_id, problems)

    table_printer = StashLogPrinter()
    table_printer.PER_KIND = 1000  # the status is one multi-line message: show all of it
    status = run_mode("Cache: Status", port, plugin_dir, {"mode": "cache_status"}, problems, table_printer)
    if status:
        check_status(status, problems)

    banner(f"The README's first example query, on the mirror ({db_path.name})")
    if db_path.exists():
        run_query(db_path, world, demo_tag, scene_id, problems)
    else:
        problems.append(f"no cache file at {db_path}")
    return {"full_s": full.get("seconds"), "smart_requests": smart.get("stash_requests"), "edited_scene": scene_id}
