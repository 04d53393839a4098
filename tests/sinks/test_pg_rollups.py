"""Exact rollups maintained in the batch's transaction (real server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from fleetdata import records_at
from pg_rollup_check import rollup_mismatches

from servomexd.errors import ServomexSinkCheckpointConflict, ServomexSinkSchemaError
from servomexd.sinks import PostgresConfig, PostgresSink
from servomexd.sinks import pg_rollups as rollups


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(pg_dsn)
    try:
        yield connection
    finally:
        await connection.close()


def test_parse_rollup_accepts_intervals_that_divide_a_day() -> None:
    assert rollups.parse_rollup("1m").seconds == 60
    assert rollups.parse_rollup("15m").seconds == 900
    assert rollups.parse_rollup("1d").table("samples") == "samples_1d"
    for bad in ("7m", "5h", "0m", "1 m", "1s"):
        with pytest.raises(ValueError, match="rollup interval"):
            rollups.parse_rollup(bad)


def test_coarse_groups_from_fine_ones_equal_a_direct_pass() -> None:
    rows = records_at(datetime(2026, 3, 1, 10, 58, 30, tzinfo=UTC), 60)
    fine, coarse = rollups.aggregate_all(rows, [rollups.RollupSpec("1m", 60),
                                               rollups.RollupSpec("1h", 3600)])
    direct = rollups.aggregate(rows, 3600)
    assert {k: vars_of(v) for k, v in coarse.items()} == {
        k: vars_of(v) for k, v in direct.items()
    }
    assert len({key[4] for key in coarse}) == 2  # the batch crosses an hour boundary
    assert sum(s.samples for s in fine.values()) == len(rows)


def vars_of(stats: object) -> tuple[object, ...]:
    return tuple(
        round(getattr(stats, name), 9) if name == "total" else getattr(stats, name)
        for name in ("samples", "values", "ok", "errors", "minimum", "maximum", "total")
    )


@pytest.mark.parametrize("use_copy", [True, False])
async def test_rollups_equal_raw_aggregates(
    pg_dsn: str, conn: asyncpg.Connection, use_copy: bool
) -> None:
    cfg = PostgresConfig(
        dsn=pg_dsn, create_table=True, partition="day", rollups=("1m", "1h"),
        site="plant-b", use_copy=use_copy,
    )  # fmt: skip
    start = datetime.now(UTC) - timedelta(minutes=90)
    async with PostgresSink(cfg) as sink:
        for batch in range(6):
            rows = records_at(start + timedelta(minutes=17 * batch), 25, f"an{batch % 2}")
            await sink.write_records(rows, checkpoint=("s", batch + 1))
        await sink.write_records(records_at(start, 5, "an9"))  # no checkpoint: still in a txn
    for table, seconds in (("samples_1m", 60), ("samples_1h", 3600)):
        total, bad = await rollup_mismatches(conn, "samples", table, seconds)
        assert bad == []
        assert total > 0
    assert await conn.fetchval("SELECT DISTINCT site FROM samples_1h") == "plant-b"
    assert await conn.fetchval("SELECT sum(samples) FROM samples_1m") == await conn.fetchval(
        "SELECT count(*) FROM samples"
    )


async def test_a_refused_write_leaves_rollups_untouched(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    cfg = PostgresConfig(dsn=pg_dsn, create_table=True, rollups=("1m",), site="x")
    rows = records_at(datetime.now(UTC), 10)
    async with PostgresSink(cfg) as sink:
        await sink.write_records(rows, checkpoint=("s", 1))
        with pytest.raises(ServomexSinkCheckpointConflict):
            await sink.write_records(rows, checkpoint=("s", 1))
    assert await conn.fetchval("SELECT count(*) FROM samples") == len(rows)
    assert (await rollup_mismatches(conn, "samples", "samples_1m", 60))[1] == []


async def test_missing_rollup_table_is_a_schema_error(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    await conn.execute("CREATE TABLE raw (device text, value double precision)")
    cfg = PostgresConfig(dsn=pg_dsn, table="raw", rollups=("1h",))
    with pytest.raises(ServomexSinkSchemaError, match="raw_1h"):
        await PostgresSink(cfg).open()
