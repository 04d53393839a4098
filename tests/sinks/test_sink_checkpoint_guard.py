"""The checkpoint guard of SqliteSink and PostgresSink: a write ``(stream, seq, first_seq)``
is refused, inside its own transaction and with nothing written, when the sink's stored
checkpoint is already ``>= first_seq`` (an earlier attempt committed after all)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg
import pytest
from sinkdata import steady_samples

from servomexd.errors import ServomexSinkCheckpointConflict, ServomexValidationError
from servomexd.rows import sample_to_record
from servomexd.sinks import PostgresConfig, PostgresSink, SqliteSink

RECORDS = [sample_to_record(s) for s in steady_samples(6)]


@pytest.mark.anyio  # asyncio and trio
async def test_sqlite_refuses_a_write_it_already_holds(tmp_path: Path) -> None:
    path = tmp_path / "out.sqlite"
    async with SqliteSink(path) as sink:
        await sink.write_records(RECORDS[:2], checkpoint=("s", 5, 1))
        with pytest.raises(ServomexSinkCheckpointConflict) as caught:
            # batches 3..7: 3-5 are already in, so the whole write is refused
            await sink.write_records(RECORDS[2:4], checkpoint=("s", 7, 3))
        assert caught.value.context["stored_seq"] == 5
        assert await sink.read_checkpoint("s") == 5
        await sink.write_records(RECORDS[2:4], checkpoint=("s", 7, 6))
        assert await sink.read_checkpoint("s") == 7
        # (stream, seq) is the single batch seq: rewriting batch 7 is refused too
        with pytest.raises(ServomexSinkCheckpointConflict):
            await sink.write_records(RECORDS[4:], checkpoint=("s", 7))
        # another stream is independent
        await sink.write_records(RECORDS[4:], checkpoint=("other", 1))
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM samples").fetchone()[0] == len(RECORDS)


@pytest.mark.anyio  # asyncio and trio
async def test_bad_first_seq_is_a_validation_error(tmp_path: Path) -> None:
    async with SqliteSink(tmp_path / "out.sqlite") as sink:
        with pytest.raises(ServomexValidationError):
            await sink.write_records(RECORDS[:1], checkpoint=("s", 3, 4))


async def test_postgres_refuses_a_write_it_already_holds(pg_dsn: str) -> None:
    config = PostgresConfig(dsn=pg_dsn, create_table=True)
    async with PostgresSink(config) as sink:
        await sink.write_records(RECORDS[:2], checkpoint=("s", 5, 1))
        with pytest.raises(ServomexSinkCheckpointConflict) as caught:
            await sink.write_records(RECORDS[2:4], checkpoint=("s", 7, 3))
        assert caught.value.context["stored_seq"] == 5
        await sink.write_records(RECORDS[2:], checkpoint=("s", 7, 6))
        assert await sink.read_checkpoint("s") == 7
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM samples") == len(RECORDS)
    finally:
        await conn.close()


async def test_postgres_waits_for_a_commit_in_flight_then_refuses(pg_dsn: str) -> None:
    """The race that matters: the first attempt's transaction is still open on another
    connection when the retry starts. The retry must wait for it, see its checkpoint and
    write nothing (a plain read of the checkpoint would have seen the old value)."""
    config = PostgresConfig(dsn=pg_dsn, create_table=True)
    async with PostgresSink(config) as sink:
        await sink.write_records(RECORDS[:1], checkpoint=("s", 1, 1))
        first_attempt = await asyncpg.connect(pg_dsn)
        try:
            tx = first_attempt.transaction()
            await tx.start()
            await first_attempt.copy_records_to_table(
                "samples", records=RECORDS[1:3], columns=list(await _columns(first_attempt))
            )
            await first_attempt.execute(
                "UPDATE servomexd_checkpoints SET seq = 3 WHERE stream = 's'"
            )
            assert await sink.read_checkpoint("s") == 1  # what a re-sync would read now
            retry = asyncio.create_task(
                sink.write_records(RECORDS[1:4], checkpoint=("s", 4, 2))
            )
            await asyncio.sleep(0.3)
            assert not retry.done()  # blocked on the checkpoint row
            await tx.commit()  # the late COMMIT lands
            with pytest.raises(ServomexSinkCheckpointConflict):
                await asyncio.wait_for(retry, 10)
            count = await first_attempt.fetchval("SELECT count(*) FROM samples")
            assert count == 3  # 1 + the late attempt's 2, none of the retry's
        finally:
            await first_attempt.close()


async def _columns(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_name = 'samples' ORDER BY ordinal_position"
    )
    return [row["column_name"] for row in rows]
