"""Modbus RTU/ASCII acquisition: one polling session per slave, on a shared bus.

A session identifies its slave once per connection, then sweeps it on an absolute
schedule, turning each sweep into the same ``Frame`` (or ``Rejection``) a
continuous-mode session yields. The line itself (sharing, idle gap, retries,
reopen) is ``servomexd.acquisition.modbus_bus``; ``ModbusBusRegistry`` is
re-exported here for the callers of ``build_modbus_factory``. AUTO (``auto.py``)
builds on this module; ``factory.py`` chooses between them.

Channel set (decided here, tested in tests/acquisition/test_modbus_session.py):
identify reads all ten slots once per connection and keeps the named ones plus
E1 and E2 always, because continuous mode always sends E1/E2 (as ``||||||``
when unlabelled) and a device must report the same channel set in both modes. An
unnamed I/D slot (I4 on the bench) is left out, as continuous mode leaves it out.

Timestamps: ``requested_at`` is the UTC time the sweep's first request went out,
``latency_s`` the sweep's duration (first request to last reply); both are set on
every frame and rejection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from time import monotonic, monotonic_ns
from typing import TYPE_CHECKING

import structlog

from servomexd.acquisition.base import SessionFactory
from servomexd.acquisition.modbus_bus import (
    FRAMERS,
    BusSettings,
    LoopbackRequest,
    ModbusBus,
    ModbusBusRegistry,
    Request,
    SendStamp,
)
from servomexd.acquisition.settings import ModbusDeviceSettings
from servomexd.errors import (
    ServomexConfigError,
    ServomexConnectionError,
    ServomexError,
    ServomexModbusError,
    ServomexProtocolError,
    ServomexTimeoutError,
    ServomexTransportError,
)
from servomexd.model import AcquisitionEvent, ChannelId, ProtocolKind, Rejection
from servomexd.protocol import modbus as mb

if TYPE_CHECKING:
    from servomexd.metrics import Metrics

log = structlog.get_logger("servomexd.modbus")


def describe_target(device: ModbusDeviceSettings, protocol: str | None = None) -> str:
    """Log-safe ``/dev/ttyUSB0 @19200 8N1 modbus_rtu addr 30``; on ``socket://`` the line
    settings are the device server's, so they are left out."""
    line = f" @{device.baudrate} {device.bytesize}{device.parity}{device.stopbits}"
    if device.port.startswith("socket://"):
        line = ""
    return f"{device.port}{line} {protocol or device.protocol} addr {device.address}"


# --- the polling session -----------------------------------------------------------------


class ModbusSession:
    """One slave on a shared bus: identify once, then poll on an absolute schedule."""

    def __init__(
        self,
        device: ModbusDeviceSettings,
        bus: ModbusBus,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.device = device
        self.bus = bus
        self.metrics = metrics
        self._protocol = bus.settings.protocol
        self.channels: tuple[ChannelId, ...] = ()
        self.slots: tuple[mb.SlotInfo, ...] = ()
        self.planner: mb.PollPlanner | None = None
        self.polls = 0
        self.missed_polls = 0
        self._attached = False
        self._log = log.bind(device=device.name, address=device.address, port=device.port)

    @property
    def protocol(self) -> ProtocolKind:
        return self._protocol

    async def attach(self) -> None:
        await self.bus.attach(self, self.device.inter_request_delay)
        self._attached = True

    async def aclose(self) -> None:
        if self._attached:
            self._attached = False
            await self.bus.detach(self)

    async def execute(
        self,
        request: Request,
        stamp: SendStamp | None = None,
        *,
        request_timeout: float | None = None,
        retries: int | None = None,
    ) -> list[int] | list[bool] | bytes:
        if request_timeout is None:
            request_timeout = self.device.request_timeout
        return await self.bus.execute(
            self.device.address,
            request,
            request_timeout=request_timeout,
            retries=self.device.retries if retries is None else retries,
            stamp=stamp,
            device=self.device.name,
        )

    # --- identify ----------------------------------------------------------------------

    async def identify(self) -> tuple[ChannelId, ...]:
        """Read every slot's name and unit; choose the channels polls report."""
        try:
            registers = await self.execute(mb.IDENTIFY_READ)
            slots = [
                mb.decode_slot_info(
                    channel,
                    _registers(registers)[mb.value_address(channel) :][: mb.SLOT_REGISTERS],
                )
                for channel in ChannelId
            ]
        except ServomexModbusError as exc:
            if exc.exception_code != mb.EXCEPTION_ILLEGAL_ADDRESS:
                raise
            self._log.info("modbus.identify_per_slot", reason="broad identify read refused")
            slots = await self._identify_per_slot()
        self.slots = tuple(slots)
        self.channels = mb.reported_channels(slots)
        if not self.channels:
            raise ServomexProtocolError(
                "identify found no readable channel", context={"address": self.device.address}
            )
        self.planner = mb.PollPlanner(self.channels)
        self._log.info(
            "modbus.identified",
            channels=",".join(
                f"{info.channel.value}={info.name or '-'}[{info.unit_text}]"
                for info in slots
                if info.channel in self.channels
            ),
            plan=" ".join(read.describe() for read in self.planner.plan.reads),
        )
        return self.channels

    async def _identify_per_slot(self) -> list[mb.SlotInfo]:
        slots = []
        for channel in ChannelId:
            try:
                registers = await self.execute(mb.slot_read(channel))
            except ServomexModbusError as exc:
                if exc.exception_code != mb.EXCEPTION_ILLEGAL_ADDRESS:
                    raise
                continue  # slot not served by this unit
            slots.append(mb.decode_slot_info(channel, _registers(registers)))
        return slots

    # --- polling -----------------------------------------------------------------------

    async def events(self) -> AsyncIterator[AcquisitionEvent]:
        """Sweep at ``start + n * poll_interval``; a slot overrun is skipped and counted.

        A sweep that starts late but inside its own slot still runs (once); slots
        whose whole period went by during a long sweep are missed, never made up.
        """
        if self.planner is None:
            await self.identify()
        interval = self.device.poll_interval
        start = monotonic()
        slot = 0
        streak = 0
        while True:
            delay = start + slot * interval - monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            event = await self.sweep()
            self.polls += 1
            if isinstance(event, Rejection) and event.reason == "timeout":
                streak += 1
            else:
                streak = 0
            yield event
            if streak >= self.device.timeout_streak:
                raise ServomexTimeoutError(
                    "slave stopped answering",
                    context={
                        "device": self.device.name,
                        "address": self.device.address,
                        "failed_polls": streak,
                    },
                )
            current = int((monotonic() - start) // interval)
            following = max(slot + 1, current)
            missed = following - slot - 1
            if missed:
                self._missed(missed)
            slot = following

    def _missed(self, count: int) -> None:
        self.missed_polls += count
        if self.metrics is not None:
            self.metrics.polls_missed.labels(self.device.name).inc(count)
        self._log.warning(
            "modbus.polls_missed",
            missed=count,
            total=self.missed_polls,
            poll_interval_s=self.device.poll_interval,
        )

    async def sweep(self) -> AcquisitionEvent:
        """One poll: the plan's transactions -> a ``Frame``, or a ``Rejection`` saying why."""
        if self.planner is None:
            raise ServomexProtocolError("sweep before identify")
        stamp = SendStamp()
        try:
            channels, results = await self._run_with_fallback(self.planner, stamp)
            latency = stamp.latency()
            return mb.decode_sweep(
                channels,
                results,
                protocol=self._protocol,
                received_at=datetime.now(UTC),
                monotonic_ns=monotonic_ns(),
                requested_at=stamp.at,
                latency_s=latency,
            )
        except ServomexTransportError as exc:
            if not isinstance(exc, ServomexTimeoutError):
                raise  # the port is gone: the supervisor reconnects
            return self._reject(exc, stamp)
        except ServomexError as exc:  # exception reply, or a reply that does not decode
            return self._reject(exc, stamp)

    async def _run_with_fallback(
        self, planner: mb.PollPlanner, stamp: SendStamp
    ) -> tuple[tuple[ChannelId, ...], list[mb.SweepResult]]:
        plan = planner.plan
        try:
            return plan.channels, await self._run(plan, stamp)
        except ServomexModbusError as exc:
            if not plan.broad or not planner.on_exception(exc.exception_code or 0):
                raise
            self._log.warning("modbus.narrow_reads", reason=str(exc))
            plan = planner.plan
            return plan.channels, await self._run(plan, stamp)
        except ServomexTimeoutError as exc:
            narrow = planner.timeout_fallback() if plan.broad else None
            if narrow is None:
                raise
            self._log.info("modbus.try_narrow_reads", reason=str(exc))
            results = await self._run(narrow, stamp)
            planner.narrow_succeeded()
            self._log.warning("modbus.narrow_reads", reason="broad read timed out, narrow worked")
            return narrow.channels, results

    async def _run(self, plan: mb.PollPlan, stamp: SendStamp) -> list[mb.SweepResult]:
        results: list[mb.SweepResult] = []
        for read in plan.reads:
            values = await self.execute(read, stamp)
            if isinstance(values, bytes):
                raise ServomexProtocolError(
                    "unexpected reply", context={"request": read.describe()}
                )
            results.append((read, values))
        return results

    def _reject(self, error: ServomexError, stamp: SendStamp) -> Rejection:
        level = "warning" if isinstance(error, ServomexModbusError) else "info"
        getattr(self._log, level)("modbus.poll_failed", reason=error.reason, error=str(error))
        return Rejection(
            error,
            self._protocol,
            datetime.now(UTC),
            monotonic_ns(),
            b"",
            stamp.at,
            stamp.latency(),
        )


def _registers(values: list[int] | list[bool] | bytes) -> list[int]:
    if isinstance(values, bytes):
        raise ServomexProtocolError("unexpected reply to a register read")
    return [int(value) for value in values]


# --- factories ---------------------------------------------------------------------------


class ModbusSessionFactory:
    """Opens (attach + identify) a ``ModbusSession`` for one configured slave."""

    def __init__(
        self,
        device: ModbusDeviceSettings,
        buses: ModbusBusRegistry,
        protocol: ProtocolKind,
    ) -> None:
        if protocol not in FRAMERS:
            raise ServomexConfigError(
                "not a Modbus protocol", context={"device": device.name, "protocol": protocol}
            )
        self.device = device
        self.buses = buses
        self.protocol = protocol

    @property
    def description(self) -> str:
        return describe_target(self.device, self.protocol.value)

    async def open(self) -> ModbusSession:
        session = ModbusSession(
            self.device,
            self.buses.bus(BusSettings.of(self.device, self.protocol)),
            metrics=self.buses.metrics,
        )
        await session.attach()
        try:
            await session.identify()
        except BaseException as exc:
            await session.aclose()
            if isinstance(exc, ServomexError) and not isinstance(exc, ServomexConnectionError):
                raise ServomexConnectionError(
                    "slave did not identify",
                    context={"target": self.description, "cause": str(exc), "reason": exc.reason},
                ) from exc
            raise
        return session


def build_modbus_factory(device: ModbusDeviceSettings, buses: ModbusBusRegistry) -> SessionFactory:
    """The session factory for a ``modbus_rtu``, ``modbus_ascii`` or ``modbus_tcp`` device."""
    try:
        protocol = ProtocolKind(device.protocol)
    except ValueError:
        protocol = None
    if protocol not in FRAMERS or protocol is None:
        raise ServomexConfigError(
            "build_modbus_factory needs a modbus_rtu, modbus_ascii or modbus_tcp device",
            context={"device": device.name, "protocol": device.protocol},
        )
    buses.declare(device)
    return ModbusSessionFactory(device, buses, protocol)


__all__ = [
    "BusSettings",
    "LoopbackRequest",
    "ModbusBus",
    "ModbusBusRegistry",
    "ModbusDeviceSettings",
    "ModbusSession",
    "ModbusSessionFactory",
    "SendStamp",
    "build_modbus_factory",
    "describe_target",
]
