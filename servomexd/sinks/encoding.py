"""Fast builders of the long-format row tuples the sinks write.

``servomexd.rows`` holds the reference conversion (``sample_to_record``,
``record_to_text_record``, ``sample_to_row``). ``RowEncoder`` is the one encoder
that production code uses (the daemon's buffer, every ``write_many`` and
``write_records``); it produces the same tuples (a property test proves it) but
is written for throughput: the published sinks spent nine tenths of their time building
dictionaries. So: tuples only, no per-row function calls, and what a frame
shares is computed once per frame or once per sink:

* the ISO text of ``received_at`` (every sample of a frame shares the object);
* the five status columns per ``ChannelStatus`` (at most 256 distinct values).

Enum members (``ChannelId``, ``Unit``...) are ``StrEnum``s, i.e. ``str``
subclasses. Native records keep them (asyncpg encodes any ``str``), but text rows
get plain ``str``: sqlite3 looks for an adapter (``__conform__``, a failing
attribute lookup) for every non-exact ``str`` parameter, which measured 25% of a
write. Native records get plain ``str`` too: they go to the spool, whose marshal
format does not take ``str`` subclasses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

from servomexd.model import (
    ChannelId,
    ChannelKind,
    ChannelStatus,
    ProtocolKind,
    Reading,
    Sample,
    Unit,
)
from servomexd.rows import Record

_TEXT_BOOL: dict[Any, str | None] = {True: "true", False: "false", None: None}
_UNKNOWN = Unit.UNKNOWN
# StrEnum members hash and compare as their text, so this maps members (and their
# plain text) to the plain text.
_PLAIN: dict[str, str] = {
    member: str(member.value)
    for enum in (ChannelId, ChannelKind, ProtocolKind, Unit)
    for member in enum
}

# One C call fetches every field a row needs (NamedTuple attribute access costs a
# descriptor call each); indices come from ``_fields`` so a field added to the
# model later cannot shift them.
_SAMPLE_FIELDS = itemgetter(
    *(
        Sample._fields.index(name)
        for name in (
            "device", "reading", "protocol", "monotonic_ns",
            "received_at", "requested_at", "latency_s", "error",
        )
    )
)
_READING_FIELDS = itemgetter(
    *(
        Reading._fields.index(name)
        for name in ("channel", "kind", "name", "value", "unit", "status", "unit_text")
    )
)


def _status_text(status: ChannelStatus) -> tuple[str, str, str, str, str]:
    ok = "true" if status.ok else "false"
    return (
        ok,
        "true" if status.fault else "false",
        "true" if status.maintenance else "false",
        "true" if status.calibrating else "false",
        "true" if status.warming_up else "false",
    )


def _status_native(status: ChannelStatus) -> tuple[bool, bool, bool, bool, bool]:
    return (status.ok, status.fault, status.maintenance, status.calibrating, status.warming_up)


class RowEncoder:
    """Turns samples or native records into row tuples; one per sink (it holds caches).

    Not thread-safe: a sink uses it from one thread at a time.
    """

    __slots__ = ("_last_dt", "_last_iso", "_native_status", "_text_status")

    def __init__(self) -> None:
        self._text_status: dict[ChannelStatus, tuple[str, str, str, str, str]] = {}
        self._native_status: dict[ChannelStatus, tuple[bool, bool, bool, bool, bool]] = {}
        self._last_dt: datetime | None = None
        self._last_iso: str | None = None

    def text_rows(self, samples: Iterable[Sample]) -> list[Record]:
        """Rows as ``sample_to_row`` values: "true"/"false" booleans, ISO timestamps."""
        out: list[Record] = []
        append = out.append
        cache = self._text_status
        last_dt = self._last_dt
        last_iso = self._last_iso
        unknown = _UNKNOWN
        sample_fields = _SAMPLE_FIELDS
        reading_fields = _READING_FIELDS
        plain = _PLAIN.get
        for sample in samples:
            (
                device, reading, protocol, monotonic_ns,
                received, requested, latency, error,
            ) = sample_fields(sample)
            protocol = plain(protocol, protocol)
            if received is not last_dt:
                last_dt = received
                last_iso = received.isoformat()
            requested_iso = None if requested is None else requested.isoformat()
            error_text = None if error is None else str(error)
            if reading is None:
                # Set when the error belongs to one channel (a failed Modbus read of it).
                failed: str | None = sample.channel
                if failed is not None:
                    failed = plain(failed, failed)
                append(
                    (
                        device, failed, None, None, None, None,
                        None, None, None, None, None,
                        protocol, monotonic_ns, last_iso, requested_iso, latency, error_text,
                    )
                )
                continue
            channel, kind, name, value, unit, status, unit_text = reading_fields(reading)
            flags = cache.get(status)
            if flags is None:
                flags = cache[status] = _status_text(status)
            if unit is unknown and unit_text:
                unit = unit_text
            ok, fault, maintenance, calibrating, warming_up = flags
            append(
                (
                    device, plain(channel, channel), plain(kind, kind), name, value,
                    plain(unit, unit),
                    ok, fault, maintenance, calibrating, warming_up,
                    protocol, monotonic_ns, last_iso, requested_iso, latency, error_text,
                )
            )
        self._last_dt = last_dt
        self._last_iso = last_iso
        return out

    def native_records(self, samples: Iterable[Sample]) -> list[Record]:
        """Records as ``sample_to_record`` values: bool, datetime, float, int, plain str.

        The daemon's hot path: every acquired sample passes here on its way to the
        spool (whose marshal format takes plain ``str`` only, not ``StrEnum``).
        """
        out: list[Record] = []
        append = out.append
        cache = self._native_status
        unknown = _UNKNOWN
        sample_fields = _SAMPLE_FIELDS
        reading_fields = _READING_FIELDS
        plain = _PLAIN.get
        for sample in samples:
            (
                device, reading, protocol, monotonic_ns,
                received, requested, latency, error,
            ) = sample_fields(sample)
            protocol = plain(protocol, protocol)
            error_text = None if error is None else str(error)
            if reading is None:
                append(
                    (
                        device, sample.channel, None, None, None, None,
                        None, None, None, None, None,
                        protocol, monotonic_ns, received, requested, latency, error_text,
                    )
                )
                continue
            channel, kind, name, value, unit, status, unit_text = reading_fields(reading)
            flags = cache.get(status)
            if flags is None:
                flags = cache[status] = _status_native(status)
            if unit is unknown and unit_text:
                unit = unit_text
            ok, fault, maintenance, calibrating, warming_up = flags
            append(
                (
                    device, plain(channel, channel), plain(kind, kind), name, value,
                    plain(unit, unit),
                    ok, fault, maintenance, calibrating, warming_up,
                    protocol, monotonic_ns, received, requested, latency, error_text,
                )
            )
        return out

    def records_to_text(self, records: Sequence[Record]) -> list[Record]:
        """Native records (as the daemon's spool hands them over) to text rows."""
        out: list[Record] = []
        append = out.append
        tb = _TEXT_BOOL
        last_dt = self._last_dt
        last_iso = self._last_iso
        for (
            device, channel, kind, name, value, unit,
            ok, fault, maintenance, calibrating, warming_up,
            protocol, monotonic_ns, received, requested, latency, error,
        ) in records:
            if received is not last_dt and received != last_dt:
                last_dt = received
                last_iso = None if received is None else received.isoformat()
            append(
                (
                    device, channel, kind, name, value, unit,
                    tb[ok], tb[fault], tb[maintenance], tb[calibrating], tb[warming_up],
                    protocol, monotonic_ns, last_iso,
                    None if requested is None else requested.isoformat(),
                    latency, error,
                )
            )
        self._last_dt = last_dt
        self._last_iso = last_iso
        return out


__all__ = ["RowEncoder"]
