"""A simulated SERVOPRO 4100 Modbus slave (or several, on one RS485 bus) over a pty pair.

Transport: two pseudo-terminals whose *masters* are relayed to each other. The
pymodbus server opens one slave path, the daemon (or a test) opens the other,
symlinked at ``--link``. The relay sees every byte in both directions, so it
timestamps the wire (tests measure the idle gap between transactions there) and
can pace delivery at a baud rate: a pty moves bytes instantly, a 19200-baud line
does not, and ``bench/bench_modbus.py`` needs the honest figure.

Device model: each address serves the register map of a 5-channel 4100 (I1
Oxygen %, I2 CO %, I3 CO\u2082 % with the display ROM's 0x82 glyph, E1/E2 unnamed
``||||||`` mA; I4 ``||||||``, D1..D4 blank), values drifting over time (a new
value every ``period`` seconds), status bits settable, FC08 loopback answered,
and faults injectable per address: silence, or an exception for chosen reads.
The server answers at once; honouring the 50 ms idle gap is the master's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import signal
import sys
import tty
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from time import monotonic, monotonic_ns
from typing import IO, Any, NamedTuple

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from servomexd.model import ChannelId, ChannelStatus, ProtocolKind
from servomexd.protocol import modbus as mb
from servomexd.simulator.tcp import Rfc2217Bridge, split_host_port

log = logging.getLogger(__name__)

BITS_PER_REGISTER = 16
BLOCK_BITS = 1024
"""FC02 block served: PDU 0..1023 (channel bits 0..79, analyser bits 1000..1015)."""


# --- the analyser model ------------------------------------------------------------------


class ChannelSpec(NamedTuple):
    """One populated slot of the simulated unit: name, unit and how its value drifts."""

    channel: ChannelId
    name: str
    unit: str
    base: float
    swing: float
    decimals: int = 3


UNNAMED = "||||||"
DEFAULT_CHANNELS: tuple[ChannelSpec, ...] = (
    ChannelSpec(ChannelId.I1, "Oxygen", " % ", 20.9, 0.05),
    ChannelSpec(ChannelId.I2, "CO", " % ", 0.084, 0.01),
    ChannelSpec(ChannelId.I3, "CO\u2082", " % ", 0.25, 0.02),
    ChannelSpec(ChannelId.E1, UNNAMED, " mA", 0.0, 0.0, 1),
    ChannelSpec(ChannelId.E2, UNNAMED, " mA", 0.0, 0.0, 1),
)
"""The bench 4100D as its continuous frames show it."""
_UNPOPULATED_NAMES = {ChannelId.I4: UNNAMED}  # D1..D4 read as blanks


class ExceptionRule(NamedTuple):
    """Answer ``code`` to reads of ``function`` asking for more than ``above`` items."""

    function: int
    code: int
    above: int = 0


@dataclass
class SimulatedAnalyser:
    """State of one simulated slave; values are a pure function of time and seed."""

    address: int
    period: float = 1.0
    seed: int = 0
    channels: tuple[ChannelSpec, ...] = DEFAULT_CHANNELS
    statuses: dict[ChannelId, int] = field(default_factory=dict)
    analyser_bits: list[bool] = field(default_factory=lambda: [False] * mb.ANALYSER_STATUS_COUNT)
    pinned: dict[ChannelId, float | None] = field(default_factory=dict)
    names: dict[ChannelId, str] = field(default_factory=dict)
    silent: bool = False
    rules: list[ExceptionRule] = field(default_factory=list)
    started: float = field(default_factory=monotonic)
    reads: int = 0

    def __post_init__(self) -> None:
        rng = random.Random(self.seed * 1000 + self.address)
        self._phase = {spec.channel: rng.uniform(0, 2 * math.pi) for spec in self.channels}

    def tick(self, now: float | None = None) -> int:
        """The current value step: values change once per ``period``."""
        elapsed = (monotonic() if now is None else now) - self.started
        return max(0, int(elapsed / self.period))

    def value(self, spec: ChannelSpec, tick: int) -> float | None:
        if spec.channel in self.pinned:
            return self.pinned[spec.channel]
        wave = math.sin(tick * 0.7 + self._phase[spec.channel])
        return round(spec.base + spec.swing * wave, spec.decimals)

    def values(self, tick: int | None = None) -> dict[ChannelId, float | None]:
        step = self.tick() if tick is None else tick
        return {spec.channel: self.value(spec, step) for spec in self.channels}

    def input_registers(self, tick: int | None = None) -> list[int]:
        """The 70 FC04 registers as the unit would serve them now."""
        registers = [0] * mb.INPUT_REGISTER_COUNT
        specs = {spec.channel: spec for spec in self.channels}
        values = self.values(tick)
        for channel in ChannelId:
            spec = specs.get(channel)
            name = self.names.get(
                channel, spec.name if spec else _UNPOPULATED_NAMES.get(channel, "")
            )
            unit = spec.unit if spec else " % "
            value = values[channel] if spec else None
            base = mb.value_address(channel)
            registers[base : base + 2] = mb.encode_float(value)
            registers[base + 2 : base + 5] = mb.bytes_to_registers(
                mb.encode_display_text(name, mb.NAME_BYTES)
            )
            # Three display characters then NUL, as measured on the bench unit.
            registers[base + 5 : base + 7] = mb.bytes_to_registers(
                mb.encode_display_text(unit, 3) + b"\x00"
            )
        return registers

    def discrete_inputs(self) -> list[bool]:
        bits = [False] * BLOCK_BITS
        for channel, value in self.statuses.items():
            base = mb.status_address(channel)
            for bit in range(mb.STATUS_BITS_PER_CHANNEL):
                bits[base + bit] = bool(value >> bit & 1)
        start = mb.ANALYSER_STATUS_ADDRESS
        bits[start : start + mb.ANALYSER_STATUS_COUNT] = self.analyser_bits
        return bits

    def exception_for(self, function: int, quantity: int) -> int | None:
        for rule in self.rules:
            if rule.function == function and quantity > rule.above:
                return rule.code
        return None


def _bits_to_registers(bits: Sequence[bool]) -> list[int]:
    """Bit 0 first, 16 to a register (pymodbus's block-bit layout)."""
    registers = []
    for start in range(0, len(bits), BITS_PER_REGISTER):
        chunk = bits[start : start + BITS_PER_REGISTER]
        registers.append(sum(1 << index for index, bit in enumerate(chunk) if bit))
    return registers


# --- the wire: two ptys relayed master to master -----------------------------------------


class WireChunk(NamedTuple):
    """Bytes the relay moved: ``to_slave`` is master->slave (a request)."""

    read_ns: int
    delivered_ns: int
    to_slave: bool
    data: bytes


class PtyRelay:
    """Two pty pairs; bytes read from one master are written to the other.

    ``pace_baud`` models a half-duplex RS485 line: each chunk occupies the line for
    ``len * bits_per_char / baud`` seconds after the line is free, and is delivered
    when its last bit would have arrived. ``unplug()``/``replug()`` replace the
    daemon's side like a USB adapter pulled and plugged back in (a new pty).
    """

    def __init__(
        self, *, pace_baud: int | None = None, bits_per_char: int = 10, record: bool = True
    ) -> None:
        self.pace_baud = pace_baud
        self.bits_per_char = bits_per_char
        self.record = record
        self.chunks: list[WireChunk] = []
        self.server_path = ""
        self.master_path = ""
        self._server: tuple[int, int] | None = None  # (master, slave) fds
        self._daemon: tuple[int, int] | None = None
        self._pending: dict[int, bytearray] = {}
        self._line_free = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    @staticmethod
    def _pair() -> tuple[int, int, str]:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        return master, slave, os.ttyname(slave)

    def open(self) -> None:
        """Create both pty pairs; our slave fds stay open so the masters never see EIO."""
        self._loop = asyncio.get_running_loop()
        master, slave, self.server_path = self._pair()
        self._server = (master, slave)
        self._pending[master] = bytearray()
        self._loop.add_reader(master, self._relay, False)
        self.replug()

    def replug(self) -> None:
        """A fresh daemon-side pty (a new ``/dev/pts/N``, as a replugged adapter gets)."""
        if self._daemon is not None or self._loop is None:
            return
        master, slave, self.master_path = self._pair()
        self._daemon = (master, slave)
        self._pending[master] = bytearray()
        self._loop.add_reader(master, self._relay, True)

    def unplug(self) -> None:
        """Close the daemon side: its reader sees the line hang up."""
        if self._daemon is not None:
            self._drop(self._daemon)
            self._daemon = None

    def _drop(self, pair: tuple[int, int]) -> None:
        master = pair[0]
        if self._loop is not None:
            self._loop.remove_reader(master)
            self._loop.remove_writer(master)
        self._pending.pop(master, None)
        for fd in pair:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _relay(self, to_slave: bool) -> None:
        source = self._daemon if to_slave else self._server
        if source is None:
            return
        try:
            data = os.read(source[0], 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # the other side is gone; nothing to relay
            return
        if not data:
            return
        read_ns = monotonic_ns()
        if self.pace_baud is None:
            self._deliver(data, read_ns, to_slave)
            return
        assert self._loop is not None
        now = monotonic()
        start = max(now, self._line_free)
        self._line_free = start + len(data) * self.bits_per_char / self.pace_baud
        self._loop.call_at(
            self._loop.time() + (self._line_free - now), self._deliver, data, read_ns, to_slave
        )

    def _deliver(self, data: bytes, read_ns: int, to_slave: bool) -> None:
        if self.record:
            self.chunks.append(WireChunk(read_ns, monotonic_ns(), to_slave, data))
        pair = self._server if to_slave else self._daemon
        if pair is None:
            return  # unplugged: the bytes fall on the floor, as on a dead line
        target = pair[0]
        pending = self._pending[target]
        if pending:
            pending.extend(data)
            return
        try:
            written = os.write(target, data)
        except BlockingIOError:
            written = 0
        except OSError:
            return
        if written < len(data):
            pending.extend(data[written:])
            assert self._loop is not None
            self._loop.add_writer(target, self._flush, target)

    def _flush(self, target: int) -> None:
        pending = self._pending.get(target)
        if pending is None:
            return
        try:
            written = os.write(target, pending)
        except BlockingIOError:
            return
        except OSError:
            pending.clear()
            written = 0
        del pending[:written]
        if not pending and self._loop is not None:
            self._loop.remove_writer(target)

    def close(self) -> None:
        for pair in (self._server, self._daemon):
            if pair is not None:
                self._drop(pair)
        self._server = self._daemon = None
        self._pending = {}


class Transaction(NamedTuple):
    """One request and its reply (if any) as seen on the wire, in monotonic ns."""

    request_start_ns: int
    request_end_ns: int
    reply_end_ns: int | None
    request: bytes
    reply: bytes
    idle_before_s: float | None
    """Idle line between the previous byte of anything and this request's first byte."""


RTU_REQUEST_BYTES = 8
"""Every request the daemon sends (FC01-06, FC08 sub 0 with 2 data bytes) is 8 bytes in RTU."""


def _request_complete(protocol: ProtocolKind, data: bytes | bytearray) -> int:
    """Length of the first whole request ADU in ``data``, 0 while incomplete."""
    if protocol is ProtocolKind.MODBUS_RTU:
        return RTU_REQUEST_BYTES if len(data) >= RTU_REQUEST_BYTES else 0
    end = data.find(b"\r\n")
    return end + 2 if end >= 0 else 0


class _Pending:
    """The transaction being assembled: its request so far and what answered it."""

    __slots__ = ("complete", "end", "idle", "reply", "reply_end", "request", "start")

    def __init__(self, start: int, end: int, idle: float | None) -> None:
        self.start = start
        self.end = end
        self.idle = idle
        self.reply_end: int | None = None
        self.request = bytearray()
        self.reply = bytearray()
        self.complete = False

    def done(self) -> Transaction:
        return Transaction(
            self.start, self.end, self.reply_end, bytes(self.request), bytes(self.reply), self.idle
        )


def transactions(chunks: Iterable[WireChunk], protocol: ProtocolKind) -> list[Transaction]:
    """Group relay chunks into transactions (one request ADU and whatever answered it).

    ``idle_before_s`` is the quiet line before the request: from the delivery of
    the previous byte in either direction (when the line went quiet) to the read
    of this request's first byte. Requests written back to back inside one chunk
    get an idle time of 0.
    """
    out: list[Transaction] = []
    current: _Pending | None = None
    last_activity: int | None = None
    for chunk in chunks:
        if not chunk.to_slave:
            if current is not None:
                current.reply.extend(chunk.data)
                current.reply_end = chunk.delivered_ns
            last_activity = chunk.delivered_ns
            continue
        data = chunk.data
        while data:
            if current is None or current.reply or current.complete:
                if current is not None:
                    out.append(current.done())
                idle = None if last_activity is None else (chunk.read_ns - last_activity) / 1e9
                if current is not None and not current.reply and current.complete:
                    idle = max(0.0, (chunk.read_ns - current.end) / 1e9)
                current = _Pending(chunk.read_ns, chunk.delivered_ns, idle)
            needed = _request_complete(protocol, current.request + data)
            if needed:
                take = needed - len(current.request)
                current.request.extend(data[:take])
                current.complete = True
                data = data[take:]
            else:
                current.request.extend(data)
                data = b""
            current.end = chunk.delivered_ns
        last_activity = chunk.delivered_ns
    if current is not None:
        out.append(current.done())
    return out


# --- the simulator -----------------------------------------------------------------------


def request_address(protocol: ProtocolKind, packet: bytes) -> int | None:
    """The slave address of an RTU or ASCII ADU, or the unit id of a Modbus TCP one."""
    if protocol is ProtocolKind.MODBUS_RTU:
        return packet[0] if packet else None
    if protocol is ProtocolKind.MODBUS_TCP:
        return packet[6] if len(packet) > 6 else None  # MBAP: tid, pid, length, unit
    try:
        return int(packet[1:3], 16)
    except ValueError:
        return None


FRAMERS = {
    ProtocolKind.MODBUS_RTU: FramerType.RTU,
    ProtocolKind.MODBUS_ASCII: FramerType.ASCII,
    ProtocolKind.MODBUS_TCP: FramerType.SOCKET,
}


class TcpPacket(NamedTuple):
    """One chunk the TCP server received (``sending`` False) or sent, in monotonic ns."""

    at_ns: int
    sending: bool
    data: bytes


class SlaveBank:
    """The slaves as pymodbus sees them: one ``SimDevice`` per address whose registers are
    refreshed from the analyser model on each read; every FC04 answer is recorded (and
    written as a JSON line to ``emit_log`` once per tick)."""

    def __init__(
        self, analysers: dict[int, SimulatedAnalyser], emit_log: IO[str] | None = None
    ) -> None:
        self.analysers = analysers
        self._emit_log = emit_log
        self._emitted: dict[int, int] = {}
        self.served: list[tuple[int, int, dict[ChannelId, float | None]]] = []
        """(address, monotonic_ns, values) of every FC04 read answered."""

    def device(self, address: int) -> SimDevice:
        """The pymodbus device of one address, its blocks refreshed on every read."""
        analyser = self.analysers[address]
        return SimDevice(
            id=address,
            simdata=(
                [SimData(0, values=[False] * BITS_PER_REGISTER, datatype=DataType.BITS)],
                [SimData(0, values=analyser.discrete_inputs(), datatype=DataType.BITS)],
                [SimData(0, count=1, datatype=DataType.INVALID)],
                [SimData(0, values=analyser.input_registers(), datatype=DataType.REGISTERS)],
            ),
            action=partial(self._action, address),
        )

    async def _action(
        self,
        address: int,
        function: int,
        start: int,
        _request_address: int,
        quantity: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Refresh the block being read from the model, or refuse the read."""
        analyser = self.analysers[address]
        analyser.reads += 1
        if values is None and (code := analyser.exception_for(function, quantity)):
            return ExcCodes(code)
        if function == mb.FC_READ_INPUT_REGISTERS:
            tick = analyser.tick()
            fresh = analyser.input_registers(tick)
            registers[start : start + len(fresh)] = fresh
            served = analyser.values(tick)
            self.served.append((address, monotonic_ns(), served))
            self._emit(analyser, tick, served)
        elif function == mb.FC_READ_DISCRETE_INPUTS:
            fresh = _bits_to_registers(analyser.discrete_inputs())
            registers[start : start + len(fresh)] = fresh
        return None

    def _emit(
        self, analyser: SimulatedAnalyser, tick: int, values: dict[ChannelId, float | None]
    ) -> None:
        if self._emit_log is None or self._emitted.get(analyser.address) == tick:
            return
        self._emitted[analyser.address] = tick
        line = {
            "time": datetime.now(UTC).isoformat(),
            "address": analyser.address,
            "tick": tick,
            "values": {channel.value: value for channel, value in values.items()},
        }
        self._emit_log.write(json.dumps(line) + "\n")
        self._emit_log.flush()


class ModbusSimulator:
    """The in-process simulator: ``async with ModbusSimulator(...) as sim: sim.link_path``."""

    def __init__(
        self,
        *,
        protocol: ProtocolKind = ProtocolKind.MODBUS_RTU,
        addresses: Iterable[int] = (1,),
        link: str | Path | None = None,
        period: float = 1.0,
        seed: int = 0,
        pace_baud: int | None = None,
        emit_log: IO[str] | None = None,
        record_wire: bool = True,
        corrupt_every: int | None = None,
        listen: tuple[str, int] | None = None,
    ) -> None:
        if protocol not in FRAMERS:
            raise ValueError(f"not a Modbus protocol: {protocol}")
        if protocol is ProtocolKind.MODBUS_TCP and listen is None:
            raise ValueError("modbus_tcp is served over TCP only: give listen=(host, port)")
        self.protocol = protocol
        self.analysers = {
            address: SimulatedAnalyser(address, period=period, seed=seed)
            for address in dict.fromkeys(addresses)
        }
        if not self.analysers:
            raise ValueError("at least one address")
        self.link = Path(link) if link is not None else None
        self.relay = PtyRelay(pace_baud=pace_baud, record=record_wire)
        self.bank = SlaveBank(self.analysers, emit_log)
        self._server: ModbusSerialServer | ModbusTcpServer | None = None
        self.listen = listen
        """Serve over TCP (a device server or gateway) on (host, port) instead of a pty."""
        self.tcp_packets: list[TcpPacket] = []
        """Server-side timestamps of every chunk received and sent over TCP."""
        self.stalled = False
        self.connections = 0
        self.corrupt_every = corrupt_every
        self.replies = 0
        self.corrupted = 0
        self.served = self.bank.served
        """(address, monotonic_ns, values) of every FC04 read answered."""

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def link_path(self) -> str:
        """The path the daemon opens: the symlink when one was asked for, or the URL."""
        if self.listen is not None:
            host, port = self.listen
            return f"socket://{f'[{host}]' if ':' in host else host}:{port}"
        return str(self.link) if self.link is not None else self.relay.master_path

    async def start(self) -> None:
        if self.listen is not None:
            await self._start_tcp()
            return
        self.relay.open()
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
            self.link.symlink_to(self.relay.master_path)
        devices = [self.bank.device(address) for address in self.analysers]
        self._server = ModbusSerialServer(
            devices,
            framer=FRAMERS[self.protocol],
            port=self.relay.server_path,
            trace_packet=self._trace_packet,
            reconnect_delay=0.1,
        )
        await self._server.serve_forever(background=True)
        log.info(
            "modbus simulator serving %s on %s, addresses %s",
            self.protocol.value,
            self.link_path,
            ",".join(str(a) for a in self.analysers),
        )

    async def _start_tcp(self) -> None:
        assert self.listen is not None
        server = ModbusTcpServer(
            [self.bank.device(address) for address in self.analysers],
            framer=FRAMERS[self.protocol],
            address=self.listen,
            trace_packet=self._trace_packet,
            trace_connect=self._trace_connect,
        )
        await server.serve_forever(background=True)
        sockets = getattr(server.transport, "sockets", None) or ()
        if sockets and self.listen[1] == 0:  # port 0: keep the one we got, for replug
            self.listen = (self.listen[0], sockets[0].getsockname()[1])
        self._server = server
        log.info("modbus simulator serving %s on %s", self.protocol.value, self.link_path)

    def _trace_connect(self, connected: bool) -> None:
        if connected:
            self.connections += 1
            self.stalled = False  # a new connection is served again

    def stall(self) -> None:
        """Keep the TCP connection, answer nothing more (half-open)."""
        self.stalled = True

    def unplug(self) -> None:
        """Pull the simulated adapter: the daemon's line hangs up and the link vanishes.

        Over TCP: the server stops listening and drops its connections."""
        if self.listen is not None:
            server, self._server = self._server, None
            if server is not None:
                self._shutdown = asyncio.ensure_future(server.shutdown())  # type: ignore[no-untyped-call]  # unannotated upstream
            return
        self.relay.unplug()
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()

    def replug(self) -> None:
        """Plug a new adapter in: a new pty behind the same link path (over TCP: listen
        again on the same port)."""
        if self.listen is not None:
            self._restart = asyncio.ensure_future(self._replug_tcp())
            return
        self.relay.replug()
        if self.link is not None and not self.link.is_symlink():
            self.link.symlink_to(self.relay.master_path)

    async def _replug_tcp(self) -> None:
        shutdown = getattr(self, "_shutdown", None)
        if shutdown is not None:
            await shutdown
        await self._start_tcp()

    async def stop(self) -> None:
        for pending in (getattr(self, "_shutdown", None), getattr(self, "_restart", None)):
            if pending is not None:
                with contextlib.suppress(Exception):
                    await pending
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]  # unannotated upstream
            self._server = None
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                if self.link.is_symlink():
                    self.link.unlink()
        self.relay.close()

    async def __aenter__(self) -> ModbusSimulator:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    # --- controls for tests ------------------------------------------------------------

    def set_value(self, address: int, channel: ChannelId | str, value: float | None) -> None:
        """Pin a channel's value (``None`` serves NaN)."""
        self.analysers[address].pinned[ChannelId(channel)] = value

    def release_value(self, address: int, channel: ChannelId | str) -> None:
        self.analysers[address].pinned.pop(ChannelId(channel), None)

    def set_name(self, address: int, channel: ChannelId | str, name: str) -> None:
        self.analysers[address].names[ChannelId(channel)] = name

    def set_status(
        self, address: int, channel: ChannelId | str, status: ChannelStatus | int
    ) -> None:
        """Raw FC02 bits of one channel (bit 0 fault/Invalid .. bit 7 alarm 4)."""
        bits = status.to_bits() if isinstance(status, ChannelStatus) else status
        self.analysers[address].statuses[ChannelId(channel)] = bits & 0xFF

    def set_analyser_bits(self, address: int, bits: Sequence[bool]) -> None:
        if len(bits) != mb.ANALYSER_STATUS_COUNT:
            raise ValueError("16 analyser status bits")
        self.analysers[address].analyser_bits = list(bits)

    def fail_address(self, address: int, silent: bool = True) -> None:
        """Make one slave stop answering (or answer again)."""
        self.analysers[address].silent = silent

    def exception_for(self, address: int, function: int, code: int, *, above: int = 0) -> None:
        """Answer exception ``code`` to reads of ``function`` asking for more than ``above``."""
        self.analysers[address].rules.append(ExceptionRule(function, code, above))

    def clear_exceptions(self, address: int) -> None:
        self.analysers[address].rules.clear()

    def wire_transactions(self) -> list[Transaction]:
        return transactions(self.relay.chunks, self.protocol)

    def _trace_packet(self, sending: bool, packet: bytes) -> bytes:
        """Silence replies of failed or unknown addresses: on RS485 they just do not answer."""
        if self.listen is not None:
            if sending and self.stalled:
                return b""
            self.tcp_packets.append(TcpPacket(monotonic_ns(), sending, packet))
        if not sending:
            return packet
        address = request_address(self.protocol, packet)
        analyser = self.analysers.get(address) if address is not None else None
        if analyser is None or analyser.silent:
            return b""
        self.replies += 1
        if (
            self.corrupt_every
            and self.replies % self.corrupt_every == 0
            and self.protocol is not ProtocolKind.MODBUS_TCP  # TCP has no check to break
        ):
            # A garbled reply (bad CRC / LRC): the master must treat it as no reply.
            self.corrupted += 1
            if self.protocol is ProtocolKind.MODBUS_RTU:
                return packet[:-1] + bytes([packet[-1] ^ 0xFF])
            digit = b"1" if packet[-3:-2] == b"0" else b"0"  # last LRC hex digit
            return packet[:-3] + digit + packet[-2:]
        return packet


# --- command line ------------------------------------------------------------------------


def run_modbus_simulator(args: Any) -> int:
    """``servomexd simulate --protocol modbus_rtu|modbus_ascii --address N ... --link PATH``."""
    protocol = ProtocolKind(args.protocol)
    addresses: list[int] = list(args.address or [1])
    for address in addresses:
        if not 1 <= address <= 247:
            print(f"servomexd simulate: address {address} is outside 1-247", file=sys.stderr)
            return 2
    if (
        getattr(args, "replug_after", None) is not None
        and getattr(args, "unplug_after", None) is None
    ):
        print("servomexd simulate: --replug-after needs --unplug-after", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    emit_path: str | None = getattr(args, "emit_log", None)
    emit = open(emit_path, "a", encoding="utf-8") if emit_path else None  # noqa: SIM115
    try:
        return asyncio.run(_serve(args, protocol, addresses, emit))
    except KeyboardInterrupt:
        return 0
    finally:
        if emit is not None:
            emit.close()


async def _serve(
    args: Any, protocol: ProtocolKind, addresses: list[int], emit: IO[str] | None
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    duration: float | None = getattr(args, "duration", None)
    listen: str | None = getattr(args, "listen", None)
    rfc2217: str | None = getattr(args, "rfc2217", None)
    async with ModbusSimulator(
        protocol=protocol,
        addresses=addresses,
        link=args.link if listen is None and rfc2217 is None else None,
        listen=split_host_port(listen) if listen is not None else None,
        period=float(getattr(args, "period", 1.0) or 1.0),
        seed=int(getattr(args, "seed", 0) or 0),
        emit_log=emit,
        record_wire=False,
        corrupt_every=getattr(args, "corrupt_every", None),
    ) as sim:
        # Same first line as the continuous simulator: parents wait for it.
        bridge: Rfc2217Bridge | None = None
        if rfc2217 is not None:
            # An RFC 2217 device server in front of the simulated RS485 line.
            bridge = Rfc2217Bridge(*split_host_port(rfc2217), sim.relay.master_path).open()
            print(f"ready {bridge.link} -> {sim.relay.master_path}", flush=True)
        else:
            target = sim.link_path if listen is not None else sim.relay.master_path
            print(f"ready {sim.link_path} -> {target}", flush=True)
        log.info("modbus simulator: %s slaves %s", protocol.value, addresses)
        unplug_after: float | None = getattr(args, "unplug_after", None)
        replug_after: float | None = getattr(args, "replug_after", None)
        # Behind RFC 2217 the faults are the device server's: its socket closes or stalls.
        unplug, replug = (bridge.unplug, bridge.open) if bridge else (sim.unplug, sim.replug)
        stall = bridge.stall if bridge else sim.stall
        if unplug_after is not None:
            loop.call_later(unplug_after, unplug)
            if replug_after is not None:
                loop.call_later(unplug_after + replug_after, replug)
        stall_after: float | None = getattr(args, "stall_after", None)
        if stall_after is not None:
            loop.call_later(stall_after, stall)
        if duration is None:
            await stop.wait()
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
        if bridge is not None:
            bridge.close()
    return 0


__all__ = [
    "DEFAULT_CHANNELS",
    "ChannelSpec",
    "ModbusSimulator",
    "PtyRelay",
    "SimulatedAnalyser",
    "TcpPacket",
    "Transaction",
    "WireChunk",
    "request_address",
    "run_modbus_simulator",
    "transactions",
]
