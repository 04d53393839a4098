"""Modbus sessions against the pymodbus simulator over a real relayed pty pair.

Nothing is mocked: the daemon side is pymodbus's serial client on a pty, the
slave is pymodbus's server on the other pty, and the relay between the two
masters timestamps every byte (that is where the idle gap is measured).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from servomexd.acquisition.modbus import (
    BusSettings,
    ModbusBusRegistry,
    ModbusSession,
    ModbusSessionFactory,
    build_modbus_factory,
)
from servomexd.config import DeviceConfig
from servomexd.errors import (
    ServomexConfigError,
    ServomexConnectionError,
    ServomexModbusError,
    ServomexTimeoutError,
)
from servomexd.metrics import Metrics
from servomexd.model import ChannelId, ChannelStatus, Frame, ProtocolKind, Rejection, Unit
from servomexd.simulator.modbus import ModbusSimulator

pytestmark = pytest.mark.timeout(60)

I1, I2, I3, I4, D1, D2, D3, D4, E1, E2 = tuple(ChannelId)
BENCH = (I1, I2, I3, E1, E2)


def device(port: str, address: int = 30, **overrides: Any) -> DeviceConfig:
    settings: dict[str, Any] = {"name": f"ox{address}", "port": port, "protocol": "modbus_rtu",
                                "address": address, "poll_interval": 0.1,
                                "inter_request_delay": 0.02, "request_timeout": 0.3,
                                "retries": 1, "timeout_streak": 3}  # fmt: skip
    return DeviceConfig(**{**settings, **overrides})


async def open_session(dev: DeviceConfig, buses: ModbusBusRegistry) -> ModbusSession:
    session = await build_modbus_factory(dev, buses).open()
    assert isinstance(session, ModbusSession)
    return session


async def take(events: AsyncIterator[Any], count: int) -> list[Any]:
    out = []
    async for event in events:
        out.append(event)
        if len(out) == count:
            break
    return out


# --- values, statuses, names ---------------------------------------------------------------


@pytest.mark.parametrize("protocol", [ProtocolKind.MODBUS_RTU, ProtocolKind.MODBUS_ASCII])
async def test_values_statuses_and_names(protocol: ProtocolKind, buses: ModbusBusRegistry) -> None:
    async with ModbusSimulator(protocol=protocol, addresses=[30], period=0.05) as sim:
        sim.set_value(30, I1, 20.378)
        sim.set_value(30, I2, 0.084)
        sim.set_value(30, I3, None)  # NaN on the wire
        sim.set_status(30, I2, ChannelStatus(fault=True))
        sim.set_status(30, I3, ChannelStatus(calibrating=True, alarms=(False, True, False, False)))
        sim.set_status(30, E1, 0b0000_1111)  # Invalid + reserved bits
        analyser = [False] * 16
        analyser[1] = True
        analyser[8 + 2] = analyser[8 + 3] = True  # group 2 calibrating on gas 2
        sim.set_analyser_bits(30, analyser)
        session = await open_session(device(sim.link_path, protocol=protocol.value), buses)
        try:
            assert session.protocol is protocol
            assert session.channels == BENCH
            (frame,) = await take(session.events(), 1)
        finally:
            await session.aclose()
    assert isinstance(frame, Frame)
    assert frame.protocol is protocol
    assert [r.channel for r in frame.readings] == list(BENCH)
    # The simulator sends CO with the 0x82 glyph; the canonical name is ASCII.
    assert [r.name for r in frame.readings] == ["Oxygen", "CO", "CO2", None, None]
    assert [r.unit for r in frame.readings] == [Unit.PERCENT] * 3 + [Unit.MA] * 2
    assert frame.reading(I1).value == pytest.approx(20.378, abs=1e-6)
    assert frame.reading(I2).value == pytest.approx(0.084, abs=1e-6)
    assert frame.reading(I3).value is None
    assert frame.reading(I2).status == ChannelStatus(fault=True)
    assert frame.reading(I3).status.calibrating and frame.reading(I3).status.alarms[1]
    e1 = frame.reading(E1).status
    assert e1.fault and not (e1.maintenance or e1.calibrating or e1.warming_up)
    assert frame.analyser.maintenance and not frame.analyser.fault
    assert frame.analyser.cal_groups[1].calibrating and frame.analyser.cal_groups[1].cal_gas == 2
    assert frame.raw == b""
    # requested_at / latency_s are filled and consistent, and reach every Sample.
    assert frame.requested_at is not None and frame.latency_s is not None
    assert 0 < frame.latency_s < 1.0
    assert frame.requested_at <= frame.received_at
    assert frame.received_at - frame.requested_at >= timedelta(seconds=frame.latency_s * 0.5)
    samples = frame.as_samples("ox30")
    assert all(s.latency_s == frame.latency_s and s.requested_at for s in samples)


async def test_values_follow_the_simulated_unit(buses: ModbusBusRegistry) -> None:
    async with ModbusSimulator(addresses=[7], period=0.03, seed=3) as sim:
        session = await open_session(device(sim.link_path, 7), buses)
        try:
            frames = await take(session.events(), 4)
        finally:
            await session.aclose()
        served = [values for address, _, values in sim.served if address == 7]
    distinct = {round(f.reading(I1).value, 6) for f in frames}
    assert len(distinct) > 1, "values vary over time"
    for frame in frames:
        # Each frame's values are exactly one set the slave served (float32 rounding).
        assert any(
            all(
                math.isclose(frame.reading(ch).value or 0.0, values[ch] or 0.0, abs_tol=1e-6)
                for ch in (I1, I2, I3)
            )
            for values in served
        )


async def test_identify_keeps_named_slots_and_always_e1_e2(buses: ModbusBusRegistry) -> None:
    async with ModbusSimulator(addresses=[30]) as sim:
        sim.set_name(30, D2, "H2O")
        sim.set_name(30, I2, "||||||")  # I2 unlabelled: dropped, as continuous mode does
        session = await open_session(device(sim.link_path), buses)
        await session.aclose()
    assert session.channels == (I1, I3, D2, E1, E2)
    names = {info.channel: info.name for info in session.slots}
    assert names[I4] is None and names[E1] is None and names[D2] == "H2O"


# --- exceptions and timeouts -----------------------------------------------------------------


async def test_illegal_function_is_a_rejection_and_polling_goes_on(
    buses: ModbusBusRegistry,
) -> None:
    async with ModbusSimulator(addresses=[30]) as sim:
        session = await open_session(device(sim.link_path), buses)
        try:
            sim.exception_for(30, 2, 1)  # FC02 refused: illegal function
            events = session.events()
            rejections = await take(events, 4)  # > timeout_streak: exceptions are not a dead link
            sim.clear_exceptions(30)
            (frame,) = await take(events, 1)
        finally:
            await session.aclose()
    for rejection in rejections:
        assert isinstance(rejection, Rejection)
        assert rejection.reason == "modbus_exception"
        assert isinstance(rejection.error, ServomexModbusError)
        assert rejection.error.exception_code == 1
        assert "FC02" in str(rejection.error)
        assert rejection.requested_at is not None and rejection.latency_s is not None
        sample = rejection.as_sample("ox30")
        assert sample.error is rejection.error and sample.latency_s == rejection.latency_s
    assert isinstance(frame, Frame)


async def test_illegal_address_on_broad_reads_falls_back_to_narrow_reads(
    buses: ModbusBusRegistry,
) -> None:
    async with ModbusSimulator(addresses=[30]) as sim:
        sim.exception_for(30, 4, 2, above=21)  # this unit refuses FC04 reads over 21 registers
        sim.exception_for(30, 2, 2, above=24)
        session = await open_session(device(sim.link_path), buses)
        try:
            assert session.channels == BENCH  # identified slot by slot
            frames = await take(session.events(), 3)
        finally:
            await session.aclose()
        wire = sim.wire_transactions()
    assert all(isinstance(f, Frame) for f in frames)
    assert frames[0].reading(I1).name == "Oxygen"
    assert session.planner is not None and session.planner.fell_back
    # After the one refused broad read, every sweep uses the gap-free plan.
    rtu_reads = [t.request[1:6].hex() for t in wire]
    assert rtu_reads.count("0400000046") == 2  # identify + the first poll, then never again
    assert rtu_reads[-5:] == ["0400000015", "040038000e", "0200000018", "0200400010", "0203e80010"]


async def test_timeouts_become_rejections_then_the_link_is_declared_dead(
    buses: ModbusBusRegistry,
) -> None:
    async with ModbusSimulator(addresses=[30]) as sim:
        dev = device(sim.link_path, request_timeout=0.1, retries=1, timeout_streak=3)
        session = await open_session(dev, buses)
        seen: list[Any] = []
        try:
            sim.fail_address(30)
            with pytest.raises(ServomexTimeoutError) as raised:
                async for event in session.events():
                    seen.append(event)
        finally:
            await session.aclose()
        requests = sim.wire_transactions()
    assert len(seen) == 3
    assert all(isinstance(e, Rejection) and e.reason == "timeout" for e in seen)
    assert all(e.requested_at is not None and e.latency_s >= 0.2 for e in seen)
    assert raised.value.context["failed_polls"] == 3
    assert "attempts=2" in str(seen[0].error)
    # A silent slave is not re-probed with narrow reads every poll (once per connection).
    unanswered = [t for t in requests if not t.reply]
    assert len(unanswered) == 2 * 3 + 2


async def test_silent_slave_at_open_is_a_connection_error(buses: ModbusBusRegistry) -> None:
    async with ModbusSimulator(addresses=[30]) as sim:
        with pytest.raises(ServomexConnectionError, match="did not identify"):
            await build_modbus_factory(
                device(sim.link_path, 31, request_timeout=0.1), buses
            ).open()
    assert buses.users_on(sim.link_path) == 0


async def test_missing_port_is_a_connection_error(buses: ModbusBusRegistry, tmp_path: Any) -> None:
    with pytest.raises(ServomexConnectionError):
        await build_modbus_factory(device(str(tmp_path / "nope")), buses).open()


# --- schedule ------------------------------------------------------------------------------


async def test_polls_follow_an_absolute_schedule(buses: ModbusBusRegistry) -> None:
    async with ModbusSimulator(addresses=[30]) as sim:
        session = await open_session(device(sim.link_path, poll_interval=0.1), buses)
        try:
            frames = await take(session.events(), 11)
        finally:
            await session.aclose()
    # The first sweep also waits out the idle gap after identify: measure from the second.
    # Each sweep takes ~3 x 20 ms gap; a relative sleep would drift by ~0.6 s over 10 polls.
    first = frames[1].requested_at
    for index, frame in enumerate(frames[1:]):
        drift = (frame.requested_at - first).total_seconds() - index * 0.1
        assert -0.01 < drift < 0.1, (index, drift)  # jitter only, never accumulating
    assert session.missed_polls == 0


async def test_overrun_slots_are_counted_not_burst(buses: ModbusBusRegistry) -> None:
    metrics = Metrics(CollectorRegistry())
    registry = ModbusBusRegistry(metrics=metrics)
    # 2400 baud pacing makes a sweep take ~0.8 s of wire time; polls are due every 0.1 s.
    async with ModbusSimulator(addresses=[30], pace_baud=2400) as sim:
        dev = device(sim.link_path, poll_interval=0.1, request_timeout=2.0)
        session = await open_session(dev, registry)
        try:
            frames = await take(session.events(), 3)
        finally:
            await session.aclose()
            await registry.aclose()
    assert all(isinstance(f, Frame) for f in frames)
    starts = [f.requested_at for f in frames]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    assert min(gaps) > 0.5, "no burst of make-up polls after an overrun"
    assert session.missed_polls >= 8
    counted = metrics.registry.get_sample_value("servomexd_polls_missed_total", {"device": "ox30"})
    assert counted == session.missed_polls


# --- multidrop -----------------------------------------------------------------------------


async def run_bus(
    sim: ModbusSimulator,
    addresses: Sequence[int],
    buses: ModbusBusRegistry,
    polls: int,
    **overrides: Any,
) -> dict[int, list[Any]]:
    sessions = [
        await open_session(device(sim.link_path, address, **overrides), buses)
        for address in addresses
    ]
    results: dict[int, list[Any]] = {}

    async def one(session: ModbusSession) -> None:
        results[session.device.address] = await take(session.events(), polls)

    try:
        async with asyncio.TaskGroup() as group:
            for session in sessions:
                group.create_task(one(session))
    finally:
        for session in sessions:
            await session.aclose()
    return results


@pytest.mark.parametrize("addresses", [[30, 31], [1, 2, 3, 4]])
async def test_multidrop_shares_one_port_with_the_gap_between_any_two_transactions(
    addresses: list[int], buses: ModbusBusRegistry
) -> None:
    gap = 0.03
    async with ModbusSimulator(addresses=addresses) as sim:
        for address in addresses:
            sim.set_value(address, I1, 20.0 + address)
        results = await run_bus(sim, addresses, buses, 4, inter_request_delay=gap)
        wire = sim.wire_transactions()
        # The registry hands out the bus the sessions used (a new one would not be opened).
        bus = buses.bus(BusSettings.of(device(sim.link_path), ProtocolKind.MODBUS_RTU))
    assert bus.opened == 1, "one serial connection for all slaves"
    assert not bus.is_open, "closed when the last user left"
    for address in addresses:
        frames = results[address]
        assert all(isinstance(f, Frame) for f in frames)
        assert [f.reading(I1).value for f in frames] == [pytest.approx(20.0 + address)] * 4
    # Transactions of different slaves interleave on the wire ...
    slaves = [t.request[0] for t in wire]
    assert any(a != b for a, b in itertools.pairwise(slaves))
    # ... and the idle line before every request is at least the configured gap.
    idles = [t.idle_before_s for t in wire[1:]]
    assert all(idle is not None for idle in idles)
    assert min(idle for idle in idles if idle is not None) >= gap
    assert all(t.reply for t in wire), "no request lost"


async def test_one_silent_slave_does_not_stall_the_others(buses: ModbusBusRegistry) -> None:
    timeout, interval = 0.2, 0.3
    async with ModbusSimulator(addresses=[1, 2, 3]) as sim:
        sessions = [
            await open_session(
                device(
                    sim.link_path,
                    address,
                    request_timeout=timeout,
                    poll_interval=interval,
                    timeout_streak=100,
                ),
                buses,
            )
            for address in (1, 2, 3)
        ]
        sim.fail_address(2)
        stamps: dict[int, list[float]] = {1: [], 2: [], 3: []}

        async def poll(session: ModbusSession) -> None:
            async for event in session.events():
                stamps[session.device.address].append(time.monotonic())
                assert isinstance(event, Frame) == (session.device.address != 2)

        try:
            async with asyncio.timeout(3.0):
                async with asyncio.TaskGroup() as group:
                    for session in sessions:
                        group.create_task(poll(session))
        except TimeoutError:
            pass
        finally:
            for session in sessions:
                await session.aclose()
    for address in (1, 3):
        times = stamps[address]
        assert len(times) >= 8, (address, len(times))
        intervals = [b - a for a, b in itertools.pairwise(times)]
        # A healthy slave waits at most for one of the silent slave's attempts at a time.
        # (Without the deferral a healthy sweep waited one dead attempt per transaction:
        # about interval + 3 * timeout.)
        assert max(intervals) < interval + timeout + 0.15, (address, max(intervals))
    assert len(stamps[2]) >= 2


async def test_devices_on_one_port_must_agree_on_framing(buses: ModbusBusRegistry) -> None:
    async with ModbusSimulator(addresses=[1, 2]) as sim:
        build_modbus_factory(device(sim.link_path, 1), buses)
        # Refused while building the factories: a configuration error, not a dead link.
        with pytest.raises(ServomexConfigError, match="share one protocol") as raised:
            build_modbus_factory(device(sim.link_path, 2, protocol="modbus_ascii"), buses)
        assert raised.value.context == {
            "port": sim.link_path, "ox1": "modbus_rtu 19200 8N1", "ox2": "modbus_ascii 19200 8N1"
        }
        with pytest.raises(ServomexConfigError):
            build_modbus_factory(device(sim.link_path, 3, baudrate=9600), buses)
        # And at open time too, for a registry used without declarations.
        other = ModbusBusRegistry()
        first = await build_modbus_factory(device(sim.link_path, 1), other).open()
        try:
            with pytest.raises(ServomexConfigError):
                await ModbusSessionFactory(
                    device(sim.link_path, 2), other, ProtocolKind.MODBUS_ASCII
                ).open()
        finally:
            await first.aclose()
            await other.aclose()


async def test_bus_reopens_once_when_all_users_reconnect(buses: ModbusBusRegistry) -> None:
    async with ModbusSimulator(addresses=[1, 2]) as sim:
        a = await open_session(device(sim.link_path, 1), buses)
        b = await open_session(device(sim.link_path, 2), buses)
        bus = a.bus
        assert bus is b.bus and bus.opened == 1
        await a.aclose()
        assert bus.is_open, "still used by slave 2"
        await b.aclose()
        assert not bus.is_open
        a = await open_session(device(sim.link_path, 1), buses)
        b = await open_session(device(sim.link_path, 2), buses)
        await take(a.events(), 1)
        await take(b.events(), 1)
        assert a.bus is bus and bus.opened == 2
        await a.aclose()
        await b.aclose()


async def test_lost_port_ends_the_session(buses: ModbusBusRegistry) -> None:
    sim = ModbusSimulator(addresses=[30])
    await sim.start()
    session = await open_session(device(sim.link_path), buses)
    try:
        events = session.events()
        await take(events, 1)
        await sim.stop()  # the pty pair disappears under the open client
        with pytest.raises((ServomexConnectionError, ServomexTimeoutError)):
            async for _ in events:
                pass
    finally:
        await session.aclose()
        await sim.stop()


async def test_garbled_replies_are_retried_after_the_idle_gap(buses: ModbusBusRegistry) -> None:
    gap = 0.03
    async with ModbusSimulator(addresses=[30], corrupt_every=4) as sim:
        session = await open_session(
            device(sim.link_path, retries=2, request_timeout=0.15, inter_request_delay=gap), buses
        )
        try:
            frames = await take(session.events(), 5)
        finally:
            await session.aclose()
        wire = sim.wire_transactions()
    assert all(isinstance(f, Frame) for f in frames), "a bad CRC costs a retry, not a poll"
    assert sim.corrupted >= 3
    repeated = [b for a, b in itertools.pairwise(wire) if a.request == b.request]
    assert len(repeated) >= sim.corrupted - 1  # each garbled reply was followed by a resend
    assert all(t.idle_before_s is not None and t.idle_before_s >= gap for t in repeated)


async def test_unplugged_adapter_ends_the_session_and_replug_reopens(
    buses: ModbusBusRegistry, tmp_path: Any
) -> None:
    link = tmp_path / "ttyUSB-sim"
    async with ModbusSimulator(addresses=[30], link=link) as sim:
        dev = device(str(link))
        session = await open_session(dev, buses)
        events = session.events()
        await take(events, 1)
        sim.unplug()
        with pytest.raises(ServomexConnectionError):
            async for _ in events:
                pass
        await session.aclose()
        with pytest.raises(ServomexConnectionError):
            await build_modbus_factory(dev, buses).open()  # nothing at the path
        sim.replug()
        session = await open_session(dev, buses)
        try:
            (frame,) = await take(session.events(), 1)
        finally:
            await session.aclose()
    assert isinstance(frame, Frame)
    assert session.bus.opened == 2
