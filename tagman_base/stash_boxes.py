"""The stash-boxes configured in Stash, and which of them a run works on."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tagman_base.errors import SettingsError

log = logging.getLogger(__name__)

STASHDB_MARKER = "stashdb.org"  # the default stash-box is the one whose endpoint contains this


@dataclass(frozen=True)
class StashBox:
    """A stash-box endpoint as configured in Stash (the API key is never printed)."""

    endpoint: str
    api_key: str
    name: str
    max_requests_per_minute: int

    def __repr__(self) -> str:
        return f"StashBox(endpoint={self.endpoint!r}, name={self.name!r}, max_requests_per_minute={self.max_requests_per_minute})"



def select_stash_box(boxes: list[StashBox], wanted_endpoint: str = "") -> StashBox:
    """Pick the configured stash-box: the one named by the setting, else stashdb.org, else the first."""
    if not boxes:
        raise SettingsError(
            "No stash-box is configured in Stash. Add StashDB under Settings › Metadata Providers › "
            "Stash-box Endpoints, then run the task again."
        )
    if wanted_endpoint:
        wanted = wanted_endpoint.strip().rstrip("/").lower()
        for box in boxes:
            if box.endpoint.strip().rstrip("/").lower() == wanted or box.name.strip().lower() == wanted:
                return box
        known = ", ".join(b.endpoint for b in boxes)
        raise SettingsError(
            f"Setting stashBoxEndpoint is {wanted_endpoint!r}, which is not a stash-box configured in Stash "
            f"(configured: {known}). Fix the setting or clear it to use StashDB."
        )
    return next((b for b in boxes if STASHDB_MARKER in b.endpoint.lower()), boxes[0])


def stash_boxes_to_sync(boxes: list[StashBox], wanted_endpoint: str = "") -> list[StashBox]:
    """The stash-boxes a run works on: the one ``stashBoxEndpoint`` names, else every box with an API key."""
    if wanted_endpoint or not boxes:
        chosen = [select_stash_box(boxes, wanted_endpoint)]
    else:
        chosen = [box for box in boxes if box.api_key.strip()]
    if not chosen or not all(box.api_key.strip() for box in chosen):
        raise SettingsError(_no_key_message([box for box in boxes if not box.api_key.strip()]))
    for box in boxes:
        if box not in chosen:
            log.info(f"Skipping stash-box {box.name or box.endpoint}: it has no API key in Stash")
    return chosen


def _no_key_message(keyless: list[StashBox]) -> str:
    """One line naming the boxes without an API key (stash-box answers their requests "not authorized")."""
    names = ", ".join(f"{box.name or box.endpoint} ({box.endpoint})" for box in keyless) or "none"
    return (f"The stash-box {names} has no API key, so it would answer every request \"not authorized\". "
            "Add the key under Settings › Metadata Providers › Stash-box Endpoints, then run the task again.")
