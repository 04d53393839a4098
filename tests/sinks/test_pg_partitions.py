"""Time partitions of the Postgres sink: layout, upkeep, DEFAULT, retention (real server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from fleetdata import records_at
from structlog.testing import capture_logs

from servomexd.errors import ServomexValidationError
from servomexd.sinks import PostgresConfig, PostgresSink
from servomexd.sinks import pg_partitions as parts
from servomexd.sinks.pg_ddl import locked_ddl
from servomexd.sinks.pg_stats import table_stats


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(pg_dsn)
    await connection.execute("SET TimeZone = 'UTC'")
    try:
        yield connection
    finally:
        await connection.close()


def config(dsn: str, table: str, **extra: object) -> PostgresConfig:
    return PostgresConfig(dsn=dsn, table=table, create_table=True, **extra)  # type: ignore[arg-type]


async def partitions(conn: asyncpg.Connection, table: str) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = $1::regclass",
        table,
    )
    return {row[0]: row[1] for row in rows}


# --- pure -----------------------------------------------------------------------------------


def test_floor_and_next_start_for_each_unit() -> None:
    moment = datetime(2026, 12, 31, 17, 5, tzinfo=UTC)  # a Thursday
    assert parts.floor_time(moment, "day") == datetime(2026, 12, 31, tzinfo=UTC)
    assert parts.floor_time(moment, "week") == datetime(2026, 12, 28, tzinfo=UTC)
    assert parts.floor_time(moment, "month") == datetime(2026, 12, 1, tzinfo=UTC)
    assert parts.next_start(datetime(2026, 12, 1, tzinfo=UTC), "month") == datetime(
        2027, 1, 1, tzinfo=UTC
    )
    assert parts.next_start(datetime(2026, 12, 28, tzinfo=UTC), "week").weekday() == 0


def test_partition_names_fit_63_characters() -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    assert parts.partition_name("samples", start, "month") == "samples_m202611"
    assert parts.partition_name("samples", start, "day") == "samples_p20261101"
    assert len(parts.partition_name("x" * 63, start, "week")) == 63


def test_durations_and_bounds() -> None:
    assert parts.parse_duration("400d") == timedelta(days=400)
    assert parts.parse_duration("10y") == timedelta(days=3650)
    for bad in ("", "0d", "5 days", "1m", "-3d"):
        with pytest.raises(ValueError, match="duration"):
            parts.parse_duration(bad)
    lower, upper = parts.parse_bound(
        "FOR VALUES FROM ('2026-11-28 00:00:00+00') TO ('2026-11-29 00:00:00+00')"
    ) or (None, None)
    assert lower == datetime(2026, 11, 28, tzinfo=UTC)
    assert upper == datetime(2026, 11, 29, tzinfo=UTC)
    assert parts.parse_bound("DEFAULT") is None


def test_config_rejects_bad_fleet_settings() -> None:
    dsn = "postgresql://u@h/db"
    with pytest.raises(ServomexValidationError, match="partition"):
        PostgresConfig(dsn=dsn, partition="hour")
    with pytest.raises(ServomexValidationError, match="retention"):
        PostgresConfig(dsn=dsn, retention="forever")
    with pytest.raises(ServomexValidationError, match="rollups"):
        PostgresConfig(dsn=dsn, rollups=("7m",))
    with pytest.raises(ServomexValidationError, match="rollups"):
        PostgresConfig(dsn=dsn, rollups=("1m", "1m"))


# --- on a server ----------------------------------------------------------------------------


async def test_created_table_is_partitioned_with_default_and_indexes(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    now = datetime.now(UTC)
    async with PostgresSink(config(pg_dsn, "raw", partition="day", site="plant-a/l2")) as sink:
        await sink.write_records(records_at(now - timedelta(minutes=1), 3), checkpoint=("s", 1))
    assert await conn.fetchval(
        "SELECT partstrat::text FROM pg_partitioned_table WHERE partrelid = 'raw'::regclass"
    ) == "r"
    found = await partitions(conn, "raw")
    today = parts.floor_time(now, "day")
    expected = {parts.partition_name("raw", today + timedelta(days=d), "day") for d in range(3)}
    assert set(found) == expected | {"raw_default"}
    assert found["raw_default"] == "DEFAULT"
    for name in expected:  # the index exists on every partition
        assert await conn.fetchval(
            "SELECT count(*) FROM pg_indexes "
            "WHERE tablename = $1 AND indexdef LIKE '%received_at%'",
            name,
        ) == 1
    where = await conn.fetch("SELECT DISTINCT tableoid::regclass::text, site FROM raw")
    assert [tuple(r) for r in where] == [(parts.partition_name("raw", today, "day"), "plant-a/l2")]


async def test_rows_without_a_partition_go_to_default_and_are_reported(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    old = datetime.now(UTC) - timedelta(days=90)
    stats = table_stats("public.late")
    before = stats.rows_to_default
    async with PostgresSink(config(pg_dsn, "late", partition="day")) as sink:
        rows = records_at(old, 4)
        with capture_logs() as logs:
            await sink.write_records(rows, checkpoint=("s", 1))
            await sink.run_maintenance()
    reported = [e for e in logs if e["event"] == "sink.rows_to_default_partition"]
    assert [e["rows"] for e in reported] == [len(rows)]
    assert stats.rows_to_default - before == len(rows)
    assert await conn.fetchval("SELECT count(*) FROM late_default") == len(rows)
    assert stats.default_rows == len(rows)
    assert any(e["event"] == "sink.default_partition_rows" for e in logs)


async def test_new_partition_takes_its_rows_out_of_default(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    ahead = datetime.now(UTC) + timedelta(days=5)
    async with PostgresSink(config(pg_dsn, "fut", partition="day")) as sink:
        await sink.write_records(records_at(ahead, 2), checkpoint=("s", 1))
    assert await conn.fetchval("SELECT count(*) FROM fut_default") > 0

    async def create(c: asyncpg.Connection) -> list[str]:
        return await parts.ensure_ahead(c, "public", "fut", "received_at", "day", ahead)

    created = await locked_ddl(conn, create)
    day = parts.floor_time(ahead, "day")
    assert created and created[0] == parts.partition_name("fut", day, "day")
    assert await conn.fetchval("SELECT count(*) FROM fut_default") == 0
    assert await conn.fetchval(
        "SELECT count(*) FROM fut WHERE tableoid = $1::regclass", created[0]
    ) == len(records_at(ahead, 2))


async def test_retention_drops_whole_old_partitions_only(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    cfg = config(pg_dsn, "ret", partition="day", retention="30d")
    now = datetime.now(UTC)
    old_start = parts.floor_time(now - timedelta(days=60), "day")
    async with PostgresSink(cfg) as sink:
        await conn.execute(
            "CREATE TABLE ret_old PARTITION OF ret FOR VALUES FROM ($1) TO ($2)".replace(
                "$1", f"'{old_start.isoformat()}'"
            ).replace("$2", f"'{(old_start + timedelta(days=1)).isoformat()}'")
        )
        old_rows = records_at(old_start + timedelta(hours=1), 20)
        await sink.write_records(old_rows, checkpoint=("s", 1))
        await sink.write_records(records_at(now - timedelta(minutes=2), 3), checkpoint=("s", 2))
        await conn.execute("INSERT INTO ret_default (device, received_at) VALUES ('x', $1)",
                           now - timedelta(days=400))
        await conn.execute("ANALYZE ret_old")
        stats = table_stats("public.ret")
        dropped_before = stats.partitions_dropped
        with capture_logs() as logs:
            await sink.run_maintenance()
        # late rows for the dropped day: kept in DEFAULT and reported (the first report
        # of this table was a moment ago, so this one comes with the next maintenance)
        with capture_logs() as late_logs:
            await sink.write_records(records_at(old_start, 1), checkpoint=("s", 3))
            await sink.run_maintenance()
    drops = [e for e in logs if e["event"] == "sink.partition_dropped"]
    assert [(e["partition"], e["rows_estimate"]) for e in drops] == [
        ("public.ret_old", len(records_at(old_start, 20)))
    ]
    assert stats.partitions_dropped - dropped_before == 1
    found = await partitions(conn, "ret")
    assert "ret_old" not in found and "ret_default" in found
    assert parts.partition_name("ret", parts.floor_time(now, "day"), "day") in found
    recent = "SELECT count(*) FROM ret WHERE received_at > now() - interval '1 day'"
    assert await conn.fetchval(recent) > 0
    late = len(records_at(old_start, 1))
    assert await conn.fetchval("SELECT count(*) FROM ret_default") == 1 + late
    assert [e["event"] for e in late_logs if e["event"] == "sink.rows_to_default_partition"] == [
        "sink.rows_to_default_partition"
    ]


async def test_retention_runs_in_one_daemon_at_a_time(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    cfg = config(pg_dsn, "ret2", partition="day", retention="30d")
    old = parts.floor_time(datetime.now(UTC) - timedelta(days=45), "day")
    sinks = [PostgresSink(cfg) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in sinks))
    try:
        for day in range(3):
            start = old + timedelta(days=day)
            await conn.execute(
                f"CREATE TABLE ret2_old{day} PARTITION OF ret2 FOR VALUES FROM "
                f"('{start.isoformat()}') TO ('{(start + timedelta(days=1)).isoformat()}')"
            )
        with capture_logs() as logs:
            await asyncio.gather(*(s.run_maintenance() for s in sinks))
    finally:
        await asyncio.gather(*(s.close() for s in sinks))
    drops = sorted(e["partition"] for e in logs if e["event"] == "sink.partition_dropped")
    assert drops == [f"public.ret2_old{day}" for day in range(3)]  # each once, no error
    assert not [e for e in logs if e["log_level"] in ("warning", "error")]


async def test_four_sinks_create_one_layout_at_once(pg_dsn: str, conn: asyncpg.Connection) -> None:
    cfg = config(pg_dsn, "many", partition="day", rollups=("1m", "1h"), site="s", schema="fleet")
    sinks = [PostgresSink(cfg) for _ in range(4)]
    with capture_logs() as logs:
        await asyncio.gather(*(s.open() for s in sinks))
        now = datetime.now(UTC)
        await asyncio.gather(
            *(s.write_records(records_at(now, 2, f"d{i}"), checkpoint=(f"st{i}", 1))
              for i, s in enumerate(sinks))
        )
        await asyncio.gather(*(s.close() for s in sinks))
    assert not [e for e in logs if e["log_level"] in ("warning", "error")]
    assert len(await partitions(conn, "fleet.many")) == 4
    assert await conn.fetchval("SELECT count(DISTINCT device) FROM fleet.many") == 4


async def test_plain_user_table_without_site_works_as_before(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        "CREATE TABLE plain (device text, channel text, value double precision, "
        "received_at timestamptz)"
    )
    cfg = config(pg_dsn, "plain", partition="day", site="s", retention="1d")
    rows = records_at(datetime.now(UTC) - timedelta(days=10), 3)
    async with PostgresSink(cfg) as sink:
        await sink.write_records(rows, checkpoint=("s", 1))
        await sink.run_maintenance()
    assert not await parts.is_partitioned(conn, "public", "plain")
    assert await conn.fetchval("SELECT count(*) FROM plain") == len(rows)


async def test_rollup_retention_drops_old_rollup_partitions_only(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    cfg = config(pg_dsn, "rr", partition="day", rollups=("1h",), rollup_retention="60d")
    old = parts.floor_time(datetime.now(UTC) - timedelta(days=200), "month")
    async with PostgresSink(cfg) as sink:
        await conn.execute(
            f"CREATE TABLE rr_1h_old PARTITION OF rr_1h FOR VALUES FROM "
            f"('{old.isoformat()}') TO ('{parts.next_start(old, 'month').isoformat()}')"
        )
        await sink.write_records(records_at(old + timedelta(days=1), 3), checkpoint=("s", 1))
        await sink.write_records(records_at(datetime.now(UTC), 3), checkpoint=("s", 2))
        assert await conn.fetchval("SELECT count(*) FROM rr_1h_old") > 0
        await sink.run_maintenance()
    found = await partitions(conn, "rr_1h")
    assert "rr_1h_old" not in found and "rr_1h_default" in found
    assert parts.partition_name("rr_1h", parts.floor_time(datetime.now(UTC), "month"),
                                "month") in found  # fmt: skip
    assert await conn.fetchval("SELECT count(*) FROM rr_1h") > 0
    # the raw rows have no retention here: all kept
    assert await conn.fetchval("SELECT count(*) FROM rr") == 2 * len(records_at(old, 3))


async def test_probe_of_a_table_with_a_site_column_rolls_back(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    """Poison isolation probes a fleet table as it writes it: with the site appended."""
    now = datetime.now(UTC)
    async with PostgresSink(config(pg_dsn, "probed", partition="day", site="plant-b")) as sink:
        await sink.probe_records(records_at(now - timedelta(minutes=1), 3))
        assert await conn.fetchval("SELECT count(*) FROM probed") == 0
        await sink.write_records(records_at(now - timedelta(minutes=1), 2), checkpoint=("s", 1))
    assert await conn.fetchval("SELECT count(*) FROM probed WHERE site = 'plant-b'") > 0
