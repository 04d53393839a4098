"""Modbus RTU/ASCII acquisition: a shared bus per port, and one polling session per slave.

Why a bus object: on RS485 several analysers share one serial line, so every
device configured on a port goes through one pymodbus client, one lock and one
idle-gap clock. The 4100 drops about a quarter of requests sent back to back, so
``inter_request_delay`` of quiet line is enforced before *every* transaction on
the port, whichever slave it addresses (the published driver kept one engine per
slave and could break that rule). The line is taken per attempt, not per sweep,
and a slave that just failed to answer queues behind its healthy neighbours, so a
dead slave costs the others about one request timeout, not one per transaction.

pymodbus's own reconnect and retries are off: our supervisor owns reconnect and
backoff, and our retries honour the idle gap (pymodbus resends at once). The bus
closes its port when its last user detaches and is reopened by the first user
that attaches again, so a failed USB adapter is reopened once, not once per slave.

Channel set (decided here, tested in tests/acquisition/test_modbus_session.py):
identify reads all ten slots once per connection and keeps the named ones plus
E1 and E2 always, because continuous mode always sends E1/E2 (as ``||||||``
when unlabelled) and the issue asks for the same channel set in both modes. An
unnamed I/D slot (I4 on the bench) is left out, as continuous mode leaves it out.

Timestamps: ``requested_at`` is the UTC time the sweep's first request went out,
``latency_s`` the sweep's duration (first request to last reply); both are set on
every frame and rejection.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from time import monotonic, monotonic_ns
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from servomexd.acquisition.base import AcquisitionEvent, Rejection, SessionFactory
from servomexd.errors import (
    ServomexConfigError,
    ServomexConnectionError,
    ServomexError,
    ServomexModbusError,
    ServomexProtocolError,
    ServomexTimeoutError,
    ServomexTransportError,
)
from servomexd.model import ChannelId, ProtocolKind
from servomexd.protocol import modbus as mb

if TYPE_CHECKING:
    from servomexd.metrics import Metrics

log = structlog.get_logger("servomexd.modbus")

# pymodbus logs every timeout at ERROR with a frame dump; we log each failed
# request ourselves, with the device and the request, so keep its logger quiet.
_PYMODBUS_LOGGER = logging.getLogger("pymodbus.logging")
if _PYMODBUS_LOGGER.level == logging.NOTSET:
    _PYMODBUS_LOGGER.setLevel(logging.CRITICAL)

_FRAMERS = {ProtocolKind.MODBUS_RTU: FramerType.RTU, ProtocolKind.MODBUS_ASCII: FramerType.ASCII}
_BACKSTOP_TIMEOUT = 30.0
"""pymodbus's own response timeout; ours (per attempt, ``request_timeout``) fires first."""


class ModbusDeviceSettings(Protocol):
    """The ``DeviceConfig`` fields this module reads (structural, read-only)."""

    @property
    def name(self) -> str: ...
    @property
    def port(self) -> str: ...
    @property
    def protocol(self) -> str: ...
    @property
    def baudrate(self) -> int: ...
    @property
    def bytesize(self) -> int: ...
    @property
    def parity(self) -> str: ...
    @property
    def stopbits(self) -> int: ...
    @property
    def address(self) -> int: ...
    @property
    def poll_interval(self) -> float: ...
    @property
    def inter_request_delay(self) -> float: ...
    @property
    def request_timeout(self) -> float: ...
    @property
    def retries(self) -> int: ...
    @property
    def timeout_streak(self) -> int: ...
    @property
    def expected_frame_period(self) -> float: ...


def describe_target(device: ModbusDeviceSettings, protocol: str | None = None) -> str:
    """Log-safe ``/dev/ttyUSB0 @19200 8N1 modbus_rtu addr 30``."""
    return (
        f"{device.port} @{device.baudrate} {device.bytesize}{device.parity}{device.stopbits} "
        f"{protocol or device.protocol} addr {device.address}"
    )


# --- the shared bus ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BusSettings:
    port: str
    protocol: ProtocolKind
    baudrate: int = 19200
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1

    @classmethod
    def of(cls, device: ModbusDeviceSettings, protocol: ProtocolKind) -> BusSettings:
        return cls(
            device.port, protocol, device.baudrate, device.bytesize, device.parity, device.stopbits
        )


class SendStamp:
    """When a sweep's first request went out (wall clock and monotonic)."""

    __slots__ = ("at", "ns")

    def __init__(self) -> None:
        self.at: datetime | None = None
        self.ns: int | None = None

    def mark(self) -> None:
        if self.ns is None:
            self.ns = monotonic_ns()
            self.at = datetime.now(UTC)

    def latency(self) -> float | None:
        return None if self.ns is None else (monotonic_ns() - self.ns) / 1e9


class LoopbackRequest:
    """FC08 sub 0 with ``data``: the AUTO probe (never retried, like the driver's)."""

    function = mb.FC_DIAGNOSTICS

    def __init__(self, data: bytes = mb.LOOPBACK_DATA) -> None:
        self.data = data

    def describe(self) -> str:
        return f"FC08 sub 0 loopback data={self.data.hex().upper()}"


Request = mb.ReadRequest | LoopbackRequest


_DEFERRAL = 8
"""How many later requests may overtake one from a slave that just failed to answer."""


class _Line:
    """Exclusive use of the serial line, first come first served, with one twist.

    A request from a slave that just failed to answer is queued as if it had
    arrived ``_DEFERRAL`` requests later: healthy neighbours go first, so a dead
    slave costs them about the one attempt already on the wire instead of one
    attempt per transaction of their sweeps, and the dead slave is still never
    starved (at most ``_DEFERRAL`` requests overtake it).
    """

    def __init__(self) -> None:
        self._busy = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = 0

    async def acquire(self, *, deferred: bool = False) -> None:
        self._arrivals += 1
        if not self._busy and not self._waiters:
            self._busy = True
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        order = self._arrivals + (_DEFERRAL if deferred else 0)
        heapq.heappush(self._waiters, (order, self._arrivals, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted while being cancelled: pass the line on
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)  # ownership moves to the waiter; still busy
                return
        self._busy = False


class ModbusBus:
    """One serial port and everything addressed on it."""

    def __init__(self, settings: BusSettings) -> None:
        self.settings = settings
        self._client: AsyncModbusSerialClient | None = None
        self._line = _Line()
        self._suspect: set[int] = set()
        self._users: dict[int, float] = {}
        self._last_end = float("-inf")
        self.transactions = 0
        self.opened = 0

    @property
    def users(self) -> int:
        return len(self._users)

    @property
    def idle_gap(self) -> float:
        """The quiet line required before a transaction: the largest any user asked for."""
        return max(self._users.values(), default=0.0)

    @property
    def is_open(self) -> bool:
        return self._client is not None and self._client.connected

    async def attach(self, user: object, inter_request_delay: float) -> None:
        """Register a user and make sure the port is open (opened once for all users)."""
        self._users[id(user)] = inter_request_delay
        try:
            await self._line.acquire()
            try:
                if not self.is_open:
                    await self._open()
            finally:
                self._line.release()
        except BaseException:
            await self.detach(user)
            raise

    async def detach(self, user: object) -> None:
        """Unregister a user; the last one out closes the port at once."""
        self._users.pop(id(user), None)
        if not self._users:
            self._close()

    async def _open(self) -> None:
        self._close()
        s = self.settings
        client = AsyncModbusSerialClient(
            s.port,
            framer=_FRAMERS[s.protocol],
            baudrate=s.baudrate,
            bytesize=s.bytesize,
            parity=s.parity,
            stopbits=s.stopbits,
            name=s.port,
            reconnect_delay=0,  # no pymodbus reconnect: the supervisor owns it
            reconnect_delay_max=0,
            timeout=_BACKSTOP_TIMEOUT,
            retries=0,  # our retries wait for the idle gap; pymodbus's would not
        )
        try:
            connected = await client.connect()
        except (OSError, ModbusException) as exc:
            client.close()
            raise ServomexConnectionError(
                "cannot open serial port", context={"port": s.port, "error": str(exc)}
            ) from exc
        if not connected:
            client.close()
            raise ServomexConnectionError(
                "cannot open serial port", context={"port": s.port, "protocol": s.protocol.value}
            )
        self._client = client
        self.opened += 1
        self._last_end = monotonic()
        log.info("modbus.port_opened", port=s.port, protocol=s.protocol.value)

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            log.info("modbus.port_closed", port=self.settings.port)

    def flush_input(self) -> None:
        """Throw away anything buffered (AUTO step 0: no stale bytes reach a decoder)."""
        client = self._client
        if client is None:
            return
        transport: Any = client.ctx.transport
        serial_port = getattr(transport, "sync_serial", None)
        if serial_port is not None:
            # termios may refuse on some pseudo devices; nothing to flush then.
            with contextlib.suppress(OSError, ValueError):
                serial_port.reset_input_buffer()
        client.ctx.recv_buffer = b""

    async def execute(
        self,
        address: int,
        request: Request,
        *,
        request_timeout: float,
        retries: int,
        stamp: SendStamp | None = None,
        device: str = "",
    ) -> list[int] | list[bool] | bytes:
        """One transaction with retries; each attempt waits for the idle gap, under the lock.

        Raises ``ServomexModbusError`` for an exception reply (not retried: the slave
        answered), ``ServomexTimeoutError`` when every attempt went unanswered, and
        ``ServomexConnectionError`` when the port is gone.
        """
        attempts = 1 if isinstance(request, LoopbackRequest) else retries + 1
        for attempt in range(1, attempts + 1):
            response = await self._attempt(address, request, request_timeout, stamp)
            if response is None:
                log.debug(
                    "modbus.no_reply",
                    device=device,
                    port=self.settings.port,
                    address=address,
                    request=request.describe(),
                    attempt=attempt,
                    attempts=attempts,
                )
                continue
            if response.isError():
                code = int(getattr(response, "exception_code", 0))
                raise ServomexModbusError(
                    f"slave answered exception {code:02d}",
                    exception_code=code,
                    context={
                        "port": self.settings.port,
                        "address": address,
                        "request": request.describe(),
                    },
                )
            if response.function_code != request.function:
                # A late reply to an earlier request of this slave: never decode it as ours.
                raise ServomexProtocolError(
                    "reply does not match the request",
                    context={
                        "port": self.settings.port,
                        "address": address,
                        "request": request.describe(),
                        "reply_function": response.function_code,
                    },
                )
            return _payload(request, response)
        raise ServomexTimeoutError(
            "no reply from slave",
            context={
                "port": self.settings.port,
                "address": address,
                "request": request.describe(),
                "attempts": attempts,
                "timeout_s": request_timeout,
            },
        )

    async def _attempt(
        self, address: int, request: Request, request_timeout: float, stamp: SendStamp | None
    ) -> ModbusPDU | None:
        await self._line.acquire(deferred=address in self._suspect)
        try:
            client = self._client
            if client is None or not client.connected:
                raise ServomexConnectionError(
                    "serial port is not open", context={"port": self.settings.port}
                )
            wait = self._last_end + self.idle_gap - monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if stamp is not None:
                stamp.mark()
            self.transactions += 1
            try:
                async with asyncio.timeout(request_timeout):
                    response = await _send(client, address, request)
            except TimeoutError:
                self._suspect.add(address)
                return None
            except ConnectionException as exc:
                raise ServomexConnectionError(
                    "serial port lost", context={"port": self.settings.port, "error": str(exc)}
                ) from exc
            except ModbusIOException:
                if not client.connected:
                    raise ServomexConnectionError(
                        "serial port lost", context={"port": self.settings.port}
                    ) from None
                self._suspect.add(address)
                return None  # pymodbus gave up waiting (its backstop timeout)
            self._suspect.discard(address)
            return response
        finally:
            self._last_end = monotonic()
            self._line.release()

    async def aclose(self) -> None:
        await self._line.acquire()
        try:
            self._users.clear()
            self._close()
        finally:
            self._line.release()


async def _send(client: AsyncModbusSerialClient, address: int, request: Request) -> ModbusPDU:
    if isinstance(request, LoopbackRequest):
        return await client.diag_query_data(request.data, device_id=address)
    if request.function == mb.FC_READ_INPUT_REGISTERS:
        return await client.read_input_registers(
            request.address, count=request.quantity, device_id=address
        )
    if request.function == mb.FC_READ_DISCRETE_INPUTS:
        return await client.read_discrete_inputs(
            request.address, count=request.quantity, device_id=address
        )
    raise ValueError(f"unsupported request {request.describe()}")


def _payload(request: Request, response: ModbusPDU) -> list[int] | list[bool] | bytes:
    if isinstance(request, LoopbackRequest):
        message = getattr(response, "message", b"")
        if isinstance(message, int):
            return message.to_bytes(2, "big")
        return bytes(message or b"")
    if request.function == mb.FC_READ_INPUT_REGISTERS:
        return list(response.registers)
    return list(response.bits)


class ModbusBusRegistry:
    """One ``ModbusBus`` per serial port, shared by every device configured on it.

    The daemon makes one registry, passes it to every ``build_modbus_factory`` call,
    and ``await buses.aclose()`` at shutdown. ``metrics`` (optional) receives the
    per-device ``polls_missed`` count.
    """

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self._buses: dict[str, ModbusBus] = {}
        self._declared: dict[str, tuple[str, BusSettings]] = {}

    @staticmethod
    def _key(port: str) -> str:
        # The configured path, not its target: a replugged adapter behind a by-id link
        # comes back as another ttyUSBn, and must still be the same bus. (Naming one
        # adapter by two paths gives two buses; the second open then fails as busy.)
        return os.path.normpath(port)

    def bus(self, settings: BusSettings) -> ModbusBus:
        """The bus on ``settings.port``; refuses a second framing or line setting on it."""
        key = self._key(settings.port)
        bus = self._buses.get(key)
        if bus is not None and bus.settings != settings:
            if bus.users:
                raise ServomexConfigError(
                    "devices on one port must share protocol and serial settings",
                    context={
                        "port": settings.port,
                        "in_use": _settings_text(bus.settings),
                        "requested": _settings_text(settings),
                    },
                )
            bus = None  # idle bus with other settings (e.g. after AUTO): replace it
        if bus is None:
            bus = ModbusBus(settings)
            self._buses[key] = bus
        return bus

    def declare(self, device: str, settings: BusSettings) -> None:
        """Note a configured device's line settings; refuse a conflict at start-up.

        Devices sharing a port share one line: one framing, one baud rate. Catching a
        mismatch while building factories makes it a configuration error (exit 78)
        instead of a link that fails to open forever.
        """
        key = self._key(settings.port)
        first = self._declared.setdefault(key, (device, settings))
        if first[1] != settings:
            raise ServomexConfigError(
                "devices on one port must share protocol and serial settings",
                context={
                    "port": settings.port,
                    first[0]: _settings_text(first[1]),
                    device: _settings_text(settings),
                },
            )

    def bus_for(self, port: str) -> ModbusBus | None:
        return self._buses.get(self._key(port))

    def users_on(self, port: str) -> int:
        bus = self._buses.get(self._key(port))
        return 0 if bus is None else bus.users

    def active_protocol(self, port: str) -> ProtocolKind | None:
        """The framing in use on ``port`` by attached devices, if any."""
        bus = self._buses.get(self._key(port))
        return bus.settings.protocol if bus is not None and bus.users else None

    async def aclose(self) -> None:
        for bus in self._buses.values():
            await bus.aclose()
        self._buses.clear()


def _settings_text(settings: BusSettings) -> str:
    return (
        f"{settings.protocol.value} {settings.baudrate} "
        f"{settings.bytesize}{settings.parity}{settings.stopbits}"
    )


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
        if protocol not in _FRAMERS:
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
    """The session factory for a ``modbus_rtu``, ``modbus_ascii`` or ``auto`` device."""
    if device.protocol == "auto":
        from servomexd.acquisition.auto import AutoSessionFactory

        return AutoSessionFactory(device, buses)
    try:
        protocol = ProtocolKind(device.protocol)
    except ValueError:
        protocol = None
    if protocol not in _FRAMERS or protocol is None:
        raise ServomexConfigError(
            "build_modbus_factory needs a Modbus or auto device",
            context={"device": device.name, "protocol": device.protocol},
        )
    buses.declare(device.name, BusSettings.of(device, protocol))
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
