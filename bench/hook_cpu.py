"""CPU time (user + sys) of each ``cache_hook`` process, measured with ``bench_hook``'s own harness.

    .venv/bin/python bench/hook_cpu.py [--hooks 30] [--off-hooks 15]

Wall times of short processes swing with the machine's load; the CPU a hook process uses does much
less, so this is the figure to compare two versions of the plugin on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import resource
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_hook  # noqa: E402 - after the path set-up

_cpu: list[float] = []
_run = subprocess.run


def measured_run(*args, **kwargs):
    """``subprocess.run`` that records the child's CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = _run(*args, **kwargs)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    _cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return done


def main() -> int:
    """Run bench_hook's hook measurements (no watch part) and print the median CPU per hook process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hooks", type=int, default=30)
    parser.add_argument("--off-hooks", type=int, default=15)
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    timed = bench_hook.bench_hooks

    def bench_hooks(fake, db, plugin_dir, count, status, env):
        start = len(_cpu)
        times = timed(fake, db, plugin_dir, count, status, env)
        results[status] = _cpu[start + 1:]  # the warm-up run is not counted
        return times

    bench_hook.subprocess.run = measured_run
    bench_hook.bench_hooks = bench_hooks
    sys.argv = ["bench_hook.py", "--scenes", "1000", "--hooks", str(args.hooks), "--off-hooks", str(args.off_hooks),
                "--watch-seconds", "0"]
    with contextlib.redirect_stdout(io.StringIO()):
        bench_hook.main()
    for status, values in results.items():
        print(f"liveCache {'on' if status == 'applied' else 'off'}: median CPU {statistics.median(values) * 1000:.0f} ms "
              f"per hook process ({len(values)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
