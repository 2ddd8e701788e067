"""Kill a plugin process at a chosen moment, as Stash's Cancel does (SIGKILL), then re-run it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

from tests.conftest import ROOT, PluginRun, run_plugin


def start_plugin(stdin_document: dict, capture: bool = False) -> subprocess.Popen:
    """Start tag_manager.py as Stash does and hand it its stdin document."""
    # stderr is dropped: a long log could fill the pipe while the test only waits.
    output = subprocess.PIPE if capture else subprocess.DEVNULL
    process = subprocess.Popen([sys.executable, str(ROOT / "tag_manager.py")], stdin=subprocess.PIPE,
                               stdout=output, stderr=subprocess.DEVNULL, text=True)
    process.stdin.write(json.dumps(stdin_document))
    process.stdin.close()
    return process


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    """SIGKILL the process as soon as ``ready()`` holds; False when it finished first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if ready():
            process.kill()
            process.wait()
            return True
        time.sleep(0.002)
    process.kill()
    process.wait()
    raise AssertionError("the kill point was never reached")


def kill_after_delay(process: subprocess.Popen, delay_s: float) -> bool:
    """SIGKILL the process after ``delay_s`` seconds; False when it finished first."""
    started = time.monotonic()
    return kill_when(process, lambda: time.monotonic() - started >= delay_s)


def kill_then_rerun(stdin_document: dict, ready: Callable[[], bool]) -> tuple[bool, PluginRun]:
    """Kill one run at the chosen moment, then run the same job to completion."""
    killed = kill_when(start_plugin(stdin_document), ready)
    return killed, run_plugin(stdin_document)


def after_stash_requests(operation: str, n: int):
    """A kill condition factory: ready once the fake Stash answered ``n`` requests of ``operation``."""
    return lambda servers: (lambda: servers.stash.count(operation) >= n)
