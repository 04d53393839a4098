"""Realistic samples for the sink tests and bench/bench_sinks.py.

Frames are built like the bench 4100D captures: five channels (I1 Oxygen %,
I2 CO %, I3 CO2 %, E1 and E2 unnamed mA), sharing one received_at per frame.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from servomexd.errors import ServomexChecksumError
from servomexd.model import (
    AnalyserStatus,
    ChannelId,
    ChannelStatus,
    Frame,
    ProtocolKind,
    Reading,
    Sample,
    Unit,
)

_CHANNELS = (
    (ChannelId.I1, "Oxygen", 20.376, Unit.PERCENT, ""),
    (ChannelId.I2, "CO", 0.084, Unit.PERCENT, ""),
    (ChannelId.I3, "CO₂", 0.250, Unit.PERCENT, ""),
    (ChannelId.E1, None, 0.0, Unit.MA, ""),
    (ChannelId.E2, None, 4.5, Unit.UNKNOWN, "mbar"),
)
T0 = datetime(2026, 5, 30, 12, 0, 0, 123456, tzinfo=UTC)


def frame(
    index: int,
    *,
    device_time: datetime = T0,
    protocol: ProtocolKind = ProtocolKind.CONTINUOUS,
    statuses: tuple[ChannelStatus, ...] | None = None,
    modbus_timing: bool = False,
) -> Frame:
    received = device_time + timedelta(seconds=2 * index)
    mono = 1_000_000_000 + index * 2_000_000_000
    readings = []
    for slot, (channel, name, base, unit, unit_text) in enumerate(_CHANNELS):
        status = statuses[slot] if statuses is not None else ChannelStatus()
        value: float | None = round(base + 0.001 * (index % 7), 6)
        if slot == 1 and index % 11 == 5:
            value = None  # over-range
        readings.append(
            Reading(
                channel, channel.kind, name, value, unit, status, protocol,
                received, mono, b"raw", unit_text,
            )
        )
    requested = received - timedelta(milliseconds=40) if modbus_timing else None
    latency = 0.04 if modbus_timing else None
    return Frame(
        tuple(readings), AnalyserStatus(), protocol, received, mono, b"", requested, latency
    )


def error_sample(index: int, device: str = "stack-1") -> Sample:
    received = T0 + timedelta(seconds=2 * index + 1)
    error = ServomexChecksumError(
        "checksum mismatch", expected=0x2A1D, received=0x2A1E, raw=b" 06-10-20;02:54:12;..."
    )
    return Sample.rejected(
        device, ProtocolKind.CONTINUOUS, error, received_at=received,
        monotonic_ns=2_000_000_000 + index, raw=b"junk",
    )


def varied_samples(frames: int = 12, device: str = "stack-1") -> list[Sample]:
    """Frames with assorted statuses, Modbus timing fields, and an error row every 4."""
    out: list[Sample] = []
    for index in range(frames):
        bits = (index * 37) % 256
        statuses = tuple(ChannelStatus.from_bits((bits + slot * 13) % 256) for slot in range(5))
        modbus = index % 3 == 2
        protocol = ProtocolKind.MODBUS_RTU if modbus else ProtocolKind.CONTINUOUS
        out.extend(
            frame(index, statuses=statuses, protocol=protocol, modbus_timing=modbus).as_samples(
                device
            )
        )
        if index % 4 == 3:
            out.append(error_sample(index, device))
    return out


def steady_samples(count: int, device: str = "stack-1") -> list[Sample]:
    """``count`` samples from clean frames (five per frame), as a live analyser gives."""
    out: list[Sample] = []
    index = 0
    while len(out) < count:
        out.extend(frame(index).as_samples(device))
        index += 1
    return out[:count]
