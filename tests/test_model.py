"""The immutable records and enums in servomexd.model."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from servomexd.errors import ServomexValidationError
from servomexd.model import (
    STATUS_FLAGS,
    AnalyserStatus,
    CalGroupState,
    ChannelId,
    ChannelKind,
    ChannelStatus,
    Frame,
    ProtocolKind,
    Reading,
    Sample,
    Unit,
)

AT = datetime(2026, 5, 30, 12, 0, tzinfo=UTC)


def test_channel_kinds_and_slots() -> None:
    assert [c.value for c in ChannelId] == [
        "I1", "I2", "I3", "I4", "D1", "D2", "D3", "D4", "E1", "E2",
    ]  # fmt: skip
    assert [c.slot for c in ChannelId] == list(range(10))
    assert {c.kind for c in ChannelId if c.value[0] == "I"} == {ChannelKind.TRANSDUCER}
    assert {c.kind for c in ChannelId if c.value[0] == "D"} == {ChannelKind.DERIVED}
    assert {c.kind for c in ChannelId if c.value[0] == "E"} == {ChannelKind.EXTERNAL_INPUT}
    assert ChannelId("E2") is ChannelId.E2 and ChannelId.E2 == "E2"


@pytest.mark.parametrize(
    ("text", "unit"),
    [(" % ", Unit.PERCENT), (" mA", Unit.MA), ("MA", Unit.MA), ("vpm", Unit.VPM),
     ("ppm\x00\x00", Unit.PPM), ("PPM ", Unit.PPM), ("ppb", Unit.UNKNOWN), ("", Unit.UNKNOWN),
     ("degC", Unit.UNKNOWN)],
)  # fmt: skip
def test_unit_from_text_never_fails(text: str, unit: Unit) -> None:
    assert Unit.from_text(text) is unit


def test_channel_status_ok_rule() -> None:
    assert ChannelStatus().ok
    # maintenance, calibration and warm-up do not make a reading bad
    assert ChannelStatus(maintenance=True, calibrating=True, warming_up=True).ok
    assert not ChannelStatus(fault=True).ok
    for index in range(4):
        alarms = tuple(i == index for i in range(4))
        assert not ChannelStatus(alarms=alarms).ok  # type: ignore[arg-type]


def test_status_bits_round_trip_in_flag_order() -> None:
    for bits in range(256):
        status = ChannelStatus.from_bits(bits)
        assert status.to_bits() == bits
        assert [bool(bits >> i & 1) for i in range(8)] == list(status.flags())
    assert STATUS_FLAGS[0] == "fault" and STATUS_FLAGS[7] == "alarm4"
    assert ChannelStatus.from_bits(0b0000_0110) == ChannelStatus(maintenance=True, calibrating=True)


def test_analyser_defaults() -> None:
    status = AnalyserStatus()
    assert not status.fault and not status.maintenance and status.clock is None
    assert status.cal_groups == tuple(CalGroupState(g) for g in (1, 2, 3, 4))
    assert all(g.cal_gas == 1 and not g.calibrating for g in status.cal_groups)


def make_frame() -> Frame:
    readings = tuple(
        Reading(
            c,
            c.kind,
            None,
            1.0,
            Unit.MA,
            ChannelStatus(),
            ProtocolKind.CONTINUOUS,
            AT,
            5,
            raw=c.value.encode(),
        )
        for c in (ChannelId.I1, ChannelId.E1)
    )
    return Frame(readings, AnalyserStatus(), ProtocolKind.CONTINUOUS, AT, 5, b" raw;")


def test_frame_lookup_and_samples() -> None:
    frame = make_frame()
    assert frame.reading("E1").channel is ChannelId.E1
    assert frame.reading(ChannelId.I1) is frame.readings[0]
    with pytest.raises(ServomexValidationError) as info:
        frame.reading(ChannelId.D2)
    assert isinstance(info.value, ValueError)
    assert info.value.context["channels"] == "I1,E1"
    metadata = {"site": "stack"}
    samples = frame.as_samples("dev", metadata)
    metadata["site"] = "changed"
    assert [s.channel for s in samples] == [ChannelId.I1, ChannelId.E1]
    for sample, reading in zip(samples, frame.readings, strict=True):
        assert sample.reading is reading and sample.device == "dev"
        assert (sample.monotonic_ns, sample.received_at) == (5, AT)
        assert sample.metadata["site"] == "stack"  # a copy, not the caller's dict
        assert sample.error is None and sample.raw == reading.raw
        with pytest.raises(TypeError):
            sample.metadata["site"] = "x"  # type: ignore[index]


def test_records_are_immutable_and_unit_label() -> None:
    frame = make_frame()
    with pytest.raises(AttributeError):
        frame.raw = b""  # type: ignore[misc]
    reading = frame.readings[0]
    assert reading.unit_label == "mA"
    odd = reading._replace(unit=Unit.UNKNOWN, unit_text="ppb")
    assert odd.unit_label == "ppb"
    assert reading._replace(unit=Unit.UNKNOWN).unit_label == "?"


def test_rejected_sample() -> None:
    error = ValueError("bad")
    sample = Sample.rejected("d", ProtocolKind.MODBUS_ASCII, error, received_at=AT, monotonic_ns=3,
                             raw=b"x", latency_s=1.0)  # fmt: skip
    assert (sample.channel, sample.reading, sample.error, sample.raw) == (None, None, error, b"x")
    assert sample.latency_s == 1.0 and sample.requested_at is None
