"""The display charset and the canonical name: one gas, one name, in both protocols."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servomexd.model import ChannelId, Unit
from servomexd.protocol import modbus as mb
from servomexd.protocol.charset import canonical_name, decode_display_text
from servomexd.protocol.continuous import BlockSpec, build_frame, parse_frame


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("CO\u2082", "CO2"),
        ("NO\u2082", "NO2"),
        ("O\u2082", "O2"),
        ("CO\u00b2", "CO2"),
        ("C\u2083H\u2088", "C3H8"),
        ("NH\u2084\u207a", "NH4+"),
        ("Oxygen", "Oxygen"),
        ("\u00c4thyl", "\u00c4thyl"),  # other Latin-1 letters are the name as typed
    ],
)
def test_canonical_name(text: str, name: str) -> None:
    assert canonical_name(text) == name


@given(st.binary(max_size=16))
def test_display_text_never_gives_the_replacement_character(data: bytes) -> None:
    text = decode_display_text(data)
    assert len(text) == len(data)
    assert "\ufffd" not in text
    assert "\ufffd" not in canonical_name(text)


def _continuous_name(field: bytes) -> str | None:
    body = build_frame([BlockSpec(ChannelId.I3, "XXXXXX", 0.25, Unit.PERCENT)])[1:-5]
    body = body.replace(b"XXXXXX", field)
    raw = b" " + body + b"%04X;" % (sum(body) & 0xFFFF)
    return parse_frame(raw).readings[0].name


@pytest.mark.parametrize(
    ("continuous", "modbus", "name"),
    [
        (b"CO2   ", b"CO\x82   ", "CO2"),
        (b"CO\x82   ", b"CO2   ", "CO2"),
        (b"NO2   ", b"NO\x82   ", "NO2"),
        (b"O2    ", b"O\x82    ", "O2"),
        (b"||||||", b"||||||", None),
        (b"|||   ", b"|||\x00\x00\x00", None),
    ],
)
def test_one_gas_has_one_name_in_both_protocols(
    continuous: bytes, modbus: bytes, name: str | None
) -> None:
    assert _continuous_name(continuous) == name
    assert mb.decode_name(mb.bytes_to_registers(modbus)) == name


def test_the_simulators_glyph_name_reads_as_the_continuous_name() -> None:
    # What the Modbus simulator writes for CO2 and what continuous mode sends agree.
    registers = mb.bytes_to_registers(mb.encode_display_text("CO\u2082", mb.NAME_BYTES))
    assert mb.registers_to_bytes(registers) == b"CO\x82   "
    assert mb.decode_name(registers) == _continuous_name(b"CO2   ") == "CO2"
