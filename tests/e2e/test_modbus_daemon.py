"""The daemon in Modbus mode end to end: simulator subprocess (two RTU slaves on one
relayed pty pair, an RS485 multidrop bus) -> ``servomexd run`` -> real SQLite.

Checks what a plant engineer would look at: every poll stored as the same long-format
rows continuous mode gives, requested_at and latency_s filled, names decoded through the
display charset, values exactly what each slave served.
"""

from __future__ import annotations

import math
import sqlite3
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_harness import DaemonProc, Simulator, wait_for, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CHANNELS = ["I1", "I2", "I3", "E1", "E2"]


def rows(db: Path) -> list[dict[str, Any]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM samples ORDER BY rowid")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def polls(stored: list[dict[str, Any]], device: str) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for row in stored:
        if row["device"] == device and row["error"] is None:
            out.setdefault(row["monotonic_ns"], []).append(row)
    return out


def test_modbus_multidrop_into_sqlite(tmp_path: Path) -> None:
    sim = Simulator(
        tmp_path,
        "bus",
        period=0.2,
        args=["--protocol", "modbus_rtu", "--address", "30", "--address", "31", "--seed", "5"],
    )
    daemon: DaemonProc | None = None
    try:
        devices = [
            {
                "name": f"ox{address}",
                "port": str(sim.link),
                "protocol": "modbus_rtu",
                "address": address,
                "poll_interval": 0.25,
                "inter_request_delay": 0.02,
                "request_timeout": 0.5,
                "silence_timeout": 5.0,
            }
            for address in (30, 31)
        ]
        config = write_config(tmp_path, devices)
        daemon = DaemonProc(config)
        daemon.wait_ready()
        db = tmp_path / "samples.sqlite"
        wait_for(
            lambda: all(len(polls(rows(db), f"ox{a}")) >= 5 for a in (30, 31)),
            40,
            "5 stored polls per slave",
        )
        code, _ = daemon.terminate()
        assert code == 0, daemon.text()
        stored = rows(db)
        emitted = sim.entries()
    finally:
        if daemon is not None:
            daemon.cleanup()
        sim.stop()

    assert not [r for r in stored if r["error"] is not None], "no rejected polls"
    for address in (30, 31):
        device = f"ox{address}"
        served = [e["values"] for e in emitted if e["address"] == address]
        assert served, f"simulator logged values for {address}"
        by_poll = polls(stored, device)
        for poll_rows in by_poll.values():
            # The same long-format rows as continuous mode: one per channel, E1/E2 included.
            assert [r["channel"] for r in poll_rows] == CHANNELS
            assert {r["protocol"] for r in poll_rows} == {"modbus_rtu"}
            names = [r["name"] for r in poll_rows]
            # Sent with the display glyph 0x82, stored as the canonical ASCII name.
            assert names == ["Oxygen", "CO", "CO2", None, None]
            assert [r["unit"] for r in poll_rows] == ["%", "%", "%", "mA", "mA"]
            assert {r["ok"] for r in poll_rows} == {"true"}
            # requested_at / latency_s filled on every Modbus row, consistently.
            for row in poll_rows:
                assert row["latency_s"] is not None and 0 < float(row["latency_s"]) < 1.0
                requested = datetime.fromisoformat(row["requested_at"])
                received = datetime.fromisoformat(row["received_at"])
                assert requested <= received
            # Values are one set this very slave served (not its neighbour's).
            values = {r["channel"]: r["value"] for r in poll_rows}
            assert any(
                all(
                    math.isclose(values[ch], entry[ch], abs_tol=1e-6)
                    for ch in ("I1", "I2", "I3")
                )
                for entry in served
            ), (device, values)
    # The two slaves serve different readings (seeded per address): rows are not mixed up.
    # A whole poll's I1/I2/I3 is compared: one channel alone (3 decimals) may coincide.
    readings = {
        a: {tuple(r["value"] for r in p[:3]) for p in polls(stored, f"ox{a}").values()}
        for a in (30, 31)
    }
    assert readings[30].isdisjoint(readings[31])


def test_auto_device_detects_modbus_ascii(tmp_path: Path) -> None:
    sim = Simulator(tmp_path, "ascii", period=0.2, args=["--protocol", "modbus_ascii",
                                                          "--address", "12"])  # fmt: skip
    daemon: DaemonProc | None = None
    try:
        device = {
            "name": "auto12",
            "port": str(sim.link),
            "protocol": "auto",
            "address": 12,
            "poll_interval": 0.2,
            "request_timeout": 0.3,
            "silence_timeout": 10.0,
        }
        daemon = DaemonProc(write_config(tmp_path, [device]))
        daemon.wait_ready()
        db = tmp_path / "samples.sqlite"
        wait_for(lambda: len(polls(rows(db), "auto12")) >= 3, 40, "3 stored polls")
        code, _ = daemon.terminate()
        assert code == 0, daemon.text()
        detected = daemon.events("auto.detected")
    finally:
        if daemon is not None:
            daemon.cleanup()
        sim.stop()
    assert detected and "protocol=modbus_ascii" in detected[0]
    stored = [r for r in rows(db) if r["device"] == "auto12"]
    assert {r["protocol"] for r in stored} == {"modbus_ascii"}
    assert all(r["latency_s"] is not None and r["requested_at"] for r in stored)
