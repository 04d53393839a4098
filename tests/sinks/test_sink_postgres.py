"""PostgresSink against a real PostgreSQL server (see tests/pg.py for which one)."""

from __future__ import annotations

import decimal
from datetime import UTC
from typing import Any

import asyncpg
import pytest
from sinkdata import steady_samples, varied_samples
from structlog.testing import capture_logs

from servomexd.errors import (
    ServomexConfigError,
    ServomexSinkDependencyError,
    ServomexSinkError,
    ServomexSinkSchemaError,
    ServomexSinkWriteError,
    SinkFailure,
)
from servomexd.model import Sample
from servomexd.rows import ROW_COLUMNS, sample_to_record, sample_to_row
from servomexd.sinks import PostgresConfig, PostgresSink

pytestmark = pytest.mark.postgres


async def fetch(conn: asyncpg.Connection, table: str, columns: str = "*") -> list[tuple[Any, ...]]:
    rows = await conn.fetch(f"SELECT {columns} FROM {table} ORDER BY ctid")
    return [tuple(row) for row in rows]


async def test_create_table_native_types_round_trip(pg_dsn: str, conn: asyncpg.Connection) -> None:
    samples = varied_samples(12)
    config = PostgresConfig(dsn=pg_dsn, create_table=True)
    async with PostgresSink(config) as sink:
        assert sink.columns == ROW_COLUMNS
        await sink.write_many(samples[:25])
        await sink.write_many(samples[25:])
    types = dict(
        await conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'samples'"
        )
    )
    assert types["received_at"] == "timestamp with time zone"
    assert types["ok"] == "boolean"
    assert types["value"] == "double precision"
    assert types["monotonic_ns"] == "bigint"
    assert types["device"] == "text"
    assert await fetch(conn, "samples") == [sample_to_record(s) for s in samples]
    error_rows = await conn.fetch("SELECT * FROM samples WHERE error IS NOT NULL")
    assert error_rows and all(r["channel"] is None and r["ok"] is None for r in error_rows)
    assert all(r["received_at"].tzinfo is not None for r in error_rows)
    indexes = await conn.fetchval("SELECT count(*) FROM pg_indexes WHERE tablename = 'samples'")
    assert indexes == 1


async def test_session_settings(pg_dsn: str, conn: asyncpg.Connection) -> None:
    config = PostgresConfig(dsn=pg_dsn, create_table=True, statement_timeout_ms=12345)
    async with PostgresSink(config) as sink:
        await sink.write_many(steady_samples(5))
        async with sink._pool.acquire() as own:
            assert await own.fetchval("SHOW application_name") == "servomexd"
            assert await own.fetchval("SHOW statement_timeout") == "12345ms"


async def test_deployment_table_with_native_columns(pg_dsn: str, conn: asyncpg.Connection) -> None:
    """The published sink failed here: ISO strings sent to a timestamptz COPY."""
    await conn.execute(
        """
        CREATE TABLE plant_samples (
            id bigserial PRIMARY KEY,
            device text NOT NULL, channel varchar(4), kind text, name text,
            value double precision, unit text, ok boolean, fault boolean,
            maintenance boolean, calibrating boolean, warming_up boolean,
            protocol text, monotonic_ns bigint, received_at timestamptz NOT NULL,
            requested_at timestamptz, latency_s real, error text,
            inserted_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    samples = varied_samples(9)
    config = PostgresConfig(dsn=pg_dsn, table="plant_samples")
    async with PostgresSink(config) as sink:
        await sink.write_many(samples)
        await sink.write_records([sample_to_record(s) for s in samples])
    rows = await fetch(conn, "plant_samples", ", ".join(f'"{c}"' for c in ROW_COLUMNS))
    assert len(rows) == 2 * len(samples)
    for row, sample in zip(rows, samples * 2, strict=True):
        expected = sample_to_record(sample)
        latency = row[15]
        assert row[:15] + row[16:] == expected[:15] + expected[16:]
        assert (latency is None) == (expected[15] is None)
        if latency is not None:
            assert latency == pytest.approx(expected[15], rel=1e-6)  # real is float4
    ids = [r[0] for r in await conn.fetch("SELECT id FROM plant_samples ORDER BY id")]
    assert ids == list(range(1, 2 * len(samples) + 1))


async def test_text_and_other_column_types_are_coerced(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        """
        CREATE TABLE legacy (
            device text, channel text, kind text, name text, value numeric, unit text,
            ok text, fault integer, maintenance text, calibrating text, warming_up text,
            protocol text, monotonic_ns text, received_at text,
            requested_at timestamp, latency_s double precision, error text
        )
        """
    )
    samples = varied_samples(6)
    for use_copy in (True, False):
        await conn.execute("TRUNCATE legacy")
        config = PostgresConfig(dsn=pg_dsn, table="legacy", use_copy=use_copy)
        async with PostgresSink(config) as sink:
            await sink.write_many(samples)
        rows = await conn.fetch("SELECT * FROM legacy ORDER BY ctid")
        assert len(rows) == len(samples)
        for row, sample in zip(rows, samples, strict=True):
            text = sample_to_row(sample)
            native = sample_to_record(sample)
            for column in ("device", "channel", "ok", "maintenance", "received_at", "error"):
                assert row[column] == text[column], column
            assert row["monotonic_ns"] == str(native[12])
            assert row["fault"] == (None if native[7] is None else int(native[7]))
            value = row["value"]
            assert value == (None if native[4] is None else decimal.Decimal(repr(native[4])))
            requested = native[14]
            assert row["requested_at"] == (
                None if requested is None else requested.astimezone(UTC).replace(tzinfo=None)
            )


async def test_executemany_fallback_round_trip(pg_dsn: str, conn: asyncpg.Connection) -> None:
    samples = varied_samples(5)
    config = PostgresConfig(dsn=pg_dsn, create_table=True, use_copy=False)
    async with PostgresSink(config) as sink:
        await sink.write_many(samples)
        await sink.write_records([sample_to_record(s) for s in samples], checkpoint=("s", 3))
        assert await sink.read_checkpoint("s") == 3
    assert await fetch(conn, "samples") == [sample_to_record(s) for s in samples * 2]


async def test_schema_policy_narrower_and_wider_table(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        "CREATE TABLE narrow (device text, value double precision, received_at timestamptz, "
        "site text, ok boolean)"
    )
    samples = varied_samples(4)
    with capture_logs() as logs:
        async with PostgresSink(PostgresConfig(dsn=pg_dsn, table="narrow")) as sink:
            assert sink.columns == ("device", "value", "received_at", "ok")
            await sink.write_many(samples)
            await sink.write_many(samples)
    dropped = [e["column"] for e in logs if e["event"] == "sink.unknown_column_dropped"]
    assert sorted(dropped) == sorted(set(ROW_COLUMNS) - {"device", "value", "received_at", "ok"})
    rows = await fetch(conn, "narrow")
    expected = [
        (r[0], r[4], r[13], None, r[6]) for r in (sample_to_record(s) for s in samples * 2)
    ]
    assert rows == expected


async def test_missing_table_and_incompatible_column(pg_dsn: str, conn: asyncpg.Connection) -> None:
    with pytest.raises(ServomexSinkSchemaError, match="does not exist"):
        await PostgresSink(PostgresConfig(dsn=pg_dsn, table="absent")).open()
    await conn.execute("CREATE TABLE odd (device text, received_at bigint)")
    with pytest.raises(ServomexSinkSchemaError, match="received_at"):
        await PostgresSink(PostgresConfig(dsn=pg_dsn, table="odd")).open()


async def test_checkpoint_and_atomic_failure(pg_dsn: str, conn: asyncpg.Connection) -> None:
    """A batch the table refuses leaves neither rows nor checkpoint behind."""
    await conn.execute(
        "CREATE TABLE guarded (device text, channel text, value double precision "
        "CHECK (value < 100), received_at timestamptz)"
    )
    samples = steady_samples(10)
    records = [sample_to_record(s) for s in samples]
    bad = list(records[5:])
    bad[2] = (*bad[2][:4], 150.0, *bad[2][5:])
    async with PostgresSink(PostgresConfig(dsn=pg_dsn, table="guarded")) as sink:
        assert sink.supports_checkpoint
        assert await sink.read_checkpoint("stream") == 0  # no checkpoint table yet
        await sink.write_records(records[:5], checkpoint=("stream", 1))
        assert await sink.read_checkpoint("stream") == 1
        for use_copy in (True, False):
            object.__setattr__(sink.config, "use_copy", use_copy)
            with pytest.raises(ServomexSinkWriteError) as caught:
                await sink.write_records(bad, checkpoint=("stream", 2))
            assert isinstance(caught.value.__cause__, asyncpg.CheckViolationError)
            assert caught.value.failure is SinkFailure.DATA
            assert caught.value.retryable is False
            assert await sink.read_checkpoint("stream") == 1
            assert await conn.fetchval("SELECT count(*) FROM guarded") == 5
        await sink.write_records(records[5:], checkpoint=("stream", 2))
        assert await sink.read_checkpoint("stream") == 2
    assert await conn.fetchval("SELECT count(*) FROM guarded") == 10
    stored = await conn.fetchrow("SELECT * FROM servomexd_checkpoints")
    assert stored["stream"] == "stream" and stored["seq"] == 2


async def test_schema_and_identifiers(pg_dsn: str, conn: asyncpg.Connection) -> None:
    config = PostgresConfig(dsn=pg_dsn, schema="plant", table="gas_1", create_table=True)
    samples: list[Sample] = steady_samples(5)
    async with PostgresSink(config) as sink:
        await sink.write_records([sample_to_record(s) for s in samples], checkpoint=("x", 1))
    assert await conn.fetchval("SELECT count(*) FROM plant.gas_1") == 5
    assert await conn.fetchval("SELECT seq FROM plant.servomexd_checkpoints") == 1


async def test_write_before_open_and_close_idempotent(pg_dsn: str) -> None:
    sink = PostgresSink(PostgresConfig(dsn=pg_dsn, create_table=True))
    with pytest.raises(ServomexSinkError):
        await sink.write_many(steady_samples(1))
    await sink.open()
    await sink.close()
    await sink.close()


async def test_table_dropped_mid_run(pg_dsn: str, conn: asyncpg.Connection) -> None:
    """A permanent failure is reported as such; once the table is back, writes resume."""
    samples = steady_samples(15)
    config = PostgresConfig(dsn=pg_dsn, create_table=True)
    async with PostgresSink(config) as sink:
        await sink.write_many(samples[:5])
        await conn.execute("DROP TABLE samples")
        with pytest.raises(ServomexSinkWriteError) as caught:
            await sink.write_records([sample_to_record(s) for s in samples[5:10]],
                                     checkpoint=("s", 1))
        assert isinstance(caught.value.__cause__, asyncpg.UndefinedTableError)
        assert caught.value.failure is SinkFailure.OPERATOR
        assert caught.value.fault == "schema_mismatch"
        assert caught.value.retryable is False
        assert await sink.read_checkpoint("s") == 0
        async with PostgresSink(config):  # recreates the table
            pass
        await sink.write_records([sample_to_record(s) for s in samples[5:10]],
                                 checkpoint=("s", 1))
        await sink.write_many(samples[10:])
        assert await sink.read_checkpoint("s") == 1
    assert await fetch(conn, "samples") == [sample_to_record(s) for s in samples[5:]]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_open_under_trio_says_the_sink_needs_asyncio(anyio_backend: str) -> None:
    # asyncpg is asyncio-only: under trio open() refuses clearly, before any connection.
    sink = PostgresSink(PostgresConfig(host="127.0.0.1", port=9, password="s3cret"))
    with pytest.raises(ServomexSinkDependencyError) as caught:
        await sink.open()
    assert "asyncio only" in str(caught.value) and "not under trio" in str(caught.value)
    assert caught.value.context == {"backend": "trio", "requires": "asyncio"}
    assert isinstance(caught.value, ServomexConfigError)  # a usage error, not an outage
    assert "s3cret" not in str(caught.value)
    assert not sink.is_open
    await sink.close()  # nothing to release
