"""SqliteSink against real SQLite files, read back with sqlite3."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import anyio
import pytest
from sinkdata import steady_samples, varied_samples
from structlog.testing import capture_logs

from servomexd.errors import (
    ServomexSinkDataError,
    ServomexSinkError,
    ServomexSinkFault,
    ServomexSinkSchemaError,
    ServomexSinkWriteError,
    ServomexValidationError,
    SinkFailure,
)
from servomexd.rows import ROW_COLUMNS, sample_to_record
from servomexd.sinks import SqliteSink, sample_to_row

pytestmark = pytest.mark.anyio  # every async test runs under asyncio and trio


def read_rows(path: Path, table: str = "samples") -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid').fetchall()
    finally:
        conn.close()


async def test_rows_read_back_equal_sample_to_row(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "samples.sqlite"  # parent dirs are created
    samples = varied_samples(12)
    async with SqliteSink(path) as sink:
        await sink.write_many(samples[:20])
        await sink.write_many(samples[20:])
    assert read_rows(path) == [tuple(sample_to_row(s).values()) for s in samples]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        columns = [row[1] for row in conn.execute('PRAGMA table_info("samples")')]
        types = {row[1]: row[2] for row in conn.execute('PRAGMA table_info("samples")')}
        error_rows = conn.execute("SELECT channel, ok, error FROM samples WHERE error IS NOT NULL")
        errors = error_rows.fetchall()
    finally:
        conn.close()
    assert columns == list(ROW_COLUMNS)
    assert types["value"] == "REAL" and types["monotonic_ns"] == "INTEGER"
    assert types["ok"] == "TEXT"
    assert errors and all(ch is None and ok is None for ch, ok, _ in errors)
    assert "checksum" in errors[0][2]


async def test_write_records_and_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    samples = varied_samples(8)
    records = [sample_to_record(s) for s in samples]
    async with SqliteSink(path) as sink:
        assert sink.supports_checkpoint
        assert await sink.read_checkpoint("stream-a") == 0
        await sink.write_records(records[:10], checkpoint=("stream-a", 1))
        await sink.write_records(records[10:], checkpoint=("stream-a", 2))
        await sink.write_records([], checkpoint=("stream-b", 7))
        assert await sink.read_checkpoint("stream-a") == 2
        assert await sink.read_checkpoint("stream-b") == 7
    assert read_rows(path) == [tuple(sample_to_row(s).values()) for s in samples]
    async with SqliteSink(path) as again:  # survives a restart
        assert await again.read_checkpoint("stream-a") == 2


async def test_failed_write_rolls_back_rows_and_checkpoint(tmp_path: Path) -> None:
    """The database is locked by another writer: nothing of the batch, nor its checkpoint."""
    path = tmp_path / "s.sqlite"
    records = [sample_to_record(s) for s in steady_samples(10)]
    async with SqliteSink(path, busy_timeout_ms=50) as sink:
        await sink.write_records(records[:5], checkpoint=("s", 1))
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(ServomexSinkWriteError) as caught:
                await sink.write_records(records[5:], checkpoint=("s", 2))
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
            assert "locked" in str(caught.value)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert await sink.read_checkpoint("s") == 1
        assert len(read_rows(path)) == 5
        await sink.write_records(records[5:], checkpoint=("s", 2))  # the retry succeeds
        assert await sink.read_checkpoint("s") == 2
    assert len(read_rows(path)) == 10


async def test_table_dropped_mid_run_raises_write_error(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    samples = steady_samples(10)
    async with SqliteSink(path) as sink:
        await sink.write_many(samples[:5])
        conn = sqlite3.connect(path)
        conn.execute("DROP TABLE samples")
        conn.commit()
        conn.close()
        with pytest.raises(ServomexSinkWriteError) as caught:
            await sink.write_many(samples[5:])
        assert isinstance(caught.value.__cause__, sqlite3.Error)
        assert "no such table" in str(caught.value)


async def test_vanished_directory_raises_then_recovers(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    path = directory / "s.sqlite"
    samples = steady_samples(15)
    async with SqliteSink(path) as sink:
        await sink.write_many(samples[:5])
        shutil.rmtree(directory)
        directory.write_text("a file where the directory was")  # cannot be recreated
        with pytest.raises(ServomexSinkWriteError) as first:
            await sink.write_many(samples[5:10])
        assert "vanished" in str(first.value)
        with pytest.raises(ServomexSinkWriteError) as second:
            await sink.write_many(samples[5:10])
        assert isinstance(second.value.__cause__, OSError)
        directory.unlink()
        await sink.write_many(samples[5:10])  # reopens a fresh file at the same path
        await sink.write_many(samples[10:])
    assert read_rows(path) == [tuple(sample_to_row(s).values()) for s in samples[5:]]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
async def test_read_only_database_raises_write_error(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    async with SqliteSink(path) as sink:
        await sink.write_many(steady_samples(5))
    os.chmod(path, 0o444)
    os.chmod(tmp_path, 0o555)
    try:
        with pytest.raises(ServomexSinkError) as caught:
            async with SqliteSink(path) as sink:
                await sink.write_many(steady_samples(5))
        assert caught.value.failure is SinkFailure.OPERATOR
        assert caught.value.fault == "read_only_path"
    finally:
        os.chmod(tmp_path, 0o755)
        os.chmod(path, 0o644)


async def test_unwritable_directory_needs_an_operator() -> None:
    """A directory the service may not create (as under ProtectSystem=strict without
    ReadWritePaths=): even root gets EPERM under /sys."""
    with pytest.raises(ServomexSinkFault) as caught:
        await SqliteSink("/sys/servomexd-test/samples.sqlite").open()
    assert caught.value.fault == "read_only_path"
    assert "ReadWritePaths=" in str(caught.value.fix)
    assert caught.value.retryable is False


async def test_constraint_and_trigger_refusals_are_data(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE samples (device TEXT, value REAL CHECK (value < 50));"
        "CREATE TRIGGER t BEFORE INSERT ON samples WHEN NEW.value < 0 "
        "BEGIN SELECT RAISE(ABORT, 'negative'); END;"
    )
    conn.close()
    record = sample_to_record(steady_samples(1)[0])
    async with SqliteSink(path) as sink:
        await sink.probe_records([record])  # passes; rolled back
        for value, text in ((99.0, "CHECK constraint failed"), (-1.0, "negative")):
            bad = [(*record[:4], value, *record[5:])]
            with pytest.raises(ServomexSinkDataError, match=text):
                await sink.probe_records(bad)
            with pytest.raises(ServomexSinkDataError, match=text) as caught:
                await sink.write_records(bad, checkpoint=("s", 1))
            assert caught.value.failure is SinkFailure.DATA
        await sink.write_records([record], checkpoint=("s", 1))
    assert read_rows(path) == [(record[0], record[4])]


async def test_missing_table_needs_an_operator(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    async with SqliteSink(path) as sink:
        sqlite3.connect(path).executescript("DROP TABLE samples;")
        with pytest.raises(ServomexSinkFault) as caught:
            await sink.write_many(steady_samples(1))
    assert caught.value.fault == "schema_mismatch"


async def test_existing_narrower_and_wider_table(tmp_path: Path) -> None:
    """Schema policy: unknown columns dropped with one warning each, missing ones NULL."""
    path = tmp_path / "s.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE plant (id INTEGER PRIMARY KEY, device TEXT, channel TEXT, value REAL, "
        "ok INTEGER, received_at TEXT, site TEXT)"
    )
    conn.commit()
    conn.close()
    samples = varied_samples(4)
    with capture_logs() as logs:
        async with SqliteSink(path, table="plant", create_table=False) as sink:
            await sink.write_many(samples[:7])
            await sink.write_many(samples[7:])
            await sink.write_records([sample_to_record(s) for s in samples])
    dropped = [e for e in logs if e["event"] == "sink.unknown_column_dropped"]
    kept = {"device", "channel", "value", "ok", "received_at"}
    assert sorted(e["column"] for e in dropped) == sorted(set(ROW_COLUMNS) - kept)
    assert all(e["log_level"] == "warning" for e in dropped)
    rows = read_rows(path, "plant")
    assert len(rows) == 2 * len(samples)
    for row, sample in zip(rows, samples * 2, strict=True):
        expected = sample_to_row(sample)
        _id, device, channel, value, ok, received_at, site = row
        assert (device, channel, value, received_at) == (
            expected["device"], expected["channel"], expected["value"], expected["received_at"],
        )
        assert ok == {"true": 1, "false": 0, None: None}[expected["ok"]]  # INTEGER column
        assert site is None  # missing column: NULL


async def test_create_table_false_and_missing_table_is_schema_error(tmp_path: Path) -> None:
    sink = SqliteSink(tmp_path / "s.sqlite", table="nope", create_table=False)
    with pytest.raises(ServomexSinkSchemaError, match="does not exist"):
        await sink.open()
    assert not sink.is_open


@pytest.mark.parametrize(
    "table",
    ['samples"; DROP TABLE x; --', "1abc", "", "a" * 64, "sam ples", "ü", "servomexd_checkpoints"],
)
def test_identifier_validation_rejects(table: str) -> None:
    with pytest.raises(ServomexValidationError):
        SqliteSink("x.sqlite", table=table)


def test_bad_pragmas_rejected() -> None:
    with pytest.raises(ServomexValidationError):
        SqliteSink("x.sqlite", journal_mode="WAL; DROP TABLE x")
    with pytest.raises(ServomexValidationError):
        SqliteSink("x.sqlite", synchronous="sometimes")
    with pytest.raises(ServomexValidationError):
        SqliteSink("x.sqlite", busy_timeout_ms=-1)


async def test_close_is_idempotent_and_write_after_close_fails(tmp_path: Path) -> None:
    sink = SqliteSink(tmp_path / "s.sqlite")
    await sink.open()
    await sink.close()
    await sink.close()
    with pytest.raises(ServomexSinkError):
        await sink.write_many(steady_samples(1))


async def test_writes_do_not_block_the_event_loop(tmp_path: Path) -> None:
    """While another connection holds the lock, the loop keeps ticking."""
    path = tmp_path / "s.sqlite"
    async with SqliteSink(path, busy_timeout_ms=400) as sink:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await anyio.sleep(0.01)
                ticks += 1

        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(ticker)
                with pytest.raises(ServomexSinkWriteError):
                    await sink.write_many(steady_samples(5))
                tasks.cancel_scope.cancel()
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert ticks >= 10


def _indexes(path: Path) -> dict[str, list[str]]:
    conn = sqlite3.connect(path)
    try:
        names = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'samples' "
            "AND sql IS NOT NULL"
        )]
        return {n: [r[2] for r in conn.execute(f'PRAGMA index_info("{n}")')] for n in names}
    finally:
        conn.close()


def _plan(path: Path, query: str) -> str:
    conn = sqlite3.connect(path)
    try:
        return " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}"))
    finally:
        conn.close()


async def test_time_first_index_serves_the_documented_queries(tmp_path: Path) -> None:
    path = tmp_path / "samples.sqlite"
    async with SqliteSink(path) as sink:
        await sink.write_many(steady_samples(50))
    assert _indexes(path) == {"samples_time_idx": ["received_at", "device", "channel"]}
    # README and docs/operations.md: the latest rows, no full scan and no sort
    for query in (
        "SELECT received_at, device, value FROM samples WHERE channel = 'I1' "
        "ORDER BY received_at DESC LIMIT 10",
        "SELECT * FROM samples WHERE error IS NULL ORDER BY received_at DESC LIMIT 10",
        "SELECT device, count(*) FROM samples WHERE error IS NOT NULL "
        "AND received_at > '2026-01-01' GROUP BY device",
    ):
        plan = _plan(path, query)
        assert "USING INDEX samples_time_idx" in plan, plan
        assert "TEMP B-TREE FOR ORDER BY" not in plan, plan


async def test_a_table_with_the_former_index_gets_no_second_one(tmp_path: Path) -> None:
    path = tmp_path / "samples.sqlite"
    async with SqliteSink(path) as sink:
        await sink.write_many(steady_samples(5))
    conn = sqlite3.connect(path)
    conn.execute('DROP INDEX "samples_time_idx"')
    conn.execute('CREATE INDEX "samples_device_time_idx" ON samples (device, channel, received_at)')
    conn.close()
    async with SqliteSink(path) as sink:
        await sink.write_many(steady_samples(5))
    assert list(_indexes(path)) == ["samples_device_time_idx"]
