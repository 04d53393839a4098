"""Exact rollups: per (site, device, channel, name, unit, bucket) counts, min, max, sum.

``<table>_1m`` and ``<table>_1h`` are updated by the same transaction that stores a batch
of raw rows and its checkpoint, so exactly-once delivery of the raw rows makes the
rollups exact too: no background job, no lag, nothing to reconcile. The batch is
aggregated here in Python (one pass, the finer interval first, coarser ones from its
groups) and merged with one ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO UPDATE``
per rollup table. Keys are upserted in sorted order, so two writers touching the same
keys (the same site and device, which is warned about) wait on each other, never
deadlock.

Error rows (no reading) count in ``samples`` and ``n_errors`` under channel, name and
unit ``''``: key columns are NOT NULL so a plain primary key works on every PostgreSQL
version. The average over any range is ``sum(v_sum) / sum(n_values)``, exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from servomexd.rows import ROW_COLUMNS, Record
from servomexd.sinks.pg_ddl import qualified, run_formatted
from servomexd.sinks.pg_partitions import ensure_default

_SPEC = re.compile(r"(\d+)(m|h|d)")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}
_DEVICE = ROW_COLUMNS.index("device")
_CHANNEL = ROW_COLUMNS.index("channel")
_NAME = ROW_COLUMNS.index("name")
_VALUE = ROW_COLUMNS.index("value")
_UNIT = ROW_COLUMNS.index("unit")
_OK = ROW_COLUMNS.index("ok")
_RECEIVED = ROW_COLUMNS.index("received_at")
_ERROR = ROW_COLUMNS.index("error")

KEY_COLUMNS = ("site", "device", "channel", "name", "unit", "bucket")
STAT_COLUMNS = ("samples", "n_values", "n_ok", "n_errors", "v_min", "v_max", "v_sum")
ROLLUP_KEY = "bucket"
"""The partition key of a rollup table."""

Key = tuple[str, str, str, str, datetime]
"""(device, channel, name, unit, bucket): the site is the same for the whole sink."""


@dataclass(frozen=True)
class RollupSpec:
    label: str
    """As configured: ``1m``, ``1h``, ``1d``..."""
    seconds: int

    def table(self, raw_table: str) -> str:
        return f"{raw_table}_{self.label}"


def parse_rollup(text: str) -> RollupSpec:
    """``"1m"``, ``"5m"``, ``"1h"``, ``"1d"``: an interval that divides a day evenly."""
    match = _SPEC.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"rollup interval must look like '1m', '15m', '1h' or '1d', got {text!r}")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0 or 86400 % seconds:
        raise ValueError(f"rollup interval {text!r} must divide a day evenly")
    return RollupSpec(text, seconds)


class _Stats:
    __slots__ = ("errors", "maximum", "minimum", "ok", "samples", "total", "values")

    def __init__(self) -> None:
        self.samples = 0
        self.values = 0
        self.ok = 0
        self.errors = 0
        self.minimum: float | None = None
        self.maximum: float | None = None
        self.total = 0.0

    def merge(self, other: _Stats) -> None:
        self.samples += other.samples
        self.values += other.values
        self.ok += other.ok
        self.errors += other.errors
        self.total += other.total
        if other.minimum is not None and (self.minimum is None or other.minimum < self.minimum):
            self.minimum = other.minimum
        if other.maximum is not None and (self.maximum is None or other.maximum > self.maximum):
            self.maximum = other.maximum


def _bucket(moment: datetime, seconds: int) -> datetime:
    epoch = int(moment.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC)


def aggregate(records: Sequence[Record], seconds: int) -> dict[Key, _Stats]:
    """One pass over native records (``ROW_COLUMNS`` order) into per-key statistics."""
    groups: dict[Key, _Stats] = {}
    buckets: dict[datetime, datetime] = {}
    for row in records:
        moment = row[_RECEIVED]
        if moment is None:
            continue
        bucket = buckets.get(moment)
        if bucket is None:
            bucket = buckets[moment] = _bucket(moment, seconds)
        key = (row[_DEVICE], row[_CHANNEL] or "", row[_NAME] or "", row[_UNIT] or "", bucket)
        stats = groups.get(key)
        if stats is None:
            stats = groups[key] = _Stats()
        stats.samples += 1
        if row[_OK]:
            stats.ok += 1
        if row[_ERROR] is not None:
            stats.errors += 1
        value = row[_VALUE]
        if value is not None:
            stats.values += 1
            stats.total += value
            if stats.minimum is None or value < stats.minimum:
                stats.minimum = value
            if stats.maximum is None or value > stats.maximum:
                stats.maximum = value
    return groups


def coarsen(groups: dict[Key, _Stats], seconds: int) -> dict[Key, _Stats]:
    """Groups of a finer interval merged into buckets of ``seconds`` (a multiple of it)."""
    out: dict[Key, _Stats] = {}
    for (device, channel, name, unit, bucket), stats in groups.items():
        key = (device, channel, name, unit, _bucket(bucket, seconds))
        merged = out.get(key)
        if merged is None:
            merged = out[key] = _Stats()
        merged.merge(stats)
    return out


def aggregate_all(
    records: Sequence[Record], specs: Sequence[RollupSpec]
) -> list[dict[Key, _Stats]]:
    """The groups for each spec, the coarser ones derived from a finer one when possible."""
    done: dict[int, dict[Key, _Stats]] = {}
    for spec in sorted(specs, key=lambda s: s.seconds):
        finer = next(
            (groups for secs, groups in sorted(done.items(), reverse=True)
             if spec.seconds % secs == 0),
            None,
        )  # fmt: skip
        done[spec.seconds] = (
            aggregate(records, spec.seconds) if finer is None else coarsen(finer, spec.seconds)
        )
    return [done[spec.seconds] for spec in specs]


def upsert_sql(schema: str, table: str) -> str:
    """The merge statement for one rollup table (identifiers validated and quoted)."""
    target = qualified(schema, table)
    columns = ", ".join(KEY_COLUMNS + STAT_COLUMNS)
    types = ("text",) * 5 + ("timestamptz",) + ("bigint",) * 4 + ("float8",) * 3
    arrays = ", ".join(f"${i}::{kind}[]" for i, kind in enumerate(types, start=1))
    return (
        f"INSERT INTO {target} AS t ({columns}) SELECT * FROM unnest({arrays}) "  # noqa: S608 - quoted identifiers
        f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET "
        "samples = t.samples + EXCLUDED.samples, n_values = t.n_values + EXCLUDED.n_values, "
        "n_ok = t.n_ok + EXCLUDED.n_ok, n_errors = t.n_errors + EXCLUDED.n_errors, "
        "v_min = LEAST(t.v_min, EXCLUDED.v_min), v_max = GREATEST(t.v_max, EXCLUDED.v_max), "
        "v_sum = t.v_sum + EXCLUDED.v_sum"
    )


def upsert_args(site: str, groups: dict[Key, _Stats]) -> list[list[Any]]:
    """Column arrays for ``upsert_sql``, keys in sorted order (no deadlocks)."""
    columns: list[list[Any]] = [[] for _ in range(13)]
    for key in sorted(groups):
        stats = groups[key]
        values = (site, *key, stats.samples, stats.values, stats.ok, stats.errors,
                  stats.minimum, stats.maximum, stats.total)  # fmt: skip
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns


async def create_rollup_table(
    conn: Any, schema: str, table: str, *, partitioned: bool
) -> None:
    """``CREATE TABLE IF NOT EXISTS`` one rollup table (and its DEFAULT partition)."""
    body = (
        "site text NOT NULL, device text NOT NULL, channel text NOT NULL, "
        "name text NOT NULL, unit text NOT NULL, bucket timestamptz NOT NULL, "
        "samples bigint NOT NULL, n_values bigint NOT NULL, n_ok bigint NOT NULL, "
        "n_errors bigint NOT NULL, v_min double precision, v_max double precision, "
        "v_sum double precision NOT NULL, "
        "PRIMARY KEY (site, device, channel, name, unit, bucket)"
    )
    tail = " PARTITION BY RANGE (bucket)" if partitioned else ""
    await run_formatted(conn, f"CREATE TABLE IF NOT EXISTS %I.%I ({body}){tail}", schema, table)
    # Dashboards ask for one device over time: (device, bucket) serves them; the primary
    # key leads with site, which a single-site panel may not filter on.
    await run_formatted(
        conn,
        "CREATE INDEX IF NOT EXISTS %I ON %I.%I (device, bucket)",
        table[:50] + "_dev_bucket", schema, table,
    )  # fmt: skip
    if partitioned:
        await ensure_default(conn, schema, table)
