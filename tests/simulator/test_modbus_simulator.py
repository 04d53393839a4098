"""The Modbus simulator: its command line as a subprocess, the wire bookkeeping, pacing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerType

from servomexd.model import ChannelId, ProtocolKind
from servomexd.protocol import modbus as mb
from servomexd.simulator.modbus import (
    ModbusSimulator,
    WireChunk,
    request_address,
    transactions,
)

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]


def test_transactions_split_requests_and_measure_idle() -> None:
    ms = 1_000_000
    req_a = mb.rtu_adu(1, bytes.fromhex("0400000046"))
    req_b = mb.rtu_adu(2, bytes.fromhex("0200000050"))
    chunks = [
        WireChunk(0, 1 * ms, True, req_a[:5]),
        WireChunk(1 * ms, 2 * ms, True, req_a[5:]),
        WireChunk(3 * ms, 4 * ms, False, b"reply-a"),
        WireChunk(60 * ms, 61 * ms, True, req_b + req_a),  # back to back in one chunk
        WireChunk(70 * ms, 71 * ms, False, b"reply-b"),
    ]
    out = transactions(chunks, ProtocolKind.MODBUS_RTU)
    assert [t.request for t in out] == [req_a, req_b, req_a]
    assert out[0].idle_before_s is None and out[0].reply == b"reply-a"
    assert out[1].idle_before_s == pytest.approx(0.056)  # 4 ms (reply delivered) -> 60 ms
    assert out[1].reply == b""
    assert out[2].idle_before_s == 0.0
    assert out[2].reply == b"reply-b"


def test_request_address() -> None:
    assert request_address(ProtocolKind.MODBUS_RTU, b"\x1e\x04") == 30
    assert request_address(ProtocolKind.MODBUS_ASCII, b":1E0400") == 30
    assert request_address(ProtocolKind.MODBUS_ASCII, b":zz") is None
    assert request_address(ProtocolKind.MODBUS_RTU, b"") is None


async def test_pacing_models_the_baud_rate() -> None:
    async with ModbusSimulator(addresses=[1], pace_baud=9600) as sim:
        client = AsyncModbusSerialClient(
            sim.link_path, framer=FramerType.RTU, reconnect_delay=0, retries=0, timeout=2
        )
        await client.connect()
        try:
            started = time.monotonic()
            reply = await client.read_input_registers(0, count=70, device_id=1)
            elapsed = time.monotonic() - started
        finally:
            client.close()
    assert not reply.isError()
    wire_time = (8 + 145) * 10 / 9600  # request + reply bytes, 10 bits each
    assert wire_time <= elapsed < wire_time + 0.1


async def _read(port: str, address: int) -> list[int]:
    client = AsyncModbusSerialClient(
        port, framer=FramerType.ASCII, reconnect_delay=0, retries=0, timeout=0.3
    )
    await client.connect()
    try:
        reply = await client.read_input_registers(0, count=70, device_id=address)
        return list(reply.registers)
    finally:
        client.close()


def test_command_line_serves_several_addresses(tmp_path: Path) -> None:
    link = tmp_path / "ttyMB"
    emit = tmp_path / "emit.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "servomexd", "simulate", "--protocol", "modbus_ascii",
         "--address", "5", "--address", "6", "--link", str(link), "--period", "5",
         "--emit-log", str(emit), "--seed", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready.startswith(f"ready {link} -> /dev/pts/"), ready
        registers = {a: asyncio.run(_read(str(link), a)) for a in (5, 6)}
        with pytest.raises(ModbusIOException):
            asyncio.run(_read(str(link), 7))  # no such slave on the bus: silence
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
    assert code == 0
    assert not os.path.lexists(link), "link removed on exit"
    logged = [json.loads(line) for line in emit.read_text().splitlines()]
    for address in (5, 6):
        regs = registers[address]
        entry = next(e for e in logged if e["address"] == address)
        assert mb.decode_float(regs[0], regs[1]) == pytest.approx(entry["values"]["I1"], abs=1e-5)
        # The simulator sends the display glyph; the decoded name is the canonical CO2.
        assert mb.registers_to_bytes(regs[16:19]) == b"CO\x82   "
        assert mb.decode_name(regs[16:19]) == "CO2"
        assert mb.decode_unit(regs[61:63])[1] == "mA"
    assert registers[5][:2] != registers[6][:2], "each address has its own values"
    assert ChannelId.I1.value in logged[0]["values"]


def test_command_line_refuses_bad_address(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "servomexd", "simulate", "--protocol", "modbus_rtu",
         "--address", "300", "--link", str(tmp_path / "x")],
        capture_output=True, text=True, cwd=ROOT, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "outside 1-247" in result.stderr
