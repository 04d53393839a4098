"""Fast builders of the long-format row tuples the sinks write.

``servomexd.rows`` holds the reference conversion (``sample_to_record``,
``record_to_text_record``, ``sample_to_row``). The functions here produce the
same tuples (a test proves it on every flag combination) but are written for
throughput: the published sinks spent nine tenths of their time building
dictionaries. So: tuples only, no per-row function calls, and what a frame
shares is computed once per frame or once per sink:

* the ISO text of ``received_at`` (every sample of a frame shares the object);
* the five status columns per ``ChannelStatus`` (at most 256 distinct values).

Enum members (``ChannelId``, ``Unit``...) are ``StrEnum``s, i.e. ``str``
subclasses; they are passed as they are, every driver stores them as text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from servomexd.model import ChannelStatus, Sample, Unit
from servomexd.rows import Record

_TEXT_BOOL: dict[Any, str | None] = {True: "true", False: "false", None: None}
_UNKNOWN = Unit.UNKNOWN


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
        for sample in samples:
            received = sample.received_at
            if received is not last_dt:
                last_dt = received
                last_iso = received.isoformat()
            requested = sample.requested_at
            requested_iso = None if requested is None else requested.isoformat()
            error = sample.error
            error_text = None if error is None else str(error)
            reading = sample.reading
            if reading is None:
                append(
                    (
                        sample.device, None, None, None, None, None,
                        None, None, None, None, None,
                        sample.protocol, sample.monotonic_ns, last_iso,
                        requested_iso, sample.latency_s, error_text,
                    )
                )
                continue
            status = reading.status
            flags = cache.get(status)
            if flags is None:
                flags = cache[status] = _status_text(status)
            unit: str = reading.unit
            if unit is unknown and reading.unit_text:
                unit = reading.unit_text
            append(
                (
                    sample.device, reading.channel, reading.kind, reading.name,
                    reading.value, unit,
                    flags[0], flags[1], flags[2], flags[3], flags[4],
                    sample.protocol, sample.monotonic_ns, last_iso,
                    requested_iso, sample.latency_s, error_text,
                )
            )
        self._last_dt = last_dt
        self._last_iso = last_iso
        return out

    def native_records(self, samples: Iterable[Sample]) -> list[Record]:
        """Records as ``sample_to_record`` values: bool, datetime, float, int, str."""
        out: list[Record] = []
        append = out.append
        cache = self._native_status
        unknown = _UNKNOWN
        for sample in samples:
            error = sample.error
            error_text = None if error is None else str(error)
            reading = sample.reading
            if reading is None:
                append(
                    (
                        sample.device, None, None, None, None, None,
                        None, None, None, None, None,
                        sample.protocol, sample.monotonic_ns, sample.received_at,
                        sample.requested_at, sample.latency_s, error_text,
                    )
                )
                continue
            status = reading.status
            flags = cache.get(status)
            if flags is None:
                flags = cache[status] = _status_native(status)
            unit: str = reading.unit
            if unit is unknown and reading.unit_text:
                unit = reading.unit_text
            append(
                (
                    sample.device, reading.channel, reading.kind, reading.name,
                    reading.value, unit,
                    flags[0], flags[1], flags[2], flags[3], flags[4],
                    sample.protocol, sample.monotonic_ns, sample.received_at,
                    sample.requested_at, sample.latency_s, error_text,
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
