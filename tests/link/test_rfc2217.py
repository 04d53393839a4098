"""Rfc2217Link against the simulator's RFC 2217 device server (pyserial's PortManager)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from servomexd.errors import ServomexConnectionError
from servomexd.link.connect import describe_port, open_link
from servomexd.link.endpoint import parse_network_port
from servomexd.link.rfc2217 import Rfc2217Link
from servomexd.link.serial import SerialSettings
from servomexd.simulator.tcp import Rfc2217Wire

pytestmark = pytest.mark.timeout(30)


async def wait_for(condition: Any, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110  # polling state owned by another task
            await asyncio.sleep(0.02)


async def test_settings_are_negotiated_and_data_flows() -> None:
    events: list[dict[str, Any]] = []
    wire = Rfc2217Wire("127.0.0.1", 0, on_event=events.append).open()
    try:
        settings = SerialSettings(wire.link, baudrate=9600, bytesize=7, parity="E", stopbits=2)
        assert describe_port(settings) == f"{wire.link} @9600 7E2"
        link = await open_link(settings)
        assert isinstance(link, Rfc2217Link)
        async with link:
            await wait_for(lambda: wire.connected and wire.settings_log)
            await wait_for(lambda: wire.settings_log[-1]["baudrate"] == 9600)
            last = wire.settings_log[-1]
            assert (last["bytesize"], last["parity"], last["stopbits"]) == (7, "E", 2)
            assert wire.bits_per_char == 1 + 7 + 1 + 2
            payload = bytes(range(256)) + b"\n"  # 0xFF must survive Telnet IAC escaping
            loop = asyncio.get_running_loop()
            sent_at = loop.time()
            assert wire.write(payload) == len(payload)
            data = b""
            while len(data) < len(payload):
                data += await link.read(2.0)
            assert data == payload
            # Paced like the line it stands for: 257 chars x 11 bits at 9600 baud.
            assert loop.time() - sent_at >= 257 * 11 / 9600 - 0.01
        assert any(e["event"] == "rfc2217_settings" for e in events)
    finally:
        wire.close()


async def test_server_gone_is_a_connection_error() -> None:
    wire = Rfc2217Wire("127.0.0.1", 0).open()
    endpoint = parse_network_port(wire.link)
    link = await Rfc2217Link.open(endpoint, SerialSettings(wire.link).serial_kwargs())
    try:
        await wait_for(lambda: wire.connected)
        wire.unplug()
        with pytest.raises(ServomexConnectionError):
            async with asyncio.timeout(5):
                while True:
                    await link.read(1.0)
    finally:
        await link.close()
    with pytest.raises(ServomexConnectionError, match="refused"):
        await Rfc2217Link.open(endpoint, {})
