"""AUTO detection resolving each mode over real pseudo-terminals (and nothing else sent)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import servomexd.acquisition.auto as auto
from servomexd.acquisition.auto import (
    AutoSession,
    AutoSessionFactory,
    PrimedSession,
    listen_window,
)
from servomexd.acquisition.continuous import ContinuousSession as ContinuousSessionType
from servomexd.acquisition.factory import build_session_factory
from servomexd.acquisition.modbus import ModbusBusRegistry, ModbusSession
from servomexd.config import DeviceConfig
from servomexd.errors import ServomexConnectionError
from servomexd.model import ChannelId, Frame, ProtocolKind
from servomexd.protocol import modbus as mb
from servomexd.simulator.modbus import ModbusSimulator
from servomexd.simulator.pty import PtyDevice

pytestmark = pytest.mark.timeout(60)

RTU_PROBES = {
    mb.rtu_adu(30, bytes.fromhex("080000ABCD")),
    mb.rtu_adu(30, bytes.fromhex("0400000001")),
}
ASCII_PROBES = {
    mb.ascii_adu(30, bytes.fromhex("080000ABCD")),
    mb.ascii_adu(30, bytes.fromhex("0400000001")),
}


def auto_device(port: str, **overrides: Any) -> DeviceConfig:
    settings: dict[str, Any] = {"name": "auto30", "port": port, "protocol": "auto",
                                "address": 30, "poll_interval": 0.1,
                                "inter_request_delay": 0.02, "request_timeout": 0.3,
                                "expected_frame_period": 0.3}  # fmt: skip
    return DeviceConfig(**{**settings, **overrides})


def test_listen_window() -> None:
    assert listen_window(2.0) == 8.0
    assert listen_window(0.3) == 5.0
    assert listen_window(10.0) == 32.0


@pytest.mark.parametrize("protocol", [ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII])
async def test_auto_finds_modbus(protocol: ProtocolKind, buses: ModbusBusRegistry) -> None:
    async with ModbusSimulator(protocol=protocol, addresses=[30]) as sim:
        factory = build_session_factory(auto_device(sim.link_path), buses)
        assert isinstance(factory, AutoSessionFactory)
        session = await factory.open()
        try:
            assert isinstance(session, AutoSession)
            assert isinstance(session.inner, ModbusSession)
            assert session.protocol is protocol
            assert factory.detected is protocol
            assert session.inner.channels == (
                ChannelId.I1, ChannelId.I2, ChannelId.I3, ChannelId.E1, ChannelId.E2
            )
            events = session.events()
            frame = await anext(events)
            await events.aclose()
        finally:
            await session.aclose()
        wire = sim.wire_transactions()
    assert isinstance(frame, Frame) and frame.protocol is protocol
    sent = b"".join(chunk.data for chunk in sim.relay.chunks if chunk.to_slave)
    requests = _split_requests(sent)
    if protocol is ProtocolKind.MODBUS_RTU:
        assert requests[0] == mb.rtu_adu(30, bytes.fromhex("080000ABCD"))
        assert wire[0].reply == requests[0], "loopback echoed"
    else:
        # The RTU probes went unanswered first (the ASCII server cannot parse them).
        first_ascii = next(i for i, r in enumerate(requests) if r.startswith(b":"))
        assert first_ascii > 0 and set(requests[:first_ascii]) <= RTU_PROBES
        assert requests[first_ascii] == mb.ascii_adu(30, bytes.fromhex("080000ABCD"))
    # Only read-only requests: FC08/FC04 probes, then FC04/FC02 reads; never a write.
    functions = set()
    for request in requests:
        if request.startswith(b":"):
            functions.add(bytes.fromhex(request[1:-2].decode())[1])
        else:
            functions.add(request[1])
    assert functions <= {0x02, 0x04, 0x08}


async def test_auto_falls_back_to_the_fc04_probe_when_loopback_is_refused(
    buses: ModbusBusRegistry,
) -> None:
    async with ModbusSimulator(addresses=[30]) as sim:
        sim.fail_address(30)  # silent for the loopback ...
        factory = AutoSessionFactory(auto_device(sim.link_path), buses)
        task = asyncio.create_task(factory.open())
        # Polling the relay's log: there is no event to wait on for bytes on a wire.
        while not any(t.request[1] == 0x08 for t in sim.wire_transactions()):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        sim.fail_address(30, silent=False)  # ... answering again in time for the FC04 probe
        sim.exception_for(30, 8, 1)  # and FC08 now illegal: the probe must not rely on it
        session = await task
        await session.aclose()
    assert factory.detected is ProtocolKind.MODBUS_RTU


async def _collect_writes(device: PtyDevice, into: bytearray, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError):
            into.extend(device.read())
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def writes_to(device: PtyDevice) -> AsyncIterator[bytearray]:
    """Everything the master writes towards ``device`` while the block runs."""
    written = bytearray()
    stop = asyncio.Event()
    collector = asyncio.create_task(_collect_writes(device, written, stop))
    try:
        yield written
    finally:
        stop.set()
        await collector


async def test_auto_finds_continuous(buses: ModbusBusRegistry, tmp_path: Path) -> None:
    from servomexd.simulator.continuous import ContinuousSimulator

    link = tmp_path / "ttyAUTO"
    async with ContinuousSimulator(link, period=0.3) as sim, writes_to(sim.device) as written:
        factory = AutoSessionFactory(auto_device(str(link)), buses)
        session = await factory.open()
        try:
            assert isinstance(session.inner, PrimedSession)
            assert session.protocol is ProtocolKind.CONTINUOUS
            events = session.events()
            first = await anext(events)
            second = await anext(events)
            while not isinstance(second, Frame):
                second = await anext(events)
            await events.aclose()
        finally:
            await session.aclose()
    assert factory.detected is ProtocolKind.CONTINUOUS
    assert isinstance(first, Frame) and first.protocol is ProtocolKind.CONTINUOUS
    assert second.received_at > first.received_at
    # Nothing but the read-only probes went towards the analyser.
    assert _split_probes(bytes(written)) <= RTU_PROBES | ASCII_PROBES


def _split_requests(data: bytes) -> list[bytes]:
    """Request ADUs as the master sent them: ASCII lines, or 8-byte RTU requests."""
    requests: list[bytes] = []
    while data:
        end = data.index(b"\r\n") + 2 if data.startswith(b":") else 8
        requests.append(data[:end])
        data = data[end:]
    return requests


def _split_probes(data: bytes) -> set[bytes]:
    return set(_split_requests(data))


async def test_auto_reports_what_it_tried(buses: ModbusBusRegistry, tmp_path: Path) -> None:
    link = tmp_path / "ttyQUIET"
    with PtyDevice(link) as device:
        async with writes_to(device) as written:
            factory = AutoSessionFactory(auto_device(str(link)), buses)
            with pytest.raises(ServomexConnectionError, match="no recognised protocol") as raised:
                await factory.open()
    tried = raised.value.context["tried"]
    assert "modbus_rtu: no reply" in tried
    assert "modbus_ascii: no reply" in tried
    assert "continuous: no valid frame in 5 s" in tried
    assert raised.value.context["address"] == 30
    assert _split_probes(bytes(written)) == RTU_PROBES | ASCII_PROBES
    assert buses.users_on(str(link)) == 0


# --- the remembered mode ---------------------------------------------------------------


@pytest.fixture
def quick_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unanswered probes cost 0.1 s a try instead of 0.5 s: same ladder, shorter test."""
    monkeypatch.setattr(auto, "PROBE_TIMEOUT", 0.1)


async def _first_frame(session: AutoSession, within: float) -> Frame:
    events = session.events()
    try:
        async with asyncio.timeout(within):
            while not isinstance(event := await anext(events), Frame):
                pass
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    return event


async def _detect_and_read_one(factory: AutoSessionFactory) -> None:
    """Open (detecting or reusing the mode), take one frame, close."""
    session = await factory.open()
    try:
        await _first_frame(session, 2.0)
    finally:
        await session.aclose()


@pytest.mark.usefixtures("quick_probes")
async def test_auto_reopens_a_continuous_unit_without_probing(
    buses: ModbusBusRegistry, tmp_path: Path
) -> None:
    from servomexd.simulator.continuous import ContinuousSimulator

    link = tmp_path / "ttyAUTO"
    async with ContinuousSimulator(link, period=0.3) as sim, writes_to(sim.device) as written:
        factory = AutoSessionFactory(auto_device(str(link)), buses)
        await _detect_and_read_one(factory)
        assert factory.remembered is ProtocolKind.CONTINUOUS
        await asyncio.sleep(0.05)  # let the collector drain what the ladder sent
        assert _split_probes(bytes(written)) == RTU_PROBES | ASCII_PROBES
        written.clear()

        with capture_logs() as logs:
            again = await factory.open()
        try:
            assert isinstance(again.inner, ContinuousSessionType)
            frame = await _first_frame(again, 1.0)  # one 0.3 s period, not a ladder
        finally:
            await again.aclose()
        await asyncio.sleep(0.05)
    assert frame.protocol is ProtocolKind.CONTINUOUS
    assert bytes(written) == b"", "no Modbus probe on the reopen"
    assert [entry["event"] for entry in logs] == ["auto.reusing_mode"]
    assert logs[0]["protocol"] == "continuous" and logs[0]["previous_frames"] >= 1


@pytest.mark.usefixtures("quick_probes")
@pytest.mark.parametrize("protocol", [ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII])
async def test_auto_reopens_a_modbus_slave_without_probing(
    protocol: ProtocolKind, buses: ModbusBusRegistry
) -> None:
    async with ModbusSimulator(protocol=protocol, addresses=[30]) as sim:
        factory = AutoSessionFactory(auto_device(sim.link_path), buses)
        await _detect_and_read_one(factory)
        assert factory.remembered is protocol
        sent_before = len(_sent(sim))

        again = await factory.open()
        try:
            assert isinstance(again.inner, ModbusSession)
            assert again.protocol is protocol
            frame = await _first_frame(again, 1.0)
        finally:
            await again.aclose()
        reopen = _split_requests(_sent(sim)[sent_before:])
    # Straight to identify + polls: no probe, no other framing, no listen window.
    assert frame.protocol is protocol
    assert reopen, "the reopen identified and polled"
    assert not set(reopen) & (RTU_PROBES | ASCII_PROBES)
    assert all(r.startswith(b":") == (protocol is ProtocolKind.MODBUS_ASCII) for r in reopen)


@pytest.mark.usefixtures("quick_probes")
async def test_auto_redetects_after_a_remembered_session_without_frames(
    buses: ModbusBusRegistry, tmp_path: Path
) -> None:
    from servomexd.simulator.continuous import ContinuousSimulator

    link = tmp_path / "ttySWITCH"
    factory = AutoSessionFactory(auto_device(str(link)), buses)
    async with ContinuousSimulator(link, period=0.3):
        await _detect_and_read_one(factory)
    assert factory.remembered is ProtocolKind.CONTINUOUS

    # The operator switches the unit to Modbus RTU at the front panel.
    async with ModbusSimulator(addresses=[30], link=link) as sim:
        with capture_logs() as logs:
            silent = await factory.open()  # the memory is trusted once ...
        try:
            assert silent.protocol is ProtocolKind.CONTINUOUS
            with pytest.raises(TimeoutError):  # ... and costs one silence_timeout
                await _first_frame(silent, 1.0)
        finally:
            await silent.aclose()
        assert silent.frames == 0
        assert not sim.wire_transactions(), "the remembered session sent nothing"

        with capture_logs() as relogs:
            session = await factory.open()  # ... then the ladder runs again
        try:
            assert session.protocol is ProtocolKind.MODBUS_RTU
            frame = await _first_frame(session, 2.0)
        finally:
            await session.aclose()
    assert frame.protocol is ProtocolKind.MODBUS_RTU
    assert factory.detected is factory.remembered is ProtocolKind.MODBUS_RTU
    assert [entry["event"] for entry in logs] == ["auto.reusing_mode"]
    events = [entry["event"] for entry in relogs if entry["log_level"] == "info"]
    assert events[0] == "auto.forgetting_mode" and "auto.detected" in events
    assert "no valid frame" in relogs[0]["why"]


def _sent(sim: ModbusSimulator) -> bytes:
    return b"".join(chunk.data for chunk in sim.relay.chunks if chunk.to_slave)
