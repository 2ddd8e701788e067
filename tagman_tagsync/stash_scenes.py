"""What the tag sync reads from Stash about scenes: the linked-scene listing and scene details."""

from __future__ import annotations

from dataclasses import dataclass, field

from stashdb_api import Fingerprint, fingerprints_from_stash_files
from tagman_base.stash_client import StashClient
from tagman_base.timestamps import instant_or_none
from tagman_tagsync.history import SettledTag

SCENE_ID_PAGE_SIZE = 5000  # ids and timestamps only: measured, see README › Page sizes

LINKED_SCENE_IDS_QUERY = """
query TagSyncLinkedSceneIds($scene_filter: SceneFilterType, $filter: FindFilterType) {
  findScenes(scene_filter: $scene_filter, filter: $filter) { count scenes { id updated_at stash_ids { endpoint stash_id } } }
}"""

SCENE_DETAILS_QUERY = """
query TagSyncScenes($ids: [ID!], $filter: FindFilterType) {
  findScenes(ids: $ids, filter: $filter) {
    scenes { id title tags { id } stash_ids { endpoint stash_id } files { fingerprints { type value } } }
  }
}"""


@dataclass
class SceneWork:
    """One local scene on its way through the passes."""

    id: int
    title: str
    linked_ids: tuple[str, ...]
    tag_ids: frozenset[int]
    fingerprints: tuple[Fingerprint, ...]
    settled: dict[str, dict[str, SettledTag]] = field(default_factory=dict)  # StashDB scene id -> tag id -> entry
    fingerprint_hits: tuple[str, ...] = ()  # other live StashDB scenes that carry its fingerprints


def scene_work(scene: dict, endpoint: str) -> SceneWork:
    """Turn a Stash scene into the pieces the passes need."""
    linked = tuple(dict.fromkeys(s["stash_id"] for s in scene.get("stash_ids") or [] if s.get("endpoint") == endpoint))
    return SceneWork(
        id=int(scene["id"]),
        title=scene.get("title") or "",
        linked_ids=linked,
        tag_ids=frozenset(int(t["id"]) for t in scene.get("tags") or []),
        fingerprints=tuple(fingerprints_from_stash_files(scene.get("files") or [])),
    )


def linked_scenes(stash: StashClient, endpoint: str) -> dict[int, tuple[str, ...]]:
    """Snapshot the scenes linked to ``endpoint`` with their StashDB ids there, least recently updated first.

    Pages are read in id order, which edits do not change (in ``updated_at`` order a scene edited
    while we page would move and push another across a page boundary unseen), then sorted here by
    the instant of ``updated_at``. Only ids are kept: the sync's own writes reorder scenes too.
    """
    variables = {
        "scene_filter": {"stash_id_endpoint": {"endpoint": endpoint, "modifier": "NOT_NULL"}},
        "filter": {"sort": "id", "direction": "ASC"},
    }
    stamped: dict[int, float] = {}
    links: dict[int, tuple[str, ...]] = {}
    for page in stash.paginate(LINKED_SCENE_IDS_QUERY, variables, "findScenes", "scenes", per_page=SCENE_ID_PAGE_SIZE):
        for scene in page:
            scene_id = int(scene["id"])
            stamped[scene_id] = updated_instant(scene.get("updated_at"))
            links[scene_id] = tuple(dict.fromkeys(s["stash_id"] for s in scene.get("stash_ids") or []
                                                  if s.get("endpoint") == endpoint))
    return {scene_id: links[scene_id] for scene_id in sorted(stamped, key=lambda i: (stamped[i], i))}


def updated_instant(text: str | None) -> float:
    """Seconds since the epoch of a Stash timestamp (any offset); unknown sorts first."""
    moment = instant_or_none(text)
    return moment.timestamp() if moment is not None else float("-inf")
