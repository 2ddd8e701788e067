"""The preview's CSV report: one row per scene that would change or has something to say."""

from __future__ import annotations

import csv
import logging
import os
from datetime import datetime
from pathlib import Path

log = logging.getLogger(__name__)

REPORT_HEADER = ["scene_id", "title", "stashdb_id", "matched_by", "tags_to_add", "tags_unmatched",
                 "skipped_by_history", "note", "endpoint"]


def try_write_report(report_dir: Path, when: datetime, rows: list[list[str]]) -> str | None:
    """Write the preview report; an unwritable folder costs the file, not the preview."""
    try:
        return write_preview_report(report_dir, when, rows)
    except OSError as exc:
        log.warning(f"Could not write the preview report under {report_dir} ({exc.strerror or exc}); "
                    "the would-be tags are in this log")
        return None


def write_preview_report(report_dir: Path, when: datetime, rows: list[list[str]]) -> str:
    """Write the preview as CSV under the report folder (atomically) and return its path."""
    report_dir.mkdir(parents=True, exist_ok=True)
    stamp = when.astimezone().strftime("%Y%m%d-%H%M%S")
    path = unique_path(report_dir / f"scene_tag_preview_{stamp}.csv")
    partial = path.with_suffix(".csv.partial")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(REPORT_HEADER)
        writer.writerows(rows)
    os.replace(partial, path)
    log.info(f"Preview report written to {path}")
    return str(path)


def unique_path(path: Path) -> Path:
    """Return ``path``, or the same name with a counter when it exists already."""
    candidate, counter = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{counter}{path.suffix}")
        counter += 1
    return candidate
