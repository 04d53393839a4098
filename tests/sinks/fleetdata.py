"""Native records for the fleet tests: ``varied_samples`` moved to a chosen time."""

from __future__ import annotations

from datetime import datetime

from sinkdata import T0, varied_samples

from servomexd.rows import ROW_COLUMNS, Record, sample_to_record

RECEIVED = ROW_COLUMNS.index("received_at")


def records_at(start: datetime, frames: int = 12, device: str = "stack-1") -> list[Record]:
    """Rows of ``frames`` varied frames (error rows included) starting at ``start``."""
    shift = start - T0
    out = []
    for sample in varied_samples(frames, device):
        record = sample_to_record(sample)
        out.append((*record[:RECEIVED], record[RECEIVED] + shift, *record[RECEIVED + 1 :]))
    return out
