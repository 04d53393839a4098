"""Helpers for the end-to-end tests: real simulator and daemon subprocesses.

The simulator's E1 channel ramps one step (0.001 mA) per frame, so every frame of a
run carries a distinct E1 value: a stored E1 row names the emitted frame it came from.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PYTHON = sys.executable
ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], bool], within: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        time.sleep(step)


class SimulatorProcess:
    """``servomexd simulate`` in its own process; its emit log says what it really sent."""

    def __init__(self, tmp: Path, name: str, args: Iterable[str]) -> None:
        self.emit_log = tmp / f"emit-{name}.jsonl"
        self.out_path = tmp / f"sim-{name}.log"
        self.stderr = self.out_path.open("wb")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "servomexd", "simulate", "--emit-log", str(self.emit_log), *args],
            stdout=self.stderr, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip

    def text(self) -> str:
        return self.out_path.read_text(errors="replace")

    def entries(self) -> list[dict[str, Any]]:
        if not self.emit_log.exists():
            return []
        out = []
        for line in self.emit_log.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out

    def frames(self) -> list[dict[str, Any]]:
        """Frames actually sent whole (a full pty buffer drops writes: not 'sent'; over
        TCP only what went to a connected client)."""
        return [e for e in self.entries() if "index" in e and not e.get("dropped")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


class Simulator(SimulatorProcess):
    """``servomexd simulate`` on a pty linked at ``link``, logging every line it sends."""

    def __init__(
        self, tmp: Path, name: str = "sim", *, period: float = 0.1, args: Iterable[str] = ()
    ) -> None:
        self.link = tmp / f"tty-{name}"
        super().__init__(tmp, name, ["--link", str(self.link), "--period", str(period), *args])
        wait_for(self.link.exists, 15, f"simulator link {self.link}")


def write_config(
    tmp: Path,
    devices: list[dict[str, Any]],
    *,
    sink: dict[str, Any] | None = None,
    postgres: dict[str, Any] | None = None,
    parquet: dict[str, Any] | None = None,
    flush_interval: float = 0.3,
    name: str = "servomexd.toml",
) -> Path:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return json.dumps(str(v))

    lines: list[str] = []
    for device in devices:
        lines.append("[[devices]]")
        lines += [f"{k} = {value(v)}" for k, v in device.items()]
    sink_table = {"type": "sqlite", "path": str(tmp / "samples.sqlite"),
                  "flush_interval": flush_interval, "shutdown_timeout": 3.0}  # fmt: skip
    sink_table.update(sink or {})
    lines.append("[sink]")
    lines += [f"{k} = {value(v)}" for k, v in sink_table.items()]
    for table, keys in (("postgres", postgres), ("parquet", parquet)):
        if keys:
            lines.append(f"[sink.{table}]")
            lines += [f"{k} = {value(v)}" for k, v in keys.items()]
    lines += ["[spool]", f"path = {value(str(tmp / 'spool'))}"]
    lines += ["[metrics]", 'listen = "127.0.0.1:0"']
    lines += ["[log]", 'level = "debug"', 'format = "journald"']
    path = tmp / name
    path.write_text("\n".join(lines) + "\n")
    return path


def check_config(config: Path) -> subprocess.CompletedProcess[str]:
    """``servomexd check-config --config PATH``, output captured as text."""
    return subprocess.run(
        [PYTHON, "-m", "servomexd", "check-config", "--config", str(config)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip


@dataclass
class DaemonProc:
    """``python -m servomexd run --config PATH`` with its output captured to a file."""

    config: Path
    env: dict[str, str] | None = None
    launcher: list[str] | None = None
    """Replaces ``python -m servomexd`` (a script that patches what cannot exist here)."""
    log_path: Path = field(init=False)
    proc: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        index = 0
        while (self.config.parent / f"daemon-{index}.log").exists():
            index += 1
        self.log_path = self.config.parent / f"daemon-{index}.log"
        self._log = self.log_path.open("wb")
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        env.update(self.env or {})
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            [*(self.launcher or [PYTHON, "-m", "servomexd"]), "run", "--config", str(self.config)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str) -> list[str]:
        return [line for line in self.text().splitlines() if f"event={name} " in line + " "]

    def wait_ready(self, within: float = 20) -> None:
        wait_for(
            lambda: bool(self.events("daemon.ready")) or self.proc.poll() is not None,
            within, "daemon.ready",
        )
        assert self.proc.poll() is None, f"daemon exited early:\n{self.text()}"

    @property
    def metrics_port(self) -> int:
        match = re.search(r"event=metrics\.listening .*port=(\d+)", self.text())
        assert match, self.text()
        return int(match.group(1))

    def scrape(self, path: str = "/metrics") -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, **labels: str) -> float | None:
        _, body = self.scrape()
        for line in body.splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                return float(value)
        return None

    def terminate(self, within: float = 10.0) -> tuple[int, float]:
        """SIGTERM; returns (exit status, seconds it took)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(within)
        self._log.close()
        return code, time.monotonic() - started

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        with contextlib.suppress(Exception):
            self._log.close()


# --- comparing what was sent with what was stored ------------------------------------------


def e1_key(value: float | None) -> int | None:
    return None if value is None else round(value * 1000)


def sqlite_rows(db: Path) -> list[tuple[Any, ...]]:
    """(device, channel, value, monotonic_ns, received_at, error) of every stored row."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(
            "SELECT device, channel, value, monotonic_ns, received_at, error FROM samples "
            "ORDER BY rowid"
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


@dataclass
class Comparison:
    stored_indexes: list[int]
    duplicates: dict[int, int]
    error_rows: int
    frame_rows: dict[int, int]

    @property
    def first(self) -> int:
        return min(self.stored_indexes)

    @property
    def last(self) -> int:
        return max(self.stored_indexes)


def compare(
    frames: list[dict[str, Any]], rows: list[tuple[Any, ...]], device: str
) -> Comparison:
    """Map each stored E1 row to the emitted frame with that E1 value."""
    by_e1: dict[int | None, int] = {}
    for frame in frames:
        key = e1_key(frame["values"]["E1"])
        assert key not in by_e1, "simulator E1 values are not unique in this run"
        by_e1[key] = frame["index"]
    counts: Counter[int] = Counter()
    per_frame: Counter[int] = Counter()
    errors = 0
    frame_of_ns: dict[int, int] = {}
    for dev, channel, value, mono, _received, error in rows:
        if dev != device:
            continue
        if error is not None:
            errors += 1
            continue
        if channel == "E1":
            index = by_e1.get(e1_key(value))
            assert index is not None, f"stored E1={value} was never sent"
            counts[index] += 1
            frame_of_ns[mono] = index
    for dev, _channel, _value, mono, _received, error in rows:
        if dev == device and error is None and mono in frame_of_ns:
            per_frame[frame_of_ns[mono]] += 1
    duplicates = {i: n for i, n in counts.items() if n > 1}
    return Comparison(sorted(counts), duplicates, errors, dict(per_frame))


def missing_between(
    comparison: Comparison, frames: list[dict[str, Any]], lo: int, hi: int
) -> list[int]:
    """Indexes of whole, valid frames sent in [lo, hi] that were not stored."""
    stored = set(comparison.stored_indexes)
    return [
        f["index"] for f in frames
        if lo <= f["index"] <= hi and not f.get("corrupt") and f["index"] not in stored
    ]


STUBBORN_RUN = textwrap.dedent(
    """
    import asyncio, sys
    from servomexd.acquisition import supervisor

    async def stubborn(self):
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # what a driver that loses the cancellation amounts to

    supervisor.DeviceSupervisor.run = stubborn
    from servomexd.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)
"""``python -c`` this instead of ``-m servomexd``: the real daemon, except that its device
supervisors ignore cancellation (a driver that loses the race cannot be made to on
demand). Used to show the stop deadline."""
