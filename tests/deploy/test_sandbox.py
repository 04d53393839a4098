"""The daemon records inside the restrictions servomexd.service imposes.

There is no systemd PID 1 on the build machines, so the unit cannot be started. What is
reproduced here is the part most likely to break a Python program: the system-call filter
(the unit's SystemCallFilter= lines expanded by `systemd-analyze syscall-filter`, denied
calls failing with SystemCallErrorNumber=), RestrictAddressFamilies=,
MemoryDenyWriteExecute= (pyarrow, asyncpg and pydantic-core must not need W+X memory),
NoNewPrivileges= and an empty capability set. The daemon then records a simulated
analyser into SQLite, Parquet and PostgreSQL and exits 0 on SIGTERM.
Not reproduced: mount namespaces (ProtectSystem=...), the device cgroup (DeviceAllow=) and
the servomexd user: the process keeps uid 0 (with no capability at all), because the
test venv's interpreter may live under /root, which no other user can reach.
"""

from __future__ import annotations

import asyncio
import errno
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from deploy_helpers import UNIT_DIR, installed_servomexd, parse_unit, require_tool, run

SYSTEM_PYTHON = "/usr/bin/python3"
LAUNCHER = Path(__file__).with_name("seccomp_exec.py")


def _syscall_groups(analyze: str) -> dict[str, list[str]]:
    """Every @group of `systemd-analyze syscall-filter` with its members (calls or @groups)."""
    result = run([analyze, "syscall-filter", "--no-pager"])
    assert result.returncode == 0, result.stderr
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in result.stdout.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith(" ") and current is not None:
            item = line.strip()
            if item and not item.startswith("#"):
                current.append(item)
        else:
            current = None  # the trailing "unlisted" sections are not groups
    return groups


def _expand(items: list[str], groups: dict[str, list[str]]) -> set[str]:
    names: set[str] = set()
    for item in items:
        names |= _expand(groups[item], groups) if item.startswith("@") else {item}
    return names


def sandbox_spec(analyze: str) -> dict[str, object]:
    """The restrictions of servomexd.service, read from the unit file."""
    entries = [(k, v) for _s, k, v in parse_unit((UNIT_DIR / "servomexd.service").read_text())]
    groups = _syscall_groups(analyze)
    allowed: set[str] = set()
    for i, line in enumerate(v for k, v in entries if k == "SystemCallFilter"):
        names = _expand(line.lstrip("~").split(), groups)
        if i == 0:
            assert not line.startswith("~"), "the first SystemCallFilter= is the allow list"
            allowed = names
        elif line.startswith("~"):
            allowed -= names
        else:
            allowed |= names
    (families,) = [v for k, v in entries if k == "RestrictAddressFamilies"]
    (errno_name,) = [v for k, v in entries if k == "SystemCallErrorNumber"]
    (mdwe,) = [v for k, v in entries if k == "MemoryDenyWriteExecute"]
    assert "execve" in allowed and "sched_setaffinity" not in allowed
    return {
        "allow": sorted(allowed),
        "errno": getattr(errno, errno_name),
        "families": [int(socket.AddressFamily[f]) for f in families.split()],
        "mdwe": mdwe == "yes",
    }


@pytest.fixture(scope="module")
def sandbox_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A scratch directory with the launcher and its spec."""
    analyze = require_tool("systemd-analyze", "apt-get install systemd")
    require_tool("setpriv", "apt-get install util-linux")
    probe = run([SYSTEM_PYTHON, "-c", "import seccomp"])
    if probe.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("python3-seccomp is not installed; CI must run this check")
        pytest.skip("python3-seccomp is not installed (apt-get install python3-seccomp)")
    path = tmp_path_factory.mktemp("sandbox")
    shutil.copy(LAUNCHER, path / LAUNCHER.name)
    (path / "spec.json").write_text(json.dumps(sandbox_spec(analyze)))
    yield path


def sandboxed(sandbox_dir: Path, argv: list[str]) -> list[str]:
    """argv with no capabilities (CapabilityBoundingSet=, AmbientCapabilities=),
    NoNewPrivileges= and the unit's seccomp filters."""
    launcher = [SYSTEM_PYTHON, str(sandbox_dir / LAUNCHER.name), str(sandbox_dir / "spec.json")]
    return [
        "setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all",
        "--no-new-privs", "--", *launcher, "--", *argv,
    ]  # fmt: skip


def test_the_sandbox_refuses_writable_executable_memory(sandbox_dir: Path) -> None:
    """Negative control: what MemoryDenyWriteExecute= forbids fails in here, not outside."""
    code = "import mmap; mmap.mmap(-1, 4096, prot=7)"  # PROT_READ|WRITE|EXEC, as a JIT does
    assert run([sys.executable, "-c", code]).returncode == 0
    inside = run(sandboxed(sandbox_dir, [sys.executable, "-c", code]), cwd=sandbox_dir)
    assert inside.returncode == 1 and "PermissionError" in inside.stderr, inside.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _written(port: int) -> float:
    status, body = _get(port, "/metrics")
    assert status == 200
    found = re.findall(r"^servomexd_samples_written_total\{[^}]*\} (\S+)$", body, re.M)
    return sum(float(v) for v in found)


def _count_postgres(dsn: str) -> int:
    import asyncpg

    async def count() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM samples"))
        finally:
            await conn.close()

    return asyncio.run(count())


def _count_parquet(directory: Path) -> int:
    import pyarrow.parquet as pq

    files = sorted(directory.glob("samples*.parquet"))
    assert files, list(directory.iterdir())
    return sum(pq.read_table(f).num_rows for f in files)


def record_in_sandbox(
    sandbox_dir: Path,
    config: Path,
    link: Path,
    recorded: Callable[[], None],
    env: dict[str, str] | None = None,
) -> str:
    """Run a simulated analyser on ``link`` and the sandboxed daemon on ``config`` (in the
    config's folder) until ``recorded()`` returns, then SIGTERM. Returns the daemon's
    output, checked for a clean exit and for no call the sandbox denied."""
    servomexd = str(installed_servomexd())
    simulator = subprocess.Popen(
        [servomexd, "simulate", "--link", str(link), "--period", "0.05"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    daemon: subprocess.Popen[str] | None = None
    try:
        _wait_for(link.exists, 15, "the simulated analyser")
        daemon = subprocess.Popen(
            sandboxed(sandbox_dir, [servomexd, "run", "--config", str(config)]),
            cwd=config.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        recorded()
        daemon.send_signal(signal.SIGTERM)
        output, _ = daemon.communicate(timeout=15)
        assert daemon.returncode == 0, output
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
        simulator.terminate()
        simulator.communicate(timeout=10)
    assert "Operation not permitted" not in output and "PermissionError" not in output, output
    return output


@pytest.mark.parametrize("sink", ["sqlite", "parquet", "postgres"])
def test_daemon_records_inside_the_sandbox(
    sink: str, sandbox_dir: Path, request: pytest.FixtureRequest
) -> None:
    work = sandbox_dir / sink
    work.mkdir()
    link = work / "analyser"
    port = _free_port()
    sink_table = f'type = "{sink}"\npath = "{work}/samples.{sink}"\nflush_interval = 0.2\n'
    if sink == "postgres":
        dsn = request.getfixturevalue("pg_dsn")
        sink_table = (
            f'type = "postgres"\nflush_interval = 0.2\n\n[sink.postgres]\n'
            f"dsn = {json.dumps(dsn)}\ncreate_table = true\n"
        )
    config = work / "servomexd.toml"
    config.write_text(
        f'[[devices]]\nname = "sandboxed"\nport = "{link}"\n\n[sink]\n{sink_table}\n'
        f'[spool]\npath = "{work}/spool"\n\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
    )

    def recorded() -> None:
        _wait_for(lambda: _get(port, "/readyz")[0] == 200, 30, "/readyz to answer 200")
        _wait_for(lambda: _written(port) >= 50, 30, "samples written to the sink")
        _status, metrics = _get(port, "/metrics")
        # The process collector works under the sandbox (CPU and memory panels).
        assert re.search(r"^process_cpu_seconds_total \S+$", metrics, re.M), metrics[:2000]
        assert re.search(r"^process_resident_memory_bytes \S+$", metrics, re.M)

    output = record_in_sandbox(sandbox_dir, config, link, recorded)
    if sink == "sqlite":
        with sqlite3.connect(work / "samples.sqlite") as db:
            rows = db.execute("SELECT count(*) FROM samples").fetchone()[0]
    elif sink == "parquet":
        rows = _count_parquet(work)
    else:
        rows = _count_postgres(dsn)
    assert rows >= 50, output
