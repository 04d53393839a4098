"""Exact rollups maintained in the batch's transaction (real server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from fleetdata import records_at
from pg_rollup_check import rollup_mismatches

from servomexd.errors import ServomexSinkCheckpointConflict, ServomexSinkSchemaError
from servomexd.sinks import PostgresConfig, PostgresSink
from servomexd.sinks import pg_rollups as rollups


def test_parse_rollup_accepts_intervals_that_divide_a_day() -> None:
    assert rollups.parse_rollup("1m").seconds == 60
    assert rollups.parse_rollup("15m").seconds == 900
    assert rollups.parse_rollup("1d").table("samples") == "samples_1d"
    for bad in ("7m", "5h", "0m", "1 m", "1s"):
        with pytest.raises(ValueError, match="rollup interval"):
            rollups.parse_rollup(bad)


def test_aggregate_groups_every_row_once_into_aligned_buckets() -> None:
    rows = records_at(datetime(2026, 3, 1, 10, 58, 30, tzinfo=UTC), 60)
    # the same reading with a NULL and an empty name must land in one group
    rows.append((*rows[0][:3], None, *rows[0][4:]))
    rows.append((*rows[0][:3], "", *rows[0][4:]))
    groups = rollups.aggregate(rows, 3600)
    assert sum(s.samples for s in groups.values()) == len(rows)
    assert sum(s.errors for s in groups.values()) == sum(r[-1] is not None for r in rows)
    assert {key[4] % 3600 for key in groups} == {0}
    assert len({key[4] for key in groups}) == 2  # the batch crosses an hour boundary
    values = [r[4] for r in rows if r[4] is not None]
    assert sum(s.values for s in groups.values()) == len(values)
    assert min(s.minimum for s in groups.values() if s.minimum is not None) == min(values)


def test_one_statement_per_base_interval() -> None:
    specs = [rollups.parse_rollup(t) for t in ("1h", "1m", "1d", "45m")]
    statements = rollups.plan_statements("public", "samples", specs)
    assert [s.seconds for s in statements] == [60]  # 45m, 1h and 1d derive from 1m
    assert statements[0].sql.count("INSERT INTO") == 4
    assert [s.seconds for s in rollups.plan_statements(
        "public", "samples", [rollups.parse_rollup("45m"), rollups.parse_rollup("1h")]
    )] == [2700, 3600]
    checked = rollups.plan_statements("public", "samples", specs, "servomexd_checkpoints")
    assert "cp AS (INSERT INTO" in checked[0].sql and checked[0].sql.endswith("SELECT seq FROM cp")
    assert checked[0].sql.count("WHERE EXISTS (SELECT 1 FROM cp)") == 4


@pytest.mark.parametrize(
    ("use_copy", "intervals"),
    [(True, ("1m", "1h")), (False, ("1m", "1h")), (True, ("45m", "1h", "1d"))],
)
async def test_rollups_equal_raw_aggregates(
    pg_dsn: str, conn: asyncpg.Connection, use_copy: bool, intervals: tuple[str, ...]
) -> None:
    cfg = PostgresConfig(
        dsn=pg_dsn, create_table=True, partition="day", rollups=intervals,
        site="plant-b", use_copy=use_copy,
    )  # fmt: skip
    start = datetime.now(UTC) - timedelta(minutes=90)
    async with PostgresSink(cfg) as sink:
        for batch in range(6):
            rows = records_at(start + timedelta(minutes=17 * batch), 25, f"an{batch % 2}")
            await sink.write_records(rows, checkpoint=("s", batch + 1))
        await sink.write_records(records_at(start, 5, "an9"))  # no checkpoint: still in a txn
    raw_rows = await conn.fetchval("SELECT count(*) FROM samples")
    for spec in map(rollups.parse_rollup, intervals):
        table = spec.table("samples")
        total, bad = await rollup_mismatches(conn, "samples", table, spec.seconds)
        assert bad == []
        assert total > 0
        assert await conn.fetchval(f"SELECT DISTINCT site FROM {table}") == "plant-b"
        assert await conn.fetchval(f"SELECT sum(samples) FROM {table}") == raw_rows


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


async def test_a_retry_blocked_by_a_commit_in_flight_merges_no_rollup(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    """The checkpoint guard's race with rollups on: the retry waits for the late COMMIT,
    is refused, and leaves the rollups exactly as the committed writes made them."""
    import asyncio

    cfg = PostgresConfig(dsn=pg_dsn, create_table=True, rollups=("1m", "1h"), site="x")
    first = records_at(datetime.now(UTC), 2)
    async with PostgresSink(cfg) as sink:
        await sink.write_records(first, checkpoint=("s", 1, 1))
        late = await asyncpg.connect(pg_dsn)
        try:
            tx = late.transaction()
            await tx.start()
            await late.execute("UPDATE servomexd_checkpoints SET seq = 3 WHERE stream = 's'")
            retry = asyncio.create_task(
                sink.write_records(records_at(datetime.now(UTC), 3), checkpoint=("s", 4, 2))
            )
            await asyncio.sleep(0.3)
            assert not retry.done()  # blocked on the checkpoint row
            await tx.commit()
            with pytest.raises(ServomexSinkCheckpointConflict):
                await asyncio.wait_for(retry, 10)
        finally:
            await late.close()
    for table in ("samples_1m", "samples_1h"):
        assert await conn.fetchval(f"SELECT sum(samples) FROM {table}") == len(first)
    assert await conn.fetchval("SELECT count(*) FROM samples") == len(first)
