"""Native range partitions by time: naming, keeping them ahead, dropping expired ones.

A partitioned servomexd table is ``PARTITION BY RANGE (<key>)`` (``received_at`` for raw
rows, ``bucket`` for rollups) with partitions of one day, ISO week or calendar month in
UTC, plus a DEFAULT partition that catches any row no partition covers (a spool drained
after a long outage, a clock jump, a late batch for a partition retention dropped).

Everything here runs inside ``pg_ddl.locked_ddl`` (UTC session time zone, advisory lock).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from servomexd.sinks.pg_ddl import run_formatted

Granularity = Literal["day", "week", "month"]
PartitionSetting = Literal["day", "week", "month", "none"]
PARTITION_SETTINGS: tuple[str, ...] = ("day", "week", "month", "none")
AHEAD = 2
"""Partitions kept ready after the current one."""
_SUFFIX_LETTER = {"day": "p", "week": "w", "month": "m"}
_DURATION = re.compile(r"(\d+)\s*(h|d|w|y)")
_DURATION_UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_BOUNDS = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")
_MIN_DT = datetime.min.replace(tzinfo=UTC)
_MAX_DT = datetime.max.replace(tzinfo=UTC)


def parse_duration(text: str) -> timedelta:
    """``"400d"``, ``"10y"``, ``"12w"``, ``"36h"`` -> timedelta; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None or int(match.group(1)) <= 0:
        raise ValueError(f"expected a duration such as '400d', '12w', '10y' or '36h', got {text!r}")
    return timedelta(seconds=int(match.group(1)) * _DURATION_UNITS[match.group(2)])


def floor_time(moment: datetime, unit: Granularity) -> datetime:
    """Start (UTC) of the partition holding ``moment``."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "day":
        return day
    if unit == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def next_start(start: datetime, unit: Granularity) -> datetime:
    if unit == "day":
        return start + timedelta(days=1)
    if unit == "week":
        return start + timedelta(days=7)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start.replace(year=year, month=month)


def partition_name(table: str, start: datetime, unit: Granularity) -> str:
    """``samples_p20261128`` (day), ``samples_w20261123`` (week), ``samples_m202611``."""
    stamp = start.strftime("%Y%m" if unit == "month" else "%Y%m%d")
    suffix = f"_{_SUFFIX_LETTER[unit]}{stamp}"
    return table[: 63 - len(suffix)] + suffix


def default_name(table: str) -> str:
    return table[:55] + "_default"


@dataclass(frozen=True)
class Partition:
    name: str
    oid: int
    lower: datetime
    upper: datetime
    is_default: bool

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return not self.is_default and self.lower < end and start < self.upper


def _bound(text: str) -> datetime:
    if text.upper() == "MINVALUE":
        return _MIN_DT
    if text.upper() == "MAXVALUE":
        return _MAX_DT
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def parse_bound(expr: str) -> tuple[datetime, datetime] | None:
    """``FOR VALUES FROM ('...') TO ('...')`` -> (lower, upper); None for DEFAULT."""
    if expr.strip().upper() == "DEFAULT":
        return None
    text = expr.replace("FROM (MINVALUE)", "FROM ('MINVALUE')").replace(
        "TO (MAXVALUE)", "TO ('MAXVALUE')"
    )
    match = _BOUNDS.search(text)
    if match is None:
        raise ValueError(f"unexpected partition bound {expr!r}")
    return _bound(match.group(1)), _bound(match.group(2))


async def is_partitioned(conn: Any, schema: str, table: str) -> bool:
    found = await conn.fetchval(
        "SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
        schema,
        table,
    )
    return bool(found)


async def list_partitions(conn: Any, schema: str, table: str) -> list[Partition]:
    """The partitions of ``schema.table`` (bounds read in the session's UTC time zone)."""
    rows = await conn.fetch(
        "SELECT c.relname, c.oid, pg_get_expr(c.relpartbound, c.oid) AS bound "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace "
        "WHERE n.nspname = $1 AND p.relname = $2 ORDER BY c.relname",
        schema,
        table,
    )
    out = []
    for row in rows:
        bounds = parse_bound(row["bound"])
        if bounds is None:
            out.append(Partition(row["relname"], row["oid"], _MIN_DT, _MAX_DT, True))
        else:
            out.append(Partition(row["relname"], row["oid"], bounds[0], bounds[1], False))
    return out


async def ensure_default(conn: Any, schema: str, table: str) -> None:
    await run_formatted(
        conn,
        "CREATE TABLE IF NOT EXISTS %I.%I PARTITION OF %I.%I DEFAULT",
        schema, default_name(table), schema, table,
    )  # fmt: skip


async def ensure_ahead(
    conn: Any,
    schema: str,
    table: str,
    key: str,
    unit: Granularity,
    now: datetime,
    ahead: int = AHEAD,
) -> list[str]:
    """Create the partition holding ``now`` and the next ``ahead``; returns the new names.

    A range already covered by any partition (another granularity included) is left
    alone. Rows already in DEFAULT for a new range are moved into the new partition.
    """
    existing = await list_partitions(conn, schema, table)
    created: list[str] = []
    start = floor_time(now, unit)
    for _ in range(ahead + 1):
        end = next_start(start, unit)
        if not any(p.overlaps(start, end) for p in existing):
            name = partition_name(table, start, unit)
            await _create_partition(conn, schema, table, key, name, start, end, existing)
            created.append(name)
        start = end
    return created


async def _create_partition(
    conn: Any,
    schema: str,
    table: str,
    key: str,
    name: str,
    start: datetime,
    end: datetime,
    existing: list[Partition],
) -> None:
    default = next((p for p in existing if p.is_default), None)
    moved = 0
    if default is not None:
        # Rows in DEFAULT for this range would make CREATE ... PARTITION OF fail: move
        # them into the new table first, then attach it (one transaction).
        moved = await conn.fetchval(
            await conn.fetchval(
                "SELECT format('SELECT count(*) FROM %I.%I WHERE %I >= %L AND %I < %L', "
                "$1::text, $2::text, $3::text, $4::text, $3::text, $5::text)",
                schema, default.name, key, start.isoformat(), end.isoformat(),
            )
        )  # fmt: skip
    if not moved:
        await run_formatted(
            conn,
            "CREATE TABLE IF NOT EXISTS %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)",
            schema, name, schema, table, start.isoformat(), end.isoformat(),
        )  # fmt: skip
        return
    assert default is not None
    await run_formatted(
        conn, "CREATE TABLE %I.%I (LIKE %I.%I INCLUDING DEFAULTS)", schema, name, schema, table
    )
    await run_formatted(
        conn,
        "WITH moved AS (DELETE FROM %I.%I WHERE %I >= %L AND %I < %L RETURNING *) "
        "INSERT INTO %I.%I SELECT * FROM moved",
        schema, default.name, key, start.isoformat(), key, end.isoformat(), schema, name,
    )  # fmt: skip
    await run_formatted(
        conn,
        "ALTER TABLE %I.%I ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)",
        schema, table, schema, name, start.isoformat(), end.isoformat(),
    )  # fmt: skip


@dataclass(frozen=True)
class Dropped:
    name: str
    rows_estimate: int
    upper: datetime


async def drop_expired(conn: Any, schema: str, table: str, horizon: datetime) -> list[Dropped]:
    """Drop every non-DEFAULT partition lying entirely before ``horizon`` (never DELETE)."""
    dropped = []
    for part in await list_partitions(conn, schema, table):
        if part.is_default or part.upper > horizon:
            continue
        estimate = await conn.fetchval(
            "SELECT GREATEST(reltuples, 0)::bigint FROM pg_class WHERE oid = $1", part.oid
        )
        await run_formatted(conn, "DROP TABLE %I.%I", schema, part.name)
        dropped.append(Dropped(part.name, int(estimate or 0), part.upper))
    return dropped


async def default_rows(conn: Any, schema: str, table: str, cap: int = 10_000_000) -> int | None:
    """Rows in the DEFAULT partition (counted up to ``cap``); None when there is none."""
    for part in await list_partitions(conn, schema, table):
        if part.is_default:
            sql = await conn.fetchval(
                "SELECT format('SELECT count(*) FROM (SELECT 1 FROM %I.%I LIMIT %s) AS d', "
                "$1::text, $2::text, $3::text)",
                schema, part.name, str(cap),
            )  # fmt: skip
            return int(await conn.fetchval(sql))
    return None


def covered_range(partitions: list[Partition]) -> tuple[datetime, datetime] | None:
    """Lowest and highest bound of the non-DEFAULT partitions (gaps are rare: ignored)."""
    ranged = [p for p in partitions if not p.is_default]
    if not ranged:
        return None
    return min(p.lower for p in ranged), max(p.upper for p in ranged)

