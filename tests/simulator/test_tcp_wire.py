"""The simulated device server: one client, unplug/replug, stall, and the CLI's choices."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from servomexd.model import ProtocolKind
from servomexd.simulator.continuous import ContinuousSimulator
from servomexd.simulator.modbus import request_address
from servomexd.simulator.tcp import TcpWire, split_host_port

pytestmark = pytest.mark.timeout(30)
ROOT = Path(__file__).resolve().parents[2]


async def until(predicate: Any, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110  # state owned by the wire's callbacks
            await asyncio.sleep(0.01)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


def test_split_host_port() -> None:
    assert split_host_port("127.0.0.1:4001") == ("127.0.0.1", 4001)
    assert split_host_port("[::1]:0") == ("::1", 0)
    with pytest.raises(ValueError, match="HOST:PORT"):
        split_host_port("4001")


async def test_one_client_at_a_time_and_writes_reach_it() -> None:
    events: list[dict[str, Any]] = []
    wire = TcpWire("127.0.0.1", 0, on_event=events.append).open()
    try:
        assert wire.write(b"nobody\n") == 0, "no client: the bytes go nowhere"
        reader, writer = await connect(wire.port)
        await until(lambda: wire.connected)
        second_reader, second = await connect(wire.port)
        assert await asyncio.wait_for(second_reader.read(), 5) == b"", "the newcomer is closed"
        second.close()
        assert wire.refused == 1
        assert wire.write(b"hello\n") == 6
        assert await asyncio.wait_for(reader.readline(), 5) == b"hello\n"
        writer.close()
        await until(lambda: not wire.connected)
        assert [e["event"] for e in events] == ["connect", "refused", "disconnect"]
    finally:
        wire.close()


async def test_unplug_refuses_connections_and_replug_listens_on_the_same_port() -> None:
    wire = TcpWire("127.0.0.1", 0).open()
    port = wire.port
    try:
        reader, writer = await connect(port)
        await until(lambda: wire.connected)
        wire.unplug()
        assert await asyncio.wait_for(reader.read(), 5) == b"", "the client sees the close"
        writer.close()
        with pytest.raises(ConnectionRefusedError):
            await connect(port)
        wire.open()
        assert wire.port == port
        _, writer = await connect(port)
        await until(lambda: wire.connected)
        writer.close()
    finally:
        wire.close()


async def test_stall_keeps_the_connection_but_sends_nothing() -> None:
    wire = TcpWire("127.0.0.1", 0).open()
    try:
        reader, writer = await connect(wire.port)
        await until(lambda: wire.connected)
        wire.stall()
        assert wire.write(b"withheld\n") == 0
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.3)
        assert wire.connected, "half-open: the connection stays up"
        writer.close()
        await until(lambda: not wire.connected)
        _, writer = await connect(wire.port)
        await until(lambda: wire.connected)
        assert not wire.stalled, "a new connection is served again"
        writer.close()
    finally:
        wire.close()


async def test_continuous_simulator_marks_frames_nobody_received() -> None:
    import io
    import json

    log = io.StringIO()
    wire = TcpWire("127.0.0.1", 0)
    async with ContinuousSimulator("unused", period=0.05, frames=6, emit_log=log, wire=wire):
        await asyncio.sleep(0.12)  # two frames with no client
        reader, writer = await connect(wire.port)
        data = b""
        async with asyncio.timeout(5):
            while data.count(b"\n") < 2:
                data += await reader.read(4096)
        writer.close()
    entries = [json.loads(line) for line in log.getvalue().splitlines()]
    frames = [e for e in entries if "index" in e]
    assert frames[0].get("dropped") is True
    received = [line.decode() for line in data.splitlines()]
    assert all(line in {f["frame"] for f in frames if not f.get("dropped")} for line in received)


def test_mbap_unit_id_is_the_address() -> None:
    packet = bytes([0, 1, 0, 0, 0, 6, 31, 4, 0, 0, 0, 1])
    assert request_address(ProtocolKind.MODBUS_TCP, packet) == 31


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--link", "/tmp/x", "--listen", "127.0.0.1:0"], "one of --link, --listen, --rfc2217"),
        ([], "one of --link, --listen, --rfc2217"),
        (["--rfc2217", "127.0.0.1:0", "--protocol", "modbus_tcp"], "with --listen only"),
        (["--link", "/tmp/x", "--protocol", "modbus_tcp"], "modbus_tcp needs --listen"),
        (["--link", "/tmp/never-created", "--stall-after", "1"], "stall_after needs"),
    ],
)
def test_cli_refuses_combinations_that_make_no_sense(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "servomexd", "simulate", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2, result
    assert message in result.stderr


def test_listen_port_in_use_is_a_clean_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "servomexd", "simulate", "--listen", f"127.0.0.1:{port}",
             "--frames", "1"],
            capture_output=True, text=True, cwd=ROOT, timeout=30,
        )  # fmt: skip
    assert result.returncode == 1
    assert "Address already in use" in result.stderr
