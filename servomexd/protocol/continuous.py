"""Continuous-ASCII mode: checksum, frame parser, frame builder and the incremental framer.

Pure and synchronous: bytes in, records out. A frame on the wire is::

    SP date;time;FM;autocal;NN;{id;name;value;unit;alarms;FM;cal;warm;}*N CKSM;<CR?><LF>

(docs/protocol.md#continuous-ascii). ``parse_frame`` takes the content, leading space included,
as the framer cuts it from the byte stream; one trailing CR, LF or CR LF is accepted.
Tolerated padding: a channel id padded with spaces (``" I1"``), the unlabelled-slot
marker shortened and padded (``"|||   "``). Names and units are decoded with the
display charset (``servomexd.protocol.charset``), names in their canonical ASCII form.

Speed matters here (<= 14 us per 5-channel frame, >= 70k frames/s on one core, see
``bench/bench_parse.py``), so the parser caches what repeats from frame to frame. A
steady analyser resends the same body (everything after its clock) many times, so
decoded bodies are cached by their bytes; when a value changes, the blocks are
looked up one by one, and inside a new block the channel id, name, unit and status
fields are looked up by their raw bytes. Within a minute only the clock's seconds
are parsed. The checksum is still verified first on every path (summed from the
cached blocks' shares where it can be). Every cache is bounded, so a stream of odd
but checksum-valid frames cannot grow memory.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, cast

from servomexd.errors import (
    ServomexChecksumError,
    ServomexError,
    ServomexFrameError,
    ServomexParseError,
)
from servomexd.model import (
    IDLE_CAL_GROUPS,
    AcquisitionEvent,
    AnalyserStatus,
    CalGroupState,
    ChannelId,
    ChannelKind,
    ChannelStatus,
    Frame,
    ProtocolKind,
    Reading,
    Rejection,
    Unit,
)
from servomexd.protocol.charset import canonical_name, decode_display_text

__all__ = [
    "DEFAULT_MAX_LINE",
    "BlockSpec",
    "ContinuousFramer",
    "build_frame",
    "checksum",
    "format_checksum",
    "parse_frame",
]

START = 0x20
"""Every frame starts with one space (docs/protocol.md#line-structure)."""

DEFAULT_MAX_LINE = 4096
"""Longest line the framer buffers. A real frame is 39 + 33*N bytes (369 for all ten
slots), so anything near this cap is a wrong baud rate or a device spewing garbage."""

_PREVIEW = 256
"""How much of an overlong line a rejection keeps, for the log and the error row."""

_CACHE_LIMIT = 1024
"""Entries per field cache; a cache that reaches it is simply cleared (cheap, rare)."""

_CONTINUOUS = ProtocolKind.CONTINUOUS
_TICK = timedelta(microseconds=1)
_new_tuple = tuple.__new__  # builds NamedTuples without their Python-level __new__


def checksum(body: bytes) -> int:
    """The 16-bit additive checksum of ``body``: every byte after the start space up to
    and including the ``;`` before the checksum field (``content[1:-5]``)."""
    return sum(body) & 0xFFFF


def format_checksum(value: int) -> bytes:
    """The checksum field as transmitted: exactly four upper-case hex digits."""
    return b"%04X" % (value & 0xFFFF)


# --- field caches ------------------------------------------------------------------------

_CHANNELS: dict[bytes, tuple[ChannelId, ChannelKind, int]] = {
    channel.value.encode("ascii"): (channel, channel.kind, 1 << channel.slot)
    for channel in ChannelId
}

_names: dict[bytes, str | None] = {}
_units: dict[bytes, tuple[Unit, str]] = {}
_statuses: dict[tuple[bytes, bytes, bytes, bytes], ChannelStatus] = {}
_analysers: dict[tuple[bytes, bytes], tuple[bool, bool, tuple[CalGroupState, ...]]] = {}
_dates: dict[bytes, str | None] = {}

_HEX_DIGITS = frozenset(b"0123456789ABCDEFabcdef")
_TERMINATOR_BYTES = (0x0A, 0x0D)  # LF, CR
_PAD = b" \x00"


def _decode_text(field: bytes) -> str:
    # Usually ASCII (CO2 is sent as "CO2"), but a label typed with a display glyph
    # arrives as its display-ROM byte: decode as Modbus does, never U+FFFD.
    return decode_display_text(field).strip(" \x00")


def _name(field: bytes) -> str | None:
    # "||||||" marks an unlabelled slot, also when shortened and padded ("|||   ");
    # a blank field is no name either.
    text = canonical_name(_decode_text(field)) if field.strip(_PAD).strip(b"|") else None
    if len(_names) >= _CACHE_LIMIT:
        _names.clear()
    _names[field] = text
    return text


def _unit(field: bytes) -> tuple[Unit, str]:
    cached = _units.get(field)
    if cached is not None:
        return cached
    text = _decode_text(field)
    unit = Unit.from_text(text)
    # The analyser's own text is kept only when it is not a known unit (Reading.unit_text).
    result = (unit, text if unit is Unit.UNKNOWN else "")
    if len(_units) >= _CACHE_LIMIT:
        _units.clear()
    _units[field] = result
    return result


def _status(alarms: bytes, fm: bytes, cal: bytes, warm: bytes) -> ChannelStatus:
    key = (alarms, fm, cal, warm)
    cached = _statuses.get(key)
    if cached is not None:
        return cached
    # Every flag is an explicit character (docs/protocol.md#channel-block); short = clear.
    padded = alarms.ljust(4)[:4]
    status = ChannelStatus(
        fault=fm[:1] == b"F",
        maintenance=fm[1:2] == b"M",
        calibrating=cal.strip() == b"C",
        warming_up=warm.strip() == b"W",
        alarms=(padded[0] != START, padded[1] != START, padded[2] != START, padded[3] != START),
    )
    if len(_statuses) >= _CACHE_LIMIT:
        _statuses.clear()
    _statuses[key] = status
    return status


def _analyser(fm: bytes, autocal: bytes) -> tuple[bool, bool, tuple[CalGroupState, ...]]:
    key = (fm, autocal)
    cached = _analysers.get(key)
    if cached is not None:
        return cached
    groups: list[CalGroupState] = []
    for index in range(4):
        pair = autocal[2 * index : 2 * index + 2]
        # Char A: S sampling / C calibrating; char B: cal gas 1 or 2 (1 when unreadable).
        groups.append(
            CalGroupState(
                group=index + 1,
                calibrating=pair[:1] == b"C",
                cal_gas=2 if pair[1:2] == b"2" else 1,
            )
        )
    cal_groups = tuple(groups)
    if cal_groups == IDLE_CAL_GROUPS:
        cal_groups = IDLE_CAL_GROUPS
    result = (fm[:1] == b"F", fm[1:2] == b"M", cal_groups)
    if len(_analysers) >= _CACHE_LIMIT:
        _analysers.clear()
    _analysers[key] = result
    return result


def _date(field: bytes) -> str | None:
    """``DD-MM-YY`` as the ISO prefix ``YYYY-MM-DDT`` (year 2000+YY), or None for an
    unset or impossible date (docs/protocol.md#header-fields)."""
    if field in _dates:
        return _dates[field]
    result: str | None = None
    if len(field) == 8 and field[2] == field[5] == 0x2D:  # "-"
        day, month, year = field[0:2], field[3:5], field[6:8]
        if day.isdigit() and month.isdigit() and year.isdigit():
            try:
                result = datetime(2000 + int(year), int(month), int(day)).strftime("%Y-%m-%dT")
            except ValueError:
                result = None
    if len(_dates) >= _CACHE_LIMIT:
        _dates.clear()
    _dates[field] = result
    return result


def _clock(date_field: bytes, time_field: bytes) -> datetime | None:
    """The analyser clock as a naive datetime, or None when unset or unparseable.

    The clock is only information (it may be unset or wrong: the bench unit reads
    2020), so a bad clock never fails a frame.
    """
    prefix = _dates[date_field] if date_field in _dates else _date(date_field)
    if (
        prefix is None
        or len(time_field) != 8
        or time_field[2] != 0x3A  # ":"
        or time_field[5] != 0x3A
        or not time_field.replace(b":", b"").isdigit()
    ):
        return None
    try:
        return datetime.fromisoformat(prefix + time_field.decode("ascii"))
    except ValueError:  # 25:61:61 and the like
        return None


_SECONDS = {b"%02d" % second: timedelta(seconds=second) for second in range(60)}
_minute: tuple[bytes, datetime | None] = (b"", None)
"""The last ``DD-MM-YY;HH:MM:`` seen and its datetime: within a minute only the seconds
change, so most frames add a cached timedelta instead of parsing a date."""


def _clock_fixed(raw: bytes) -> datetime | None:
    """The clock of a frame whose header starts ``SP DD-MM-YY;HH:MM:SS;``."""
    global _minute
    seconds = _SECONDS.get(raw[16:18])
    if seconds is None:
        return _clock(raw[1:9], raw[10:18])
    key = raw[1:16]
    minute = _minute
    if minute[0] != key:
        minute = (key, _clock(raw[1:9], raw[10:16] + b"00"))
        _minute = minute  # one tuple, so a reader in another thread never sees half of it
    base = minute[1]
    return None if base is None else base + seconds


# --- parsing -------------------------------------------------------------------------------

_Block = tuple[
    tuple[ChannelId, ChannelKind, "str | None", "float | None", Unit, ChannelStatus],
    tuple[bytes, str],
    int,
    int,
]
"""A decoded channel block: the ``Reading`` fields before and after the frame's
timestamps, the block's share of the checksum (its bytes and the ``;`` after it) and
its channel's bit (to spot a channel sent twice):
((channel, kind, name, value, unit, status), (raw, unit_text), byte_sum, slot_bit)."""

_Body = tuple[tuple[_Block, ...], bool, bool, tuple[CalGroupState, ...], int]
"""Everything after the clock, decoded and validated: (blocks, analyser fault, analyser
maintenance, cal groups, byte sum of the body for the checksum)."""

_blocks: dict[bytes, _Block] = {}
"""Decoded blocks keyed by their 33 wire bytes (trailing ``;`` included). When full it
becomes ``_blocks_old`` and a new one starts; a hit in the old one is carried over,
so blocks that keep recurring survive while one-off values age out."""
_blocks_old: dict[bytes, _Block] = {}

_bodies: dict[bytes, _Body] = {}
"""Decoded frame bodies keyed by the bytes between the clock and the checksum. A
steady analyser repeats its body while only the clock moves, so most frames are
decoded from here; when a value changes, the block cache still covers the others."""

_BLOCK_CACHE_LIMIT = 4096
_BODY_CACHE_LIMIT = 1024

_HEADER = 34  # start space + the 33-byte header (docs/protocol.md#header-fields)
_BLOCK = 33  # one channel block with its trailing ';' (docs/protocol.md#channel-block)
_BODY = 19  # where the body starts: after " DD-MM-YY;HH:MM:SS;"


def _decode_block(
    fields: list[bytes], block_raw: bytes, frame: bytes, index: int, *, share: bool = True
) -> _Block:
    ident, name_f, value_f, unit_f, alarms_f, fm_f, cal_f, warm_f = fields
    channel = _CHANNELS.get(ident) or _CHANNELS.get(ident.strip(b" "))  # " I1" is I1
    if channel is None:
        raise ServomexParseError(
            "unknown channel id", raw=frame, context={"id": ident, "block": index}
        )
    value: float | None
    try:
        number = float(value_f)
    except ValueError:
        value = None  # blank, "++++++" or any other non-number: no value, frame still good
    else:
        # NaN or infinity (x - x is not 0.0) is no usable value either.
        value = number if number - number == 0.0 else None
    name = _names[name_f] if name_f in _names else _name(name_f)
    unit, unit_text = _units.get(unit_f) or _unit(unit_f)
    status = _statuses.get((alarms_f, fm_f, cal_f, warm_f)) or _status(
        alarms_f, fm_f, cal_f, warm_f
    )
    return (
        (channel[0], channel[1], name, value, unit, status),
        (block_raw, unit_text),
        _byte_sum(block_raw) + 0x3B if share else 0,
        channel[2],
    )


def _byte_sum(data: bytes) -> int:
    """``sum(data)`` in C: the low half of Adler-32 is 1 + the byte sum as long as that
    stays below its modulus (65521), which 256 bytes always do. A Python ``sum`` over a
    5-channel frame costs 2.6 us here, this 0.2 us: the all-new path sums every frame."""
    if len(data) <= 256:
        return (zlib.adler32(data) & 0xFFFF) - 1
    return sum((zlib.adler32(data[i : i + 256]) & 0xFFFF) - 1 for i in range(0, len(data), 256))


def _verify_checksum(raw: bytes, computed: int) -> None:
    field = raw[-5:-1]
    if field == b"%04X" % computed:
        return
    if not _HEX_DIGITS.issuperset(field):
        raise ServomexFrameError(
            "checksum field is not four hex digits (truncated frame?)",
            raw=raw,
            context={"field": field},
        )
    received = int(field, 16)
    if received != computed:  # the device sends upper case; lower case is accepted too
        raise ServomexChecksumError(
            "checksum mismatch", expected=computed, received=received, raw=raw
        )


def parse_frame(
    raw: bytes,
    *,
    received_at: datetime | None = None,
    monotonic_ns: int | None = None,
) -> Frame:
    """Decode one Continuous-ASCII frame: ``raw`` is the content, leading space included,
    with or without its line terminator (one trailing CR, LF or CR LF is stripped).

    The checksum is verified before any field is trusted. Raises
    ``ServomexChecksumError`` (both values attached) on a mismatch, ``ServomexFrameError``
    when the structure is wrong (no start space, truncated, wrong token count) and
    ``ServomexParseError`` when a field cannot be decoded (unknown or repeated channel
    id, bad N). A value that does not parse as a number becomes ``None`` without failing
    the frame; an unset or invalid analyser clock becomes ``None``.
    """
    raw = _framed(raw)
    if received_at is None:
        received_at = datetime.now(UTC)
    if monotonic_ns is None:
        monotonic_ns = time.monotonic_ns()
    if raw[9] != 0x3B or raw[18] != 0x3B or raw.count(b";", 1, _BODY) != 2:
        # Not the analyser's fixed-width clock: tokenise everything, cache nothing.
        _verify_checksum(raw, _byte_sum(raw[1:-5]) & 0xFFFF)
        tokens = raw[1:].split(b";")
        body = _decode_tokens(raw, tokens[2:], 0)
        return _assemble(raw, body, _clock(tokens[0], tokens[1]), received_at, monotonic_ns)
    key = raw[_BODY:-5]
    cached = _bodies.get(key)
    if cached is not None:
        total = (_byte_sum(raw[1:_BODY]) + cached[4]) & 0xFFFF
        if raw[-5:-1] != b"%04X" % total:
            _verify_checksum(raw, total)
        return _assemble(raw, cached, _clock_fixed(raw), received_at, monotonic_ns)
    if 0 < _all_new_streak < _ADMIT_EVERY:
        # Frames keep arriving with nothing cached: the lean path, no probing.
        frame = _parse_lean(raw, received_at, monotonic_ns)
        if frame is not None:
            return frame
    decoded = _decode_fixed(raw)
    if decoded is _ALL_NEW:
        frame = _parse_lean(raw, received_at, monotonic_ns)
        if frame is not None:
            return frame
        decoded = None
    if decoded is None:
        total = _byte_sum(raw[1:-5]) & 0xFFFF
        _verify_checksum(raw, total)
        body = _decode_tokens(raw, raw[_BODY:].split(b";"), total - _byte_sum(raw[1:_BODY]))
    else:
        body = decoded
    if len(_bodies) >= _BODY_CACHE_LIMIT:
        _bodies.clear()
    _bodies[key] = body
    return _assemble(raw, body, _clock_fixed(raw), received_at, monotonic_ns)


def _framed(raw: bytes) -> bytes:
    """``raw`` as bytes without its one line terminator, checked for the frame's two
    fixed landmarks (the start space, the ``;XXXX;`` checksum field at the end)."""
    if type(raw) is not bytes:
        raw = bytes(raw)
    if raw and raw[-1] in _TERMINATOR_BYTES:
        # One line terminator (CR, LF or CR LF) is accepted and stripped, once.
        raw = raw[:-2] if raw[-2:] == b"\r\n" else raw[:-1]
    size = len(raw)
    if not size or raw[0] != START:
        raise ServomexFrameError("frame does not start with the 0x20 start character", raw=raw)
    if size < 12 or raw[-1] != 0x3B or raw[-6] != 0x3B:  # ...;CKSM;
        raise ServomexFrameError(
            "frame is truncated: no ';XXXX;' checksum field at its end",
            raw=raw,
            context={"length": size},
        )
    return raw


_ADMIT_EVERY = 64
"""One all-new frame in this many fills the caches; the others take the lean path."""
_all_new_streak = 0


_ALL_NEW: _Body = ((), False, False, (), -1)
"""``_decode_fixed``'s answer for a frame none of whose blocks is cached."""


def _decode_fixed(raw: bytes) -> _Body | None:
    """Verify and decode a frame in the analyser's own fixed-width layout, block by
    block through the block cache (the checksum is summed from the cached blocks'
    shares). None when the layout differs: the caller then tokenises. ``_ALL_NEW``
    when no block is cached: the caller takes the lean path (``_parse_lean``).

    Filling the caches with values that never recur cost more than decoding (measured:
    43 us per all-new frame with the caches, 31 us without them, on the bench machine;
    the caches' memory is what gets slow), so an all-new frame is not cached, except
    every ``_ADMIT_EVERY``-th one: a steady analyser's first frames still warm them.
    """
    global _blocks, _blocks_old, _all_new_streak
    size = len(raw)
    if not _fixed_layout(raw, size):
        return None
    chunks = [raw[p : p + _BLOCK] for p in range(_HEADER, size - 5, _BLOCK)]
    found = list(map(_blocks.get, chunks))
    body_sum = _byte_sum(raw[_BODY:_HEADER])
    if None not in found:
        blocks = cast(list[_Block], found)  # no None in it
        for block in blocks:
            body_sum += block[2]
        _verify_checksum(raw, (_byte_sum(raw[1:_BODY]) + body_sum) & 0xFFFF)
        return _body(raw, blocks, raw[19:21], raw[22:30], body_sum)
    body_sum = _byte_sum(raw[_BODY:-5])
    _verify_checksum(raw, (_byte_sum(raw[1:_BODY]) + body_sum) & 0xFFFF)
    if found.count(None) < len(found):
        _all_new_streak = 0  # something recurs: the caches pay
    elif _all_new_streak < _ADMIT_EVERY:
        return _ALL_NEW
    else:
        _all_new_streak = 0  # admitted: this one fills the caches
    index = found.index(None)
    while True:
        chunk = chunks[index]
        entry = _blocks_old.get(chunk)
        if entry is None:
            fields = chunk[:-1].split(b";")
            if len(fields) != 8 or chunk[-1] != 0x3B:
                return None
            entry = _decode_block(fields, chunk[:-1], raw, index)
        if len(_blocks) >= _BLOCK_CACHE_LIMIT:
            _blocks_old, _blocks = _blocks, {}
        _blocks[chunk] = entry
        found[index] = entry
        try:
            index = found.index(None, index + 1)
        except ValueError:
            break
    return _body(raw, cast(list[_Block], found), raw[19:21], raw[22:30], body_sum)


_Template = tuple[ChannelId, ChannelKind, "str | None", Unit, ChannelStatus, str, int]
_templates: dict[bytes, _Template] = {}
"""A block's decoded fields but its value, keyed by its bytes without the value
(``block[:10] + block[16:]``): an analyser's blocks differ only in their values, so
this holds one entry per channel and configuration, however new every value is."""
_VALUE = slice(10, 16)  # the value field in a fixed-layout block: 2 + ; + 6 + ; + [6]


def _fixed_layout(raw: bytes, size: int) -> bool:
    """The analyser's fixed-width layout: N blocks of ``_BLOCK`` bytes after the header,
    its separators where they belong. Anything else takes the general, tokenising path."""
    count = raw[31:33]
    return (
        count.isdigit()
        and size == 39 + _BLOCK * int(count)
        and raw[21] == raw[30] == raw[33] == 0x3B
        and raw.count(b";", _BODY, _HEADER) == 3
    )


def _parse_lean(raw: bytes, received_at: datetime, monotonic_ns: int) -> Frame | None:
    """The uncached path for a fixed-layout frame whose values are all new: checksum
    first, then per block one template lookup and one ``float``, the records built
    directly; nothing cached. None when the frame is not in the fixed layout or is
    invalid in a way the general path reports precisely (the caller falls back)."""
    global _all_new_streak
    size = len(raw)
    if not _fixed_layout(raw, size):
        return None
    _verify_checksum(raw, _byte_sum(raw[1:-5]) & 0xFFFF)
    new = _new_tuple
    templates = _templates
    readings: list[Reading] = []
    append = readings.append
    mask = 0
    for start in range(_HEADER, size - 5, _BLOCK):
        chunk = raw[start : start + _BLOCK]
        meta = templates.get(chunk[:10] + chunk[16:])
        if meta is None:
            meta = _template(chunk, raw, (start - _HEADER) // _BLOCK)
            if meta is None:
                return None
        value_f = chunk[_VALUE]
        value: float | None
        try:
            number = float(value_f)
        except ValueError:
            if 0x3B in value_f:  # not the fixed layout after all
                return None
            value = None  # blank, "++++++" or any other non-number
        else:
            value = number if number - number == 0.0 else None  # NaN, inf: no value
        mask |= meta[6]
        append(new(Reading, (
            meta[0], meta[1], meta[2], value, meta[3], meta[4],
            _CONTINUOUS, received_at, monotonic_ns, chunk[:-1], meta[5],
        )))  # fmt: skip
    if mask.bit_count() != len(readings):
        return None  # a channel twice: the general path says so
    fm_field, autocal_field = raw[19:21], raw[22:30]
    fault, maintenance, cal_groups = _analysers.get((fm_field, autocal_field)) or _analyser(
        fm_field, autocal_field
    )
    analyser = new(AnalyserStatus, (fault, maintenance, cal_groups, _clock_fixed(raw)))
    _all_new_streak += 1
    frame: Frame = new(
        Frame, (tuple(readings), analyser, _CONTINUOUS, received_at, monotonic_ns, raw, None, None)
    )
    return frame


def _template(chunk: bytes, raw: bytes, index: int) -> _Template | None:
    """Decode and remember a block's fields but its value; None unless the value field
    sits at ``_VALUE`` (the analyser's fixed widths)."""
    fields = chunk[:-1].split(b";")
    if len(fields) != 8 or chunk[-1] != 0x3B or chunk[9] != 0x3B or chunk[16] != 0x3B:
        return None
    decoded, (_, unit_text), _, bit = _decode_block(fields, chunk[:-1], raw, index, share=False)
    channel, kind, name, _, unit, status = decoded
    meta = (channel, kind, name, unit, status, unit_text, bit)
    if len(_templates) >= _CACHE_LIMIT:
        _templates.clear()
    _templates[chunk[:10] + chunk[16:]] = meta
    return meta


def _decode_tokens(raw: bytes, tokens: list[bytes], body_sum: int) -> _Body:
    """General path for any field widths. ``tokens`` starts at the analyser F/M field."""
    count_field = tokens[2] if len(tokens) > 2 else b""
    if not count_field.strip().isdigit():
        raise ServomexParseError(
            "channel count field is not a number", raw=raw, context={"field": count_field}
        )
    n = int(count_field)
    # Header (5) + 8 per block + checksum + the empty token after the closing ';'.
    if len(tokens) + 2 != 7 + 8 * n:
        raise ServomexFrameError(
            "token count does not match the channel count",
            raw=raw,
            context={"channels": n, "fields": len(tokens) + 2, "expected": 7 + 8 * n},
        )
    blocks = [
        _decode_block(tokens[i : i + 8], b";".join(tokens[i : i + 8]), raw, (i - 3) // 8)
        for i in range(3, 3 + 8 * n, 8)
    ]
    return _body(raw, blocks, tokens[0], tokens[1], body_sum)


def _body(
    raw: bytes, blocks: list[_Block], fm_field: bytes, autocal_field: bytes, body_sum: int
) -> _Body:
    mask = 0
    for block in blocks:
        mask |= block[3]
    if mask.bit_count() != len(blocks):
        raise ServomexParseError(
            "a channel appears twice in one frame",
            raw=raw,
            context={"ids": ",".join(block[0][0].value for block in blocks)},
        )
    fault, maintenance, cal_groups = _analysers.get((fm_field, autocal_field)) or _analyser(
        fm_field, autocal_field
    )
    return (tuple(blocks), fault, maintenance, cal_groups, body_sum)


def _assemble(
    raw: bytes,
    body: _Body,
    clock: datetime | None,
    received_at: datetime,
    monotonic_ns: int,
) -> Frame:
    new = _new_tuple
    middle = (_CONTINUOUS, received_at, monotonic_ns)
    readings = tuple([new(Reading, block[0] + middle + block[1]) for block in body[0]])
    analyser = new(AnalyserStatus, (body[1], body[2], body[3], clock))
    frame: Frame = new(
        Frame, (readings, analyser, _CONTINUOUS, received_at, monotonic_ns, raw, None, None)
    )
    return frame


# --- building (simulator, tests) -----------------------------------------------------------


class BlockSpec(NamedTuple):
    """One channel block to put into a built frame."""

    channel: ChannelId
    name: str | None
    value: float | str | None
    """A number (formatted to ``decimals``), verbatim field text, or None (``++++++``)."""
    unit: Unit | str
    status: ChannelStatus = ChannelStatus()
    decimals: int = 3


def _fixed(text: str, width: int, what: str) -> bytes:
    data = text.encode("ascii")
    if len(data) > width or b";" in data or b"\n" in data or b"\r" in data:
        raise ValueError(f"{what} {text!r} does not fit a {width}-character field")
    return data


def _format_value(value: float | str | None, decimals: int) -> bytes:
    if value is None:
        return b"++++++"
    if isinstance(value, str):
        return _fixed(value.rjust(6), 6, "value")
    for places in range(max(decimals, 0), -1, -1):
        text = f"{value:6.{places}f}"
        if len(text) <= 6:
            return text.encode("ascii")
    raise ValueError(f"value {value!r} does not fit the 6-character value field")


def _format_unit(unit: Unit | str) -> bytes:
    text = unit.value if isinstance(unit, Unit) else unit
    # The analyser centres a one-character unit (" % ") and right-aligns the rest (" mA").
    return _fixed(text.center(3) if len(text) == 1 else text.rjust(3), 3, "unit")


def _format_status(status: ChannelStatus) -> bytes:
    alarms = "".join(str(i + 1) if raised else " " for i, raised in enumerate(status.alarms))
    fm = ("F" if status.fault else " ") + ("M" if status.maintenance else " ")
    cal = "C" if status.calibrating else " "
    warm = "W" if status.warming_up else " "
    return f"{alarms};{fm};{cal};{warm}".encode("ascii")


def build_frame(
    blocks: Sequence[BlockSpec],
    *,
    clock: datetime | None = None,
    fault: bool = False,
    maintenance: bool = False,
    cal_groups: Sequence[CalGroupState] = IDLE_CAL_GROUPS,
    checksum_override: int | None = None,
    terminator: bytes = b"",
) -> bytes:
    """Encode a frame the way the analyser does (docs/protocol.md#continuous-ascii).

    ``clock=None`` writes an unset clock (``00-00-00;00:00:00``).
    ``checksum_override`` writes that checksum instead of the right one (fault
    injection). ``terminator`` is appended after the closing ``;`` (b"" for the
    content that ``parse_frame`` takes, b"\\n" or b"\\r\\n" for the wire).
    """
    if not 0 <= len(blocks) <= 99:
        raise ValueError("a frame carries 0-99 channel blocks")
    header_clock = "00-00-00;00:00:00" if clock is None else clock.strftime("%d-%m-%y;%H:%M:%S")
    groups = {group.group: group for group in cal_groups}
    autocal = "".join(
        ("C" if groups[g].calibrating else "S") + str(groups[g].cal_gas) if g in groups else "S1"
        for g in range(1, 5)
    )
    fm = ("F" if fault else " ") + ("M" if maintenance else " ")
    parts: list[bytes] = [f"{header_clock};{fm};{autocal};{len(blocks):02d}".encode("ascii")]
    for block in blocks:
        name = b"||||||" if block.name is None else _fixed(block.name.ljust(6), 6, "name")
        parts.append(
            b";".join(
                (
                    block.channel.value.encode("ascii"),
                    name,
                    _format_value(block.value, block.decimals),
                    _format_unit(block.unit),
                    _format_status(block.status),
                )
            )
        )
    body = b";".join(parts) + b";"
    value = checksum(body) if checksum_override is None else checksum_override
    return b" " + body + format_checksum(value) + b";" + terminator


# --- the incremental framer -----------------------------------------------------------------


class ContinuousFramer:
    """Turns an arbitrary byte stream into ``Frame``s and ``Rejection``s.

    Lines end at LF; a CR before it is dropped, so CRLF and bare LF both work (the real
    captures are LF only, the vendor docs say CRLF). A line without the leading space is
    rejected as ``noise``; a line longer than ``max_line`` is rejected once as
    ``overlong`` and everything up to the next LF is discarded, so memory never grows
    past the cap whatever the device (or a wrong baud rate) sends. ``feed`` never
    raises on any input: every rejected line becomes a ``Rejection`` (an error row).
    """

    __slots__ = ("_buffer", "_discarding", "_last", "_max_line")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 64:
            raise ValueError("max_line must be at least 64 bytes")
        self._max_line = max_line
        self._buffer = bytearray()
        self._discarding = False
        self._last: tuple[datetime, int] | None = None

    @property
    def max_line(self) -> int:
        return self._max_line

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished line currently held (never more than ``max_line``)."""
        return len(self._buffer)

    def reset(self) -> None:
        """Forget any partial line (after a reconnect the stream starts afresh)."""
        self._buffer.clear()
        self._discarding = False

    def feed(
        self,
        data: bytes,
        *,
        received_at: datetime | None = None,
        monotonic_ns: int | None = None,
    ) -> list[AcquisitionEvent]:
        """Consume ``data``; return the frames and rejections of every line it completed.

        Events are stamped with the moment their chunk arrived (default: now). Every
        event gets a distinct, increasing stamp: when a chunk completes several lines,
        or a stamp repeats, each later event is moved 1 us (and 1000 ns) past the
        previous one, so ``(device, channel, received_at)`` and ``monotonic_ns`` stay
        unique keys even for a backlog that arrives in one read.
        """
        events: list[AcquisitionEvent] = []
        if not data:
            return events
        # First cut the chunk into lines, then stamp and decode them in one tight loop.
        lines = self._cut(data)
        if not lines:
            return events

        if received_at is None:
            received_at = datetime.now(UTC)
        if monotonic_ns is None:
            monotonic_ns = time.monotonic_ns()
        last = self._last
        if last is not None:
            if received_at <= last[0]:
                received_at = last[0] + _TICK
            if monotonic_ns <= last[1]:
                monotonic_ns = last[1] + 1000
        append = events.append
        for line, overlong in lines:
            if overlong:
                append(self._overlong(line, received_at, monotonic_ns))
            elif line[0] != START:
                append(_noise(line, received_at, monotonic_ns))
            else:
                try:
                    append(parse_frame(line, received_at=received_at, monotonic_ns=monotonic_ns))
                except ServomexError as error:
                    append(Rejection(error, _CONTINUOUS, received_at, monotonic_ns, line))
                except Exception as error:  # defensive: the framer never raises on input
                    parse_error = ServomexParseError(f"undecodable frame: {error!r}", raw=line)
                    append(Rejection(parse_error, _CONTINUOUS, received_at, monotonic_ns, line))
            received_at += _TICK
            monotonic_ns += 1000
        self._last = (received_at - _TICK, monotonic_ns - 1000)
        return events

    def _cut(self, data: bytes) -> list[tuple[bytes, bool]]:
        """The complete lines of ``data`` (after the buffered start), each flagged True
        when it is an overlong line's preview; the incomplete rest stays buffered, and
        an overlong rest starts discarding up to the next newline. Once per chunk."""
        lines: list[tuple[bytes, bool]] = []
        start = 0
        if self._discarding:
            newline = data.find(b"\n")
            if newline < 0:
                return lines
            self._discarding = False
            start = newline + 1
        max_line = self._max_line
        buffer = self._buffer
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                break
            if buffer:
                if len(buffer) + newline - start > max_line:
                    lines.append((bytes(buffer[:_PREVIEW]), True))
                    buffer.clear()
                    start = newline + 1
                    continue
                line = bytes(buffer) + data[start:newline]
                buffer.clear()
            else:
                if newline - start > max_line:
                    lines.append((data[start : start + _PREVIEW], True))
                    start = newline + 1
                    continue
                line = data[start:newline]
            start = newline + 1
            if line[-1:] == b"\r":
                line = line[:-1]
            if line:  # an empty line carries nothing (e.g. a doubled terminator)
                lines.append((line, False))
        rest = len(data) - start
        if rest:
            if len(buffer) + rest > max_line:
                lines.append((bytes(buffer[:_PREVIEW]) or data[start : start + _PREVIEW], True))
                buffer.clear()
                self._discarding = True
            else:
                buffer += data[start:]
        return lines

    def _overlong(self, preview: bytes, received_at: datetime, monotonic_ns: int) -> Rejection:
        return Rejection(
            ServomexFrameError(
                f"line longer than {self._max_line} bytes dropped (wrong baud rate?)",
                raw=preview,
                reason="overlong",
            ),
            _CONTINUOUS,
            received_at,
            monotonic_ns,
            preview,
        )


def _noise(line: bytes, received_at: datetime, monotonic_ns: int) -> Rejection:
    return Rejection(
        ServomexFrameError(
            "line does not start with the 0x20 start character (noise or a partial frame)",
            raw=line,
            reason="noise",
        ),
        _CONTINUOUS,
        received_at,
        monotonic_ns,
        line,
    )
