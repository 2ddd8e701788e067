"""Benchmark of the sidecar cache against a fake Stash running in its own process.

    .venv/bin/python bench/bench_cache.py [--scales 1,3] [--repeat 3]

Scale 1 is 100,000 scenes, 200,000 images, 20,000 tags, 10,000 performers, 10,000 galleries,
5,000 studios and 2,000 groups. Every sync runs in a child process so that its peak RSS
(``resource.getrusage`` in the child) measures the sync alone. Peak RSS is compared with a full
sync of a library a tenth of the size (bounded from scale 3 on; see ``RSS_BOUND_FROM_SCALE``).
Each figure is printed beside its bound.

"Smart, 1% changed" edits 1 % of the scenes again and runs a smart sync: the run's change log
must name exactly those scenes (and nothing of any other type), and the rows SQLite reports
written (``total_changes()`` inside the run) must be those of the edited scenes — their row, the
links and files it replaces, their dirty marks, change-log rows and inherited tags — plus at
most two sync_state rows per type.

"Idle" is the median of ``IDLE_RUNS`` smart syncs after that edit has been mirrored and two
settling syncs. Within 26 h of an edit (the span of UTC offsets, see ``tagman_mirror/cursor.py``)
a smart sync still lists the edited entities and compares them with the mirror, so the idle
figure of each scale includes comparing the 1 % it edited: that part grows with the edit, not
with the library.

The yardstick is ``bench/plain_mirror.py``: the same pages fetched and written one after the
other by a plain script in its own process (requests + json + executemany, one transaction per
page, nothing else). Per scale the full sync and the plain mirror run ``--repeat`` times each,
alternating, and the medians are compared: wall time of the sync itself, and CPU seconds of the
whole process (user + system from ``os.wait4``, interpreter start included on both sides).

    .venv/bin/python bench/bench_cache.py --scales 1,3 --repeat 3   # the default (make bench): about 2 h
    .venv/bin/python bench/bench_cache.py --scales 0.05 --repeat 1  # a quick look (~1 min)

"Silent changes" then applies, one kind at a time, changes that move no entity's updated_at (or
move only a merge destination's) through Stash's own mutations — tagsMerge, sceneMerge,
performerMerge, moveFiles, fileSetFingerprints (a phash removed, then generated) — each followed
by one smart sync whose requests, rows written and seconds are printed with a check, read from
the cache file, that the change reached the mirror. ``--silent-only`` measures only those (and
the idle smart sync) after one full sync, without the reference run at a tenth of the size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tagman_mirror.cache_file import SYNC_PAGE_CACHE_KIB  # noqa: E402

FULL_SCALE = dict(scenes=100_000, images=200_000, tags=20_000, performers=10_000, galleries=10_000,
                  studios=5_000, groups=2_000)


# peak RSS is bounded against a tenth of the scale from this scale on (scale 3 against 0.3): below,
# the tenth's full sync does not fill the sync's page cache (``cache_file.SYNC_PAGE_CACHE_KIB``),
# which a larger one fills and keeps at that size
RSS_BOUND_FROM_SCALE = 3

# idle smart syncs measured per scale (their median is taken): one run moves by about 10 %, as much
# as the bound that compares two scales
IDLE_RUNS = 7


def scaled(scale: float) -> dict[str, int]:
    """Library sizes at ``scale``."""
    return {k: max(1, round(v * scale)) for k, v in FULL_SCALE.items()}


class FakeServer:
    """The fake Stash in a separate process."""

    def __init__(self, sizes: dict[str, int], seed: int = 1) -> None:
        args = [sys.executable, "-m", "tests.fakes.fake_stash", "--port", "0", "--seed", str(seed)]
        for key, value in sizes.items():
            args += [f"--{key}", str(value)]
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("the fake Stash did not start")
        self.url = json.loads(line)["url"]

    def stop(self) -> None:
        """Terminate the server process."""
        self.proc.terminate()
        self.proc.wait(timeout=30)


def measured(cmd: list[str]) -> dict:
    """Run ``cmd`` (a fresh interpreter) and return its last JSON line with its CPU and peak RSS.

    ``os.wait4`` reports the resources of exactly that process: user + system CPU seconds of all
    its threads (interpreter start and imports included) and its peak RSS.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd[1:4])} failed:\n{err.read().decode(errors='replace')}")
        report = json.loads(out.read().decode().strip().splitlines()[-1])
    report["cpu_s"] = usage.ru_utime + usage.ru_stime
    report["rss_mb"] = usage.ru_maxrss / 1024
    return report


def child(mode: str, url: str, db: str, extra: dict | None = None) -> dict:
    """Run one measured step of the plugin in a fresh interpreter; returns its JSON report.

    The rows of the cache are counted here, before and after a sync, not in the measured process:
    counting every row of a large file is the benchmark's work, not the plugin's.
    """
    syncing = mode not in ("edit", "silent")
    before = written_rows(db) if syncing else 0
    report = measured([sys.executable, __file__, "--child", mode, "--url", url, "--db", db,
                       "--extra", json.dumps(extra or {})])
    if syncing:
        grown = written_rows(db) - before
        report["rows_written"] = grown if mode == "full" else None
        report["changes"] = grown if mode != "full" else None
    return report


def plain(url: str, db: str, workdir: Path) -> dict:
    """Run the plain mirror of the full sync's pages (``bench/plain_mirror.py``) in its own process."""
    pages = workdir / "pages.json"
    if not pages.exists():
        pages.write_text(json.dumps(page_specs()))
    Path(db).unlink(missing_ok=True)
    return measured([sys.executable, "-m", "bench.plain_mirror", "--url", url, "--db", db, "--pages", str(pages)])


def page_specs() -> list[dict]:
    """The full sync's page queries, in its order: what the plain mirror fetches."""
    from tagman_mirror import queries
    from tagman_mirror.entities import SPECS

    return [{"table": spec.table, "query": queries.PAGE[spec.table], "find": spec.find,
             "list_key": spec.list_key} for spec in SPECS]


def sync_function(mode: str):
    """The plugin's sync entry point for a mode."""
    from tagman_mirror import runs

    return {"full": runs.cache_full_sync, "incremental": runs.cache_incremental_sync,
            "smart": runs.cache_smart_sync}[mode]


def run_child(mode: str, url: str, db: str, extra: dict) -> dict:
    """Body of a child process: one sync (or an edit in the fake) and its figures."""
    import requests

    from tagman_base.stash_client import StashClient

    stash = StashClient(requests.Session(), url)
    started, cpu_started = time.perf_counter(), time.process_time()
    report: dict = {}
    if mode == "edit":
        report["ids"] = edit_scenes(stash, extra["fraction"], extra.get("details", "benchmark edit"))
        report["requests"] = len(report["ids"])
    elif mode == "silent":
        report["expect"] = SILENT_CHANGES[extra["kind"]](stash, extra.get("n", 100))
    else:
        if extra.get("without_checks"):  # the run as it was before the signals' checks, for comparison
            from tagman_mirror import signals

            signals.check = lambda _sync: None
        result = sync_function(mode)(stash, Path(db))
        report.update(requests=result.stash_requests, upserted=result.upserted, deleted=result.deleted)
        report["rows_written_in_run"] = result.rows_written
        report["counts"] = {t: [s.created, s.updated, s.unchanged, s.deleted] for t, s in result.per_type.items()}
        if "expect_scene_ids" in extra:
            report["change_log"] = check_change_log(db, result.run_id, extra["expect_scene_ids"])
            report["scene_rows"] = rows_of_scenes(db, result.run_id, extra["expect_scene_ids"])
    report["seconds"] = time.perf_counter() - started
    report["cpu_sync_s"] = time.process_time() - cpu_started
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return report


BULK_EDIT_MUTATION = """
mutation BenchBulkSceneEdit($input: BulkSceneUpdateInput!) { bulkSceneUpdate(input: $input) { id } }"""
SCENE_IDS_QUERY = """
query BenchSceneIds { findScenes(filter: {per_page: -1, sort: "id"}) { scenes { id } } }"""


def edit_scenes(stash, fraction: float, details: str = "benchmark edit") -> list[int]:
    """Change the details of every 1/fraction-th scene in Stash; returns their ids."""
    ids = [s["id"] for s in stash.call(SCENE_IDS_QUERY)["findScenes"]["scenes"]]
    step = max(1, round(1 / fraction))
    chosen = ids[::step]
    for start in range(0, len(chosen), 1000):
        stash.call(BULK_EDIT_MUTATION, {"input": {"ids": chosen[start:start + 1000], "details": details}})
    return [int(i) for i in chosen]


TAGS_MERGE_MUTATION = "mutation BenchTagsMerge($s: [ID!]!, $d: ID!) { tagsMerge(input: {source: $s, destination: $d}) { id } }"
SCENE_MERGE_MUTATION = """
mutation BenchSceneMerge($s: [ID!]!, $d: ID!) { sceneMerge(input: {source: $s, destination: $d}) { id } }"""
PERFORMER_MERGE_MUTATION = """
mutation BenchPerformerMerge($s: [ID!]!, $d: ID!) { performerMerge(input: {source: $s, destination: $d}) { id } }"""
MOVE_FILES_MUTATION = "mutation BenchMoveFiles($ids: [ID!]!, $to: String) { moveFiles(input: {ids: $ids, destination_folder: $to}) }"
SET_PHASH_MUTATION = """
mutation BenchSetPhash($id: ID!, $v: String) { fileSetFingerprints(input: {id: $id, fingerprints: [{type: "phash", value: $v}]}) }"""
SCENE_FILES_QUERY = "query BenchSceneFiles($ids: [ID!]) { findScenes(ids: $ids) { scenes { id files { id path } } } }"
TAG_NAMES_QUERY = "query BenchTagNames { findTags(filter: {per_page: -1, sort: \"id\"}) { tags { id name } } }"
PERFORMER_IDS_QUERY = "query BenchPerformerIds { findPerformers(filter: {per_page: -1, sort: \"id\"}) { performers { id } } }"


def _scene_files(stash, count: int, offset: int = 0) -> list[dict]:
    """The first files of ``count`` scenes spread over the library (from ``offset``): [{scene, file, path}]."""
    ids = [s["id"] for s in stash.call(SCENE_IDS_QUERY)["findScenes"]["scenes"]]
    chosen = ids[offset:: max(1, len(ids) // count)][:count]
    scenes = stash.call(SCENE_FILES_QUERY, {"ids": chosen})["findScenes"]["scenes"]
    return [{"scene": int(s["id"]), "file": f["id"], "path": f["path"]} for s in scenes for f in s["files"][:1]]


def merge_tags(stash, n: int) -> dict:
    """Merge the last tag into the first; the destination must gain the source's name as an alias."""
    tags = stash.call(TAG_NAMES_QUERY)["findTags"]["tags"]
    source, dest = tags[-1], tags[0]
    stash.call(TAGS_MERGE_MUTATION, {"s": [source["id"]], "d": dest["id"]})
    return {"sql": "SELECT count(*) FROM tags WHERE id = ? AND aliases LIKE ?",
            "args": [int(dest["id"]), f"%{source['name']}%"], "equals": 1}


def merge_scenes(stash, n: int) -> dict:
    """Merge n/10 pairs of scenes; the sources must vanish and their files belong to the destinations."""
    files = _scene_files(stash, max(2, n // 5))
    pairs = list(zip(files[::2], files[1::2]))
    for src, dst in pairs:
        stash.call(SCENE_MERGE_MUTATION, {"s": [str(src["scene"])], "d": str(dst["scene"])})
    paths = [src["path"] for src, _ in pairs]
    return {"sql": f"SELECT count(*) FROM scene_files WHERE path IN ({','.join('?' * len(paths))}) AND scene_id IN "
                   f"({','.join('?' * len(pairs))})", "args": paths + [d["scene"] for _, d in pairs],
            "equals": len(pairs)}


def merge_performers(stash, n: int) -> dict:
    """Merge the last 10 performers into the first; no mirrored link may name a source afterwards."""
    ids = [p["id"] for p in stash.call(PERFORMER_IDS_QUERY)["findPerformers"]["performers"]]
    sources = ids[-10:]
    stash.call(PERFORMER_MERGE_MUTATION, {"s": sources, "d": ids[0]})
    marks = ",".join("?" * len(sources))
    return {"sql": f"SELECT (SELECT count(*) FROM scene_performers WHERE performer_id IN ({marks})) + "
                   f"(SELECT count(*) FROM image_performers WHERE performer_id IN ({marks})) + "
                   f"(SELECT count(*) FROM performers WHERE id IN ({marks}))",
            "args": [int(i) for i in sources] * 3, "equals": 0}


def move_files(stash, n: int) -> dict:
    """Move the first files of n scenes to another folder (one moveFiles request)."""
    files = _scene_files(stash, n)
    stash.call(MOVE_FILES_MUTATION, {"ids": [f["file"] for f in files], "to": "/bench/moved"})
    return {"sql": "SELECT count(*) FROM scene_files WHERE path LIKE '/bench/moved/%'", "args": [],
            "equals": len(files)}


def remove_phashes(stash, n: int) -> dict:
    """Remove the phash of n scene files (what a scan of new files leaves: no phash yet)."""
    files = _scene_files(stash, n, offset=2)  # away from the files moved before
    for f in files:
        stash.call(SET_PHASH_MUTATION, {"id": f["file"], "v": None})
    return {"sql": "SELECT count(*) FROM scene_files WHERE phash IS NULL", "args": [], "equals": len(files)}


def generate_phashes(stash, n: int) -> dict:
    """Give the same n files a phash again (what the Generate task does)."""
    files = _scene_files(stash, n, offset=2)  # away from the files moved before
    for f in files:
        stash.call(SET_PHASH_MUTATION, {"id": f["file"], "v": "abcdef12"})
    return {"sql": "SELECT count(*) FROM scene_files WHERE phash IS NULL", "args": [], "equals": 0}


SILENT_CHANGES = {"tag merge": merge_tags, "scene merge (10 pairs)": merge_scenes,
                  "performer merge (10 into 1)": merge_performers, "100 files moved": move_files,
                  "100 phashes removed": remove_phashes, "100 phashes generated": generate_phashes}


def check_change_log(db: str, run_id: int, expected_scene_ids: list[int]) -> dict:
    """Compare the entities the run's change log names with the scenes that were edited."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        logged = set(conn.execute("SELECT DISTINCT entity_type, entity_id FROM sync_changes WHERE run_id = ?",
                                  (run_id,)))
        fields = sorted({r[0] for r in conn.execute("SELECT DISTINCT field FROM sync_changes WHERE run_id = ?",
                                                    (run_id,))})
    expected = {("scenes", i) for i in expected_scene_ids}
    return {"exact": logged == expected, "logged": len(logged), "missing": len(expected - logged),
            "extra": len(logged - expected), "fields": fields}


def rows_of_scenes(db: str, run_id: int, scene_ids: list[int]) -> int:
    """Row changes a smart sync makes for rewriting these scenes (their links unchanged).

    Per scene: the upsert, each owned link/file/stash-id row deleted and inserted again, the dirty
    mark inserted and cleared, its change-log rows, its inherited tags deleted and inserted again,
    and its row in the derived refresh's scratch table.
    """
    import sqlite3

    owned = ("scene_tags", "scene_performers", "scene_groups", "scene_galleries", "scene_files")
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TEMP TABLE ids (id INTEGER PRIMARY KEY)")
        conn.executemany("INSERT INTO temp.ids VALUES (?)", [(i,) for i in scene_ids])
        links = sum(conn.execute(f"SELECT count(*) FROM {t} WHERE scene_id IN (SELECT id FROM temp.ids)").fetchone()[0]
                    for t in owned)
        links += conn.execute("SELECT count(*) FROM stash_ids WHERE entity_type = 'scene' "
                              "AND entity_id IN (SELECT id FROM temp.ids)").fetchone()[0]
        inherited = conn.execute("SELECT count(*) FROM scene_inherited_tags "
                                 "WHERE scene_id IN (SELECT id FROM temp.ids)").fetchone()[0]
        logged = conn.execute("SELECT count(*) FROM sync_changes WHERE run_id = ?", (run_id,)).fetchone()[0]
    return len(scene_ids) * (1 + 2 + 1) + 2 * links + logged + 2 * inherited


def written_rows(db: str) -> int:
    """Rows in every mirror table of the cache file (0 when it does not exist)."""
    import sqlite3

    from tagman_mirror import schema

    if not Path(db).exists():
        return 0
    with sqlite3.connect(db) as conn:
        return sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in schema.MIRROR_TABLES
                   if t not in ("sync_runs", "sync_state", "cache_meta"))


def reached_mirror(db: str, expect: dict) -> bool:
    """Whether the cache file shows the change (the check a silent change returned)."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute(expect["sql"], expect["args"]).fetchone()[0] == expect["equals"]


def measure_silent(url: str, db: str) -> dict:
    """One smart sync after each kind of silent change: requests, rows, seconds, mirrored or not."""
    out = {"idle": child("smart", url, db), "idle without the checks": child("smart", url, db, {"without_checks": True}),
           "idle (again)": child("smart", url, db)}
    for kind in SILENT_CHANGES:
        expect = child("silent", url, db, {"kind": kind})["expect"]
        run = child("smart", url, db)
        run["mirrored"] = reached_mirror(db, expect)
        out[kind] = run
    return out


def median(values: list[float]) -> float:
    """The median of the repeats."""
    return statistics.median(values)


def measure(scale: float, workdir: Path, repeat: int, follow_up: bool = True) -> dict:
    """Full sync and plain mirror (``repeat`` times each, alternating), then the incremental and smart steps."""
    sizes = scaled(scale)
    print(f"scale {scale:g}: {sizes}", flush=True)
    t0 = time.perf_counter()
    server = FakeServer(sizes)
    print(f"  fake Stash ready in {time.perf_counter() - t0:.1f} s", flush=True)
    db = str(workdir / f"cache-{scale:g}.sqlite3")
    plain_db = str(workdir / f"plain-{scale:g}.sqlite3")
    try:
        fulls, plains = [], []
        for round_no in range(repeat):
            plains.append(plain(server.url, plain_db, workdir))
            for suffix in ("", "-wal", "-shm", ".lock"):
                Path(db + suffix).unlink(missing_ok=True)
            fulls.append(child("full", server.url, db))
            print(f"  round {round_no + 1}: full {fulls[-1]['seconds']:.1f} s / {fulls[-1]['cpu_s']:.1f} s CPU, "
                  f"plain {plains[-1]['seconds']:.1f} s / {plains[-1]['cpu_s']:.1f} s CPU", flush=True)
        figures = {"scale": scale, "sizes": sizes, "full_runs": fulls, "plain_runs": plains, "full": fulls[-1]}
        if follow_up and scale >= 0.01:
            child("smart", server.url, db)  # settle: nothing changed
            edit = child("edit", server.url, db, {"fraction": 0.01})
            figures["edited_scenes"] = edit["requests"]
            figures["incremental"] = child("incremental", server.url, db)
            # the first smart syncs after the edit still re-read the entities of the cursor's second
            # until Stash's clock confirms it: idle means after those
            for _ in range(2):
                child("smart", server.url, db)
            figures["smart_idle_runs"] = [child("smart", server.url, db) for _ in range(IDLE_RUNS)]
            figures["smart_idle"] = figures["smart_idle_runs"][-1]
            edit = child("edit", server.url, db, {"fraction": 0.01, "details": "second benchmark edit"})
            figures["smart_edited_scenes"] = len(edit["ids"])
            figures["smart_changed"] = child("smart", server.url, db, {"expect_scene_ids": edit["ids"]})
            figures["silent"] = measure_silent(server.url, db)
        return figures
    finally:
        server.stop()


def summary(figures: dict, reference: dict) -> dict:
    """Medians and ratios of one scale."""
    fulls, plains = figures["full_runs"], figures["plain_runs"]
    out = {
        "full_s": median([r["seconds"] for r in fulls]), "plain_s": median([r["seconds"] for r in plains]),
        "fetch_s": median([r["fetch_s"] for r in plains]),
        "full_cpu": median([r["cpu_s"] for r in fulls]), "plain_cpu": median([r["cpu_s"] for r in plains]),
        "full_rss": max(r["rss_mb"] for r in fulls), "reference_rss": reference["full"]["rss_mb"],
        "requests": fulls[-1]["requests"], "plain_requests": plains[-1]["requests"],
        "rows": fulls[-1]["rows_written"], "plain_rows": plains[-1]["rows"],
    }
    out["wall_ratio"] = out["full_s"] / out["plain_s"]
    out["wall_spread"] = (max(r["seconds"] for r in fulls) - min(r["seconds"] for r in fulls)) / out["plain_s"]
    out["cpu_ratio"] = out["full_cpu"] / out["plain_cpu"]
    out["fetch_ratio"] = out["full_s"] / out["fetch_s"]
    out["rss_ratio"] = out["full_rss"] / out["reference_rss"]
    if "smart_idle_runs" in figures:
        out["idle_cpu"] = median([r["cpu_s"] for r in figures["smart_idle_runs"]])
        out["idle_sync_cpu"] = median([r["cpu_sync_s"] for r in figures["smart_idle_runs"]])
    return out


def runs_text(runs: list[dict], key: str) -> str:
    """One figure of every run, comma separated."""
    return ", ".join(f"{r[key]:.1f}" for r in runs)


def verdict(ok: bool) -> str:
    """OK or OVER."""
    return "OK" if ok else "OVER"


def report(figures: dict, reference: dict) -> dict:
    """Print every figure of one scale beside its bound; returns the summary."""
    full = figures["full"]
    s = summary(figures, reference)
    n = len(figures["full_runs"])
    print()
    print(f"scale {figures['scale']:g} (medians of {n} run{'s' if n > 1 else ''} each):")
    print(f"full sync:                 {s['full_s']:8.1f} s  ({s['requests']} requests, {s['rows']} rows)")
    print(f"plain mirror, same pages:  {s['plain_s']:8.1f} s  ({s['plain_requests']} requests, {s['plain_rows']} rows; "
          f"fetching alone {s['fetch_s']:.1f} s)")
    print(f"full sync / plain mirror:  {s['wall_ratio']:8.2f}    bound <= 1.1  {verdict(s['wall_ratio'] <= 1.1)}"
          f"  (runs: {runs_text(figures['full_runs'], 'seconds')} s vs {runs_text(figures['plain_runs'], 'seconds')} s)")
    print(f"full sync / fetch alone:   {s['fetch_ratio']:8.2f}")
    print(f"CPU full sync:             {s['full_cpu']:8.1f} s  (plugin process, user + system)")
    print(f"CPU plain mirror:          {s['plain_cpu']:8.1f} s")
    print(f"CPU full / plain:          {s['cpu_ratio']:8.2f}    bound <= 2.0  {verdict(s['cpu_ratio'] <= 2.0)}"
          f"  (runs: {runs_text(figures['full_runs'], 'cpu_s')} s vs {runs_text(figures['plain_runs'], 'cpu_s')} s)")
    print(f"rows written per second:   {full['rows_written'] / s['full_s']:8.0f}")
    if "smart_changed" in figures:
        changed, edited = figures["smart_changed"], figures["smart_edited_scenes"]
        log_check = changed["change_log"]
        others = {t: c for t, c in changed["counts"].items() if t != "scenes" and (c[0] or c[1] or c[3])}
        scenes = changed["counts"]["scenes"]
        only = log_check["exact"] and not others and scenes[1] == edited and scenes[0] == scenes[3] == 0
        written, of_scenes = changed["rows_written_in_run"], changed["scene_rows"]
        other_rows = written - of_scenes
        bookkeeping = 2 * 7 + 3  # sync_state rows and mirror_signals' three positions
        only = only and 0 <= other_rows <= bookkeeping
        print(f"smart, 1% scenes changed:  {changed['seconds']:8.1f} s  ({changed['requests']} requests, "
              f"{edited} scenes edited; scenes created/updated/unchanged/deleted {'/'.join(map(str, scenes))})")
        print(f"  rows only for those:     {'yes' if only else 'NO':>8}    change log names {log_check['logged']} "
              f"entities (missing {log_check['missing']}, extra {log_check['extra']}), fields {log_check['fields']}, "
              f"other types changed: {sorted(others) or 'none'}  {verdict(only)}")
        print(f"  rows written:            {written:8d}    = {of_scenes} for the edited scenes + {other_rows} "
              f"bookkeeping rows (bound <= {bookkeeping})  {verdict(0 <= other_rows <= bookkeeping)}")
    if "incremental" in figures:
        inc, idle = figures["incremental"], figures["smart_idle"]
        print(f"incremental, 1% scenes:    {inc['seconds']:8.1f} s  ({inc['requests']} requests, "
              f"{inc['upserted']} entities written, {figures['edited_scenes']} scenes edited)")
        print(f"idle smart sync requests:  {idle['requests']:8d}    bound <= 15 (2 per type + 1 for the signals' checks)  "
              f"{verdict(idle['requests'] <= 15)}")
        idle_rows = idle["rows_written_in_run"]
        idle_ok = idle_rows <= 3 and idle["upserted"] + idle["deleted"] == 0 and idle["changes"] == 0
        print(f"idle smart rows written:   {idle_rows:8d}    bound <= 3 (mirror_signals' re-verification positions; "
              f"no mirror row)  {verdict(idle_ok)}  ({idle['seconds']:.2f} s)")
        print(f"idle smart sync CPU:       {s['idle_cpu']:8.2f} s  (process; the sync itself {s['idle_sync_cpu']:.2f} s)")
    if "silent" in figures:
        report_silent(figures["silent"])
    print(f"peak RSS full sync:        {s['full_rss']:8.1f} MB at this scale, "
          f"{s['reference_rss']:.1f} MB at a tenth")
    if figures["scale"] >= RSS_BOUND_FROM_SCALE:
        print(f"peak RSS ratio:            {s['rss_ratio']:8.2f}    bound <= 1.5  {verdict(s['rss_ratio'] <= 1.5)}")
    else:  # a tenth of this scale does not fill the sync's page cache: the ratio measures that cache
        print(f"peak RSS ratio:            {s['rss_ratio']:8.2f}    (bound from scale {RSS_BOUND_FROM_SCALE:g}: "
              f"a tenth of this scale leaves the sync's {SYNC_PAGE_CACHE_KIB // 1024} MB page cache part empty)")
    return s


def report_flatness(summaries: list[tuple[float, dict]]) -> None:
    """Compare the largest scale with the smallest: ratios no worse, idle smart CPU the same."""
    (small_scale, small), (large_scale, large) = summaries[0], summaries[-1]
    print()
    print(f"flat in size, scale {large_scale:g} against scale {small_scale:g}:")
    # "no worse" within the spread of the repeated full syncs at the larger scale
    margin = large["wall_spread"]
    print(f"wall ratio:                {small['wall_ratio']:8.2f} -> {large['wall_ratio']:.2f}  "
          f"(spread of the runs {margin:.2f})  {verdict(large['wall_ratio'] <= small['wall_ratio'] + margin)}")
    print(f"CPU ratio:                 {small['cpu_ratio']:8.2f} -> {large['cpu_ratio']:.2f}  "
          f"{verdict(large['cpu_ratio'] <= small['cpu_ratio'] + 0.05)}")
    if "idle_cpu" in small and "idle_cpu" in large:
        same = abs(large["idle_cpu"] - small["idle_cpu"]) <= 0.1 * small["idle_cpu"]
        print(f"idle smart sync CPU:       {small['idle_cpu']:8.2f} -> {large['idle_cpu']:.2f} s  (process; the sync "
              f"itself {small['idle_sync_cpu']:.3f} -> {large['idle_sync_cpu']:.3f} s; bound: within 10 %)  "
              f"{verdict(same)}")


def report_silent(silent: dict) -> None:
    """Print the smart sync after each silent change."""
    print("smart sync after each change no updated_at reveals (one sync each):")
    for kind, run in silent.items():
        mirrored = f"  mirrored: {'yes' if run['mirrored'] else 'NO'}" if "mirrored" in run else ""
        print(f"  {kind:<28} {run['requests']:5d} requests {run['rows_written_in_run']:8d} rows "
              f"{run['seconds']:7.1f} s{mirrored}")


def silent_only(scale: float, workdir: Path) -> None:
    """Full sync, then the idle smart sync and one smart sync after each silent change."""
    sizes = scaled(scale)
    print(f"scale {scale:g}: {sizes}", flush=True)
    server = FakeServer(sizes)
    db = str(workdir / f"cache-{scale:g}.sqlite3")
    try:
        full = child("full", server.url, db)
        print(f"full sync: {full['seconds']:.1f} s ({full['requests']} requests)", flush=True)
        child("smart", server.url, db)  # settle
        report_silent(measure_silent(server.url, db))
    finally:
        server.stop()


def full_only(scales: list[float], workdir: Path) -> None:
    """One full sync per scale, with a tenth of the largest as the reference: peak RSS and CPU only."""
    sizes = [scales[-1] / 10, *scales] if len(scales) == 1 else scales
    runs = {}
    for scale in sizes:
        server = FakeServer(scaled(scale))
        try:
            runs[scale] = child("full", server.url, str(workdir / f"full-{scale:g}.sqlite3"))
        finally:
            server.stop()
        print(f"scale {scale:g}: full sync {runs[scale]['seconds']:.1f} s, {runs[scale]['cpu_s']:.1f} s CPU, "
              f"peak RSS {runs[scale]['rss_mb']:.1f} MB", flush=True)
    ratio = runs[sizes[-1]]["rss_mb"] / runs[sizes[0]]["rss_mb"]
    print(f"peak RSS scale {sizes[-1]:g} / scale {sizes[0]:g}: {ratio:.2f}    bound <= 1.5  {verdict(ratio <= 1.5)}")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,3", help="comma separated library scales (1 = 100,000 scenes)")
    parser.add_argument("--scale", type=float, help="one scale (same as --scales X)")
    parser.add_argument("--repeat", type=int, default=3, help="full syncs and plain mirrors per scale (medians)")
    parser.add_argument("--child")
    parser.add_argument("--url")
    parser.add_argument("--db")
    parser.add_argument("--extra", default="{}")
    parser.add_argument("--silent-only", action="store_true")
    parser.add_argument("--full-only", action="store_true",
                        help="one full sync per scale (e.g. --scales 0.3,3): CPU and peak RSS only")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child, args.url, args.db, json.loads(args.extra))))
        return 0
    scales = [args.scale] if args.scale else sorted(float(x) for x in args.scales.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    if args.silent_only or args.full_only:
        try:
            silent_only(args.scale, workdir) if args.silent_only else full_only(scales, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return 0
    try:
        summaries = []
        for scale in scales:
            reference = measure(scale / 10, workdir, repeat=1, follow_up=False)
            figures = measure(scale, workdir, repeat=max(1, args.repeat))
            summaries.append((scale, report(figures, reference)))
        if len(summaries) > 1:
            report_flatness(summaries)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
