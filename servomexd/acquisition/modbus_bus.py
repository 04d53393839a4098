"""The shared Modbus line: one port or connection, one pymodbus client, every slave on it.

On RS485 several analysers share one serial line, so every device configured on a
port goes through one ``ModbusBus``: one client, one idle-gap clock, one queue for
the line. The 4100 drops about a quarter of requests sent back to back, so
``inter_request_delay`` of quiet line is enforced before *every* transaction on the
port, whichever slave it addresses (the published driver kept one engine per slave
and could break that rule). The line is taken per attempt, not per sweep, and a
slave that just failed to answer queues behind its healthy neighbours, so a dead
slave costs the others about one request timeout, not one per transaction.

pymodbus's own reconnect and retries are off: our supervisor owns reconnect and
backoff, and our retries honour the idle gap (pymodbus resends at once). A bus
closes its port when its last user detaches and is reopened by the first user that
attaches again, so a failed USB adapter is reopened once, not once per slave.

The same holds over the network (``servomexd.link.modbus_client`` picks the client):
RTU/ASCII devices behind one ``socket://`` device server share one bus as on RS485,
and Modbus TCP devices behind one gateway share one connection with one request in
flight (gateways to RS485 cannot overlap requests; pymodbus serialises them too).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from time import monotonic, monotonic_ns
from typing import TYPE_CHECKING, Any

import structlog
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from servomexd.acquisition.base import raise_if_stop_requested
from servomexd.errors import (
    ServomexConfigError,
    ServomexConnectionError,
    ServomexModbusError,
    ServomexProtocolError,
    ServomexTimeoutError,
)
from servomexd.link.endpoint import is_network_port
from servomexd.link.line import (
    LineUser,
    SerialLineSettings,
    describe_line,
    line_of,
    sharing_problem,
)
from servomexd.link.modbus_client import ModbusClient, connect_modbus_client
from servomexd.link.tcp import CONNECT_TIMEOUT
from servomexd.model import ProtocolKind
from servomexd.protocol import modbus as mb

if TYPE_CHECKING:
    from servomexd.metrics import Metrics

log = structlog.get_logger("servomexd.modbus")

# pymodbus logs every timeout at ERROR with a frame dump; we log each failed
# request ourselves, with the device and the request, so keep its logger quiet.
_PYMODBUS_LOGGER = logging.getLogger("pymodbus.logging")
if _PYMODBUS_LOGGER.level == logging.NOTSET:
    _PYMODBUS_LOGGER.setLevel(logging.CRITICAL)

FRAMERS = {
    ProtocolKind.MODBUS_RTU: FramerType.RTU,
    ProtocolKind.MODBUS_ASCII: FramerType.ASCII,
    ProtocolKind.MODBUS_TCP: FramerType.SOCKET,  # MBAP header, over socket:// only
}
_BACKSTOP_TIMEOUT = 30.0
"""pymodbus's own response timeout; ours (per attempt, ``request_timeout``) fires first."""


@dataclass(frozen=True, slots=True)
class BusSettings:
    port: str
    protocol: ProtocolKind
    baudrate: int = 19200
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1
    connect_timeout: float = CONNECT_TIMEOUT

    @classmethod
    def of(cls, device: SerialLineSettings, protocol: ProtocolKind) -> BusSettings:
        return cls(
            protocol=protocol,
            connect_timeout=float(getattr(device, "connect_timeout", CONNECT_TIMEOUT)),
            **line_of(device),
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
        self._client: ModbusClient | None = None
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
        self._client = await connect_modbus_client(
            s.port,
            FRAMERS[s.protocol],
            baudrate=s.baudrate,
            bytesize=s.bytesize,
            parity=s.parity,
            stopbits=s.stopbits,
            response_timeout=_BACKSTOP_TIMEOUT,
            connect_timeout=s.connect_timeout,
        )
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
            self._check_reply(address, request, response)
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

    def _check_reply(self, address: int, request: Request, response: ModbusPDU) -> None:
        """Refuse an exception reply (the slave answered: no retry) and a reply to some
        other request."""
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

    async def _attempt(
        self, address: int, request: Request, request_timeout: float, stamp: SendStamp | None
    ) -> ModbusPDU | None:
        await self._line.acquire(deferred=address in self._suspect)
        try:
            client = self._client
            if client is None or not client.connected:
                raise ServomexConnectionError(
                    "port or connection is not open (lost)", context={"port": self.settings.port}
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
                raise_if_stop_requested()  # pymodbus's wait_for may drop our cancel
            except TimeoutError:
                self._suspect.add(address)
                return None
            except ConnectionException as exc:
                raise ServomexConnectionError(
                    "port or connection lost",
                    context={"port": self.settings.port, "error": str(exc)},
                ) from exc
            except ModbusIOException:
                if not client.connected:
                    raise ServomexConnectionError(
                        "port or connection lost", context={"port": self.settings.port}
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


async def _send(client: ModbusClient, address: int, request: Request) -> ModbusPDU:
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
        self._declared: dict[str, list[LineUser]] = {}
        self._spellings: dict[str, str] = {}

    def _key(self, port: str) -> str:
        # The configured path, not its target: a replugged adapter behind a by-id link
        # comes back as another ttyUSBn, and must still be the same bus. Another spelling
        # of an adapter already seen (ttyUSB0 for its by-id link) is mapped, when first
        # seen, to the first spelling: one adapter, one bus, whatever the names.
        if is_network_port(port):
            return port
        path = os.path.normpath(port)
        known = self._spellings.get(path)
        if known is not None:
            return known
        real = os.path.realpath(path)
        for spelling in set(self._spellings.values()):
            if os.path.realpath(spelling) == real:
                self._spellings[path] = spelling
                return spelling
        self._spellings[path] = path
        return path

    def _canonical(self, settings: BusSettings) -> BusSettings:
        key = self._key(settings.port)
        return settings if key == settings.port else replace(settings, port=key)

    def bus(self, settings: BusSettings) -> ModbusBus:
        """The bus on ``settings.port``; refuses a second framing or line setting on it."""
        settings = self._canonical(settings)
        key = self._key(settings.port)
        bus = self._buses.get(key)
        if bus is not None and bus.settings != settings:
            if bus.users:
                raise ServomexConfigError(
                    "devices on one port must share protocol and serial settings",
                    context={
                        "port": settings.port,
                        "in_use": describe_line(bus.settings),
                        "requested": describe_line(settings),
                    },
                )
            bus = None  # idle bus with other settings (e.g. after AUTO): replace it
        if bus is None:
            bus = ModbusBus(settings)
            self._buses[key] = bus
        return bus

    def declare(self, device: LineUser) -> None:
        """Note a configured device; refuse one that cannot share its port, at start-up.

        The rule is ``link.line.sharing_problem``, the one configuration applies too.
        Catching a mismatch while building factories makes it a configuration error
        (exit 78) instead of a link that fails to open forever.
        """
        key = self._key(device.port)
        # Declaring a device again (a factory rebuilt for it) replaces its entry.
        users = [user for user in self._declared.get(key, []) if user.name != device.name]
        users.append(device)
        problem = sharing_problem(users)
        if problem is not None:
            raise ServomexConfigError(
                problem,
                context={"port": device.port, **{u.name: describe_line(u) for u in users}},
            )
        self._declared[key] = users

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


__all__ = [
    "FRAMERS",
    "BusSettings",
    "LoopbackRequest",
    "ModbusBus",
    "ModbusBusRegistry",
    "Request",
    "SendStamp",
    "SerialLineSettings",
]
