"""Register map, value/charset/status decoding, poll plans and ADUs (pure code)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from pymodbus.framer import FramerRTU

from servomexd.errors import ServomexProtocolError
from servomexd.model import ChannelId, ChannelStatus, ProtocolKind, Unit
from servomexd.protocol import modbus as mb

I1, I2, I3, I4, D1, D2, D3, D4, E1, E2 = tuple(ChannelId)
BENCH = (I1, I2, I3, E1, E2)


# --- register map ------------------------------------------------------------------------


def test_slot_addresses_match_the_table() -> None:
    # docs/protocol.md#register-map: value/name/unit PDU of each channel.
    assert [(mb.value_address(c), mb.name_address(c), mb.unit_address(c)) for c in ChannelId] == [
        (0, 2, 5), (7, 9, 12), (14, 16, 19), (21, 23, 26), (28, 30, 33),
        (35, 37, 40), (42, 44, 47), (49, 51, 54), (56, 58, 61), (63, 65, 68),
    ]
    assert [mb.status_address(c) for c in ChannelId] == [0, 8, 16, 24, 32, 40, 48, 56, 64, 72]
    assert mb.INPUT_REGISTER_COUNT == 70
    assert mb.CHANNEL_STATUS_COUNT == 80


# --- values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("high", "low", "expected"),
    [(0x41A3, 0x0625, 20.378), (0x3DAC, 0x0831, 0.084), (0x3E80, 0x0000, 0.250)],
)
def test_float_table_values(high: int, low: int, expected: float) -> None:
    assert mb.decode_float(high, low) == expected  # the shortest decimal, as displayed
    assert mb.encode_float(expected) == (high, low)


@pytest.mark.parametrize("value", [0.0, -1.5, 1e-7, 123456.7, 3.4e38, 20.9370002746582])
def test_float_round_trips_through_float32(value: float) -> None:
    high, low = mb.encode_float(value)
    decoded = mb.decode_float(high, low)
    assert decoded is not None
    assert mb.encode_float(decoded) == (high, low)
    assert len(repr(decoded)) <= 15


def test_float_word_order_matters() -> None:
    swapped = mb.decode_float(0x0625, 0x41A3)
    assert swapped is not None and swapped != pytest.approx(20.378)


@pytest.mark.parametrize(
    ("high", "low"), [(0x7FC0, 0x0000), (0xFFC0, 0x0001), (0x7F80, 0x0000), (0xFF80, 0x0000)]
)
def test_nan_and_infinity_are_no_value(high: int, low: int) -> None:
    assert mb.decode_float(high, low) is None


def test_encode_none_is_nan() -> None:
    high, low = mb.encode_float(None)
    assert mb.decode_float(high, low) is None
    assert math.isnan(__import__("struct").unpack(">f", bytes.fromhex(f"{high:04x}{low:04x}"))[0])


# --- charset -----------------------------------------------------------------------------


def test_oxygen_name_registers() -> None:
    assert mb.decode_name([0x4F78, 0x7967, 0x656E]) == "Oxygen"


def test_co2_subscript_glyph_gives_the_canonical_ascii_name() -> None:
    # The display glyph 0x82 (subscript two) decodes to CO\u2082; the canonical name,
    # the one continuous mode sends, is CO2.
    registers = mb.bytes_to_registers(bytes.fromhex("434F82202020"))
    assert mb.decode_display_text(bytes.fromhex("434F82")) == "CO\u2082"
    assert mb.decode_name(registers) == "CO2"


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (b"NO\x82   ", "NO2"),
        (b"O\x82    ", "O2"),
        (b"CO\xb2   ", "CO2"),  # Latin-1 superscript two
        (b"H\x82S\x00\x00\x00", "H2S"),
    ],
)
def test_sub_and_superscripts_in_names_become_ascii(raw: bytes, name: str) -> None:
    assert mb.decode_name(mb.bytes_to_registers(raw)) == name


def test_every_byte_decodes_without_raising() -> None:
    text = mb.decode_display_text(bytes(range(256)))
    assert len(text) == 256
    assert text[0x82] == "\u2082"
    assert text[0xB0] == "\u00b0"  # passed through as Latin-1
    assert text[0x41] == "A"


@pytest.mark.parametrize(
    "raw",
    [b"||||||", b"      ", b"\x00\x00\x00\x00\x00\x00", b"|||   ", b" \x00 \x00  "],
)
def test_unpopulated_names(raw: bytes) -> None:
    assert mb.decode_name(mb.bytes_to_registers(raw)) is None


def test_names_keep_inner_spaces_and_pipes() -> None:
    assert mb.decode_name(mb.bytes_to_registers(b"O2 A  ")) == "O2 A"
    assert mb.decode_name(mb.bytes_to_registers(b"A|B\x00\x00\x00")) == "A|B"


@pytest.mark.parametrize(
    ("raw", "unit", "text"),
    [
        (b" % \x00", Unit.PERCENT, "%"),
        (b"%\x00\x00\x00", Unit.PERCENT, "%"),
        (b"mA\x00 ", Unit.MA, "mA"),
        (b"vpm\x00", Unit.VPM, "vpm"),
        (b"PPM\x00", Unit.PPM, "PPM"),
        (b"\xb0C\x00\x00", Unit.UNKNOWN, "\u00b0C"),
        (b"\x00\x00\x00\x00", Unit.UNKNOWN, ""),
    ],
)
def test_units(raw: bytes, unit: Unit, text: str) -> None:
    assert mb.decode_unit(mb.bytes_to_registers(raw)) == (unit, text)


def test_encode_display_text_round_trip() -> None:
    raw = mb.encode_display_text("CO\u2082", 6)
    assert raw == b"CO\x82   "
    assert mb.decode_name(mb.bytes_to_registers(raw)) == "CO2"
    assert mb.encode_display_text("%", 4, pad=b"\x00") == b"%\x00\x00\x00"
    assert mb.encode_display_text("\u20ac", 2) == b"? "


# --- status ------------------------------------------------------------------------------


def test_transducer_status_bits() -> None:
    status = mb.decode_channel_status(I1, 0b1010_0110)
    assert status == ChannelStatus(False, True, True, False, (False, True, False, True))
    assert mb.decode_channel_status(I2, 0b0000_1001).fault
    assert mb.decode_channel_status(I2, 0b0000_1001).warming_up


def test_external_input_invalid_is_fault_and_reserved_bits_ignored() -> None:
    status = mb.decode_channel_status(E1, 0b0001_1111)
    assert status.fault is True
    assert (status.maintenance, status.calibrating, status.warming_up) == (False, False, False)
    assert status.alarms == (True, False, False, False)
    assert not status.ok
    idle = mb.decode_channel_status(E2, 0b0000_1110)
    assert idle == ChannelStatus()
    assert idle.ok


def test_derived_status_reported_as_read() -> None:
    # D-channel bits 0-3 copy the parent's flags: reported, not reinterpreted.
    assert mb.decode_channel_status(D1, 0b0000_0101) == ChannelStatus(True, False, True, False)


def test_analyser_status_and_cal_groups() -> None:
    bits = [False] * 16
    bits[0] = True  # analyser fault
    bits[8] = True  # group 1 calibrating, gas 1
    bits[12] = True  # group 3 calibrating ...
    bits[13] = True  # ... on gas 2
    bits[15] = True  # group 4 idle but gas 2 selected
    status = mb.decode_analyser_status(bits)
    assert status.fault and not status.maintenance
    assert [(g.group, g.calibrating, g.cal_gas) for g in status.cal_groups] == [
        (1, True, 1), (2, False, 1), (3, True, 2), (4, False, 2),
    ]
    assert status.clock is None
    with pytest.raises(ServomexProtocolError):
        mb.decode_analyser_status([False] * 8)


# --- ADUs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pdu", "rtu", "ascii_line"),
    [
        ("0400000046", "1E 04 00 00 00 46 73 97", b":1E040000004698\r\n"),
        ("0200000050", "1E 02 00 00 00 50 7A 59", b":1E020000005090\r\n"),
        ("0203E80010", "1E 02 03 E8 00 10 FB D9", b":1E0203E80010E5\r\n"),
        ("080000ABCD", "1E 08 00 00 AB CD 5C C1", b":1E080000ABCD62\r\n"),
        ("050000FF00", "1E 05 00 00 FF 00 8E 55", b":1E050000FF00DE\r\n"),
        ("0100000001", "1E 01 00 00 00 01 FF A5", b":1E0100000001E0\r\n"),
        ("0500000000", "1E 05 00 00 00 00 CF A5", b":1E0500000000DD\r\n"),
    ],
)
def test_example_adus_for_slave_30(pdu: str, rtu: str, ascii_line: bytes) -> None:
    raw = bytes.fromhex(pdu)
    assert mb.rtu_adu(30, raw) == bytes.fromhex(rtu)
    assert mb.ascii_adu(30, raw) == ascii_line
    # pymodbus agrees on the CRC (it returns it high byte first).
    crc = FramerRTU.compute_CRC(bytes([30]) + raw)
    assert crc.to_bytes(2, "big") == bytes.fromhex(rtu)[-2:]
    assert len(mb.rtu_adu(30, raw)) == mb.adu_length(ProtocolKind.MODBUS_RTU, len(raw))
    assert len(mb.ascii_adu(30, raw)) == mb.adu_length(ProtocolKind.MODBUS_ASCII, len(raw))


def test_read_request_pdus() -> None:
    assert mb.IDENTIFY_READ.pdu() == bytes.fromhex("0400000046")
    assert mb.ANALYSER_STATUS_READ.pdu() == bytes.fromhex("0203E80010")
    assert mb.IDENTIFY_READ.response_pdu_length() == 142
    assert mb.ReadRequest(2, 0, 80).response_pdu_length() == 12
    assert mb.ANALYSER_STATUS_READ.response_pdu_length() == 4


# --- poll plans --------------------------------------------------------------------------


def _reads(plan: mb.PollPlan) -> list[tuple[int, int, int]]:
    return [tuple(read) for read in plan.reads]


def test_broad_plan_for_the_bench() -> None:
    plan = mb.broad_plan(BENCH)
    assert plan.broad
    assert _reads(plan) == [(4, 0, 70), (2, 0, 80), (2, 1000, 16)]


def test_narrow_plan_for_the_bench_matches_the_fact_sheet() -> None:
    plan = mb.narrow_plan(reversed(BENCH))
    assert not plan.broad
    assert plan.channels == BENCH
    assert _reads(plan) == [(4, 0, 21), (4, 56, 14), (2, 0, 24), (2, 64, 16), (2, 1000, 16)]


def test_broad_plan_spans_only_wanted_slots() -> None:
    assert _reads(mb.broad_plan([I2, D1])) == [(4, 7, 28), (2, 8, 32), (2, 1000, 16)]


def test_plans_need_channels() -> None:
    with pytest.raises(ValueError):
        mb.broad_plan([])
    with pytest.raises(ValueError):
        mb.narrow_plan([])


def test_planner_falls_back_on_illegal_address_only() -> None:
    planner = mb.PollPlanner(BENCH)
    assert planner.plan.broad
    assert planner.on_exception(mb.EXCEPTION_ILLEGAL_FUNCTION) is False
    assert planner.plan.broad
    assert planner.on_exception(mb.EXCEPTION_ILLEGAL_ADDRESS) is True
    assert not planner.plan.broad and planner.fell_back
    assert planner.timeout_fallback() is None
    # Remembered: a second exception does not flip it back or report a new switch.
    assert planner.on_exception(mb.EXCEPTION_ILLEGAL_ADDRESS) is False
    assert not planner.plan.broad


def test_planner_after_timeout_offers_narrow_once() -> None:
    planner = mb.PollPlanner(BENCH)
    fallback = planner.timeout_fallback()
    assert fallback is not None and not fallback.broad
    assert planner.plan.broad  # not switched until the narrow plan worked
    assert planner.timeout_fallback() is None  # a silent slave is not re-probed every poll
    planner.narrow_succeeded()
    assert not planner.plan.broad and planner.fell_back


def test_planner_with_contiguous_slots_has_no_fallback() -> None:
    planner = mb.PollPlanner([I1, I2, I3])
    assert planner.timeout_fallback() is None
    assert not planner.fell_back
    assert _reads(planner.plan) == [(4, 0, 21), (2, 0, 24), (2, 1000, 16)]


# --- identify ----------------------------------------------------------------------------


def _slot(name: bytes, unit: bytes, value: float | None = 0.0) -> list[int]:
    return [*mb.encode_float(value), *mb.bytes_to_registers(name), *mb.bytes_to_registers(unit)]


def test_reported_channels_keep_named_slots_and_e1_e2() -> None:
    infos = [
        mb.decode_slot_info(I1, _slot(b"Oxygen", b" % \x00")),
        mb.decode_slot_info(I2, _slot(b"CO    ", b" % \x00")),
        mb.decode_slot_info(I3, _slot(b"CO\x82   ", b" % \x00")),
        mb.decode_slot_info(I4, _slot(b"||||||", b" % \x00")),
        mb.decode_slot_info(D1, _slot(b"      ", b"\x00\x00\x00\x00")),
        mb.decode_slot_info(E1, _slot(b"||||||", b" mA\x00")),
        mb.decode_slot_info(E2, _slot(b"||||||", b" mA\x00")),
    ]
    assert mb.reported_channels(infos) == BENCH
    assert infos[2].name == "CO2"
    assert infos[5] == mb.SlotInfo(E1, None, Unit.MA, "mA")


# --- a whole sweep -----------------------------------------------------------------------


def _bench_registers() -> list[int]:
    registers = [0] * 70
    slots = {
        I1: _slot(b"Oxygen", b" % \x00", 20.378),
        I2: _slot(b"CO    ", b" % \x00", 0.084),
        I3: _slot(b"CO\x82   ", b" % \x00", 0.25),
        I4: _slot(b"||||||", b" % \x00", None),
        E1: _slot(b"||||||", b" mA\x00", 0.0),
        E2: _slot(b"||||||", b" mA\x00", 4.0),
    }
    for channel, slot in slots.items():
        registers[mb.value_address(channel) : mb.value_address(channel) + 7] = slot
    return registers


def _bench_bits() -> list[bool]:
    bits = [False] * 80
    bits[8 + 0] = True  # I2 fault
    bits[16 + 2] = True  # I3 calibrating
    bits[64 + 1] = True  # E1 reserved bit: must be ignored
    bits[72 + 4] = True  # E2 alarm 1
    return bits


STAMP = datetime(2026, 5, 30, 12, 0, tzinfo=UTC)


def test_decode_sweep_broad() -> None:
    plan = mb.broad_plan(BENCH)
    analyser = [False] * 16
    analyser[1] = True
    results = [
        (plan.reads[0], _bench_registers()),
        (plan.reads[1], _bench_bits()),
        (plan.reads[2], analyser),
    ]
    frame = mb.decode_sweep(
        plan.channels,
        results,
        protocol=ProtocolKind.MODBUS_RTU,
        received_at=STAMP,
        monotonic_ns=42,
        requested_at=STAMP,
        latency_s=0.25,
    )
    assert [r.channel for r in frame.readings] == list(BENCH)
    assert [r.name for r in frame.readings] == ["Oxygen", "CO", "CO2", None, None]
    values = [r.value for r in frame.readings]
    assert values[:3] == [pytest.approx(20.378), pytest.approx(0.084), pytest.approx(0.25)]
    assert values[3:] == [0.0, 4.0]
    assert [r.unit for r in frame.readings] == [Unit.PERCENT] * 3 + [Unit.MA] * 2
    assert frame.reading("I2").status.fault
    assert frame.reading("I3").status.calibrating
    assert frame.reading("E1").status == ChannelStatus()
    assert frame.reading("E2").status.alarms == (True, False, False, False)
    assert frame.analyser.maintenance and not frame.analyser.fault
    assert frame.raw == b""
    assert frame.protocol is ProtocolKind.MODBUS_RTU
    assert len(frame.reading("I1").raw) == 14
    samples = frame.as_samples("ox1")
    assert all(s.requested_at == STAMP and s.latency_s == 0.25 for s in samples)
    assert all(s.monotonic_ns == 42 and s.received_at == STAMP for s in samples)


def test_decode_sweep_narrow_with_padded_bits() -> None:
    plan = mb.narrow_plan(BENCH)
    registers = _bench_registers()
    bits = _bench_bits()
    results: list[mb.SweepResult] = []
    for read in plan.reads:
        if read.function == 4:
            results.append((read, registers[read.address : read.address + read.quantity]))
        elif read.address >= 1000:
            results.append((read, [False] * 16))
        else:
            # pymodbus pads FC02 replies to whole bytes; 24 and 16 are already whole.
            results.append((read, bits[read.address : read.address + read.quantity] + [False] * 3))
    frame = mb.decode_sweep(
        plan.channels,
        results,
        protocol=ProtocolKind.MODBUS_ASCII,
        received_at=STAMP,
        monotonic_ns=1,
    )
    assert frame.reading("I1").value == pytest.approx(20.378)
    assert frame.reading("I2").status.fault
    assert frame.requested_at is None


def test_decode_sweep_rejects_incomplete_or_mismatched_replies() -> None:
    plan = mb.broad_plan(BENCH)
    kwargs = {"protocol": ProtocolKind.MODBUS_RTU, "received_at": STAMP, "monotonic_ns": 0}
    with pytest.raises(ServomexProtocolError, match="whole channel"):
        mb.decode_sweep(plan.channels, [(plan.reads[0], _bench_registers())], **kwargs)
    with pytest.raises(ServomexProtocolError, match="does not match"):
        mb.decode_sweep(plan.channels, [(plan.reads[0], [0] * 69)], **kwargs)
    with pytest.raises(ServomexProtocolError, match="analyser"):
        mb.decode_sweep(
            plan.channels,
            [(plan.reads[0], _bench_registers()), (plan.reads[1], _bench_bits())],
            **kwargs,
        )
    with pytest.raises(ServomexProtocolError, match="outside"):
        mb.decode_sweep(plan.channels, [(mb.ReadRequest(4, 60, 20), [0] * 20)], **kwargs)
