"""The fast row builders give exactly the reference rows of servomexd.rows."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from sinkdata import T0, error_sample, frame, varied_samples

from servomexd.model import ChannelId, ChannelStatus, ProtocolKind, Reading, Sample, Unit
from servomexd.rows import ROW_COLUMNS, record_to_text_record, sample_to_record, sample_to_row
from servomexd.sinks.encoding import RowEncoder


def _all_status_samples() -> list[Sample]:
    out: list[Sample] = []
    for bits in range(256):
        status = ChannelStatus.from_bits(bits)
        out.extend(frame(bits, statuses=(status,) * 5).as_samples("dev"))
    return out


def test_text_rows_equal_sample_to_row_for_every_status_and_error_rows() -> None:
    samples = _all_status_samples() + varied_samples(16)
    rows = RowEncoder().text_rows(samples)
    assert rows == [tuple(sample_to_row(s).values()) for s in samples]
    # plain str, not StrEnum members (sqlite3 adapts str subclasses slowly)
    for row in rows:
        for value in row:
            assert value is None or type(value) in (str, float, int)
    assert len(rows[0]) == len(ROW_COLUMNS)


def test_error_rows_of_one_channel_keep_it() -> None:
    samples = [
        error_sample(1)._replace(channel=ChannelId.D2),
        error_sample(2),
        error_sample(3)._replace(channel=ChannelId.E1),
    ]
    channel = ROW_COLUMNS.index("channel")
    text = RowEncoder().text_rows(samples)
    assert [row[channel] for row in text] == ["D2", None, "E1"]
    assert all(row[channel] is None or type(row[channel]) is str for row in text)
    assert [r[channel] for r in RowEncoder().native_records(samples)] == ["D2", None, "E1"]
    assert text == [tuple(sample_to_row(s).values()) for s in samples]


def test_native_records_equal_sample_to_record() -> None:
    samples = _all_status_samples() + varied_samples(16)
    records = RowEncoder().native_records(samples)
    assert records == [sample_to_record(s) for s in samples]
    # plain str like the reference: the daemon spools these (marshal refuses StrEnum)
    for record in records:
        for value in record:
            assert value is None or type(value) in (str, float, int, bool, datetime)


def test_records_to_text_equals_reference_and_survives_distinct_datetime_objects() -> None:
    samples = varied_samples(16)
    records = [sample_to_record(s) for s in samples]
    # records rebuilt from storage carry equal but distinct datetime objects
    rebuilt = [
        (*r[:13], datetime.fromisoformat(r[13].isoformat()), *r[14:]) for r in records
    ]
    encoder = RowEncoder()
    expected = [record_to_text_record(r) for r in records]
    assert encoder.records_to_text(rebuilt) == expected
    assert encoder.records_to_text(records) == expected


def test_timestamp_cache_does_not_leak_between_frames() -> None:
    a = frame(0).as_samples("d")
    b = frame(1).as_samples("d")
    encoder = RowEncoder()
    first = encoder.text_rows(a)
    second = encoder.text_rows(b)
    assert first[0][13] == T0.isoformat()
    assert second[0][13] != first[0][13]
    assert second[0][13] == b[0].received_at.isoformat()


def test_requested_at_and_latency_are_kept() -> None:
    samples = frame(3, protocol=ProtocolKind.MODBUS_RTU, modbus_timing=True).as_samples("m")
    row = RowEncoder().text_rows(samples)[0]
    assert row[ROW_COLUMNS.index("requested_at")] == samples[0].requested_at.isoformat()  # type: ignore[union-attr]
    assert row[ROW_COLUMNS.index("latency_s")] == 0.04
    assert samples[0].requested_at.tzinfo is UTC  # type: ignore[union-attr]


_channels = st.sampled_from(list(ChannelId))
_text = st.text(max_size=12)
_optional_float = st.none() | st.floats(allow_nan=False, allow_infinity=False)
_times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@st.composite
def _samples(draw: st.DrawFn) -> Sample:
    received = draw(_times)
    protocol = draw(st.sampled_from(list(ProtocolKind)))
    requested = draw(st.none() | _times)
    latency = draw(_optional_float)
    mono = draw(st.integers(min_value=0, max_value=2**63 - 1))
    if draw(st.booleans()):
        rejected = Sample.rejected(
            draw(_text), protocol, ValueError(draw(_text)), received_at=received,
            monotonic_ns=mono, requested_at=requested, latency_s=latency,
        )
        # An error of one channel (a failed Modbus read of it) carries that channel.
        return rejected._replace(channel=draw(st.none() | _channels))
    channel = draw(_channels)
    reading = Reading(
        channel, channel.kind, draw(st.none() | _text), draw(_optional_float),
        draw(st.sampled_from(list(Unit))), ChannelStatus.from_bits(draw(st.integers(0, 255))),
        protocol, received, mono, b"", draw(_text),
    )
    return Sample(draw(_text), channel, reading, protocol, mono, received, requested, latency)


@settings(deadline=None)  # shared CI cores: timing is not the property
@given(st.lists(_samples(), max_size=20))
def test_encoder_matches_reference_on_arbitrary_samples(samples: list[Sample]) -> None:
    encoder = RowEncoder()
    records = [sample_to_record(s) for s in samples]
    assert encoder.native_records(samples) == records
    assert encoder.text_rows(samples) == [tuple(sample_to_row(s).values()) for s in samples]
    assert encoder.records_to_text(records) == [record_to_text_record(r) for r in records]
