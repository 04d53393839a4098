"""The long-format row shared by decode, the sinks and the spool."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from servomexd.errors import ServomexChecksumError
from servomexd.model import (
    AnalyserStatus,
    ChannelId,
    ChannelKind,
    ChannelStatus,
    Frame,
    ProtocolKind,
    Reading,
    Sample,
    Unit,
)
from servomexd.rows import (
    ROW_COLUMNS,
    record_to_text_record,
    sample_to_record,
    sample_to_row,
)

AT = datetime(2026, 5, 30, 12, 0, 0, 123456, tzinfo=UTC)
ASKED = datetime(2026, 5, 30, 12, 0, 0, 100000, tzinfo=UTC)


def reading(**changes: object) -> Reading:
    base = Reading(
        ChannelId.I3,
        ChannelKind.TRANSDUCER,
        "CO2",
        0.25,
        Unit.PERCENT,
        ChannelStatus(maintenance=True, alarms=(False, True, False, False)),
        ProtocolKind.MODBUS_RTU,
        AT,
        42,
    )
    return base._replace(**changes)


def test_columns_are_the_published_ones_in_order() -> None:
    assert ROW_COLUMNS == (
        "device", "channel", "kind", "name", "value", "unit", "ok", "fault", "maintenance",
        "calibrating", "warming_up", "protocol", "monotonic_ns", "received_at",
        "requested_at", "latency_s", "error",
    )  # fmt: skip


def test_reading_row() -> None:
    sample = Sample(
        "stack-1", ChannelId.I3, reading(), ProtocolKind.MODBUS_RTU, 42, AT, ASKED, 0.023
    )
    row = sample_to_row(sample)
    assert list(row) == list(ROW_COLUMNS)
    assert row == {
        "device": "stack-1",
        "channel": "I3",
        "kind": "transducer",
        "name": "CO2",
        "value": 0.25,
        "unit": "%",
        "ok": "false",  # alarm 2 raised
        "fault": "false",
        "maintenance": "true",
        "calibrating": "false",
        "warming_up": "false",
        "protocol": "modbus_rtu",
        "monotonic_ns": 42,
        "received_at": "2026-05-30T12:00:00.123456+00:00",
        "requested_at": "2026-05-30T12:00:00.100000+00:00",
        "latency_s": 0.023,
        "error": None,
    }
    assert json.loads(json.dumps(row)) == row
    assert all(
        type(v) is str for k, v in row.items() if k in ("channel", "kind", "unit", "protocol")
    )


def test_native_record_keeps_types() -> None:
    sample = Sample("d", ChannelId.I3, reading(), ProtocolKind.MODBUS_RTU, 42, AT)
    record = sample_to_record(sample)
    assert len(record) == len(ROW_COLUMNS)
    values = dict(zip(ROW_COLUMNS, record, strict=True))
    assert values["ok"] is False and values["maintenance"] is True
    assert values["received_at"] is AT and values["requested_at"] is None
    assert values["value"] == 0.25
    assert record_to_text_record(record) == tuple(sample_to_row(sample).values())


def test_unknown_unit_keeps_the_analysers_text_and_missing_value_is_null() -> None:
    odd = reading(unit=Unit.UNKNOWN, unit_text="ppb", value=None, name=None)
    row = sample_to_row(Sample("d", odd.channel, odd, odd.protocol, 1, AT))
    assert (row["unit"], row["value"], row["name"]) == ("ppb", None, None)


def test_error_row() -> None:
    error = ServomexChecksumError("checksum mismatch", expected=0x2A1E, received=0x2A1D, raw=b" x")
    sample = Sample.rejected("d", ProtocolKind.CONTINUOUS, error, received_at=AT, monotonic_ns=9)
    row = sample_to_row(sample)
    assert list(row) == list(ROW_COLUMNS)
    for column in ("channel", "kind", "name", "value", "unit", "ok", "fault", "maintenance",
                   "calibrating", "warming_up", "requested_at", "latency_s"):  # fmt: skip
        assert row[column] is None, column
    assert row["error"] == str(error) and "computed=2A1E" in row["error"]
    assert (row["device"], row["protocol"], row["monotonic_ns"]) == ("d", "continuous", 9)


def test_error_row_of_one_channel_names_that_channel() -> None:
    # A Modbus read of I2 that failed: the sample carries the channel, the row keeps it.
    error = ServomexChecksumError("bad CRC", raw=b"\x01\x04")
    sample = Sample.rejected(
        "m", ProtocolKind.MODBUS_RTU, error, received_at=AT, monotonic_ns=5,
        requested_at=ASKED, latency_s=0.1,
    )._replace(channel=ChannelId.I2)
    row = sample_to_row(sample)
    assert row["channel"] == "I2" and type(row["channel"]) is str
    assert (row["kind"], row["name"], row["value"], row["ok"]) == (None, None, None, None)
    assert row["error"] == str(error)
    assert sample_to_record(sample)[ROW_COLUMNS.index("channel")] == "I2"


def test_frame_samples_share_the_frame_stamps() -> None:
    readings = (reading(), reading(channel=ChannelId.E1, kind=ChannelKind.EXTERNAL_INPUT))
    frame = Frame(readings, AnalyserStatus(), ProtocolKind.MODBUS_RTU, AT, 77, b"", ASKED, 0.5)
    rows = [sample_to_row(s) for s in frame.as_samples("d")]
    assert [r["channel"] for r in rows] == ["I3", "E1"]
    assert {
        (r["monotonic_ns"], r["received_at"], r["requested_at"], r["latency_s"]) for r in rows
    } == {(77, AT.isoformat(), ASKED.isoformat(), 0.5)}
