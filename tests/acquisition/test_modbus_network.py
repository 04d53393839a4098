"""Modbus over the network: RTU/ASCII frames over raw TCP, and Modbus TCP (MBAP) to a gateway.

The slave is pymodbus's TCP server on 127.0.0.1 with the matching framer; the
daemon side is the real bus and session code. The server timestamps what it
receives and sends, which is where the inter-request gap is measured.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from typing import Any

import pytest

from servomexd.acquisition.modbus import ModbusBusRegistry, ModbusSession, build_modbus_factory
from servomexd.config import DeviceConfig
from servomexd.errors import ServomexConnectionError
from servomexd.model import ChannelId, Frame, ProtocolKind
from servomexd.simulator.modbus import ModbusSimulator, request_address
from servomexd.simulator.tcp import Rfc2217Bridge

pytestmark = pytest.mark.timeout(60)


def device(port: str, protocol: str, address: int, **overrides: Any) -> DeviceConfig:
    settings: dict[str, Any] = {"name": f"kiln{address}", "port": port, "protocol": protocol,
                                "address": address, "poll_interval": 0.1,
                                "inter_request_delay": 0.02, "request_timeout": 0.5,
                                "retries": 1}  # fmt: skip
    return DeviceConfig(**{**settings, **overrides})


async def frames(session: ModbusSession, count: int) -> list[Frame]:
    out: list[Frame] = []
    async for event in session.events():
        assert isinstance(event, Frame), event
        out.append(event)
        if len(out) == count:
            break
    return out


@pytest.mark.parametrize(
    "protocol",
    [ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII, ProtocolKind.MODBUS_TCP],
)
async def test_values_match_what_the_server_served(
    protocol: ProtocolKind, buses: ModbusBusRegistry
) -> None:
    async with ModbusSimulator(protocol=protocol, addresses=[31], listen=("127.0.0.1", 0)) as sim:
        assert sim.link_path.startswith("socket://127.0.0.1:")
        session = await build_modbus_factory(
            device(sim.link_path, protocol.value, 31), buses
        ).open()
        assert isinstance(session, ModbusSession)
        try:
            got = await frames(session, 3)
        finally:
            await session.aclose()
        served = [values for address, _, values in sim.served if address == 31]
        for frame in got:
            assert frame.protocol is protocol
            o2 = frame.reading(ChannelId.I1).value
            assert any(abs(o2 - (v[ChannelId.I1] or 0)) < 1e-3 for v in served)
        if protocol is ProtocolKind.MODBUS_TCP:
            requests = [p.data for p in sim.tcp_packets if not p.sending]
            assert requests and all(request_address(protocol, r) == 31 for r in requests)


@pytest.mark.parametrize("protocol", [ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_TCP])
async def test_two_devices_on_one_endpoint_share_one_connection_and_the_gap(
    protocol: ProtocolKind, buses: ModbusBusRegistry
) -> None:
    gap = 0.04
    async with ModbusSimulator(
        protocol=protocol, addresses=[30, 31], listen=("127.0.0.1", 0)
    ) as sim:
        sessions = []
        for address in (30, 31):
            factory = build_modbus_factory(
                device(sim.link_path, protocol.value, address, inter_request_delay=gap), buses
            )
            session = await factory.open()
            assert isinstance(session, ModbusSession)
            sessions.append(session)
        try:
            await asyncio.gather(*(frames(s, 4) for s in sessions))
        finally:
            for session in sessions:
                await session.aclose()
        assert sim.connections == 1, "one TCP connection for both slaves"
        bus = sessions[0].bus
        assert sessions[1].bus is bus and bus.opened == 1
        # Server side: never two requests outstanding, and at least the gap between a
        # reply leaving and the next request arriving (whichever slave it addresses).
        packets = sim.tcp_packets
        assert len([p for p in packets if not p.sending]) >= 16
        idles = [
            (b.at_ns - a.at_ns) / 1e9
            for a, b in itertools.pairwise(packets)
            if a.sending and not b.sending
        ]
        for a, b in itertools.pairwise(packets):
            assert a.sending != b.sending, "one request at a time"
        # The gap is measured on the daemon's clock from the reply's arrival; the
        # server sees it minus the loopback delay, well under a millisecond.
        assert min(idles) >= gap - 0.002


async def test_refused_connection_names_the_cause(buses: ModbusBusRegistry) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    factory = build_modbus_factory(device(f"socket://127.0.0.1:{port}", "modbus_tcp", 1), buses)
    with pytest.raises(ServomexConnectionError, match="refused"):
        await factory.open()


async def test_gateway_restart_ends_the_session_and_a_new_one_connects(
    buses: ModbusBusRegistry,
) -> None:
    async with ModbusSimulator(
        protocol=ProtocolKind.MODBUS_TCP, addresses=[31], listen=("127.0.0.1", 0)
    ) as sim:
        dev = device(sim.link_path, "modbus_tcp", 31, timeout_streak=2)
        factory = build_modbus_factory(dev, buses)
        session = await factory.open()
        assert isinstance(session, ModbusSession)
        await frames(session, 2)
        sim.unplug()
        with pytest.raises(ServomexConnectionError):
            async with asyncio.timeout(10):
                async for _ in session.events():
                    pass
        await session.aclose()
        sim.replug()
        await asyncio.sleep(0.2)
        session = await factory.open()
        assert isinstance(session, ModbusSession)
        try:
            assert len(await frames(session, 2)) == 2
        finally:
            await session.aclose()
        assert sim.connections == 2


@pytest.mark.parametrize("protocol", [ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII])
async def test_modbus_over_rfc2217_sets_the_line_and_polls(
    protocol: ProtocolKind, buses: ModbusBusRegistry
) -> None:
    async with ModbusSimulator(protocol=protocol, addresses=[30, 31]) as sim:
        bridge = Rfc2217Bridge("127.0.0.1", 0, sim.relay.master_path).open()
        try:
            sessions = []
            for address in (30, 31):
                dev = device(bridge.link, protocol.value, address, baudrate=9600, parity="E")
                session = await build_modbus_factory(dev, buses).open()
                assert isinstance(session, ModbusSession)
                sessions.append(session)
            try:
                got = await asyncio.gather(*(frames(s, 3) for s in sessions))
            finally:
                for session in sessions:
                    await session.aclose()
        finally:
            bridge.close()
        assert bridge.connections == 1, "one RFC 2217 session for both slaves"
        assert bridge.settings_log[-1]["baudrate"] == 9600
        assert bridge.settings_log[-1]["parity"] == "E"
        for address, polled in zip((30, 31), got, strict=True):
            served = [values for a, _, values in sim.served if a == address]
            for frame in polled:
                o2 = frame.reading(ChannelId.I1).value
                assert any(abs(o2 - (v[ChannelId.I1] or 0)) < 1e-3 for v in served)


async def test_rfc2217_server_gone_ends_the_modbus_session(buses: ModbusBusRegistry) -> None:
    async with ModbusSimulator(protocol=ProtocolKind.MODBUS_RTU, addresses=[30]) as sim:
        bridge = Rfc2217Bridge("127.0.0.1", 0, sim.relay.master_path).open()
        try:
            dev = device(bridge.link, "modbus_rtu", 30, timeout_streak=2)
            session = await build_modbus_factory(dev, buses).open()
            assert isinstance(session, ModbusSession)
            await frames(session, 1)
            bridge.unplug()
            with pytest.raises(ServomexConnectionError):
                async with asyncio.timeout(10):
                    async for _ in session.events():
                        pass
            await session.aclose()
        finally:
            bridge.close()
        with pytest.raises(ServomexConnectionError, match="refused"):
            await build_modbus_factory(dev, buses).open()
