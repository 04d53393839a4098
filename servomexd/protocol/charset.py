"""The analyser's display charset and the canonical channel name, for both protocols.

Channel names and units are typed on the front panel in the display ROM's charset:
ASCII, a few glyphs of its own (0x82 is subscript two) and Latin-1 above that. Modbus
returns those bytes; continuous frames are normally ASCII but carry the same bytes
when a label uses a glyph. Both protocols decode them here, so decoding never fails
and never yields U+FFFD.

A gas has one name whatever the protocol: the ASCII form (``CO2``, ``NO2``, ``O2``)
is canonical, so sub- and superscript digits (and signs) in a name become plain ASCII.
Units keep their glyphs (``°C``, ``m³``): a unit is display text, not a key.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "DISPLAY_GLYPHS",
    "canonical_name",
    "decode_display_text",
    "encode_display_text",
]

DISPLAY_GLYPHS: Mapping[int, str] = {0x82: "\u2082"}
"""Display-ROM bytes that are not Latin-1. Only subscript two has been captured."""
_DECODE_TABLE = {byte: glyph for byte, glyph in DISPLAY_GLYPHS.items()}
_ENCODE_TABLE = {glyph: byte for byte, glyph in DISPLAY_GLYPHS.items()}

_SCRIPTS = str.maketrans(
    "\u2080\u2081\u2082\u2083\u2084\u2085\u2086\u2087\u2088\u2089\u208a\u208b"
    "\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079\u207a\u207b",
    "0123456789+-0123456789+-",
)
"""Subscript and superscript digits and signs to ASCII: ``CO₂`` and ``CO²`` are ``CO2``."""


def decode_display_text(data: bytes) -> str:
    """Display-ROM bytes to text: known glyphs mapped, everything else Latin-1; never raises."""
    return data.decode("latin-1").translate(_DECODE_TABLE)


def encode_display_text(text: str, length: int, *, pad: bytes = b" ") -> bytes:
    """Text to display-ROM bytes of exactly ``length`` (simulator side); unknown -> '?'."""
    out = bytearray()
    for char in text:
        if char in _ENCODE_TABLE:
            out.append(_ENCODE_TABLE[char])
        elif ord(char) < 0x100:
            out.append(ord(char))
        else:
            out.append(ord("?"))
    return bytes(out[:length]).ljust(length, pad)


def canonical_name(text: str) -> str:
    """The canonical (ASCII) form of a decoded channel name: ``CO₂`` -> ``CO2``."""
    return text.translate(_SCRIPTS)
