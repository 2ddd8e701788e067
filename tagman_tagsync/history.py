"""The scene tag sync history: which StashDB tags each linked scene has settled, per stash-box.

A StashDB tag is *settled* for a scene once Stash confirmed that the scene carries its local
match: either the sync added it (``added``) or the scene already had it (``present``). Later runs
never add a settled tag again, so a tag the user removed stays removed; StashDB tags that are new
for the scene (added upstream, or newly matchable after the user created, linked or aliased a
local tag) are still added. Records are written only after Stash confirmed the write: a run
killed in between re-adds the tag harmlessly next time and never withholds one.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tagman_tagsync import history_schema as schema
from tagman_base.sqlite_util import atomic
from stashdb_api import StashDBTag
from tagman_base.errors import SyncHistoryError

ADDED = "added"
PRESENT = "present"
LIVE, DELETED, MISSING = "live", "deleted", "missing"  # state of a stored StashDB answer
SQL_VARIABLES = 500  # ids per IN (...) list, well under SQLite's variable limit


@dataclass(frozen=True)
class SettledTag:
    """One StashDB tag settled for one scene: its local match and how it got onto the scene."""

    stashdb_tag_id: str
    local_tag_id: int
    origin: str  # ADDED | PRESENT


@dataclass(frozen=True)
class SceneRecord:
    """What a run settled for one scene of one box, written once Stash confirmed the scene's writes."""

    scene_id: int
    stashdb_id: str
    linked_ids: tuple[str, ...]  # the scene's StashDB ids on this box now (older links are forgotten)
    stashdb_updated: str | None
    remote_tags: tuple[StashDBTag, ...]
    settled: tuple[SettledTag, ...]  # newly settled tags only
    answer_state: str = LIVE  # DELETED / MISSING: StashDB has the linked scene deleted / not at all


@dataclass(frozen=True)
class StoredAnswer:
    """A scene's last StashDB answer as stored (tags kept as JSON text until needed)."""

    stashdb_id: str
    answer_state: str
    stashdb_updated: str | None
    remote_tags_json: str


@dataclass(frozen=True)
class BoxState:
    """Per stash-box bookkeeping of the change feed."""

    feed_mark: str | None = None  # StashDB ``updated`` text: everything older is reflected in the answers
    last_full_check: str | None = None  # UTC ISO time the last full re-check finished
    last_run_started: str | None = None  # UTC ISO time the last completed run started
    full_fallbacks: int = 0  # by-id look-ups of the last full run (its cost beyond the batches)
    overlap_items: int = 0  # feed items at or after (mark - overlap) when the mark was taken


@dataclass(frozen=True)
class ResetResult:
    """What "Reset Scene Tag Sync History" forgot."""

    endpoints: tuple[str, ...]
    scenes_forgotten: int
    tags_forgotten: int
    history_path: str

    def __str__(self) -> str:
        boxes = ", ".join(self.endpoints) or "no stash-box"
        return (f"Scene tag sync history reset for {boxes}: forgot {self.tags_forgotten} settled tags on "
                f"{self.scenes_forgotten} scenes. The next sync treats every StashDB tag as new.")


def history_path(plugin_dir: Path) -> Path:
    """Where the history lives: ``data/scene_tag_sync.sqlite3`` in the plugin folder."""
    return plugin_dir / schema.HISTORY_FILE


def utc_now_text() -> str:
    """The current UTC time as ISO text (for the record's bookkeeping columns)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class SyncHistory:
    """Reads and writes the history of one stash-box endpoint over a shared connection."""

    def __init__(self, conn: sqlite3.Connection, endpoint: str,
                 now_text: Callable[[], str] = utc_now_text) -> None:
        self.conn = conn
        self.endpoint = endpoint
        self.now_text = now_text

    def settled_for(self, scene_ids: Sequence[int]) -> dict[tuple[int, str], dict[str, SettledTag]]:
        """Settled tags of these scenes, by (scene id, StashDB scene id), then StashDB tag id."""
        settled: dict[tuple[int, str], dict[str, SettledTag]] = {}
        for start in range(0, len(scene_ids), SQL_VARIABLES):
            chunk = [int(i) for i in scene_ids[start:start + SQL_VARIABLES]]
            rows = self._query(
                "SELECT scene_id, stashdb_id, stashdb_tag_id, local_tag_id, origin FROM settled_tags "
                f"WHERE endpoint = ? AND scene_id IN ({','.join('?' * len(chunk))})",
                [self.endpoint, *chunk])
            for scene_id, stashdb_id, tag_id, local_id, origin in rows:
                settled.setdefault((scene_id, stashdb_id), {})[tag_id] = SettledTag(tag_id, local_id, origin)
        return settled

    def settled_ids_for(self, scene_ids: Sequence[int]) -> dict[tuple[int, str], set[str]]:
        """Ids of the settled StashDB tags of these scenes, by (scene id, StashDB scene id)."""
        settled: dict[tuple[int, str], set[str]] = {}
        for start in range(0, len(scene_ids), SQL_VARIABLES):
            chunk = [int(i) for i in scene_ids[start:start + SQL_VARIABLES]]
            rows = self._query(
                "SELECT scene_id, stashdb_id, stashdb_tag_id FROM settled_tags "
                f"WHERE endpoint = ? AND scene_id IN ({','.join('?' * len(chunk))})", [self.endpoint, *chunk])
            for scene_id, stashdb_id, tag_id in rows:
                settled.setdefault((scene_id, stashdb_id), set()).add(tag_id)
        return settled

    def answers_for(self, scene_ids: Sequence[int]) -> dict[int, list[StoredAnswer]]:
        """Stored StashDB answers of these scenes, by scene id."""
        answers: dict[int, list[StoredAnswer]] = {}
        for start in range(0, len(scene_ids), SQL_VARIABLES):
            chunk = [int(i) for i in scene_ids[start:start + SQL_VARIABLES]]
            rows = self._query(
                "SELECT scene_id, stashdb_id, answer_state, stashdb_updated, remote_tags FROM scene_answers "
                f"WHERE endpoint = ? AND scene_id IN ({','.join('?' * len(chunk))})", [self.endpoint, *chunk])
            for scene_id, stashdb_id, state, updated, tags in rows:
                answers.setdefault(scene_id, []).append(StoredAnswer(stashdb_id, state, updated, tags))
        return answers

    def box_state(self) -> BoxState | None:
        """This box's feed bookkeeping, or None before its first completed run."""
        rows = self._query("SELECT feed_mark, last_full_check, last_run_started, full_fallbacks, overlap_items FROM box_state "
                           "WHERE endpoint = ?", [self.endpoint])
        return BoxState(*rows[0]) if rows else None

    def save_box_state(self, state: BoxState) -> None:
        """Store this box's feed bookkeeping (at the end of a run without errors)."""
        try:
            with atomic(self.conn):
                self.conn.execute(
                    "INSERT INTO box_state (endpoint, feed_mark, last_full_check, last_run_started, full_fallbacks, "
                    "overlap_items) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (endpoint) DO UPDATE SET "
                    "feed_mark = excluded.feed_mark, last_full_check = excluded.last_full_check, "
                    "last_run_started = excluded.last_run_started, full_fallbacks = excluded.full_fallbacks, "
                    "overlap_items = excluded.overlap_items",
                    (self.endpoint, state.feed_mark, state.last_full_check, state.last_run_started,
                     state.full_fallbacks, state.overlap_items))
        except sqlite3.Error as exc:
            raise SyncHistoryError(f"Could not write the scene tag sync history ({exc}). "
                                   "Check free disk space and run the task again.") from None

    def record(self, records: Iterable[SceneRecord]) -> None:
        """Store settled scenes in one transaction (call only after Stash confirmed their writes)."""
        records = list(records)
        if not records:
            return
        now = self.now_text()
        try:
            with atomic(self.conn):
                for record in records:
                    self._record_one(record, now)
        except sqlite3.Error as exc:
            raise SyncHistoryError(f"Could not write the scene tag sync history ({exc}). "
                                   "Check free disk space and run the task again.") from None

    def _record_one(self, record: SceneRecord, now: str) -> None:
        """Write one scene's answer and newly settled tags; forget links the scene no longer has."""
        self._forget_old_links(record)
        self.conn.execute(
            "INSERT INTO scene_answers (endpoint, scene_id, stashdb_id, stashdb_updated, remote_tags, checked_at, "
            "answer_state) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (endpoint, scene_id, stashdb_id) DO UPDATE SET "
            "stashdb_updated = excluded.stashdb_updated, remote_tags = excluded.remote_tags, "
            "checked_at = excluded.checked_at, answer_state = excluded.answer_state",
            (self.endpoint, record.scene_id, record.stashdb_id, record.stashdb_updated,
             encode_remote_tags(record.remote_tags), now, record.answer_state))
        self.conn.executemany(
            "INSERT INTO settled_tags (endpoint, scene_id, stashdb_id, stashdb_tag_id, local_tag_id, origin, settled_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(self.endpoint, record.scene_id, record.stashdb_id, s.stashdb_tag_id, s.local_tag_id, s.origin, now)
             for s in record.settled])

    def _forget_old_links(self, record: SceneRecord) -> None:
        """A scene re-linked to another StashDB scene starts fresh: drop rows of links it lost."""
        keep = list(record.linked_ids) or [record.stashdb_id]
        marks = ",".join("?" * len(keep))
        for table in ("scene_answers", "settled_tags"):
            self.conn.execute(f"DELETE FROM {table} WHERE endpoint = ? AND scene_id = ? AND stashdb_id NOT IN ({marks})",
                              [self.endpoint, record.scene_id, *keep])

    def _query(self, sql: str, params: Sequence) -> list[tuple]:
        """Run a read, turning SQLite failures into a SyncHistoryError."""
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise SyncHistoryError(f"Could not read the scene tag sync history ({exc}). "
                                   "Run 'Reset Scene Tag Sync History' to start a fresh history.") from None


def encode_remote_tags(tags: Iterable[StashDBTag]) -> str:
    """StashDB tags of an answer as compact JSON ``[[id, name, deleted], ...]``."""
    return json.dumps([[t.id, t.name, int(t.deleted)] for t in tags], separators=(",", ":"), ensure_ascii=False)


def decode_remote_tags(text: str) -> tuple[StashDBTag, ...]:
    """The StashDB tags stored by ``encode_remote_tags``."""
    return tuple(StashDBTag(str(i), str(n), (), bool(d)) for i, n, d in json.loads(text))


def open_history(plugin_dir: Path) -> sqlite3.Connection:
    """Open the plugin's history file (created on first use)."""
    return schema.connect(history_path(plugin_dir))


def history_endpoints(conn: sqlite3.Connection) -> list[str]:
    """Endpoints that have a history in the file."""
    rows = conn.execute("SELECT DISTINCT endpoint FROM scene_answers UNION SELECT DISTINCT endpoint FROM settled_tags")
    return sorted(r[0] for r in rows)


def reset_history(plugin_dir: Path, endpoint: str | None = None) -> ResetResult:
    """Forget the history of one endpoint (or of all); an unreadable file is removed and started fresh."""
    path = history_path(plugin_dir)
    if not path.exists():
        return ResetResult((), 0, 0, str(path))
    try:
        conn = open_history(plugin_dir)
    except SyncHistoryError:
        remove_history_files(path)
        return ResetResult(("every stash-box (the unreadable file was removed)",), 0, 0, str(path))
    try:
        return forget(conn, path, endpoint)
    finally:
        conn.close()


def forget(conn: sqlite3.Connection, path: Path, endpoint: str | None) -> ResetResult:
    """Delete the rows of ``endpoint`` (all when None) in one transaction and count them."""
    endpoints = tuple(history_endpoints(conn) if endpoint is None else [endpoint])
    where, params = ("", []) if endpoint is None else (" WHERE endpoint = ?", [endpoint])
    with atomic(conn):
        scenes = conn.execute(f"SELECT count(*) FROM (SELECT DISTINCT endpoint, scene_id FROM scene_answers{where})",
                              params).fetchone()[0]
        tags = conn.execute(f"SELECT count(*) FROM settled_tags{where}", params).fetchone()[0]
        conn.execute(f"DELETE FROM settled_tags{where}", params)
        conn.execute(f"DELETE FROM scene_answers{where}", params)
        conn.execute(f"DELETE FROM box_state{where}", params)
    return ResetResult(endpoints, scenes, tags, str(path))


def remove_history_files(path: Path) -> None:
    """Delete the history file with its WAL side files."""
    for candidate in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        candidate.unlink(missing_ok=True)
