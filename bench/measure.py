"""What the daemon benchmarks share: a process's CPU and RSS read from /proc, percentiles,
the SQLite sink tables of their configs, and starting the simulators and the daemon.

Imported by bench_daemon.py, bench_network.py and bench_fleet.py (run as scripts, so
this folder is on ``sys.path``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (``VmRSS`` of ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile by rank (no interpolation); ``values`` must not be empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sqlite_tables(tmp: Path, flush_interval: float) -> list[str]:
    """The config lines after the devices: SQLite sink, spool, metrics on a free port, logs."""
    return [
        "[sink]", f'path = "{tmp}/samples.sqlite"', f"flush_interval = {flush_interval}",
        "[spool]", f'path = "{tmp}/spool"',
        "[metrics]", 'listen = "127.0.0.1:0"',
        "[log]", 'level = "info"', 'format = "journald"',
    ]  # fmt: skip


def start_simulators(script: str, *args: object) -> subprocess.Popen[bytes]:
    """The simulators' process: ``script`` run by this interpreter from the repository."""
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=ROOT)


def wait_simulators(
    sims: subprocess.Popen[bytes], ready: Callable[[], bool], within: float
) -> None:
    """Wait until ``ready()``; exit the benchmark if the simulators die or take too long."""
    deadline = time.monotonic() + within
    while not ready():
        if time.monotonic() > deadline or sims.poll() is not None:
            raise SystemExit("simulators did not start")
        time.sleep(0.1)


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``servomexd run --config PATH`` from the repository, its output into ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "servomexd", "run", "--config", str(config)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
