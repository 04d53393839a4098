"""The immutable records every part of servomexd speaks: readings, frames, samples.

They are ``typing.NamedTuple``s rather than frozen dataclasses on purpose: a
five-channel frame builds about a dozen of them, and a NamedTuple is built about
four times faster than a frozen dataclass, which keeps the parser within its
budget (see ``bench/bench_parse.py``). Both protocols decode to the same types,
and both yield the same ``AcquisitionEvent``: a ``Frame`` or a ``Rejection`` (the
rare bad line, so a plain dataclass).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

from servomexd.errors import ServomexError, ServomexValidationError


class ChannelKind(StrEnum):
    TRANSDUCER = "transducer"
    DERIVED = "derived"
    EXTERNAL_INPUT = "external_input"


class ChannelId(StrEnum):
    I1 = "I1"
    I2 = "I2"
    I3 = "I3"
    I4 = "I4"
    D1 = "D1"
    D2 = "D2"
    D3 = "D3"
    D4 = "D4"
    E1 = "E1"
    E2 = "E2"

    @property
    def kind(self) -> ChannelKind:
        return CHANNEL_KINDS[self]

    @property
    def slot(self) -> int:
        """Position 0-9 in the analyser's channel table (the Modbus slot order)."""
        return _SLOTS[self]


CHANNEL_KINDS: Mapping[ChannelId, ChannelKind] = MappingProxyType(
    {
        channel: {
            "I": ChannelKind.TRANSDUCER,
            "D": ChannelKind.DERIVED,
            "E": ChannelKind.EXTERNAL_INPUT,
        }[channel.value[0]]
        for channel in ChannelId
    }
)
_SLOTS: Mapping[ChannelId, int] = MappingProxyType(
    {channel: index for index, channel in enumerate(ChannelId)}
)


class Unit(StrEnum):
    PERCENT = "%"
    VPM = "vpm"
    PPM = "ppm"
    MA = "mA"
    UNKNOWN = "?"

    @classmethod
    def from_text(cls, text: str) -> Unit:
        """Match a unit label case-insensitively; anything unrecognised is ``UNKNOWN``."""
        return _UNITS_BY_TEXT.get(text.strip().strip("\x00").strip().lower(), cls.UNKNOWN)


_UNITS_BY_TEXT: Mapping[str, Unit] = MappingProxyType(
    {unit.value.lower(): unit for unit in Unit if unit is not Unit.UNKNOWN}
)


class ProtocolKind(StrEnum):
    CONTINUOUS = "continuous"
    MODBUS_RTU = "modbus_rtu"
    MODBUS_ASCII = "modbus_ascii"
    MODBUS_TCP = "modbus_tcp"


STATUS_FLAGS: tuple[str, ...] = (
    "fault",
    "maintenance",
    "calibrating",
    "warming_up",
    "alarm1",
    "alarm2",
    "alarm3",
    "alarm4",
)
"""Flag names in Modbus bit order (bit 0 = fault ... bit 7 = alarm4); metric labels use them."""


class ChannelStatus(NamedTuple):
    """Per-channel status flags. For external inputs ``fault`` carries the Invalid bit."""

    fault: bool = False
    maintenance: bool = False
    calibrating: bool = False
    warming_up: bool = False
    alarms: tuple[bool, bool, bool, bool] = (False, False, False, False)

    @property
    def ok(self) -> bool:
        """Not faulted and no alarm raised; maintenance, calibration and warm-up do not count."""
        return not self.fault and not any(self.alarms)

    def flags(self) -> tuple[bool, ...]:
        """All eight flags in ``STATUS_FLAGS`` order."""
        return (self.fault, self.maintenance, self.calibrating, self.warming_up, *self.alarms)

    @classmethod
    def from_bits(cls, bits: int) -> ChannelStatus:
        """Build from the Modbus bit layout: bit 0 fault ... bit 7 alarm4."""
        return cls(
            bool(bits & 1),
            bool(bits & 2),
            bool(bits & 4),
            bool(bits & 8),
            (bool(bits & 16), bool(bits & 32), bool(bits & 64), bool(bits & 128)),
        )

    def to_bits(self) -> int:
        return sum(1 << index for index, flag in enumerate(self.flags()) if flag)


CLEAR_STATUS = ChannelStatus()


class CalGroupState(NamedTuple):
    group: int
    calibrating: bool = False
    cal_gas: int = 1


IDLE_CAL_GROUPS: tuple[CalGroupState, ...] = tuple(CalGroupState(group) for group in range(1, 5))


class AnalyserStatus(NamedTuple):
    fault: bool = False
    maintenance: bool = False
    cal_groups: tuple[CalGroupState, ...] = IDLE_CAL_GROUPS
    clock: datetime | None = None
    """The analyser's own clock (naive, local to the analyser); continuous mode only."""


class Reading(NamedTuple):
    """One channel's value and status from one frame."""

    channel: ChannelId
    kind: ChannelKind
    name: str | None
    value: float | None
    unit: Unit
    status: ChannelStatus
    protocol: ProtocolKind
    received_at: datetime
    monotonic_ns: int
    raw: bytes = b""
    unit_text: str = ""
    """The unit exactly as the analyser labelled it, kept when ``unit`` is ``UNKNOWN``."""

    @property
    def unit_label(self) -> str:
        """The unit for display and storage: the known unit, or the analyser's own text."""
        if self.unit is Unit.UNKNOWN and self.unit_text:
            return self.unit_text
        return self.unit.value


_EMPTY_METADATA: Mapping[str, Any] = MappingProxyType({})


class Sample(NamedTuple):
    """One long-format record: a channel reading, or an error row for a rejected frame."""

    device: str
    channel: ChannelId | None
    reading: Reading | None
    protocol: ProtocolKind
    monotonic_ns: int
    received_at: datetime
    requested_at: datetime | None = None
    latency_s: float | None = None
    metadata: Mapping[str, Any] = _EMPTY_METADATA
    error: BaseException | None = None
    raw: bytes = b""

    @classmethod
    def rejected(
        cls,
        device: str,
        protocol: ProtocolKind,
        error: BaseException,
        *,
        received_at: datetime,
        monotonic_ns: int,
        raw: bytes = b"",
        requested_at: datetime | None = None,
        latency_s: float | None = None,
    ) -> Sample:
        """An error row: a rejected line is recorded, not lost."""
        return cls(
            device,
            None,
            None,
            protocol,
            monotonic_ns,
            received_at,
            requested_at,
            latency_s,
            _EMPTY_METADATA,
            error,
            raw,
        )


class Frame(NamedTuple):
    """One continuous broadcast, or one complete Modbus poll sweep."""

    readings: tuple[Reading, ...]
    analyser: AnalyserStatus
    protocol: ProtocolKind
    received_at: datetime
    monotonic_ns: int
    raw: bytes = b""
    requested_at: datetime | None = None
    latency_s: float | None = None

    def reading(self, channel: ChannelId | str) -> Reading:
        for reading in self.readings:
            if reading.channel == channel:
                return reading
        raise ServomexValidationError(
            f"channel {channel} is not in this frame",
            context={"channels": ",".join(r.channel.value for r in self.readings)},
        )

    def as_samples(
        self, device: str, metadata: Mapping[str, Any] | None = None
    ) -> list[Sample]:
        """One ``Sample`` per reading, sharing the frame's timestamps."""
        meta = _EMPTY_METADATA if metadata is None else MappingProxyType(dict(metadata))
        return [
            Sample(
                device,
                reading.channel,
                reading,
                self.protocol,
                self.monotonic_ns,
                self.received_at,
                self.requested_at,
                self.latency_s,
                meta,
                None,
                reading.raw,
            )
            for reading in self.readings
        ]


@dataclass(frozen=True, slots=True)
class Rejection:
    """Bytes (or a poll) that did not yield a valid frame; recorded as an error row."""

    error: ServomexError
    protocol: ProtocolKind
    received_at: datetime
    monotonic_ns: int
    raw: bytes = b""
    requested_at: datetime | None = None
    latency_s: float | None = None

    @property
    def reason(self) -> str:
        """Metric label: checksum, parse, noise, overlong, timeout, modbus_exception."""
        return self.error.reason

    def as_sample(self, device: str) -> Sample:
        return Sample.rejected(
            device,
            self.protocol,
            self.error,
            received_at=self.received_at,
            monotonic_ns=self.monotonic_ns,
            raw=self.raw,
            requested_at=self.requested_at,
            latency_s=self.latency_s,
        )


AcquisitionEvent = Frame | Rejection
"""What a framer or a device session yields: a valid frame, or why none came."""
