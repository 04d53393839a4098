"""Live reload on SIGHUP (``systemctl reload``): devices added or removed alone, the sink
swapped mid-stream exactly once across the two, an invalid file keeps the old config."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon_harness import (
    DaemonProc,
    Simulator,
    compare,
    missing_between,
    sqlite_rows,
    wait_for,
    write_config,
)
from pg import run_async

pytestmark = [pytest.mark.e2e]
CHANNELS = 5


@pytest.fixture
def procs() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for proc in reversed(started):
        if isinstance(proc, DaemonProc):
            proc.cleanup()
        else:
            proc.stop()


def device(sim: Simulator, name: str) -> dict[str, object]:
    return {"name": name, "port": str(sim.link), "silence_timeout": 2.0}


def stored_frames(db: Path, sim: Simulator, name: str) -> list[int]:
    return compare(sim.frames(), sqlite_rows(db), name).stored_indexes


def hup(daemon: DaemonProc, event: str, count: int) -> None:
    os.kill(daemon.proc.pid, signal.SIGHUP)
    wait_for(lambda: len(daemon.events(event)) >= count, 15, event)


def holds(pid: int, link: Path) -> bool:
    """The process has the pty behind ``link`` open."""
    target = os.path.realpath(link)
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
        except OSError:
            continue
    return False


def test_add_then_remove_a_device_while_another_streams(
    tmp_path: Path, procs: list[Any]
) -> None:
    one, two = Simulator(tmp_path, "one", period=0.05), Simulator(tmp_path, "two", period=0.05)
    procs += [one, two]
    notify = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.settimeout(0.2)
    config = write_config(tmp_path, [device(one, "an-1")])
    daemon = DaemonProc(config, env={"NOTIFY_SOCKET": str(notify)})
    procs.append(daemon)
    db = tmp_path / "samples.sqlite"
    daemon.wait_ready()
    wait_for(lambda: len(stored_frames(db, one, "an-1")) >= 10, 20, "an-1 streaming")

    write_config(tmp_path, [device(one, "an-1"), device(two, "an-2")])
    hup(daemon, "daemon.reloaded", 1)
    wait_for(lambda: len(stored_frames(db, two, "an-2")) >= 10, 20, "an-2 streaming")
    assert holds(daemon.proc.pid, two.link)

    write_config(tmp_path, [device(one, "an-1")])
    hup(daemon, "daemon.reloaded", 2)
    wait_for(lambda: not holds(daemon.proc.pid, two.link), 5, "an-2's port released")
    wait_for(lambda: daemon.metric("servomexd_link_up", device="an-2") is None, 5,
             "an-2's series removed")  # fmt: skip
    status, body = daemon.scrape("/readyz")
    assert status == 200 and json.loads(body)["devices"] == {"an-1": "up"}
    time.sleep(0.5)
    code, _ = daemon.terminate()
    assert code == 0
    messages = []
    while True:
        try:
            messages.append(listener.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            break
    listener.close()
    one.stop()
    result = compare(one.frames(), sqlite_rows(db), "an-1")
    # an-1 never missed a frame across both reloads, and none twice
    assert missing_between(result, one.frames(), result.first, result.last) == []
    assert result.duplicates == {}
    reloads = [i for i, m in enumerate(messages) if m.startswith("RELOADING=1")]
    assert len(reloads) == 2
    for index in reloads:
        assert "MONOTONIC_USEC=" in messages[index]
        assert messages[index + 1].startswith("READY=1\nSTATUS=reloaded: devices ")
    assert "devices added an-2" in messages[reloads[0] + 1]
    assert "devices removed an-2" in messages[reloads[1] + 1]


def test_invalid_reload_keeps_the_running_config(tmp_path: Path, procs: list[Any]) -> None:
    sim = Simulator(tmp_path, period=0.05)
    procs.append(sim)
    config = write_config(tmp_path, [device(sim, "an-1")])
    good = config.read_text()
    daemon = DaemonProc(config)
    procs.append(daemon)
    db = tmp_path / "samples.sqlite"
    daemon.wait_ready()
    config.write_text(good.replace("silence_timeout = 2.0", "silence_timeout = -1")
                      .replace("flush_interval = 0.3", "flush_intervall = 0.3"))  # fmt: skip
    hup(daemon, "daemon.reload_failed", 1)
    line = daemon.events("daemon.reload_failed")[0]
    assert line.startswith("<3>")
    assert "silence_timeout" in line and "flush_intervall" in line  # every bad field
    status, body = daemon.scrape("/readyz")
    assert status == 503
    assert any(p.startswith("last reload failed") for p in json.loads(body)["problems"])
    before = len(stored_frames(db, sim, "an-1"))
    wait_for(lambda: len(stored_frames(db, sim, "an-1")) >= before + 10, 10,
             "the old configuration keeps recording")  # fmt: skip
    config.write_text(good)
    hup(daemon, "daemon.reloaded", 1)
    wait_for(lambda: daemon.scrape("/readyz")[0] == 200, 10, "ready again")
    assert daemon.terminate()[0] == 0


@pytest.mark.postgres
def test_sink_sqlite_to_postgres_mid_stream_exactly_once(
    tmp_path: Path, procs: list[Any], pg_dsn: str
) -> None:
    import asyncpg

    sim = Simulator(tmp_path, period=0.02)
    procs.append(sim)
    config = write_config(tmp_path, [device(sim, "an-1")])
    daemon = DaemonProc(config)
    procs.append(daemon)
    db = tmp_path / "samples.sqlite"
    daemon.wait_ready()
    wait_for(lambda: len(stored_frames(db, sim, "an-1")) >= 30, 20, "frames in SQLite")
    write_config(tmp_path, [device(sim, "an-1")], sink={"type": "postgres"},
                 postgres={"dsn": pg_dsn, "create_table": True})  # fmt: skip
    hup(daemon, "daemon.reloaded", 1)
    assert daemon.events("sink.switched")

    async def pg_rows() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(pg_dsn)
        try:
            rows = await conn.fetch(
                "SELECT device, channel, value, monotonic_ns, received_at, error FROM samples"
            )
        except asyncpg.UndefinedTableError:
            return []
        finally:
            await conn.close()
        return [tuple(r) for r in rows]

    wait_for(lambda: len(run_async(pg_rows)) >= 30 * CHANNELS, 20, "frames in PostgreSQL")
    code, _ = daemon.terminate()
    assert code == 0
    sim.stop()
    frames = sim.frames()
    in_sqlite = compare(frames, sqlite_rows(db), "an-1")
    in_pg = compare(frames, run_async(pg_rows), "an-1")
    both = sorted(in_sqlite.stored_indexes + in_pg.stored_indexes)
    assert len(both) == len(set(both)), "a frame stored in both sinks"
    assert in_sqlite.duplicates == {} and in_pg.duplicates == {}
    assert max(in_sqlite.stored_indexes) < min(in_pg.stored_indexes)  # in order
    combined = compare(frames, sqlite_rows(db) + run_async(pg_rows), "an-1")
    assert missing_between(combined, frames, combined.first, combined.last) == []


def test_metrics_listener_and_log_format_change_in_place(
    tmp_path: Path, procs: list[Any]
) -> None:
    from pg import free_port

    sim = Simulator(tmp_path, period=0.05)
    procs.append(sim)
    config = write_config(tmp_path, [device(sim, "an-1")])
    daemon = DaemonProc(config)
    procs.append(daemon)
    daemon.wait_ready()
    old_port = daemon.metrics_port
    new_port = free_port()
    config.write_text(
        config.read_text()
        .replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{new_port}"')
        .replace('format = "journald"', 'format = "json"')
    )
    os.kill(daemon.proc.pid, signal.SIGHUP)
    wait_for(lambda: '"event": "daemon.reloaded"' in daemon.text(), 15, "reloaded (as JSON)")
    import urllib.error
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{new_port}/metrics", timeout=5) as answer:
        assert answer.status == 200 and b"servomexd_frames_total" in answer.read()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{old_port}/metrics", timeout=2)
    reloaded = next(line for line in daemon.text().splitlines() if "daemon.reloaded" in line)
    assert "metrics listener moved" in reloaded and "logging changed" in reloaded
    assert daemon.terminate()[0] == 0
