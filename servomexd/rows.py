"""The long-format row: one per channel reading, one per rejected frame.

Written once and used by ``servomexd decode``, every sink and the spool, so the
columns can never drift apart. Two shapes exist:

* a *record*: a plain tuple in ``ROW_COLUMNS`` order with native Python types
  (bool, datetime, float, int), which typed stores such as PostgreSQL want;
* a *row*: the published ``sample_to_row`` dict, with booleans as the strings
  ``"true"``/``"false"`` (so SQLite never locks the column to INTEGER) and
  timestamps as ISO-8601 UTC strings.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from servomexd.model import Sample

ROW_COLUMNS: tuple[str, ...] = (
    "device",
    "channel",
    "kind",
    "name",
    "value",
    "unit",
    "ok",
    "fault",
    "maintenance",
    "calibrating",
    "warming_up",
    "protocol",
    "monotonic_ns",
    "received_at",
    "requested_at",
    "latency_s",
    "error",
)

Record = tuple[Any, ...]
"""A row as a tuple in ``ROW_COLUMNS`` order, with native types."""

BOOLEAN_COLUMNS = frozenset({"ok", "fault", "maintenance", "calibrating", "warming_up"})
TIMESTAMP_COLUMNS = frozenset({"received_at", "requested_at"})


def sample_to_record(sample: Sample) -> Record:
    """The row of ``sample`` as a tuple of native values (bool, datetime, float...)."""
    reading = sample.reading
    error = None if sample.error is None else str(sample.error)
    if reading is None:
        # An error row of one channel (a Modbus read of that channel failed) keeps it.
        channel = sample.channel
        return (
            sample.device,
            None if channel is None else str(channel),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            sample.protocol.value,
            sample.monotonic_ns,
            sample.received_at,
            sample.requested_at,
            sample.latency_s,
            error,
        )
    status = reading.status
    return (
        sample.device,
        reading.channel.value,
        reading.kind.value,
        reading.name,
        reading.value,
        reading.unit_label,
        status.ok,
        status.fault,
        status.maintenance,
        status.calibrating,
        status.warming_up,
        sample.protocol.value,
        sample.monotonic_ns,
        sample.received_at,
        sample.requested_at,
        sample.latency_s,
        error,
    )


def _text_bool(value: bool | None) -> str | None:
    if value is None:
        return None
    return "true" if value else "false"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def record_to_text_record(record: Record) -> Record:
    """A native record with booleans as "true"/"false" and timestamps as ISO strings."""
    (
        device,
        channel,
        kind,
        name,
        value,
        unit,
        ok,
        fault,
        maintenance,
        calibrating,
        warming_up,
        protocol,
        monotonic_ns,
        received_at,
        requested_at,
        latency_s,
        error,
    ) = record
    return (
        device,
        channel,
        kind,
        name,
        value,
        unit,
        _text_bool(ok),
        _text_bool(fault),
        _text_bool(maintenance),
        _text_bool(calibrating),
        _text_bool(warming_up),
        protocol,
        monotonic_ns,
        _iso(received_at),
        _iso(requested_at),
        latency_s,
        error,
    )


def sample_to_row(sample: Sample) -> dict[str, Any]:
    """The published long-format row: columns exactly in ``ROW_COLUMNS`` order."""
    return dict(zip(ROW_COLUMNS, record_to_text_record(sample_to_record(sample)), strict=True))
