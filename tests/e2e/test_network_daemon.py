"""The daemon against network-attached analysers, end to end on loopback.

``servomexd simulate --listen/--rfc2217`` plays the serial device server (or the
Modbus TCP gateway) in its own process, ``servomexd run`` reads it into SQLite, and
the stored rows are compared with the simulator's emit log: every frame sent while
a client was connected stored exactly once.
"""

from __future__ import annotations

import math
import re
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_harness import (
    DaemonProc,
    SimulatorProcess,
    check_config,
    compare,
    missing_between,
    sqlite_rows,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]


class NetSimulator(SimulatorProcess):
    """``servomexd simulate`` serving over TCP; ``url`` is what goes into ``port``."""

    def __init__(self, tmp: Path, name: str, *args: str, period: float = 0.1) -> None:
        super().__init__(tmp, name, ["--period", str(period), *args])
        wait_for(lambda: self._ready() is not None, 15, f"simulator {name} ready")
        url = self._ready()
        assert url is not None
        self.url = url

    def _ready(self) -> str | None:
        match = re.search(r"^ready (\S+://\S+) ->", self.out_path.read_text(), re.MULTILINE)
        return match.group(1) if match else None


def stored_indexes(db: Path, frames: list[dict[str, Any]], device: str) -> int:
    rows = sqlite_rows(db)
    return len(compare(frames, rows, device).stored_indexes) if rows else 0


def run_continuous(
    tmp_path: Path, sim: NetSimulator, device: dict[str, Any], until: int, within: float = 60
) -> tuple[DaemonProc, list[dict[str, Any]]]:
    daemon = DaemonProc(write_config(tmp_path, [device]))
    daemon.wait_ready()
    db = tmp_path / "samples.sqlite"
    wait_for(
        lambda: stored_indexes(db, sim.frames(), device["name"]) >= until,
        within,
        f"{until} stored frames",
    )
    code, _ = daemon.terminate()
    assert code == 0, daemon.text()
    return daemon, sim.frames()


def test_raw_tcp_exactly_once_through_a_server_restart(tmp_path: Path) -> None:
    sim = NetSimulator(
        tmp_path, "raw", "--listen", "127.0.0.1:0", "--unplug-after", "3", "--replug-after", "2"
    )
    try:
        device = {"name": "stack-3", "port": sim.url, "silence_timeout": 2.0}
        daemon, frames = run_continuous(tmp_path, sim, device, until=60)
        events = sim.entries()
    finally:
        sim.stop()
    result = compare(frames, sqlite_rows(tmp_path / "samples.sqlite"), "stack-3")
    assert result.duplicates == {}
    assert set(result.frame_rows.values()) == {5}, "every stored frame has its five rows"
    # TCP delivers what was written before the server closed, and the simulator writes
    # nothing while no client is connected: no frame may be missing, even across the restart.
    assert missing_between(result, frames, result.first, result.last) == []
    assert [e["event"] for e in events if e.get("event") == "unplug"] == ["unplug"]
    assert sum(1 for e in events if e.get("event") == "connect") >= 2
    downs = daemon.events("device.link_down")
    assert any("refused" in line for line in downs), downs  # while the server was away
    # Reconnected within the backoff bound once the server was back: the first attempt
    # after the replug comes at most one backoff delay (the longest one logged) later.
    delays = [float(m) for line in downs for m in re.findall(r"retry_in_s=([\d.]+)", line)]
    assert delays, downs
    replug = next(e["at"] for e in events if e.get("event") == "replug")
    reconnect = next(e["at"] for e in events if e.get("event") == "connect" and e["at"] > replug)
    assert reconnect - replug < max(delays) + 1.0, (reconnect - replug, delays)


def test_rfc2217_sets_the_line_and_stores_exactly_once(tmp_path: Path) -> None:
    sim = NetSimulator(tmp_path, "rfc", "--rfc2217", "127.0.0.1:0")
    try:
        assert sim.url.startswith("rfc2217://127.0.0.1:")
        device = {"name": "stack-4", "port": sim.url, "baudrate": 9600}
        _, frames = run_continuous(tmp_path, sim, device, until=25)
        events = sim.entries()
    finally:
        sim.stop()
    settings = [e for e in events if e.get("event") == "rfc2217_settings"]
    assert settings and settings[-1]["baudrate"] == 9600
    assert "rfc2217_settings" in sim.text(), "the simulator logs what the client asked for"
    result = compare(frames, sqlite_rows(tmp_path / "samples.sqlite"), "stack-4")
    assert result.duplicates == {}
    assert missing_between(result, frames, result.first, result.last) == []


def test_half_open_connection_is_dropped_after_silence_timeout(tmp_path: Path) -> None:
    sim = NetSimulator(tmp_path, "stall", "--listen", "127.0.0.1:0", "--stall-after", "2")
    try:
        device = {"name": "stack-5", "port": sim.url, "silence_timeout": 1.5}
        daemon = DaemonProc(write_config(tmp_path, [device]))
        daemon.wait_ready()
        wait_for(
            lambda: sum(1 for e in sim.entries() if e.get("event") == "connect") >= 2,
            30,
            "a reconnect after the stall",
        )
        db = tmp_path / "samples.sqlite"
        after = max(e["index"] for e in sim.entries() if e.get("stalled"))
        wait_for(
            lambda: any(
                i > after for i in compare(sim.frames(), sqlite_rows(db), "stack-5").stored_indexes
            ),
            30,
            "frames stored after the reconnect",
        )
        code, _ = daemon.terminate()
        assert code == 0, daemon.text()
    finally:
        sim.stop()
    downs = daemon.events("device.link_down")
    assert any("silence_timeout" in line for line in downs), downs


def modbus_polls(db: Path, device: str) -> dict[int, dict[str, float]]:
    if not db.exists():
        return {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT monotonic_ns, channel, value, protocol FROM samples "
            "WHERE device = ? AND error IS NULL",
            (device,),
        ).fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()
    out: dict[int, dict[str, float]] = {}
    for mono, channel, value, protocol in rows:
        out.setdefault(mono, {})[channel] = value
        out[mono]["protocol"] = protocol
    return out


@pytest.mark.parametrize(
    ("protocol", "serve"),
    [("modbus_rtu", "--listen"), ("modbus_tcp", "--listen"), ("modbus_ascii", "--rfc2217")],
)
def test_modbus_over_the_network_stores_what_was_served(
    tmp_path: Path, protocol: str, serve: str
) -> None:
    sim = NetSimulator(
        tmp_path, protocol, serve, "127.0.0.1:0", "--protocol", protocol,
        "--address", "30", "--address", "31", period=0.2,
    )  # fmt: skip
    db = tmp_path / "samples.sqlite"
    try:
        scheme = "socket" if serve == "--listen" else "rfc2217"
        assert sim.url.startswith(f"{scheme}://127.0.0.1:")
        devices = [
            {
                "name": f"kiln{address}",
                "port": sim.url,
                "protocol": protocol,
                "address": address,
                "poll_interval": 0.25,
                "inter_request_delay": 0.02,
                "request_timeout": 0.5,
                "silence_timeout": 5.0,
            }
            for address in (30, 31)
        ]
        daemon = DaemonProc(write_config(tmp_path, devices))
        daemon.wait_ready()
        wait_for(
            lambda: all(len(modbus_polls(db, f"kiln{a}")) >= 6 for a in (30, 31)),
            40,
            "6 stored polls per device",
        )
        code, _ = daemon.terminate()
        assert code == 0, daemon.text()
        served = sim.entries()
    finally:
        sim.stop()
    for address in (30, 31):
        values = [e["values"] for e in served if e.get("address") == address]
        polls = modbus_polls(db, f"kiln{address}")
        assert len(polls) >= 6
        for poll in polls.values():
            assert poll["protocol"] == protocol
            assert any(
                all(math.isclose(poll[ch], v[ch], abs_tol=1e-6) for ch in ("I1", "I2", "I3"))
                for v in values
            ), (address, poll)
    # One connection for both devices: the daemon opened the endpoint once.
    assert len(daemon.events("modbus.port_opened")) == 1


def test_check_config_modbus_tcp_with_a_device_path_exits_78(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, [{"name": "kiln-d", "port": "/dev/ttyUSB0", "protocol": "modbus_tcp"}]
    )
    result = check_config(config)
    assert result.returncode == 78, result
    assert "devices[0].protocol" in result.stderr and "socket://HOST:PORT" in result.stderr


def test_garbage_over_tcp_is_counted_and_stored_as_error_rows(tmp_path: Path) -> None:
    sim = NetSimulator(
        tmp_path, "noisy", "--listen", "127.0.0.1:0", "--noise-every", "4", "--corrupt-every", "5"
    )
    try:
        device = {"name": "stack-6", "port": sim.url, "baudrate": 9600}
        daemon, frames = run_continuous(tmp_path, sim, device, until=20)
        entries = sim.entries()
    finally:
        sim.stop()
    rows = sqlite_rows(tmp_path / "samples.sqlite")
    errors = [r[5] for r in rows if r[0] == "stack-6" and r[5] is not None]
    noise_sent = sum(1 for e in entries if "noise" in e and not e.get("dropped"))
    corrupt_sent = sum(1 for f in frames if f.get("corrupt"))
    assert noise_sent and corrupt_sent
    # One error row per bad line, give or take the lines sent after the daemon stopped.
    assert noise_sent + corrupt_sent - 3 <= len(errors) <= noise_sent + corrupt_sent
    result = compare([f for f in frames if not f.get("corrupt")], rows, "stack-6")
    assert result.duplicates == {}
    assert daemon.proc.returncode == 0
    # A baud rate cannot apply on socket://: the daemon says so once at start.
    ignored = daemon.events("config.setting_ignored")
    assert len(ignored) == 1 and "baudrate ignored on socket://" in ignored[0]
