"""servomexd inside the booted container: install, configure, simulate, observe.

Everything is observed the way an operator would: ``systemctl show`` properties, the
journal as JSON, files under /var/lib/servomexd. Simulated analysers run as the service
user in transient units (``systemd-run -p User=servomexd``) because a pseudo-terminal
belongs to whoever opens it, and the unmodified unit reaches it through DevicePolicy=closed
(which allows char-pts).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from container import Container

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from daemon_harness import wait_for

VENV = "/opt/servomexd/venv"
SERVOMEXD = f"{VENV}/bin/servomexd"
SIM_DIR = "/run/analyser-sim"
RAW_PRIORITY = re.compile(r"^<[0-7]>")
SHOW_PROPS = ("ActiveState", "SubState", "MainPID", "NRestarts", "Result", "ExecMainStatus",
              "ExecMainCode", "StatusText")  # fmt: skip


def install(box: Container) -> str:
    """deploy/install.sh from the bound source tree, offline from the bound wheelhouse."""
    wheel = sorted(p.name for p in box.path("/wheelhouse").glob("servomexd-*.whl"))
    assert len(wheel) == 1, wheel
    proc = box.run(
        "/src/deploy/install.sh", "--wheel", f"/wheelhouse/{wheel[0]}", "--extras", "postgres",
        env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheelhouse"}, timeout=300,
    )  # fmt: skip
    return proc.stdout + proc.stderr


def put(box: Container, path: str, text: str, mode: str = "0640", group: str = "servomexd") -> None:
    """Write a file inside the container with an owner the service can read."""
    box.run("install", "-D", "-m", mode, "-o", "root", "-g", group, "/dev/stdin", path,
            input=text)  # fmt: skip


def config(
    devices: Iterable[tuple[str, str]],
    *,
    state: str = "/var/lib/servomexd",
    metrics_port: int = 9723,
    sink: str = "",
) -> str:
    """A servomexd.toml: (name, port) per continuous analyser, SQLite in ``state``."""
    lines = []
    for name, port in devices:
        lines += ["[[devices]]", f'name = "{name}"', f'port = "{port}"', "silence_timeout = 3.0"]
    lines += sink.splitlines() or [
        "[sink]", 'type = "sqlite"', f'path = "{state}/samples.sqlite"', "flush_interval = 0.3",
    ]  # fmt: skip
    lines += ["[spool]", f'path = "{state}/spool"']
    lines += ["[metrics]", f'listen = "127.0.0.1:{metrics_port}"']
    return "\n".join(lines) + "\n"


class Simulator:
    """``servomexd simulate`` as the service user, on a pty linked at /run/analyser-sim/NAME."""

    def __init__(self, box: Container, name: str, period: float = 0.2) -> None:
        self.box = box
        self.name = name
        self.unit = f"analyser-sim-{name}"
        self.link = f"{SIM_DIR}/{name}"
        self.emit_log = f"{SIM_DIR}/{name}.jsonl"
        box.run("install", "-d", "-o", "servomexd", "-g", "servomexd", SIM_DIR)
        box.run(
            "systemd-run", "--quiet", f"--unit={self.unit}", "-p", "User=servomexd",
            "-p", "Group=servomexd", SERVOMEXD, "simulate", "--link", self.link,
            "--period", str(period), "--emit-log", self.emit_log,
        )  # fmt: skip
        # lexists: the link points at /dev/pts/N inside, which means nothing on the host.
        wait_for(lambda: box.path(self.link).is_symlink(), 30, f"simulator link {self.link}")

    def frames(self) -> list[dict[str, Any]]:
        """Frames sent whole (see tests/e2e/daemon_harness.py)."""
        out = []
        path = self.box.path(self.emit_log)
        text = path.read_text() if path.exists() else ""
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "index" in entry and not entry.get("dropped"):
                out.append(entry)
        return out

    def stop(self) -> None:
        self.box.run("systemctl", "stop", self.unit, check=False)


_ROWS = """
import json, sqlite3, sys
try:
    conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=10)
    rows = conn.execute("SELECT device, channel, value, monotonic_ns, received_at, error "
                        "FROM samples ORDER BY rowid").fetchall()
except sqlite3.OperationalError:
    rows = []
print(json.dumps(rows))
"""


def sqlite_rows(box: Container, db: str) -> list[tuple[Any, ...]]:
    """The samples table, read inside as the service user (never leaves root-owned -shm)."""
    proc = box.run("runuser", "-u", "servomexd", "--", f"{VENV}/bin/python", "-c", _ROWS, db)
    return [tuple(r) for r in json.loads(proc.stdout)]


def spool_batches(box: Container, spool_dir: str) -> int:
    script = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=10); "
              "print(c.execute('SELECT count(*) FROM batches').fetchone()[0])")  # fmt: skip
    proc = box.run("runuser", "-u", "servomexd", "--", f"{VENV}/bin/python", "-c", script,
                   f"{spool_dir}/spool.sqlite")  # fmt: skip
    return int(proc.stdout)


def show(box: Container, unit: str) -> dict[str, str]:
    proc = box.run("systemctl", "show", unit, *(f"--property={p}" for p in SHOW_PROPS))
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)


def cursor(box: Container) -> str:
    """The journal's current end, to read only what comes after it."""
    box.run("journalctl", "--sync")
    proc = box.run("journalctl", "-n", "1", "-o", "json", "--no-pager")
    return str(json.loads(proc.stdout.splitlines()[-1])["__CURSOR"])


def journal(
    box: Container, unit: str | None = None, after: str | None = None
) -> list[dict[str, Any]]:
    """Journal entries as JSON (every field), optionally of one unit and after a cursor."""
    box.run("journalctl", "--sync")
    argv = ["journalctl", "-o", "json", "--no-pager"]
    if unit:
        argv += ["-u", unit]
    if after:
        argv.append(f"--after-cursor={after}")
    proc = box.run(*argv)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def messages(entries: list[dict[str, Any]]) -> list[str]:
    out = []
    for entry in entries:
        message = entry.get("MESSAGE")
        if isinstance(message, list):  # journald gives non-UTF-8 messages as byte arrays
            message = bytes(message).decode(errors="replace")
        if message is not None:
            out.append(str(message))
    return out


def wait_until(check: Callable[[], bool], within: float, what: str) -> None:
    wait_for(check, within, what, step=0.3)


def service_started(box: Container, unit: str) -> float:
    """``systemctl start`` (blocks until READY=1 under Type=notify); returns seconds taken."""
    started = time.monotonic()
    box.run("systemctl", "start", unit, timeout=120)
    return time.monotonic() - started
