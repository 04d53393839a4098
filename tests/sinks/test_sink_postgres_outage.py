"""PostgresSink while its server goes away and comes back (a private PgCluster)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import asyncpg
import pytest
from pg import PgCluster, PgUnavailable, pg_required
from sinkdata import steady_samples

from servomexd.errors import ServomexSinkWriteError, SinkFailure
from servomexd.rows import sample_to_record
from servomexd.sinks import PostgresConfig, PostgresSink

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    try:
        with PgCluster() as started:
            yield started
    except PgUnavailable as exc:
        if pg_required():
            pytest.fail(f"cannot start a PgCluster: {exc}", pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture
def running(cluster: PgCluster) -> PgCluster:
    if not cluster.running:
        cluster.start()
    return cluster


async def count_rows(dsn: str, table: str = "samples") -> int:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        value: int = await conn.fetchval(f"SELECT count(*) FROM {table}")
        return value
    finally:
        await conn.close()


async def test_server_restart_write_error_then_recovery(running: PgCluster) -> None:
    samples = steady_samples(30)
    config = PostgresConfig(dsn=running.dsn, table="restart", create_table=True,
                            command_timeout_s=3.0)
    async with PostgresSink(config) as sink:
        await sink.write_many(samples[:10])
        await asyncio.to_thread(running.stop)

        started = time.monotonic()
        with pytest.raises(ServomexSinkWriteError) as caught:
            await sink.write_many(samples[10:20])
        assert time.monotonic() - started < 5, "a write during the outage must fail fast"
        assert caught.value.__cause__ is not None
        assert caught.value.failure is SinkFailure.TRANSIENT
        assert caught.value.retryable is True
        assert "127.0.0.1" in str(caught.value)  # the log-safe target

        await asyncio.to_thread(running.start)
        await sink.write_many(samples[10:20])  # the pool reconnects by itself
        await sink.write_many(samples[20:])
    assert await count_rows(running.dsn, "restart") == 30


async def test_server_stopped_mid_write_leaves_rows_and_checkpoint_consistent(
    running: PgCluster,
) -> None:
    """Fast shutdown while a large COPY runs: all or nothing, checkpoint in step."""
    samples = steady_samples(5)
    big = [sample_to_record(s) for s in steady_samples(200_000)]
    config = PostgresConfig(dsn=running.dsn, table="midwrite", create_table=True)
    async with PostgresSink(config) as sink:
        await sink.write_records([sample_to_record(s) for s in samples], checkpoint=("s", 1))
        write = asyncio.create_task(sink.write_records(big, checkpoint=("s", 2)))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(running.stop)
        try:
            async with asyncio.timeout(30):  # asyncpg alone would wait forever here
                await write
            landed = True
        except ServomexSinkWriteError as exc:
            assert exc.__cause__ is not None
            landed = False
        await asyncio.to_thread(running.start)
        checkpoint = await sink.read_checkpoint("s")
    rows = await count_rows(running.dsn, "midwrite")
    if landed:
        assert (rows, checkpoint) == (5 + len(big), 2)
    else:
        assert (rows, checkpoint) == (5, 1), "a failed write left rows or a checkpoint behind"


async def test_open_while_server_down_fails_fast(running: PgCluster) -> None:
    await asyncio.to_thread(running.stop)
    config = PostgresConfig(dsn=running.dsn, create_table=True, command_timeout_s=2.0)
    started = time.monotonic()
    with pytest.raises(ServomexSinkWriteError) as caught:
        await PostgresSink(config).open()
    assert time.monotonic() - started < 5
    assert isinstance(caught.value.__cause__, OSError)
    await asyncio.to_thread(running.start)
