"""AUTO over the network: the same ladder through a device server as on a local port."""

from __future__ import annotations

from typing import Any

import pytest

from servomexd.acquisition.factory import build_session_factory
from servomexd.acquisition.modbus import ModbusBusRegistry
from servomexd.config import DeviceConfig
from servomexd.model import Frame, ProtocolKind
from servomexd.simulator.continuous import ContinuousSimulator
from servomexd.simulator.modbus import ModbusSimulator
from servomexd.simulator.tcp import Rfc2217Bridge, TcpWire

pytestmark = pytest.mark.timeout(60)


def auto_device(port: str, **overrides: Any) -> DeviceConfig:
    settings: dict[str, Any] = {"name": "auto-net", "port": port, "protocol": "auto",
                                "address": 7, "poll_interval": 0.2, "request_timeout": 0.3,
                                "expected_frame_period": 0.5}  # fmt: skip
    return DeviceConfig(**{**settings, **overrides})


async def first_frames(session: Any, count: int) -> list[Frame]:
    frames: list[Frame] = []
    async for event in session.events():
        if isinstance(event, Frame):
            frames.append(event)
            if len(frames) == count:
                break
    return frames


@pytest.mark.parametrize("protocol", [ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII])
async def test_auto_finds_modbus_behind_a_device_server(
    protocol: ProtocolKind, buses: ModbusBusRegistry
) -> None:
    async with ModbusSimulator(protocol=protocol, addresses=[7], listen=("127.0.0.1", 0)) as sim:
        factory = build_session_factory(auto_device(sim.link_path), buses)
        session = await factory.open()
        try:
            frames = await first_frames(session, 2)
        finally:
            await session.aclose()
    assert session.protocol is protocol
    assert all(f.protocol is protocol for f in frames)


async def test_auto_finds_continuous_behind_a_device_server(buses: ModbusBusRegistry) -> None:
    wire = TcpWire("127.0.0.1", 0)
    async with ContinuousSimulator("unused", period=0.1, wire=wire) as simulator:
        factory = build_session_factory(auto_device(str(simulator.link)), buses)
        session = await factory.open()
        try:
            frames = await first_frames(session, 3)
        finally:
            await session.aclose()
    assert session.protocol is ProtocolKind.CONTINUOUS
    assert len(frames) == 3
    assert wire.refused == 0, "each probe's connection was closed before the next one"


async def test_auto_finds_modbus_behind_an_rfc2217_server(buses: ModbusBusRegistry) -> None:
    async with ModbusSimulator(protocol=ProtocolKind.MODBUS_ASCII, addresses=[7]) as sim:
        bridge = Rfc2217Bridge("127.0.0.1", 0, sim.relay.master_path).open()
        try:
            session = await build_session_factory(auto_device(bridge.link), buses).open()
            try:
                frames = await first_frames(session, 2)
            finally:
                await session.aclose()
        finally:
            bridge.close()
    assert session.protocol is ProtocolKind.MODBUS_ASCII
    assert len(frames) == 2
