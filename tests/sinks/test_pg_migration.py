"""docs/operations.md's migration of an unpartitioned table, run as written (real server)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from fleetdata import records_at

from servomexd.sinks import PostgresConfig, PostgresSink
from servomexd.sinks import pg_partitions as parts

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def migration_sql(cutover: datetime) -> str:
    text = DOC.read_text()
    section = text[text.index("### Moving an existing unpartitioned table") :]
    sql = re.search(r"```sql\n(.*?)```", section, re.S)
    assert sql is not None
    return sql.group(1).replace("2026-12-01 00:00+00", cutover.isoformat())


async def test_documented_migration_keeps_old_rows_and_partitions_new_ones(pg_dsn: str) -> None:
    now = datetime.now(UTC)
    old_rows = records_at(now - timedelta(days=3), 5)
    async with PostgresSink(PostgresConfig(dsn=pg_dsn, create_table=True)) as sink:
        await sink.write_records(old_rows, checkpoint=("s", 1))
    cutover = parts.floor_time(now, "day") + timedelta(days=1)
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(migration_sql(cutover))
        config = PostgresConfig(dsn=pg_dsn, create_table=True, partition="day", site="p")
        later = records_at(cutover + timedelta(hours=1), 2)
        async with PostgresSink(config) as sink:
            await sink.write_records(records_at(now, 2), checkpoint=("s", 2))
            await sink.write_records(later, checkpoint=("s", 3))
        where = dict(await conn.fetch(
            "SELECT tableoid::regclass::text, count(*) FROM samples GROUP BY 1"
        ))  # fmt: skip
        assert where["samples_legacy"] == len(old_rows) + len(records_at(now, 2))
        assert where[parts.partition_name("samples", cutover, "day")] == len(later)
        assert "samples_default" not in where
        assert await conn.fetchval("SELECT count(*) FROM samples WHERE site = 'p'") == len(
            later
        ) + len(records_at(now, 2))
    finally:
        await conn.close()
