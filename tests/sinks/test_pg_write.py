"""pg_write.PgWriter on a real PostgreSQL: rows and checkpoint commit together or not at all."""

from __future__ import annotations

import asyncpg
import pytest
from sinkdata import steady_samples

from servomexd.errors import ServomexSinkCheckpointConflict
from servomexd.rows import Record, sample_to_record
from servomexd.sinks import PostgresConfig
from servomexd.sinks.pg_fleet import FleetLayout
from servomexd.sinks.pg_schema import read_columns
from servomexd.sinks.pg_write import PgWriter

pytestmark = pytest.mark.postgres


async def _writer(conn: asyncpg.Connection, config: PostgresConfig) -> PgWriter:
    fleet = FleetLayout(config)
    writer = PgWriter(config, fleet)
    writer.columns = await read_columns(conn, config, fleet, set())
    return writer


def _records(count: int) -> list[Record]:
    return [sample_to_record(sample) for sample in steady_samples(count)]


@pytest.mark.parametrize("use_copy", [True, False])
async def test_rows_and_checkpoint_commit_together(
    pg_dsn: str, conn: asyncpg.Connection, use_copy: bool
) -> None:
    writer = await _writer(conn, PostgresConfig(dsn=pg_dsn, create_table=True, use_copy=use_copy))
    records = _records(10)
    await writer.write_on(conn, records, records, ("spool-a", 3, 1))
    assert await conn.fetchval("SELECT count(*) FROM samples") == len(records)
    assert await writer.read_checkpoint(conn, "spool-a") == 3
    assert await writer.read_checkpoint(conn, "spool-b") is None


async def test_a_write_already_held_is_refused_whole(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    writer = await _writer(conn, PostgresConfig(dsn=pg_dsn, create_table=True))
    records = _records(5)
    await writer.write_on(conn, records, records, ("spool-a", 4, 1))
    with pytest.raises(ServomexSinkCheckpointConflict) as raised:
        await writer.write_on(conn, records, records, ("spool-a", 6, 4))
    assert raised.value.context["stored_seq"] == 4
    assert raised.value.context["first_seq"] == 4
    assert await conn.fetchval("SELECT count(*) FROM samples") == len(records)
    await writer.write_on(conn, records, records, ("spool-a", 6, 5))
    assert await writer.read_checkpoint(conn, "spool-a") == 6
    assert await conn.fetchval("SELECT count(*) FROM samples") == 2 * len(records)


async def test_probe_leaves_nothing_behind(pg_dsn: str, conn: asyncpg.Connection) -> None:
    writer = await _writer(conn, PostgresConfig(dsn=pg_dsn, create_table=True))
    await writer.probe(conn, _records(5))
    assert await conn.fetchval("SELECT count(*) FROM samples") == 0
    assert not conn.is_in_transaction()
