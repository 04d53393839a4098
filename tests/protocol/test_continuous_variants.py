"""A table of continuous-frame variants beside the captures, with the readings each gives.

Real analysers and the published parser's users send frames that differ from the bench
captures in small ways: a line terminator left on, a channel id padded with spaces,
the unlabelled-slot marker shortened and padded, names and units with bytes above
0x7F (display glyphs, Latin-1). Each row is the wire content and the exact readings
``parse_frame`` must give; frames are assembled here with their own checksum.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from servomexd.errors import ServomexFrameError, ServomexProtocolError
from servomexd.model import ChannelId, Frame, Unit
from servomexd.protocol.continuous import ContinuousFramer, parse_frame

CAPTURE = Path(__file__).resolve().parents[1] / "fixtures" / "continuous_4100_idle_5ch.bin"
HEADER = b"06-10-20;02:54:12;  ;S1S1S1S1;"
STATUS = b"    ;  ; ; "

Expected = tuple[ChannelId, str | None, float | None, Unit, str]
"""(channel, name, value, unit, unit_text) of one reading."""


def block(ident: bytes, name: bytes, value: bytes, unit: bytes) -> bytes:
    return b";".join((ident, name, value, unit, STATUS))


def wire(*blocks: bytes, terminator: bytes = b"") -> bytes:
    """A frame with the right checksum: the sum of every byte after the start space up
    to and including the ``;`` before the checksum field (docs/protocol.md#continuous-ascii)."""
    body = HEADER + b"%02d;" % len(blocks) + b"".join(b + b";" for b in blocks)
    return b" " + body + b"%04X;" % (sum(body) & 0xFFFF) + terminator


O2 = block(b"I1", b"Oxygen", b"20.376", b" % ")
O2_READING: Expected = (ChannelId.I1, "Oxygen", 20.376, Unit.PERCENT, "")
E1 = block(b"E1", b"||||||", b"   0.0", b" mA")
E1_READING: Expected = (ChannelId.E1, None, 0.0, Unit.MA, "")
FIRST_CAPTURE_LINE = CAPTURE.read_bytes().split(b"\n")[0]
CAPTURE_READINGS: list[Expected] = [
    O2_READING,
    (ChannelId.I2, "CO", 0.084, Unit.PERCENT, ""),
    (ChannelId.I3, "CO2", 0.25, Unit.PERCENT, ""),
    E1_READING,
    (ChannelId.E2, None, 0.0, Unit.MA, ""),
]


@dataclass(frozen=True)
class Variant:
    id: str
    raw: bytes
    readings: list[Expected]


VARIANTS = [
    # --- line terminators: one CR, LF or CR LF is stripped, once --------------------------
    Variant("capture", FIRST_CAPTURE_LINE, CAPTURE_READINGS),
    Variant("capture+LF", FIRST_CAPTURE_LINE + b"\n", CAPTURE_READINGS),
    Variant("capture+CR", FIRST_CAPTURE_LINE + b"\r", CAPTURE_READINGS),
    Variant("capture+CRLF", FIRST_CAPTURE_LINE + b"\r\n", CAPTURE_READINGS),
    Variant("built+CRLF", wire(O2, E1, terminator=b"\r\n"), [O2_READING, E1_READING]),
    # --- channel ids padded with spaces ----------------------------------------------------
    Variant(
        "id-padded-left",
        wire(block(b" I1", b"Oxygen", b"20.376", b" % "), E1),
        [O2_READING, E1_READING],
    ),
    Variant(
        "id-padded-both+LF",
        wire(O2, block(b" E1 ", b"||||||", b"   0.0", b" mA"), terminator=b"\n"),
        [O2_READING, E1_READING],
    ),
    # --- the unlabelled-slot marker, shortened or padded -------------------------------
    Variant("marker-|||   ", wire(block(b"E1", b"|||   ", b"   0.0", b" mA")), [E1_READING]),
    Variant("marker-   |||", wire(block(b"E1", b"   |||", b"   0.0", b" mA")), [E1_READING]),
    Variant("marker-||||||", wire(block(b"E1", b"||||||", b"   0.0", b" mA")), [E1_READING]),
    Variant("marker-wide", wire(block(b"E1", b"||||||  ", b"   0.0", b" mA")), [E1_READING]),
    Variant("marker-|", wire(block(b"E1", b"|     ", b"   0.0", b" mA")), [E1_READING]),
    # --- bytes above 0x7F: display glyphs, then Latin-1; names canonical ASCII ----------
    Variant(
        "name-CO-glyph",
        wire(block(b"I3", b"CO\x82   ", b" 0.250", b" % ")),
        [(ChannelId.I3, "CO2", 0.25, Unit.PERCENT, "")],
    ),
    Variant(
        "name-NO-glyph",
        wire(block(b"I2", b"NO\x82   ", b"  12.5", b"ppm")),
        [(ChannelId.I2, "NO2", 12.5, Unit.PPM, "")],
    ),
    Variant(
        "name-O-glyph",
        wire(block(b"I1", b"O\x82    ", b"20.376", b" % ")),
        [(ChannelId.I1, "O2", 20.376, Unit.PERCENT, "")],
    ),
    Variant(
        "name-latin1-superscript",
        wire(block(b"I3", b"CO\xb2   ", b" 0.250", b" % ")),
        [(ChannelId.I3, "CO2", 0.25, Unit.PERCENT, "")],
    ),
    Variant(
        "name-latin1-letter",
        wire(block(b"D1", b"\xc4thyl ", b"   1.5", b"vpm")),
        [(ChannelId.D1, "\u00c4thyl", 1.5, Unit.VPM, "")],
    ),
    Variant(
        "name-unmapped-byte",
        wire(block(b"D2", b"X\x81    ", b"   1.5", b"vpm")),
        [(ChannelId.D2, "X\x81", 1.5, Unit.VPM, "")],
    ),
    Variant(
        "unit-degree",
        wire(block(b"E2", b"Temp  ", b"  21.5", b"\xb0C ")),
        [(ChannelId.E2, "Temp", 21.5, Unit.UNKNOWN, "\u00b0C")],
    ),
    Variant(
        "unit-cubed",
        wire(block(b"E2", b"Flow  ", b"  21.5", b"m\xb3h")),
        [(ChannelId.E2, "Flow", 21.5, Unit.UNKNOWN, "m\u00b3h")],
    ),
    Variant(
        "unit-glyph",
        wire(block(b"E2", b"Flow  ", b"  21.5", b"m\x82 ")),
        [(ChannelId.E2, "Flow", 21.5, Unit.UNKNOWN, "m\u2082")],
    ),
    # --- all at once ------------------------------------------------------------------------
    Variant(
        "everything+CRLF",
        wire(
            block(b" I1", b"O\x82    ", b"20.376", b" % "),
            block(b"I3", b"CO\x82   ", b" 0.250", b" % "),
            block(b" E1", b"|||   ", b"   0.0", b" mA"),
            block(b"E2", b"Temp  ", b"  21.5", b"\xb0C "),
            terminator=b"\r\n",
        ),
        [
            (ChannelId.I1, "O2", 20.376, Unit.PERCENT, ""),
            (ChannelId.I3, "CO2", 0.25, Unit.PERCENT, ""),
            E1_READING,
            (ChannelId.E2, "Temp", 21.5, Unit.UNKNOWN, "\u00b0C"),
        ],
    ),
]


def readings_of(raw: bytes) -> list[Expected]:
    frame = parse_frame(raw)
    return [(r.channel, r.name, r.value, r.unit, r.unit_text) for r in frame.readings]


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.id for v in VARIANTS])
def test_frame_variant_gives_its_readings(variant: Variant) -> None:
    assert readings_of(variant.raw) == variant.readings
    assert readings_of(variant.raw) == variant.readings  # again, through the caches
    for reading in parse_frame(variant.raw).readings:
        assert "\ufffd" not in (reading.name or "") + reading.unit_text


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.id for v in VARIANTS])
def test_the_framer_gives_the_same_readings(variant: Variant) -> None:
    content = variant.raw.rstrip(b"\r\n")
    events = ContinuousFramer().feed(content + b"\r\n")
    assert len(events) == 1
    frame = events[0]
    assert isinstance(frame, Frame), frame
    assert [(r.channel, r.name, r.value, r.unit, r.unit_text) for r in frame.readings] == (
        variant.readings
    )


@pytest.mark.parametrize(
    "terminator", [b"\n\n", b"\r\n\r\n", b"\n\r", b"\r\r", b" \r\n"],
    ids=["LF-LF", "CRLF-CRLF", "LF-CR", "CR-CR", "space-CRLF"],
)
def test_only_one_terminator_is_stripped(terminator: bytes) -> None:
    with pytest.raises(ServomexFrameError):
        parse_frame(FIRST_CAPTURE_LINE + terminator)


def test_the_terminator_is_not_part_of_the_checksum() -> None:
    # A frame whose checksum was computed over its terminator too is still wrong.
    body = FIRST_CAPTURE_LINE[1:-5] + b"\r\n"
    with pytest.raises(ServomexProtocolError):
        parse_frame(b" " + body + b"%04X;" % (sum(body) & 0xFFFF))


def test_a_padded_id_must_still_name_a_channel() -> None:
    with pytest.raises(ServomexProtocolError, match="unknown channel id"):
        parse_frame(wire(block(b" X1", b"Oxygen", b"20.376", b" % ")))
    with pytest.raises(ServomexProtocolError, match="unknown channel id"):
        parse_frame(wire(block(b"I 1", b"Oxygen", b"20.376", b" % ")))
