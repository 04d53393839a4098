"""Modbus register map of the SERVOPRO 4000 series: pure, synchronous decoding.

Everything here turns register and bit lists (as a Modbus stack returns them)
into the same ``Frame``/``Reading`` records the continuous parser builds, so the
rest of the daemon never looks at the protocol. No I/O: the session in
``servomexd.acquisition.modbus`` does the transactions.

Device facts used (docs/protocol.md#modbus-rtu-and-ascii):

- FC04 input registers, one 7-register slot per channel (value 2, name 3, unit 2),
  ten slots I1..I4, D1..D4, E1, E2 at PDU 0..69; float32 high word first.
- FC02 discrete inputs, 8 bits per channel at PDU 0..79 (bit 0 fault .. bit 7
  alarm 4) and the analyser block at PDU 1000..1015.
- Names and units use the display ROM's charset (0x82 is subscript two); units
  are NUL padded. Decoding never raises: an odd byte is passed through as Latin-1
  (``servomexd.protocol.charset``). Names are canonical ASCII (``CO2``), as in
  continuous mode, so one gas has one name whatever the protocol.
- E1/E2: bit 0 means Invalid (reported as ``fault`` so ``ok`` is right) and bits
  1-3 are reserved (forced False). D1..D4: bits 0-3 copy the parent transducer's
  flags; they are reported as read, and the analyser-level fault (PDU 1000) is the
  one that counts for the unit as a whole.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import NamedTuple

from servomexd.errors import ServomexProtocolError
from servomexd.model import (
    AnalyserStatus,
    CalGroupState,
    ChannelId,
    ChannelKind,
    ChannelStatus,
    Frame,
    ProtocolKind,
    Reading,
    Unit,
)
from servomexd.protocol.charset import DISPLAY_GLYPHS as DISPLAY_GLYPHS
from servomexd.protocol.charset import canonical_name
from servomexd.protocol.charset import decode_display_text as decode_display_text
from servomexd.protocol.charset import encode_display_text as encode_display_text

# --- register map ------------------------------------------------------------------------

SLOT_REGISTERS = 7
"""Registers per channel slot: value (2), name (3), unit (2)."""
NAME_OFFSET = 2
UNIT_OFFSET = 5
NAME_BYTES = 6
UNIT_BYTES = 4
CHANNEL_SLOTS = len(ChannelId)
INPUT_REGISTER_COUNT = SLOT_REGISTERS * CHANNEL_SLOTS  # 70: PDU 0..69
STATUS_BITS_PER_CHANNEL = 8
CHANNEL_STATUS_COUNT = STATUS_BITS_PER_CHANNEL * CHANNEL_SLOTS  # 80: PDU 0..79
ANALYSER_STATUS_ADDRESS = 1000
"""Data-model 11001 minus 10001: the analyser block shares FC02's address space."""
ANALYSER_STATUS_COUNT = 16
CAL_GROUP_BITS_OFFSET = 8
"""Bits 1008..1015: two per calibration group (calibrating, gas 2)."""
CAL_GROUPS = 4

FC_READ_COILS = 0x01
FC_READ_DISCRETE_INPUTS = 0x02
FC_READ_INPUT_REGISTERS = 0x04
FC_DIAGNOSTICS = 0x08
DIAG_RETURN_QUERY_DATA = 0x0000
LOOPBACK_DATA = b"\xab\xcd"
"""The AUTO probe's loopback payload: a reply must echo it exactly."""

MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000

EXCEPTION_ILLEGAL_FUNCTION = 0x01
EXCEPTION_ILLEGAL_ADDRESS = 0x02

EXTERNAL_RESERVED_MASK = 0b0000_1110
"""E1/E2 status bits 1-3 are reserved and never mean maintenance/calibrating/warm-up."""


def value_address(channel: ChannelId) -> int:
    return channel.slot * SLOT_REGISTERS


def name_address(channel: ChannelId) -> int:
    return channel.slot * SLOT_REGISTERS + NAME_OFFSET


def unit_address(channel: ChannelId) -> int:
    return channel.slot * SLOT_REGISTERS + UNIT_OFFSET


def status_address(channel: ChannelId) -> int:
    return channel.slot * STATUS_BITS_PER_CHANNEL


# --- values and text ---------------------------------------------------------------------


def decode_float(high: int, low: int) -> float | None:
    """IEEE-754 float32 from two registers, high word first; non-finite means no value.

    NaN is the analyser's "no value"; an infinity is not a measurement either. The
    result is the shortest decimal that is the same float32 (20.378, not
    20.3780002593994), so Modbus rows carry the numbers the display and continuous
    mode show.
    """
    packed = struct.pack(">HH", high & 0xFFFF, low & 0xFFFF)
    (value,) = struct.unpack(">f", packed)
    if not math.isfinite(value):
        return None
    for digits in range(1, 10):  # 9 significant digits always round-trip a float32
        candidate = float(f"{value:.{digits}g}")
        if struct.pack(">f", candidate) == packed:
            return candidate
    return float(value)


def encode_float(value: float | None) -> tuple[int, int]:
    """Two registers (high word first) for ``value``; ``None`` becomes NaN."""
    packed = struct.pack(">f", math.nan if value is None else value)
    high, low = struct.unpack(">HH", packed)
    return int(high), int(low)


def registers_to_bytes(registers: Iterable[int]) -> bytes:
    """Big-endian bytes: the first character sits in the high byte of the first register."""
    return b"".join((register & 0xFFFF).to_bytes(2, "big") for register in registers)


def bytes_to_registers(data: bytes) -> list[int]:
    """The inverse of ``registers_to_bytes``; an odd length is padded with NUL."""
    if len(data) % 2:
        data += b"\x00"
    return [int.from_bytes(data[index : index + 2], "big") for index in range(0, len(data), 2)]


_TEXT_PAD = " \x00"


def decode_name(registers: Sequence[int]) -> str | None:
    """A channel name from its 3 registers; ``None`` for an unpopulated slot.

    Names are space (or NUL) padded; a name that trims to nothing or is all ``|``
    marks an empty slot, the same ``||||||`` marker continuous mode sends. The name
    is canonical ASCII (``CO\x82`` is ``CO2``, as continuous mode sends it).
    """
    text = decode_display_text(registers_to_bytes(registers)).strip(_TEXT_PAD)
    if not text or set(text) == {"|"}:
        return None
    return canonical_name(text)


def decode_unit(registers: Sequence[int]) -> tuple[Unit, str]:
    """A unit from its 2 registers: (known unit or UNKNOWN, the trimmed label)."""
    text = decode_display_text(registers_to_bytes(registers)).strip(_TEXT_PAD)
    return Unit.from_text(text), text


# --- status bits -------------------------------------------------------------------------


def bits_to_int(bits: Sequence[bool]) -> int:
    """LSB-first bit list (as FC02 returns it) to an integer."""
    return sum(1 << index for index, bit in enumerate(bits) if bit)


def decode_channel_status(channel: ChannelId, bits: int) -> ChannelStatus:
    """One channel's 8 status bits, with the external-input exception applied."""
    if channel.kind is ChannelKind.EXTERNAL_INPUT:
        bits &= ~EXTERNAL_RESERVED_MASK & 0xFF
    return ChannelStatus.from_bits(bits & 0xFF)


def decode_analyser_status(bits: Sequence[bool]) -> AnalyserStatus:
    """The 16 analyser bits at PDU 1000: fault, maintenance, then the calibration groups.

    Group g (1-4): bit ``8 + 2(g-1)`` is "calibrating", the next one "gas 2 rather
    than gas 1". That pairing comes from the published driver and was never seen
    live; it is kept in one place so a hardware finding changes one function.
    """
    if len(bits) < ANALYSER_STATUS_COUNT:
        raise ServomexProtocolError(
            "analyser status block too short",
            context={"bits": len(bits), "expected": ANALYSER_STATUS_COUNT},
        )
    groups = tuple(
        CalGroupState(
            group,
            bool(bits[CAL_GROUP_BITS_OFFSET + 2 * (group - 1)]),
            2 if bits[CAL_GROUP_BITS_OFFSET + 2 * (group - 1) + 1] else 1,
        )
        for group in range(1, CAL_GROUPS + 1)
    )
    return AnalyserStatus(bool(bits[0]), bool(bits[1]), groups, None)


# --- ADUs (wire-size arithmetic, tests, AUTO diagnostics) --------------------------------


def crc16_modbus(data: bytes) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def lrc(data: bytes) -> int:
    """Modbus ASCII LRC: two's complement of the 8-bit sum."""
    return (-sum(data)) & 0xFF


def rtu_adu(address: int, pdu: bytes) -> bytes:
    body = bytes([address]) + pdu
    return body + crc16_modbus(body).to_bytes(2, "little")


def ascii_adu(address: int, pdu: bytes) -> bytes:
    body = bytes([address]) + pdu
    return b":" + (body + bytes([lrc(body)])).hex().upper().encode("ascii") + b"\r\n"


def adu(protocol: ProtocolKind, address: int, pdu: bytes) -> bytes:
    if protocol is ProtocolKind.MODBUS_RTU:
        return rtu_adu(address, pdu)
    if protocol is ProtocolKind.MODBUS_ASCII:
        return ascii_adu(address, pdu)
    raise ValueError(f"not a Modbus protocol: {protocol}")


def adu_length(protocol: ProtocolKind, pdu_length: int) -> int:
    """Bytes on the wire for a PDU of ``pdu_length``: address + PDU + check."""
    if protocol is ProtocolKind.MODBUS_RTU:
        return 1 + pdu_length + 2
    # ':' + hex(address + PDU + LRC) + CR LF
    return 1 + 2 * (1 + pdu_length + 1) + 2


# --- the poll plan -----------------------------------------------------------------------


class ReadRequest(NamedTuple):
    """One read transaction: function code, PDU start address, count."""

    function: int
    address: int
    quantity: int

    def pdu(self) -> bytes:
        return struct.pack(">BHH", self.function, self.address, self.quantity)

    def response_pdu_length(self) -> int:
        """Bytes of the normal reply PDU: function, byte count, payload."""
        if self.function == FC_READ_INPUT_REGISTERS:
            return 2 + 2 * self.quantity
        return 2 + (self.quantity + 7) // 8

    def describe(self) -> str:
        return f"FC{self.function:02d} addr={self.address} count={self.quantity}"


class PollPlan(NamedTuple):
    """The reads of one poll sweep for a set of channels."""

    channels: tuple[ChannelId, ...]
    reads: tuple[ReadRequest, ...]
    broad: bool


ANALYSER_STATUS_READ = ReadRequest(
    FC_READ_DISCRETE_INPUTS, ANALYSER_STATUS_ADDRESS, ANALYSER_STATUS_COUNT
)
IDENTIFY_READ = ReadRequest(FC_READ_INPUT_REGISTERS, 0, INPUT_REGISTER_COUNT)
"""Identify reads every slot's value, name and unit in one go (the unit accepts it)."""


def slot_read(channel: ChannelId) -> ReadRequest:
    """One whole 7-register slot: the identify fallback when a broad read is refused."""
    return ReadRequest(FC_READ_INPUT_REGISTERS, value_address(channel), SLOT_REGISTERS)


def _sorted_slots(channels: Iterable[ChannelId]) -> tuple[ChannelId, ...]:
    return tuple(sorted(set(channels), key=lambda channel: channel.slot))


def broad_plan(channels: Iterable[ChannelId]) -> PollPlan:
    """Three transactions spanning the wanted slots (FC04 0..69, FC02 0..79 on a full unit).

    The read covers unwanted slots in between: one transaction costs far more
    (50 ms idle gap plus turnaround) than the extra bytes do.
    """
    slots = _sorted_slots(channels)
    if not slots:
        raise ValueError("a poll plan needs at least one channel")
    first, last = slots[0].slot, slots[-1].slot + 1
    reads = (
        ReadRequest(
            FC_READ_INPUT_REGISTERS, first * SLOT_REGISTERS, (last - first) * SLOT_REGISTERS
        ),
        ReadRequest(
            FC_READ_DISCRETE_INPUTS,
            first * STATUS_BITS_PER_CHANNEL,
            (last - first) * STATUS_BITS_PER_CHANNEL,
        ),
        ANALYSER_STATUS_READ,
    )
    return PollPlan(slots, reads, True)


def _runs(slots: Sequence[ChannelId]) -> list[tuple[int, int]]:
    """Contiguous runs of slot numbers as (first, count)."""
    runs: list[tuple[int, int]] = []
    for channel in slots:
        if runs and runs[-1][0] + runs[-1][1] == channel.slot:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((channel.slot, 1))
    return runs


def narrow_plan(channels: Iterable[ChannelId]) -> PollPlan:
    """Gap-free reads of only the wanted slots: the fallback for a unit refusing broad reads.

    For the bench's I1-I3 + E1/E2 this is FC04 (0,21)+(56,14), FC02 (0,24)+(64,16)
    and FC02 (1000,16).
    """
    slots = _sorted_slots(channels)
    if not slots:
        raise ValueError("a poll plan needs at least one channel")
    runs = _runs(slots)
    registers = tuple(
        ReadRequest(FC_READ_INPUT_REGISTERS, first * SLOT_REGISTERS, count * SLOT_REGISTERS)
        for first, count in runs
    )
    bits = tuple(
        ReadRequest(
            FC_READ_DISCRETE_INPUTS,
            first * STATUS_BITS_PER_CHANNEL,
            count * STATUS_BITS_PER_CHANNEL,
        )
        for first, count in runs
    )
    return PollPlan(slots, (*registers, *bits, ANALYSER_STATUS_READ), False)


class PollPlanner:
    """Chooses broad or narrow reads, remembering a fallback for the life of a connection.

    A broad read refused with exception 02 switches to the narrow plan at once. A
    broad read that times out is only a hint (a silent slave times out on any plan),
    so the narrow plan is offered once per connection after a timeout; the session
    calls ``narrow_succeeded`` when it worked, which makes the switch permanent. A
    slave that is simply silent therefore costs one extra attempt per connection,
    not one per poll.
    """

    def __init__(self, channels: Iterable[ChannelId]) -> None:
        self.channels = _sorted_slots(channels)
        self._broad = broad_plan(self.channels)
        self._narrow = narrow_plan(self.channels)
        self._use_narrow = self._broad.reads == self._narrow.reads
        self._timeout_fallback_offered = False

    @property
    def plan(self) -> PollPlan:
        return self._narrow if self._use_narrow else self._broad

    @property
    def fell_back(self) -> bool:
        return self._use_narrow and self._broad.reads != self._narrow.reads

    def on_exception(self, code: int) -> bool:
        """A broad read was refused; True when the narrow plan should be used from now on."""
        if self._use_narrow or code != EXCEPTION_ILLEGAL_ADDRESS:
            return False
        self._use_narrow = True
        return True

    def timeout_fallback(self) -> PollPlan | None:
        """The narrow plan to try after a broad read timed out; offered once per connection."""
        if self._use_narrow or self._timeout_fallback_offered:
            return None
        self._timeout_fallback_offered = True
        return self._narrow

    def narrow_succeeded(self) -> None:
        self._use_narrow = True


# --- identify ----------------------------------------------------------------------------


ALWAYS_REPORTED: tuple[ChannelId, ...] = (ChannelId.E1, ChannelId.E2)
"""Continuous frames always end with E1 and E2, labelled or not; Modbus reports them too."""


class SlotInfo(NamedTuple):
    channel: ChannelId
    name: str | None
    unit: Unit
    unit_text: str


def decode_slot_info(channel: ChannelId, slot: Sequence[int]) -> SlotInfo:
    """Name and unit from one 7-register slot."""
    name = decode_name(slot[NAME_OFFSET : NAME_OFFSET + 3])
    unit, unit_text = decode_unit(slot[UNIT_OFFSET : UNIT_OFFSET + 2])
    return SlotInfo(channel, name, unit, unit_text)


def reported_channels(slots: Iterable[SlotInfo]) -> tuple[ChannelId, ...]:
    """The channel set a poll reports: the same one continuous mode would send.

    Continuous frames carry every named slot plus E1 and E2 (the last two blocks,
    ``||||||`` when unlabelled); unnamed I/D slots (I4 on the bench) are not sent.
    The published driver's Modbus identify dropped E1/E2 and so recorded a
    different channel set per mode; we keep them.
    """
    return _sorted_slots(
        info.channel for info in slots if info.name is not None or info.channel in ALWAYS_REPORTED
    )


# --- a whole sweep -----------------------------------------------------------------------

SweepResult = tuple[ReadRequest, Sequence[int] | Sequence[bool]]


def _place(
    read: ReadRequest,
    values: Sequence[int] | Sequence[bool],
    registers: list[int | None],
    bits: list[bool | None],
    analyser: list[bool | None],
) -> None:
    if len(values) < read.quantity or (
        read.function == FC_READ_INPUT_REGISTERS and len(values) != read.quantity
    ):
        raise ServomexProtocolError(
            "reply does not match the request",
            context={"request": read.describe(), "values": len(values)},
        )
    if read.function == FC_READ_INPUT_REGISTERS:
        start = _checked_start(read, 0, len(registers))
        end = start + read.quantity
        registers[start:end] = [int(v) & 0xFFFF for v in values[: read.quantity]]
    elif read.function == FC_READ_DISCRETE_INPUTS:
        target, base = (
            (analyser, ANALYSER_STATUS_ADDRESS)
            if read.address >= ANALYSER_STATUS_ADDRESS
            else (bits, 0)
        )
        start = _checked_start(read, base, len(target))
        target[start : start + read.quantity] = [bool(v) for v in values[: read.quantity]]
    else:
        raise ServomexProtocolError(
            "unexpected function in a sweep", context={"request": read.describe()}
        )


def _checked_start(read: ReadRequest, base: int, size: int) -> int:
    start = read.address - base
    if start < 0 or start + read.quantity > size:
        raise ServomexProtocolError(
            "read outside the register map", context={"request": read.describe()}
        )
    return start


def decode_sweep(
    channels: Sequence[ChannelId],
    results: Iterable[SweepResult],
    *,
    protocol: ProtocolKind,
    received_at: datetime,
    monotonic_ns: int,
    requested_at: datetime | None = None,
    latency_s: float | None = None,
) -> Frame:
    """One poll sweep's replies to a ``Frame`` of ``channels`` (slot order).

    ``results`` pairs each read with what the stack returned: registers for FC04,
    LSB-first bits for FC02 (possibly padded to a byte). Names and units are
    decoded from every sweep, so a unit changed on the front panel shows at once.
    """
    registers: list[int | None] = [None] * INPUT_REGISTER_COUNT
    bits: list[bool | None] = [None] * CHANNEL_STATUS_COUNT
    analyser_bits: list[bool | None] = [None] * ANALYSER_STATUS_COUNT
    for read, values in results:
        _place(read, values, registers, bits, analyser_bits)
    readings = []
    for channel in _sorted_slots(channels):
        base = value_address(channel)
        slot = registers[base : base + SLOT_REGISTERS]
        status_base = status_address(channel)
        status_bits = bits[status_base : status_base + STATUS_BITS_PER_CHANNEL]
        if any(register is None for register in slot) or any(bit is None for bit in status_bits):
            raise ServomexProtocolError(
                "sweep did not read the whole channel", context={"channel": channel.value}
            )
        complete = [int(register or 0) for register in slot]
        info = decode_slot_info(channel, complete)
        readings.append(
            Reading(
                channel,
                channel.kind,
                info.name,
                decode_float(complete[0], complete[1]),
                info.unit,
                decode_channel_status(channel, bits_to_int([bool(b) for b in status_bits])),
                protocol,
                received_at,
                monotonic_ns,
                registers_to_bytes(complete),
                info.unit_text,
            )
        )
    if any(bit is None for bit in analyser_bits):
        raise ServomexProtocolError("sweep did not read the analyser status")
    return Frame(
        tuple(readings),
        decode_analyser_status([bool(bit) for bit in analyser_bits]),
        protocol,
        received_at,
        monotonic_ns,
        b"",
        requested_at,
        latency_s,
    )
