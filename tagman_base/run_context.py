"""What every mode receives from the entry point."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tagman_base.settings import Settings

if TYPE_CHECKING:  # annotations only: the lean modes never import requests
    from tagman_base.stash_client import StashClient


@dataclass(frozen=True)
class RunContext:
    """What every mode receives: a Stash client, the settings, the task args and a progress sink."""

    stash: StashClient
    settings: Settings
    args: Mapping[str, Any]
    plugin_dir: Path
    progress: Callable[[float], None] = field(default=lambda f: None)
    sleep: Callable[[float], None] = time.sleep  # retry back-off (the rate limiter keeps real time)
