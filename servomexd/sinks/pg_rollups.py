"""Exact rollups: per (site, device, channel, name, unit, bucket) counts, min, max, sum.

``<table>_1m`` and ``<table>_1h`` are updated by the same transaction that stores a batch
of raw rows and its checkpoint, so exactly-once delivery of the raw rows makes the
rollups exact too: no background job, no lag, nothing to reconcile. The batch is
aggregated here in Python for the finest interval and sent once; one statement
(``unnest`` + ``INSERT ... ON CONFLICT DO UPDATE`` in data-modifying CTEs) merges it into
that rollup and every coarser one. Keys are upserted in sorted order, so two writers
touching the same keys (the same site and device, which is warned about) wait on each
other, never deadlock.

Error rows (no reading) count in ``samples`` and ``n_errors`` under channel, name and
unit ``''``: key columns are NOT NULL so a plain primary key works on every PostgreSQL
version. The average over any range is ``sum(v_sum) / sum(n_values)``, exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, NamedTuple

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
_group_key = itemgetter(_DEVICE, _CHANNEL, _NAME, _UNIT)

KEY_COLUMNS = ("site", "device", "channel", "name", "unit", "bucket")
STAT_COLUMNS = ("samples", "n_values", "n_ok", "n_errors", "v_min", "v_max", "v_sum")
ROLLUP_KEY = "bucket"
"""The partition key of a rollup table."""

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


class Stats(NamedTuple):
    samples: int
    values: int
    ok: int
    errors: int
    minimum: float | None
    maximum: float | None
    total: float


Key = tuple[str, str, str, str, int]
"""(device, channel, name, unit, bucket start in Unix seconds): the site is the sink's."""


def aggregate(records: Sequence[Record], seconds: int) -> dict[Key, Stats]:
    """Native records (``ROW_COLUMNS`` order) grouped per key, statistics per group.

    Rows are first gathered per bucket and (device, channel, name, unit) (a C
    ``itemgetter`` builds that key), then each group is reduced with the C builtins
    (len, min, max, sum): about 2.5x faster than running statistics row by row. Rows of
    one frame share ``received_at``, so the bucket is looked up once per frame.
    """
    by_bucket: dict[int, dict[tuple[Any, ...], list[Record]]] = {}
    grouped: dict[tuple[Any, ...], list[Record]] = {}
    last: Any = None
    for row in records:
        moment = row[_RECEIVED]
        if moment != last:
            if moment is None:
                continue
            last = moment
            epoch = int(moment.timestamp())
            grouped = by_bucket.setdefault(epoch - epoch % seconds, {})
        key = _group_key(row)
        members = grouped.get(key)
        if members is None:
            grouped[key] = [row]
        else:
            members.append(row)
    out: dict[Key, Stats] = {}
    for bucket, groups in by_bucket.items():
        for (device, channel, name, unit), members in groups.items():
            key = (device, channel or "", name or "", unit or "", bucket)
            values = [row[_VALUE] for row in members if row[_VALUE] is not None]
            stats = Stats(
                len(members),
                len(values),
                sum(1 for row in members if row[_OK]),
                sum(1 for row in members if row[_ERROR] is not None),
                min(values) if values else None,
                max(values) if values else None,
                sum(values, 0.0),
            )
            earlier = out.get(key)  # a NULL name and an empty one share the key ''
            out[key] = stats if earlier is None else _merge(earlier, stats)
    return out


def _merge(a: Stats, b: Stats) -> Stats:
    lows = [v for v in (a.minimum, b.minimum) if v is not None]
    highs = [v for v in (a.maximum, b.maximum) if v is not None]
    return Stats(
        a.samples + b.samples, a.values + b.values, a.ok + b.ok, a.errors + b.errors,
        min(lows) if lows else None, max(highs) if highs else None, a.total + b.total,
    )


_UPDATE = (
    "samples = t.samples + EXCLUDED.samples, n_values = t.n_values + EXCLUDED.n_values, "
    "n_ok = t.n_ok + EXCLUDED.n_ok, n_errors = t.n_errors + EXCLUDED.n_errors, "
    "v_min = LEAST(t.v_min, EXCLUDED.v_min), v_max = GREATEST(t.v_max, EXCLUDED.v_max), "
    "v_sum = t.v_sum + EXCLUDED.v_sum"
)
_KEYS = ", ".join(KEY_COLUMNS)
_ARRAY_TYPES = ("text",) * 5 + ("timestamptz",) + ("bigint",) * 4 + ("float8",) * 3


@dataclass(frozen=True)
class RollupStatement:
    """One statement merging a batch into one rollup and every rollup derived from it."""

    sql: str
    seconds: int
    """The interval of the groups this statement is given."""


def plan_statements(
    schema: str,
    raw_table: str,
    specs: Sequence[RollupSpec],
    checkpoint_table: str | None = None,
) -> list[RollupStatement]:
    """As few statements (round trips) as possible: one per interval others derive from.

    The finest interval's groups go to the server once; each coarser interval that is a
    multiple of it is merged from those groups by the same statement (data-modifying
    CTEs), in key order so that concurrent writers never deadlock.

    With ``checkpoint_table`` the first statement also advances the write's checkpoint,
    exactly as the sink's own upsert does (``$14`` stream, ``$15`` seq, ``$16`` first
    seq), merges the rollups only when it moved, and answers the stored seq or no row:
    one round trip for checkpoint and rollups, which matters at 64-row batches.
    """
    remaining = sorted(specs, key=lambda s: s.seconds)
    out: list[RollupStatement] = []
    while remaining:
        base = remaining.pop(0)
        derived = [s for s in remaining if s.seconds % base.seconds == 0]
        remaining = [s for s in remaining if s not in derived]
        cp = checkpoint_table if not out else None
        out.append(
            RollupStatement(_statement(schema, raw_table, base, derived, cp), base.seconds)
        )
    return out


def _statement(
    schema: str,
    raw_table: str,
    base: RollupSpec,
    derived: list[RollupSpec],
    checkpoint_table: str | None,
) -> str:
    arrays = ", ".join(f"${i}::{kind}[]" for i, kind in enumerate(_ARRAY_TYPES, start=1))
    names = ", ".join(KEY_COLUMNS + STAT_COLUMNS)
    ctes = [f"input AS (SELECT * FROM unnest({arrays}) AS i({names}))"]  # noqa: S608 - quoted
    gate = ""
    if checkpoint_table is not None:
        target = qualified(schema, checkpoint_table)
        ctes.append(
            f"cp AS (INSERT INTO {target} (stream, seq, updated_at) "  # noqa: S608 - quoted
            "VALUES ($14::text, $15::bigint, now()) ON CONFLICT (stream) DO UPDATE "
            f"SET seq = EXCLUDED.seq, updated_at = now() WHERE {target}.seq < $16::bigint "
            "RETURNING seq)"
        )
        gate = " WHERE EXISTS (SELECT 1 FROM cp)"
    ctes.append(
        f"r0 AS (INSERT INTO {qualified(schema, base.table(raw_table))} AS t ({names}) "  # noqa: S608
        f"SELECT * FROM input{gate} ORDER BY {_KEYS} "
        f"ON CONFLICT ({_KEYS}) DO UPDATE SET {_UPDATE})"
    )
    for index, spec in enumerate(derived, start=1):
        n = spec.seconds
        ctes.append(
            f"r{index} AS (INSERT INTO {qualified(schema, spec.table(raw_table))} AS t "  # noqa: S608
            f"({names}) SELECT site, device, channel, name, unit, "
            f"to_timestamp(floor(extract(epoch FROM bucket) / {n}) * {n}), sum(samples), "
            "sum(n_values), sum(n_ok), sum(n_errors), min(v_min), max(v_max), sum(v_sum) "
            f"FROM input{gate} GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6 "
            f"ON CONFLICT ({_KEYS}) DO UPDATE SET {_UPDATE})"
        )
    tail = " SELECT seq FROM cp" if checkpoint_table is not None else " SELECT 1"
    return "WITH " + ", ".join(ctes) + tail


def upsert_args(site: str, groups: dict[Key, Stats]) -> list[list[Any]]:
    """Column arrays for a ``RollupStatement``, keys in sorted order (no deadlocks)."""
    columns: list[list[Any]] = [[] for _ in range(13)]
    buckets: dict[int, datetime] = {}
    for key in sorted(groups):
        device, channel, name, unit, start = key
        bucket = buckets.get(start)
        if bucket is None:
            bucket = buckets[start] = datetime.fromtimestamp(start, UTC)
        values = (site, device, channel, name, unit, bucket, *groups[key])
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
