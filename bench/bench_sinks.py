"""Sink throughput against the raw driver on the same rows (target: >= 60%).

    .venv/bin/python bench/bench_sinks.py [--rows 100000] [--repeat 3] [--skip-postgres]

SQLite: ``SqliteSink.write_many(samples)`` and ``write_records(records, checkpoint)``
versus raw ``sqlite3.executemany`` of ready-made tuples: same table and index,
same pragmas, one ``BEGIN IMMEDIATE ... COMMIT`` per batch for both. Postgres:
``PostgresSink`` versus raw asyncpg ``copy_records_to_table`` of ready-made tuples
into the same table (truncated before each run). The sink gets ``Sample``s, so
its figure includes the Sample -> row conversion. Runs are interleaved and the
best of ``--repeat`` is kept (the machine is shared); rows/s and the sink/raw
ratio are printed for batch 1000 and 64.

Postgres: $SERVOMEXD_TEST_PG_DSN, else 127.0.0.1:5432 (user postgres), else a
throwaway cluster (tests/pg.py); a fresh database is created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from itertools import count
from pathlib import Path
from typing import Any

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "sinks"))

from sinkdata import steady_samples  # noqa: E402

from servomexd.model import Sample  # noqa: E402
from servomexd.rows import ROW_COLUMNS, Record, sample_to_record  # noqa: E402
from servomexd.sinks import PostgresConfig, PostgresSink, SqliteSink, sample_to_row  # noqa: E402
from servomexd.sinks.base import CHECKPOINT_TABLE  # noqa: E402

BATCHES = (1000, 64)
Run = Callable[[], Awaitable[float]]


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


async def best_rates(rows: int, repeat: int, runs: dict[str, Run]) -> dict[str, float]:
    """rows/s of the fastest run of each, runs interleaved so load swings hit all alike."""
    rates = dict.fromkeys(runs, 0.0)
    for _ in range(repeat):
        for name, run in runs.items():
            rates[name] = max(rates[name], rows / await run())
    return rates


def report(store: str, batch: int, rates: dict[str, float]) -> None:
    raw = rates.pop("raw")
    print(f"  {store:8s} batch {batch:5d}  raw driver            {raw:10,.0f} rows/s")
    for name, rate in rates.items():
        print(f"  {'':8s} {'':11s} {name:22s}{rate:10,.0f} rows/s  = {rate / raw:6.1%} of raw")


# --- SQLite ---------------------------------------------------------------------------


_sqlite_files = count()
"""One counter for every SQLite run of the process: each run writes a new file."""


def sqlite_runs(
    tmp: Path, batch: int, samples: list[Sample], text_rows: list[Record], records: list[Record]
) -> dict[str, Run]:
    numbers = _sqlite_files
    names = ", ".join(f'"{c}"' for c in ROW_COLUMNS)
    insert = f'INSERT INTO "samples" ({names}) VALUES ({", ".join("?" for _ in ROW_COLUMNS)})'
    row_batches = chunks(text_rows, batch)
    sample_batches = chunks(samples, batch)
    record_batches = chunks(records, batch)

    def fresh() -> Path:
        return tmp / f"batch{batch}-run{next(numbers)}.sqlite"

    async def raw() -> float:
        path = fresh()
        async with SqliteSink(path):  # the same table and index
            pass
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        start = time.perf_counter()
        for chunk in row_batches:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(insert, chunk)
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        conn.close()
        return elapsed

    async def sink_samples() -> float:
        async with SqliteSink(fresh()) as sink:
            start = time.perf_counter()
            for chunk in sample_batches:
                await sink.write_many(chunk)
            return time.perf_counter() - start

    async def sink_records() -> float:
        path = fresh()
        async with SqliteSink(path) as sink:
            start = time.perf_counter()
            for seq, chunk in enumerate(record_batches, 1):
                await sink.write_records(chunk, checkpoint=(path.stem, seq))
            return time.perf_counter() - start

    return {
        "raw": raw,
        "SqliteSink.write_many": sink_samples,
        "write_records+ckpt": sink_records,
    }


async def bench_sqlite(samples: list[Sample], repeat: int) -> None:
    text_rows = [tuple(sample_to_row(s).values()) for s in samples]
    records = [sample_to_record(s) for s in samples]
    with tempfile.TemporaryDirectory(prefix="bench-sinks-") as tmp:
        for batch in BATCHES:
            runs = sqlite_runs(Path(tmp), batch, samples, text_rows, records)
            report("sqlite", batch, await best_rates(len(samples), repeat, runs))


# --- Postgres -------------------------------------------------------------------------


def postgres_runs(
    conn: Any, config: PostgresConfig, batch: int, samples: list[Sample], records: list[Record]
) -> dict[str, Run]:
    record_batches = chunks(records, batch)
    sample_batches = chunks(samples, batch)
    streams = count()

    async def fresh() -> str:
        """An empty table and checkpoint table, and a stream never used before: every
        run starts from a fresh store (a surviving checkpoint made a second run's first
        write a checkpoint conflict)."""
        await conn.execute(f"TRUNCATE samples, {CHECKPOINT_TABLE}")
        return f"bench-{batch}-{next(streams)}"

    async def raw() -> float:
        await fresh()
        start = time.perf_counter()
        for chunk in record_batches:
            await conn.copy_records_to_table(
                "samples", records=chunk, columns=ROW_COLUMNS, schema_name="public"
            )
        return time.perf_counter() - start

    async def sink_samples() -> float:
        await fresh()
        async with PostgresSink(config) as sink:
            start = time.perf_counter()
            for chunk in sample_batches:
                await sink.write_many(chunk)
            return time.perf_counter() - start

    async def sink_records() -> float:
        await fresh()
        async with PostgresSink(config) as sink:
            start = time.perf_counter()
            for chunk in record_batches:
                await sink.write_records(chunk)
            return time.perf_counter() - start

    async def sink_records_checkpoint() -> float:
        stream = await fresh()
        async with PostgresSink(config) as sink:
            start = time.perf_counter()
            for seq, chunk in enumerate(record_batches, 1):
                await sink.write_records(chunk, checkpoint=(stream, seq))
            return time.perf_counter() - start

    return {
        "raw": raw,
        "PostgresSink.write_many": sink_samples,
        "write_records": sink_records,
        "write_records+ckpt": sink_records_checkpoint,
    }


async def bench_postgres(samples: list[Sample], repeat: int, dsn: str) -> None:
    import asyncpg

    records = [sample_to_record(s) for s in samples]
    config = PostgresConfig(dsn=dsn, create_table=True)
    async with PostgresSink(config) as sink:  # creates the table, index, checkpoint table
        await sink.write_records(records[:1], checkpoint=("bench-setup", 1))
    conn = await asyncpg.connect(dsn)
    try:
        for batch in BATCHES:
            runs = postgres_runs(conn, config, batch, samples, records)
            report("postgres", batch, await best_rates(len(samples), repeat, runs))
    finally:
        await conn.close()


def run_postgres(samples: list[Sample], repeat: int) -> None:
    from pg import PgUnavailable, resolve_server

    try:
        server = resolve_server()
    except (PgUnavailable, ImportError, OSError) as exc:
        print(f"  postgres: skipped ({exc})")
        return
    try:
        name, dsn = server.create_database()
        try:
            asyncio.run(bench_postgres(samples, repeat, dsn))
        finally:
            server.drop_database(name)
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    samples = steady_samples(args.rows)
    print(f"bench_sinks: {len(samples):,} samples (5 channels per frame), best of {args.repeat}")
    asyncio.run(bench_sqlite(samples, args.repeat))
    if not args.skip_postgres:
        run_postgres(samples, args.repeat)


if __name__ == "__main__":
    main()
