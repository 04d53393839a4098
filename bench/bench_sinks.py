"""Sink throughput against the raw driver on the same rows (issue 3 target: >= 60%).

    .venv/bin/python bench/bench_sinks.py [--rows 100000] [--repeat 3] [--skip-postgres]

SQLite: ``SqliteSink.write_many(samples)`` and ``write_records(records)`` versus raw
``sqlite3.executemany`` of ready-made tuples, same table, same pragmas, one
``BEGIN IMMEDIATE ... COMMIT`` per batch for both. Postgres: ``PostgresSink``
versus raw asyncpg ``copy_records_to_table`` of ready-made tuples into the same
table (truncated between runs). Best of ``--repeat`` runs each (the machine is
shared); rows/s and the sink/raw ratio are printed for batch 1000 and 64.

Postgres: $SERVOMEXD_TEST_PG_DSN, else 127.0.0.1:5432 (user postgres), else a
throwaway cluster (tests/pg.py); a fresh database is created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "sinks"))

from sinkdata import steady_samples  # noqa: E402

from servomexd.model import Sample  # noqa: E402
from servomexd.rows import ROW_COLUMNS, Record, sample_to_record  # noqa: E402
from servomexd.sinks import PostgresConfig, PostgresSink, SqliteSink, sample_to_row  # noqa: E402

BATCHES = (1000, 64)


def chunks(items: Sequence[object], size: int) -> list[Sequence[object]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


async def best_of(repeat: int, rows: int, run: Callable[[], Awaitable[None]]) -> float:
    """rows/s of the fastest of ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        elapsed = await run_timed(run)
        best = min(best, elapsed)
    return rows / best


async def run_timed(run: Callable[[], Awaitable[float]]) -> float:
    return await run()


def report(store: str, batch: int, raw: float, figures: dict[str, float]) -> None:
    print(f"  {store:8s} batch {batch:5d}: raw {raw:10,.0f} rows/s")
    for name, rate in figures.items():
        print(f"  {'':8s} {'':11s} {name:22s} {rate:10,.0f} rows/s  ratio {rate / raw:5.1%}")


# --- SQLite ---------------------------------------------------------------------------


async def bench_sqlite(samples: list[Sample], repeat: int) -> None:
    text_rows = [tuple(sample_to_row(s).values()) for s in samples]
    records = [sample_to_record(s) for s in samples]
    placeholders = ", ".join("?" for _ in ROW_COLUMNS)
    names = ", ".join(f'"{c}"' for c in ROW_COLUMNS)
    insert = f'INSERT INTO "samples" ({names}) VALUES ({placeholders})'
    with tempfile.TemporaryDirectory(prefix="bench-sinks-") as tmp:
        counter = 0

        def fresh_path() -> Path:
            nonlocal counter
            counter += 1
            return Path(tmp) / f"run{counter}.sqlite"

        async def schema(path: Path) -> None:
            async with SqliteSink(path):  # creates the same table and index
                pass

        for batch in BATCHES:
            row_batches = chunks(text_rows, batch)
            sample_batches = chunks(samples, batch)
            record_batches = chunks(records, batch)

            async def raw() -> float:
                path = fresh_path()
                await schema(path)
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
                async with SqliteSink(fresh_path()) as sink:
                    start = time.perf_counter()
                    for chunk in sample_batches:
                        await sink.write_many(chunk)  # type: ignore[arg-type]
                    return time.perf_counter() - start

            async def sink_records() -> float:
                async with SqliteSink(fresh_path()) as sink:
                    start = time.perf_counter()
                    for seq, chunk in enumerate(record_batches, 1):
                        await sink.write_records(chunk, checkpoint=("bench", seq))  # type: ignore[arg-type]
                    return time.perf_counter() - start

            rates = {"raw": 0.0, "sink": 0.0, "records": 0.0}
            for _ in range(repeat):  # interleaved, so load changes hit all three alike
                for name, run in (("raw", raw), ("sink", sink_samples), ("records", sink_records)):
                    rates[name] = max(rates[name], len(samples) / await run())
            report(
                "sqlite",
                batch,
                rates["raw"],
                {
                    "SqliteSink.write_many": rates["sink"],
                    "write_records+ckpt": rates["records"],
                },
            )


# --- Postgres -------------------------------------------------------------------------


async def bench_postgres(samples: list[Sample], repeat: int, dsn: str) -> None:
    import asyncpg

    records = [sample_to_record(s) for s in samples]
    config = PostgresConfig(dsn=dsn, create_table=True)
    async with PostgresSink(config):  # creates the table and index
        pass
    conn = await asyncpg.connect(dsn)
    try:
        for batch in BATCHES:
            record_batches = chunks(records, batch)
            sample_batches = chunks(samples, batch)

            async def raw() -> float:
                await conn.execute("TRUNCATE samples")
                start = time.perf_counter()
                for chunk in record_batches:
                    await conn.copy_records_to_table(
                        "samples", records=chunk, columns=ROW_COLUMNS, schema_name="public"
                    )
                return time.perf_counter() - start

            async def sink_samples() -> float:
                await conn.execute("TRUNCATE samples")
                async with PostgresSink(config) as sink:
                    start = time.perf_counter()
                    for chunk in sample_batches:
                        await sink.write_many(chunk)  # type: ignore[arg-type]
                    return time.perf_counter() - start

            async def sink_records() -> float:
                await conn.execute("TRUNCATE samples")
                async with PostgresSink(config) as sink:
                    start = time.perf_counter()
                    for chunk in record_batches:
                        await sink.write_records(chunk)  # type: ignore[arg-type]
                    return time.perf_counter() - start

            async def sink_records_ckpt() -> float:
                await conn.execute("TRUNCATE samples")
                async with PostgresSink(config) as sink:
                    start = time.perf_counter()
                    for seq, chunk in enumerate(record_batches, 1):
                        await sink.write_records(chunk, checkpoint=("bench", seq))  # type: ignore[arg-type]
                    return time.perf_counter() - start

            runs = {
                "raw": raw,
                "PostgresSink.write_many": sink_samples,
                "write_records": sink_records,
                "write_records+ckpt": sink_records_ckpt,
            }
            rates = dict.fromkeys(runs, 0.0)
            for _ in range(repeat):
                for name, run in runs.items():
                    rates[name] = max(rates[name], len(samples) / await run())
            raw_rate = rates.pop("raw")
            report("postgres", batch, raw_rate, rates)
    finally:
        await conn.close()


def postgres_database() -> tuple[object, str, str] | None:
    from pg import PgUnavailable, resolve_server

    try:
        server = resolve_server()
    except (PgUnavailable, ImportError, OSError) as exc:
        print(f"  postgres: skipped ({exc})")
        return None
    name, dsn = server.create_database()
    return server, name, dsn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    samples = steady_samples(args.rows)
    print(f"bench_sinks: {len(samples):,} samples (5 channels per frame), best of {args.repeat}")
    asyncio.run(bench_sqlite(samples, args.repeat))
    if args.skip_postgres:
        return
    found = postgres_database()
    if found is None:
        return
    server, name, dsn = found
    try:
        asyncio.run(bench_postgres(samples, args.repeat, dsn))
    finally:
        server.drop_database(name)  # type: ignore[attr-defined]
        server.close()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
