"""Continuous-ASCII protocol: checksum, parse_frame, build_frame and the framer."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servomexd.errors import (
    ServomexChecksumError,
    ServomexFrameError,
    ServomexParseError,
    ServomexProtocolError,
)
from servomexd.model import (
    CalGroupState,
    ChannelId,
    ChannelKind,
    ChannelStatus,
    Frame,
    ProtocolKind,
    Rejection,
    Unit,
)
from servomexd.protocol.continuous import (
    BlockSpec,
    ContinuousFramer,
    build_frame,
    checksum,
    format_checksum,
    parse_frame,
)
from servomexd.rows import sample_to_row

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
IDLE = FIXTURES / "continuous_4100_idle_5ch.bin"
LIVE = FIXTURES / "continuous_4100_live_5ch.bin"
NOW = datetime(2026, 5, 30, 12, 0, tzinfo=UTC)


def lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().split(b"\n") if line]


def five_channel(o2: float = 20.9, *, status: ChannelStatus | None = None) -> list[BlockSpec]:
    st_ = status or ChannelStatus()
    return [
        BlockSpec(ChannelId.I1, "Oxygen", o2, Unit.PERCENT, st_),
        BlockSpec(ChannelId.I2, "CO", 0.084, Unit.PERCENT),
        BlockSpec(ChannelId.I3, "CO2", 0.25, Unit.PERCENT),
        BlockSpec(ChannelId.E1, None, 0.0, Unit.MA, decimals=1),
        BlockSpec(ChannelId.E2, None, 0.0, Unit.MA, decimals=1),
    ]


# --- checksum -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [IDLE, LIVE], ids=["idle", "live"])
def test_capture_checksums_recomputed_match_the_transmitted_field(path: Path) -> None:
    frames = lines(path)
    assert len(frames) == 6
    for raw in frames:
        computed = checksum(raw[1:-5])
        assert format_checksum(computed) == raw[-5:-1]
        # independent re-computation: a plain byte sum, not the function under test
        total = 0
        for byte in raw[1:-5]:
            total += byte
        assert total & 0xFFFF == int(raw[-5:-1], 16)


def test_checksum_masks_to_16_bits() -> None:
    assert checksum(b"\xff" * 300) == (255 * 300) & 0xFFFF
    assert format_checksum(0x2A1D) == b"2A1D"
    assert format_checksum(0x1_0005) == b"0005"


# --- the two captures -------------------------------------------------------------------------

IDLE_TIMES = ["02:54:12", "02:54:14", "02:54:16", "02:54:18", "02:54:21", "02:54:23"]
LIVE_TIMES = ["09:17:58", "09:18:00", "09:18:03", "09:18:05", "09:18:07", "09:18:09"]
LIVE_O2 = [20.379, 20.378, 20.378, 20.378, 20.378, 20.378]


@pytest.mark.parametrize(
    ("path", "times", "o2", "co2"),
    [(IDLE, IDLE_TIMES, [20.376] * 6, 0.250), (LIVE, LIVE_TIMES, LIVE_O2, 0.247)],
    ids=["idle", "live"],
)
def test_captures_decode_to_six_frames_of_five_exact_readings(
    path: Path, times: list[str], o2: list[float], co2: float
) -> None:
    events = ContinuousFramer().feed(path.read_bytes(), received_at=NOW, monotonic_ns=7)
    assert all(isinstance(event, Frame) for event in events), events
    frames = [event for event in events if isinstance(event, Frame)]
    assert len(frames) == 6
    for k, (frame, clock, oxygen) in enumerate(zip(frames, times, o2, strict=True)):
        assert frame.protocol is ProtocolKind.CONTINUOUS
        # one chunk, six frames: distinct stamps 1 us / 1000 ns apart
        assert frame.received_at == NOW + timedelta(microseconds=k)
        assert frame.monotonic_ns == 7 + 1000 * k
        assert frame.raw.startswith(b" 06-10-20;") and frame.raw.endswith(b";")
        assert frame.analyser.clock == datetime.fromisoformat(f"2020-10-06T{clock}")
        assert frame.analyser.fault is False and frame.analyser.maintenance is False
        assert all(not g.calibrating and g.cal_gas == 1 for g in frame.analyser.cal_groups)
        assert [g.group for g in frame.analyser.cal_groups] == [1, 2, 3, 4]
        got = [(r.channel, r.kind, r.name, r.value, r.unit) for r in frame.readings]
        assert got == [
            (ChannelId.I1, ChannelKind.TRANSDUCER, "Oxygen", oxygen, Unit.PERCENT),
            (ChannelId.I2, ChannelKind.TRANSDUCER, "CO", 0.084, Unit.PERCENT),
            (ChannelId.I3, ChannelKind.TRANSDUCER, "CO2", co2, Unit.PERCENT),
            (ChannelId.E1, ChannelKind.EXTERNAL_INPUT, None, 0.0, Unit.MA),
            (ChannelId.E2, ChannelKind.EXTERNAL_INPUT, None, 0.0, Unit.MA),
        ]
        for reading in frame.readings:
            assert reading.status == ChannelStatus() and reading.status.ok
            assert reading.received_at == frame.received_at
            assert reading.monotonic_ns == frame.monotonic_ns
            assert reading.protocol is ProtocolKind.CONTINUOUS
            assert reading.raw.count(b";") == 7 and reading.raw[:2] == reading.channel.encode()
        assert frame.readings[0].raw == f"I1;Oxygen;{oxygen:.3f}; % ;    ;  ; ; ".encode()


def test_first_idle_frame_rows() -> None:
    frame = parse_frame(lines(IDLE)[0], received_at=NOW, monotonic_ns=123)
    rows = [sample_to_row(s) for s in frame.as_samples("bench")]
    assert rows[0] == {
        "device": "bench",
        "channel": "I1",
        "kind": "transducer",
        "name": "Oxygen",
        "value": 20.376,
        "unit": "%",
        "ok": "true",
        "fault": "false",
        "maintenance": "false",
        "calibrating": "false",
        "warming_up": "false",
        "protocol": "continuous",
        "monotonic_ns": 123,
        "received_at": "2026-05-30T12:00:00+00:00",
        "requested_at": None,
        "latency_s": None,
        "error": None,
    }
    assert rows[3]["name"] is None and rows[3]["unit"] == "mA"


def test_parse_defaults_timestamps_to_now() -> None:
    before = datetime.now(UTC)
    frame = parse_frame(lines(IDLE)[0])
    assert before <= frame.received_at <= datetime.now(UTC)
    assert frame.received_at.tzinfo is UTC
    assert frame.monotonic_ns > 0


def test_parse_accepts_bytearray_and_memoryview() -> None:
    raw = lines(LIVE)[2]
    assert parse_frame(bytearray(raw), received_at=NOW, monotonic_ns=1) == parse_frame(
        memoryview(raw), received_at=NOW, monotonic_ns=1
    )


# --- errors -------------------------------------------------------------------------------------


def test_checksum_mismatch_carries_both_values() -> None:
    raw = lines(IDLE)[0].replace(b"20.376", b"20.377")
    with pytest.raises(ServomexChecksumError) as info:
        parse_frame(raw)
    error = info.value
    assert error.received == 0x2A1D
    assert error.expected == 0x2A1E
    assert error.reason == "checksum"
    assert error.raw == raw
    assert "computed=2A1E" in str(error) and "received=2A1D" in str(error)


def test_checksum_is_verified_before_the_fields() -> None:
    # An unknown channel id AND a wrong checksum: the checksum error wins.
    raw = lines(IDLE)[0].replace(b"I2;CO    ", b"X9;CO    ")
    with pytest.raises(ServomexChecksumError):
        parse_frame(raw)


def test_checksum_is_verified_on_cached_bodies_too() -> None:
    good = lines(IDLE)[0]
    parse_frame(good)  # warm every cache with this body
    bad = good[:-5] + b"2A1E;"
    with pytest.raises(ServomexChecksumError) as info:
        parse_frame(bad)
    assert (info.value.expected, info.value.received) == (0x2A1D, 0x2A1E)


def test_lower_case_checksum_is_accepted() -> None:
    raw = build_frame(five_channel(20.123))
    field = raw[-5:-1]
    lowered = raw[:-5] + field.lower() + b";"
    if field != field.lower():
        assert parse_frame(lowered).readings[0].value == 20.123


def with_checksum(body_after_space: bytes) -> bytes:
    return b" " + body_after_space + format_checksum(checksum(body_after_space)) + b";"


def test_structural_errors() -> None:
    good = lines(IDLE)[0]
    with pytest.raises(ServomexFrameError):
        parse_frame(good[1:])  # no start space
    with pytest.raises(ServomexFrameError):
        parse_frame(good[:100])  # truncated
    with pytest.raises(ServomexFrameError):
        parse_frame(good[:-5] + b"2A1Z;")  # checksum field not hex
    with pytest.raises(ServomexFrameError):
        parse_frame(b"")
    # N says 06 but five blocks follow: wrong token count, checksum fine.
    body = good[1:-5].replace(b";05;", b";06;", 1)
    with pytest.raises(ServomexFrameError, match="token count"):
        parse_frame(with_checksum(body))
    body = good[1:-5].replace(b";05;", b";0x;", 1)
    with pytest.raises(ServomexParseError):
        parse_frame(with_checksum(body))


def test_unknown_and_duplicate_channel_ids_are_parse_errors() -> None:
    body = lines(IDLE)[0][1:-5]
    with pytest.raises(ServomexParseError, match="unknown channel id"):
        parse_frame(with_checksum(body.replace(b"I2;CO    ", b"X9;CO    ")))
    with pytest.raises(ServomexParseError, match="twice"):
        parse_frame(with_checksum(body.replace(b"I2;CO    ", b"I1;CO    ")))


def test_channel_identity_comes_from_the_id_field_not_the_position() -> None:
    blocks = [
        BlockSpec(ChannelId.E2, None, 4.0, Unit.MA, decimals=1),
        BlockSpec(ChannelId.D3, "O2dry", 21.0, Unit.PERCENT),
        BlockSpec(ChannelId.I4, "CH4", 125, Unit.VPM, decimals=0),
    ]
    frame = parse_frame(build_frame(blocks))
    assert [(r.channel, r.kind, r.name, r.value, r.unit) for r in frame.readings] == [
        (ChannelId.E2, ChannelKind.EXTERNAL_INPUT, None, 4.0, Unit.MA),
        (ChannelId.D3, ChannelKind.DERIVED, "O2dry", 21.0, Unit.PERCENT),
        (ChannelId.I4, ChannelKind.TRANSDUCER, "CH4", 125.0, Unit.VPM),
    ]


def test_unparseable_value_is_none_and_unknown_unit_keeps_its_text() -> None:
    blocks = [
        BlockSpec(ChannelId.I1, "Oxygen", None, Unit.PERCENT),  # "++++++"
        BlockSpec(ChannelId.I2, "CO", "      ", "ppb"),
        BlockSpec(ChannelId.I3, "X", "   nan", Unit.PPM),
        BlockSpec(ChannelId.E1, None, "  -inf", Unit.MA),
    ]
    frame = parse_frame(build_frame(blocks))
    assert [r.value for r in frame.readings] == [None, None, None, None]
    co = frame.readings[1]
    assert co.unit is Unit.UNKNOWN and co.unit_text == "ppb" and co.unit_label == "ppb"
    assert frame.readings[2].unit is Unit.PPM and frame.readings[2].unit_text == ""
    assert sample_to_row(frame.as_samples("d")[1])["unit"] == "ppb"


def test_unset_or_invalid_clock_is_none() -> None:
    frame = parse_frame(build_frame(five_channel(), clock=None))
    assert frame.analyser.clock is None
    body = build_frame(five_channel())[1:-5].replace(b"00:00:00", b"25:61:00", 1)
    assert parse_frame(with_checksum(body)).analyser.clock is None
    body = build_frame(five_channel())[1:-5].replace(b"00-00-00", b"31-02-21", 1)
    assert parse_frame(with_checksum(body)).analyser.clock is None


def test_clock_advances_within_and_across_minutes() -> None:
    for clock in [
        datetime(2026, 5, 30, 23, 59, 58),
        datetime(2026, 5, 30, 23, 59, 59),
        datetime(2026, 5, 31, 0, 0, 0),
        datetime(2026, 5, 31, 0, 0, 1),
        datetime(2026, 5, 31, 0, 0, 1),
    ]:
        assert parse_frame(build_frame(five_channel(), clock=clock)).analyser.clock == clock


def test_non_fixed_field_widths_still_parse() -> None:
    # A value field one character short: the general tokenising path must take over.
    reference = parse_frame(lines(IDLE)[0], received_at=NOW, monotonic_ns=1)
    body = lines(IDLE)[0][1:-5].replace(b";20.376;", b";20.376 ;").replace(b"; 0.084;", b";0.084;")
    odd = with_checksum(body)
    frame = parse_frame(odd, received_at=NOW, monotonic_ns=1)
    assert [r.value for r in frame.readings] == [r.value for r in reference.readings]
    assert frame.analyser == reference.analyser
    # Odd clock width too.
    body = lines(IDLE)[0][1:-5].replace(b"02:54:12", b"2:54:12", 1)
    frame = parse_frame(with_checksum(body), received_at=NOW, monotonic_ns=1)
    assert frame.analyser.clock is None
    assert [r.value for r in frame.readings] == [r.value for r in reference.readings]


def test_status_flags_decode() -> None:
    status = ChannelStatus(True, True, True, True, (True, False, True, False))
    frame = parse_frame(
        build_frame(
            five_channel(status=status),
            fault=True,
            maintenance=True,
            cal_groups=(CalGroupState(1), CalGroupState(2, True, 2), CalGroupState(3)),
        )
    )
    assert frame.readings[0].status == status
    assert not frame.readings[0].status.ok
    assert frame.readings[1].status == ChannelStatus()
    assert frame.analyser.fault and frame.analyser.maintenance
    assert frame.analyser.cal_groups == (
        CalGroupState(1),
        CalGroupState(2, True, 2),
        CalGroupState(3),
        CalGroupState(4),
    )


def test_parser_caches_stay_bounded() -> None:
    from servomexd.protocol import continuous

    start = datetime(2026, 1, 1)
    for i in range(12_000):  # every frame and most blocks new
        blocks = [
            BlockSpec(ChannelId.I1, "Oxygen", round(10 + i / 1000, 3), Unit.PERCENT),
            BlockSpec(ChannelId.I2, "CO", round(i / 1000, 3), Unit.PERCENT),
            BlockSpec(ChannelId.E1, None, 4.0, Unit.MA),
        ]
        frame = parse_frame(build_frame(blocks, clock=start + timedelta(seconds=i)))
        assert frame.readings[0].value == round(10 + i / 1000, 3)
    assert len(continuous._bodies) <= continuous._BODY_CACHE_LIMIT
    assert len(continuous._blocks) <= continuous._BLOCK_CACHE_LIMIT
    assert len(continuous._blocks_old) <= continuous._BLOCK_CACHE_LIMIT


# --- property tests -----------------------------------------------------------------------------

statuses = st.builds(
    ChannelStatus,
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
)
names = st.one_of(
    st.none(),
    st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=";|"),
        min_size=1,
        max_size=6,
    ),
)
units = st.sampled_from([Unit.PERCENT, Unit.VPM, Unit.PPM, Unit.MA])


@st.composite
def frame_specs(draw: st.DrawFn) -> tuple[list[BlockSpec], dict[str, object]]:
    channels = draw(st.lists(st.sampled_from(list(ChannelId)), min_size=3, max_size=7, unique=True))
    blocks = []
    for channel in channels:
        decimals = draw(st.integers(0, 3))
        value = draw(
            st.one_of(
                st.none(),
                st.floats(-99.0, 999.0, allow_nan=False).map(lambda v, d=decimals: round(v, d)),
            )
        )
        blocks.append(BlockSpec(channel, draw(names), value, draw(units), draw(statuses), decimals))
    groups = tuple(
        CalGroupState(g, draw(st.booleans()), draw(st.sampled_from([1, 2]))) for g in range(1, 5)
    )
    clock = draw(st.one_of(st.none(), st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31))))
    options = {
        "fault": draw(st.booleans()),
        "maintenance": draw(st.booleans()),
        "cal_groups": groups,
        "clock": None if clock is None else clock.replace(microsecond=0),
    }
    return blocks, options


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame_specs())
def test_build_parse_round_trip(spec: tuple[list[BlockSpec], dict[str, object]]) -> None:
    blocks, options = spec
    raw = build_frame(blocks, **options)  # type: ignore[arg-type]
    assert len(raw) == 39 + 33 * len(blocks)
    frame = parse_frame(raw, received_at=NOW, monotonic_ns=5)
    assert frame.raw == raw
    assert frame.analyser.fault == options["fault"]
    assert frame.analyser.maintenance == options["maintenance"]
    assert frame.analyser.cal_groups == options["cal_groups"]
    assert frame.analyser.clock == options["clock"]
    assert len(frame.readings) == len(blocks)
    for reading, block in zip(frame.readings, blocks, strict=True):
        assert reading.channel is block.channel
        assert reading.kind is block.channel.kind
        assert reading.name == block.name
        if block.value is None:
            assert reading.value is None
        else:
            text = reading.raw.split(b";")[2].decode()
            assert reading.value == float(text)
            places = len(text.partition(".")[2])
            assert abs(reading.value - float(block.value)) <= 0.5 * 10**-places + 1e-9
        assert reading.unit is block.unit
        assert reading.status == block.status
    # The same frame again (now from the caches) and through the general path agree.
    assert parse_frame(raw, received_at=NOW, monotonic_ns=5) == frame
    odd = with_checksum(raw[1:-5].replace(b";", b" ;", 1))  # widens the date field
    general = parse_frame(odd, received_at=NOW, monotonic_ns=5)
    assert general.readings == frame.readings
    assert general.analyser._replace(clock=frame.analyser.clock) == frame.analyser


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_parse_frame_raises_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ServomexProtocolError):
        parse_frame(data)


@settings(max_examples=300, deadline=None)
@given(frame_specs(), st.integers(0, 10_000), st.integers(0, 255))
def test_parse_frame_rejects_any_single_byte_corruption(
    spec: tuple[list[BlockSpec], dict[str, object]], where: int, byte: int
) -> None:
    blocks, options = spec
    raw = build_frame(blocks, **options)  # type: ignore[arg-type]
    index = 1 + where % (len(raw) - 1)
    if raw[index] == byte:
        return
    corrupted = raw[:index] + bytes([byte]) + raw[index + 1 :]
    stripped = raw.rstrip(b"\r\n")
    in_checksum_field = len(stripped) - 5 <= index < len(stripped) - 1
    if in_checksum_field and corrupted.upper() == raw.upper():
        # Only the case of a hex digit changed (E -> e): lower case is accepted on
        # purpose, so this is the same checksum, not a corruption.
        assert parse_frame(corrupted).readings == parse_frame(raw).readings
        return
    # Any other single changed byte changes the additive checksum or the checksum field.
    with pytest.raises(ServomexProtocolError):
        parse_frame(corrupted)


# --- framer -------------------------------------------------------------------------------------


def frames_of(events: list[Frame | Rejection]) -> list[Frame]:
    return [event for event in events if isinstance(event, Frame)]


def rejections_of(events: list[Frame | Rejection]) -> list[Rejection]:
    return [event for event in events if isinstance(event, Rejection)]


@pytest.mark.parametrize("terminator", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
def test_framer_accepts_lf_and_crlf(terminator: bytes) -> None:
    stream = b"".join(line + terminator for line in lines(LIVE))
    events = ContinuousFramer().feed(stream)
    assert len(frames_of(events)) == 6 and not rejections_of(events)
    assert frames_of(events)[0].raw == lines(LIVE)[0]


def test_framer_byte_by_byte_gives_the_same_frames() -> None:
    framer = ContinuousFramer()
    events = []
    for byte in IDLE.read_bytes():
        events += framer.feed(bytes([byte]), received_at=NOW, monotonic_ns=1)
    assert [f.raw for f in frames_of(events)] == lines(IDLE)
    assert framer.buffered == 0


def test_framer_resyncs_after_noise_truncation_and_corruption() -> None:
    good = lines(IDLE)
    corrupt = good[2].replace(b"20.376", b"20.999")
    stream = (
        good[0][100:]
        + b"\n"  # opened mid-broadcast: the tail of a frame
        + good[0]
        + b"\n"
        + b"\x00\xff garbage \x13\x11\n"  # noise
        + good[1][:120]
        + b"\n"  # truncated frame
        + corrupt
        + b"\n"
        + b"\n"  # empty line: ignored
        + good[3]
        + b"\r\n"
    )
    events = ContinuousFramer().feed(stream)
    assert [type(e).__name__ for e in events] == [
        "Rejection",
        "Frame",
        "Rejection",
        "Rejection",
        "Rejection",
        "Frame",
    ]
    reasons = [e.reason for e in rejections_of(events)]
    assert reasons == ["noise", "noise", "parse", "checksum"]
    assert [f.raw for f in frames_of(events)] == [good[0], good[3]]
    bad = rejections_of(events)[3]
    assert bad.raw == corrupt and bad.protocol is ProtocolKind.CONTINUOUS
    row = sample_to_row(bad.as_sample("dev"))
    assert row["channel"] is None and row["value"] is None and row["ok"] is None
    assert "checksum mismatch" in row["error"]
    # A tail that happens to start with a space passes the start check and fails the sum.
    events = ContinuousFramer().feed(good[0][90:] + b"\n" + good[0] + b"\n")
    assert [getattr(e, "reason", "frame") for e in events] == ["checksum", "frame"]


def test_framer_drops_an_overlong_line_once_and_keeps_memory_bounded() -> None:
    framer = ContinuousFramer(max_line=512)
    events = []
    for _ in range(100):  # 100 KiB of garbage without a terminator
        events += framer.feed(b"\x55" * 1024)
        assert framer.buffered <= 512
    events += framer.feed(b"still garbage\n" + lines(IDLE)[0] + b"\n")
    assert [e.reason for e in rejections_of(events)] == ["overlong"]
    assert len(rejections_of(events)[0].raw) <= 256
    assert len(frames_of(events)) == 1
    # An overlong line that arrives complete in one chunk is rejected the same way.
    events = framer.feed(b" " + b"x" * 600 + b"\n" + lines(IDLE)[1] + b"\n")
    assert [type(e).__name__ for e in events] == ["Rejection", "Frame"]
    assert events[0].reason == "overlong"  # type: ignore[union-attr]


def test_framer_overlong_across_buffer_and_chunk() -> None:
    framer = ContinuousFramer(max_line=300)
    assert framer.feed(b" " + b"y" * 200) == []
    events = framer.feed(b"y" * 200 + b"\n" + lines(LIVE)[0] + b"\n")
    assert [type(e).__name__ for e in events] == ["Rejection", "Frame"]


def test_framer_stamps_are_unique_and_increasing() -> None:
    framer = ContinuousFramer()
    stream = b"".join(line + b"\n" for line in lines(IDLE))
    first = framer.feed(stream[:300], received_at=NOW, monotonic_ns=50)
    rest = framer.feed(stream[300:], received_at=NOW, monotonic_ns=50)  # same stamp again
    stamps = [(e.received_at, e.monotonic_ns) for e in first + rest]
    assert len(stamps) == 6
    assert stamps == sorted(stamps) and len(set(stamps)) == 6
    assert stamps[0] == (NOW, 50)
    later = datetime(2030, 1, 1, tzinfo=UTC)
    (event,) = framer.feed(lines(LIVE)[0] + b"\n", received_at=later, monotonic_ns=10**12)
    assert (event.received_at, event.monotonic_ns) == (later, 10**12)  # not bumped


def test_framer_reset_forgets_a_partial_line() -> None:
    framer = ContinuousFramer()
    framer.feed(lines(IDLE)[0][:50])
    assert framer.buffered == 50
    framer.reset()
    assert framer.buffered == 0
    assert len(frames_of(framer.feed(lines(IDLE)[1] + b"\n"))) == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=700), max_size=20), st.integers(64, 1024))
def test_framer_never_raises_and_never_exceeds_its_cap(chunks: list[bytes], cap: int) -> None:
    framer = ContinuousFramer(max_line=cap)
    for chunk in chunks:
        for event in framer.feed(chunk):
            assert isinstance(event, Frame | Rejection)
        assert framer.buffered <= cap


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 11), min_size=1, max_size=12),
    st.lists(st.integers(1, 300), min_size=1, max_size=40),
    st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=4),
)
def test_framer_recovers_every_good_frame_whatever_the_chunking(
    picks: list[int], sizes: list[int], noise: list[bytes]
) -> None:
    pool = lines(IDLE) + lines(LIVE)
    wanted = [pool[i] for i in picks]
    stream = b"".join(
        (noise[i % len(noise)] + b"\n" if noise and i % 2 else b"") + frame + b"\r\n"
        for i, frame in enumerate(wanted)
    )
    framer = ContinuousFramer()
    events = []
    position = 0
    index = 0
    while position < len(stream):
        size = sizes[index % len(sizes)]
        events += framer.feed(stream[position : position + size])
        position += size
        index += 1
    assert [f.raw for f in frames_of(events)] == wanted


# --- the lean path for all-new frames ------------------------------------------------------------


def _all_new_frames(count: int, seed: int) -> list[bytes]:
    start = datetime(2026, 2, 1)
    frames = []
    for i in range(count):
        status = ChannelStatus(fault=i % 3 == 0, alarms=(i % 2 == 0, False, i % 5 == 0, False))
        blocks = [
            BlockSpec(ChannelId.I1, "Oxygen", round(seed + 10 + i / 1000, 3), Unit.PERCENT, status),
            BlockSpec(ChannelId.I2, "CO", round(seed + i / 1000, 3), Unit.VPM),
            BlockSpec(ChannelId.E1, None, None if i == 5 else round(4 + i / 997, 3), Unit.MA),
            BlockSpec(ChannelId.E2, "Flow", round(seed + i / 100, 2), "l/m", decimals=2),
        ]
        frames.append(build_frame(blocks, clock=start + timedelta(seconds=i)))
    return frames


def test_all_new_frames_take_the_lean_path_and_decode_exactly() -> None:
    from servomexd.protocol import continuous

    frames = _all_new_frames(300, seed=7)
    bodies_before = len(continuous._bodies)
    for raw in frames:
        frame = parse_frame(raw, received_at=NOW, monotonic_ns=5)
        odd = with_checksum(raw[1:-5].replace(b";", b" ;", 1))  # the general path
        general = parse_frame(odd, received_at=NOW, monotonic_ns=5)
        assert frame.readings == general.readings
        assert frame.analyser._replace(clock=None) == general.analyser._replace(clock=None)
        assert frame.raw == raw
    # nothing recurs, so at most one frame in _ADMIT_EVERY reached the caches
    admitted = len(continuous._bodies) - bodies_before
    assert admitted <= len(frames) // continuous._ADMIT_EVERY + 1


def test_lean_path_verifies_the_checksum_and_falls_back_on_odd_blocks() -> None:
    frames = _all_new_frames(10, seed=3)
    for raw in frames[:5]:
        parse_frame(raw)  # a streak of all-new frames: the next ones go lean
    bad = frames[5][:-5] + b"0000;"
    with pytest.raises(ServomexChecksumError):
        parse_frame(bad)
    # a value field holding a ';' is no fixed layout: the general path reports it
    block = frames[6][34:67]
    broken = frames[6][:1] + frames[6][1:44] + b";" + frames[6][45:-5]
    assert block[10:16] != broken[44:50]
    with pytest.raises(ServomexProtocolError):
        parse_frame(with_checksum(broken[1:]))


def test_a_steady_analyser_is_cached_even_after_a_streak_of_all_new_frames() -> None:
    from servomexd.protocol import continuous

    for raw in _all_new_frames(20, seed=11):
        parse_frame(raw)
    steady = _all_new_frames(1, seed=99)[0]
    for _ in range(continuous._ADMIT_EVERY + 1):
        parse_frame(steady)
    assert steady[19:-5] in continuous._bodies
