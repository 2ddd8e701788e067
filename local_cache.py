"""The sidecar SQLite cache of Stash, as the plugin's modes and other tools see it.

Modes (wired in ``tag_manager.MODES``; each takes the run's ``RunContext``):

* ``cache_full_sync``, ``cache_incremental_sync``, ``cache_smart_sync``: bring the mirror up to date
  (``tagman_mirror.runs`` / ``tagman_mirror.engine``);
* ``cache_hook`` and ``cache_sync_scene``: re-read one entity at once (``tagman_mirror.hook``);
* ``cache_watch``: a smart sync every interval with a heartbeat (``tagman_mirror.watch``);
* ``cache_status``: the mirror against Stash (``tagman_mirror.status``).

Other tools read the cache with ``read_cache(path)``. Each mode imports its implementation when it
runs, so that a hook process loads only what a hook needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlite3

    from tagman_base.run_context import RunContext


def _sync(ctx: RunContext, mode: str) -> Any:
    """Run one cache sync of ``mode`` on the run's cache file."""
    from tagman_mirror.cache_file import cache_path
    from tagman_mirror.results import CacheOptions
    from tagman_mirror.runs import run_sync

    return run_sync(ctx.stash, cache_path(ctx.settings, ctx.plugin_dir), mode,
                    since=ctx.args.get("since") or None if mode == "cache_incremental_sync" else None,
                    progress=ctx.progress, entities=ctx.args.get("entities") or None,
                    options=CacheOptions.from_settings(ctx.settings))


def full_sync(ctx: RunContext) -> Any:
    """Mode ``cache_full_sync``: read every entity of Stash (of ``entities`` only, when given)."""
    return _sync(ctx, "cache_full_sync")


def incremental_sync(ctx: RunContext) -> Any:
    """Mode ``cache_incremental_sync``: read what changed since each type's cursor, or since ``since``."""
    return _sync(ctx, "cache_incremental_sync")


def smart_sync(ctx: RunContext) -> Any:
    """Mode ``cache_smart_sync``: like incremental, skipping the types Stash reports unchanged."""
    return _sync(ctx, "cache_smart_sync")


def hook(ctx: RunContext) -> Any:
    """Mode ``cache_hook``: apply the one entity of a Stash hook call to the mirror."""
    from tagman_mirror.hook import run_cache_hook

    return run_cache_hook(ctx)


def sync_scene(ctx: RunContext) -> Any:
    """Mode ``cache_sync_scene``: re-read one scene with its links and derived data now."""
    from tagman_mirror.hook import run_cache_sync_scene

    return run_cache_sync_scene(ctx)


def status(ctx: RunContext) -> Any:
    """Mode ``cache_status``: per type the mirror against Stash, the last runs and the watch service."""
    from tagman_mirror.status import run_cache_status

    return run_cache_status(ctx)


def watch(ctx: RunContext) -> Any:
    """Mode ``cache_watch``: a smart sync every interval, with a heartbeat, until SIGTERM/SIGINT."""
    from tagman_mirror.watch import run_cache_watch

    return run_cache_watch(ctx)


def run_hook_safely(run: Callable[[], Any], args: Mapping[str, Any]) -> Any:
    """Run a hook (connecting included) so that any failure becomes a logged ``error`` result, exit 0."""
    from tagman_mirror.hook import run_hook_safely as guarded

    return guarded(run, args)


def prepare_hook_client(stash: Any) -> None:
    """Short timeouts and one quick retry for a hook's Stash client: the user's edit waits for it."""
    from tagman_mirror.hook import prepare_hook_client as prepare

    prepare(stash)


@contextmanager
def read_cache(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the cache for other tools (writes are refused by the cache's guard)."""
    from tagman_mirror.cache_file import read_cache as open_for_reading

    with open_for_reading(db_path) as conn:
        yield conn
