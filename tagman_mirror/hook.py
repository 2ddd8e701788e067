"""The ``cache_hook`` mode (one edited entity, inside the user's own edit in Stash) and ``cache_sync_scene``.

``cache_hook`` runs once per edited entity, and Stash waits for it before it answers the edit. It
re-reads that entity by id and upserts it with its links and derived data, or removes it when Stash
no longer has it; on ``Tag.Merge.Post`` it also removes the merged tags and points their links at
the destination. It never fails the edit: every error is logged and the hook still prints
``{"output": ...}`` and exits 0; the next smart sync repairs whatever a hook missed. With the
setting ``liveCache`` off, or before the first completed full sync, it does nothing.
``cache_sync_scene`` does the same for one scene, on request, with errors reported.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tagman_base import plugin_log
from tagman_base.errors import CacheError, CacheLockedError, SettingsError, TagManagerError
from tagman_base.run_context import RunContext
from tagman_mirror import schema
from tagman_mirror.cache_file import cache_path, read_only
from tagman_mirror.entities import SPECS
from tagman_mirror.live_writer import LiveWriter, full_run_pending

# Stash's hook trigger entity -> mirror table (Movie is Stash's deprecated name of Group)
HOOK_ENTITY_TABLES = {"Scene": "scenes", "Image": "images", "Gallery": "galleries", "Group": "groups",
                      "Movie": "groups", "Performer": "performers", "Studio": "studios", "Tag": "tags"}
HOOK_ACTIONS = ("Create", "Update", "Destroy", "Merge")
HOOK_CLIENT_BACKOFF = (0.25,)        # one quick retry: the user's edit is waiting
HOOK_CLIENT_TIMEOUT = (2.0, 15.0)    # connect, read (seconds)
TASK_BUSY_TIMEOUT_MS = 30000


class HookInputError(TagManagerError):
    """The hook context Stash passed cannot be understood."""


@dataclass(frozen=True)
class HookEvent:
    """One hook call as Stash describes it in ``args.hookContext``."""

    trigger: str                    # e.g. "Scene.Update.Post"
    entity: str                     # "Scene"
    action: str                     # Create | Update | Destroy | Merge
    table: str | None               # mirror table, None for entities the mirror does not hold
    ids: tuple[int, ...]            # the entity (one per call, even for bulk mutations)
    sources: tuple[int, ...] = ()   # Tag.Merge.Post: the merged (now deleted) tags
    input_fields: tuple[str, ...] = ()
    bulk: bool = False              # the input addressed several entities (``ids``)
    scan: bool = False              # no input at all: a library scan touched the entity


def int_ids(values: Any) -> list[int]:
    """Ids from a JSON number, a numeric string or a list of them."""
    if values is None:
        return []
    if not isinstance(values, (list, tuple)):
        values = [values]
    out = []
    for value in values:
        if isinstance(value, bool) or value in (None, ""):
            raise HookInputError(f"hookContext has an invalid id {value!r}")
        try:
            number = int(str(value).strip()) if not isinstance(value, float) else int(value)
        except ValueError:
            raise HookInputError(f"hookContext has an invalid id {value!r}") from None
        if number <= 0:
            raise HookInputError(f"hookContext has an invalid id {value!r}")
        out.append(number)
    return list(dict.fromkeys(out))


def _hook_context(args: Mapping[str, Any]) -> Mapping[str, Any]:
    """``args.hookContext`` as a mapping (Stash may pass it as JSON text)."""
    context = args.get("hookContext")
    if isinstance(context, str):
        try:
            context = json.loads(context)
        except ValueError:
            raise HookInputError("hookContext is not valid JSON") from None
    if not isinstance(context, Mapping):
        raise HookInputError("cache_hook runs from Stash's hooks only: the input has no hookContext")
    return context


def parse_hook_context(args: Mapping[str, Any]) -> HookEvent:
    """Read ``args.hookContext`` = ``{id, type, input, inputFields}`` exactly as Stash passes it."""
    context = _hook_context(args)
    trigger = str(context.get("type") or "")
    parts = trigger.split(".")
    if len(parts) != 3 or parts[2] != "Post" or parts[1] not in HOOK_ACTIONS:
        raise HookInputError(f"unknown hook trigger {trigger!r}")
    entity, action = parts[0], parts[1]
    raw_input = context.get("input")
    payload = raw_input if isinstance(raw_input, Mapping) else {}
    fields = tuple(str(f) for f in context.get("inputFields") or ())
    ids = int_ids(context.get("id")) if context.get("id") not in (None, 0, "0", "") else []
    bulk = isinstance(payload.get("ids"), list) and len(payload["ids"]) > 1
    if not ids:  # Stash always sets id; fall back on the input for older or unusual callers
        ids = int_ids(payload.get("destination") if action == "Merge" else payload.get("id"))
        ids = ids or int_ids(payload.get("ids"))
    if not ids:
        raise HookInputError(f"{trigger} hook without an entity id")
    sources: list[int] = []
    if action == "Merge":
        sources = [s for s in int_ids(payload.get("source")) if s not in ids]
    return HookEvent(trigger, entity, action, HOOK_ENTITY_TABLES.get(entity), tuple(ids), tuple(sources),
                     fields, bulk, raw_input is None)


@dataclass
class HookResult:
    """What one ``cache_hook`` call did (the hook's JSON output)."""

    trigger: str = ""
    ids: tuple[int, ...] = ()
    status: str = "error"   # applied | off | not_ready | ignored | sync_running | busy | error
    reason: str = ""
    upserted: int = 0
    deleted: int = 0
    reread: int = 0
    derived_refreshed: bool = False
    seconds: float = 0.0

    @property
    def log_level(self) -> int:
        """Hooks run for every edited entity: only problems go above DEBUG."""
        return {"error": logging.WARNING, "busy": logging.INFO}.get(self.status, logging.DEBUG)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["ids"] = list(self.ids)
        return out

    def __str__(self) -> str:
        what = f"{self.trigger} {','.join(map(str, self.ids))}".strip()
        if self.status == "applied":
            return (f"Cache hook {what}: {self.upserted} written, {self.deleted} deleted, {self.reread} re-read"
                    f"{', derived data refreshed' if self.derived_refreshed else ''} in {self.seconds * 1000:.0f} ms.")
        if self.status == "error":
            return (f"Cache hook {what} failed: {self.reason}. Your change in Stash is saved; "
                    "the next cache sync brings the mirror up to date.")
        return f"Cache hook {what}: {self.status}" + (f" ({self.reason})" if self.reason else "") + "."


def not_ready_reason(db_path: Path) -> str | None:
    """Why a hook must leave this cache alone (None when it may write)."""
    if not Path(db_path).exists():
        return f"no cache at {db_path} yet"
    try:
        conn = read_only(db_path)
    except sqlite3.Error as exc:
        return f"cannot open the cache ({exc})"
    try:
        version = schema.schema_version(conn)
        if version != schema.SCHEMA_VERSION:
            return f"cache schema {version} differs from {schema.SCHEMA_VERSION}; the next sync upgrades it"
        done = dict(conn.execute("SELECT entity_type, last_full_sync FROM sync_state").fetchall())
        if any(not done.get(spec.table) for spec in SPECS):
            return "the cache has never completed a full sync"
        if full_run_pending(conn):
            return "an interrupted full sync has to finish first"
    except sqlite3.Error as exc:
        return f"cannot read the cache ({exc})"
    finally:
        conn.close()
    return None


def prepare_hook_client(stash: Any) -> None:
    """Short timeouts and one quick retry: the user's edit in Stash waits for the hook."""
    if hasattr(stash, "backoff"):
        stash.backoff = HOOK_CLIENT_BACKOFF
    if hasattr(stash, "timeout"):
        stash.timeout = HOOK_CLIENT_TIMEOUT


def run_hook_safely(run: Callable[[], HookResult], args: Mapping[str, Any] | None = None) -> HookResult:
    """Run the hook and turn every failure into a logged warning and an ``error`` result (exit 0)."""
    started = time.monotonic()
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - a hook must never fail the user's edit
        message = plugin_log.redactor.redact(f"{type(exc).__name__}: {exc}" if not isinstance(exc, TagManagerError)
                                             else str(exc))
        trigger, ids = "", ()
        try:
            event = parse_hook_context(args or {})
            trigger, ids = event.trigger, event.ids
        except Exception:  # noqa: BLE001 - the input itself was the problem
            pass
        return HookResult(trigger=trigger, ids=ids, status="error", reason=message,
                          seconds=round(time.monotonic() - started, 3))


def run_cache_hook(ctx: RunContext) -> HookResult:
    """Mode ``cache_hook``: apply the one entity of this hook call to the mirror."""
    started = time.monotonic()
    event = parse_hook_context(ctx.args)
    result = HookResult(trigger=event.trigger, ids=event.ids)
    if not ctx.settings.live_cache:
        result.status, result.reason = "off", "setting liveCache is off"
    elif event.table is None:
        result.status, result.reason = "ignored", f"{event.entity} is not mirrored"
    else:
        db_path = cache_path(ctx.settings, ctx.plugin_dir)
        reason = not_ready_reason(db_path)
        if reason:
            result.status, result.reason = "not_ready", reason
        else:
            writer = LiveWriter(ctx.stash, db_path, soft_delete=ctx.settings.cache_soft_delete)
            stats = writer.apply(event.table, event.ids, event.sources)
            result.status, result.reason = stats.status, stats.reason
            result.upserted, result.deleted, result.reread = stats.upserted, stats.deleted, stats.reread
            result.derived_refreshed = stats.derived_refreshed
    result.seconds = round(time.monotonic() - started, 3)
    return result


@dataclass(frozen=True)
class SceneSyncResult:
    """What ``cache_sync_scene`` did."""

    scene_id: int
    status: str          # updated | unchanged | deleted | not_found
    upserted: int
    deleted: int
    reread: int
    derived_refreshed: bool
    stash_requests: int
    seconds: float
    db_path: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    def __str__(self) -> str:
        text = {"updated": "re-read and written", "unchanged": "re-read, already up to date",
                "deleted": "no longer in Stash: removed from the cache",
                "not_found": "not in Stash (nor in the cache)"}[self.status]
        return f"Scene {self.scene_id}: {text} ({self.stash_requests} Stash requests, {self.seconds * 1000:.0f} ms)."


def _one_scene_id(raw: Any) -> int:
    """The single scene id of the task argument, or a SettingsError saying how to pass it."""
    try:
        ids = int_ids(raw)
    except HookInputError:
        ids = []
    if len(ids) != 1:
        raise SettingsError("cache_sync_scene needs one scene id: task argument id, or --id on the command line "
                            f"(got {raw!r}).")
    return ids[0]


def run_cache_sync_scene(ctx: RunContext) -> SceneSyncResult:
    """Mode ``cache_sync_scene``: resync one scene with its links and derived data now."""
    scene_id = _one_scene_id(ctx.args.get("id"))
    db_path = cache_path(ctx.settings, ctx.plugin_dir)
    if not db_path.exists():
        raise CacheError(f"There is no cache at {db_path} yet: run 'Cache: Full Sync' first.")
    started = time.monotonic()
    writer = LiveWriter(ctx.stash, db_path, busy_timeout_ms=TASK_BUSY_TIMEOUT_MS,
                        soft_delete=ctx.settings.cache_soft_delete)
    stats = writer.apply("scenes", [scene_id])
    if stats.status != "applied":
        raise CacheLockedError(f"Scene {scene_id} was not written: {stats.reason}.")
    if stats.found:
        status = "updated" if stats.upserted else "unchanged"
    elif stats.deleted:
        status = "deleted"
    else:
        raise SettingsError(f"Scene {scene_id} does not exist in Stash (nor in the cache): check the id.")
    return SceneSyncResult(scene_id, status, stats.upserted, stats.deleted, stats.reread, stats.derived_refreshed,
                           stats.requests, round(time.monotonic() - started, 3), str(db_path))
