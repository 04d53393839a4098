"""How fast a spooled backlog drains into PostgreSQL once it returns (target >= 100k rows/s).

Builds a spool holding ROWS rows in batches of BATCH (what an outage leaves behind at
the default batch_size), then runs the daemon's real Writer against a real PostgresSink
and times it from start until the spool is empty, i.e. every row committed with its
checkpoint and acked. Postgres: $SERVOMEXD_TEST_PG_DSN, else 127.0.0.1:5432, else a
throwaway initdb cluster (tests/pg.py).

    .venv/bin/python bench/bench_drain.py [--rows 1000000] [--batch 64] [--chunk 20000]
        [--repeat 3]

The ceiling is compared like for like: raw asyncpg COPY of the SAME rows (all of them),
in the same chunks, into a fresh table identical to the sink's (columns and indexes),
interleaved with the drains, best of ``--repeat`` on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from prometheus_client import CollectorRegistry  # noqa: E402

from servomexd.config import PostgresSettings, SinkSettings  # noqa: E402
from servomexd.delivery import Writer  # noqa: E402
from servomexd.destination import Destination  # noqa: E402
from servomexd.metrics import Metrics  # noqa: E402
from servomexd.rows import ROW_COLUMNS, Record  # noqa: E402
from servomexd.sinks.base import CHECKPOINT_TABLE  # noqa: E402
from servomexd.spool import Spool  # noqa: E402

CHANNELS = (("I1", "transducer", "Oxygen", "%"), ("I2", "transducer", "CO", "%"),
            ("I3", "transducer", "CO2", "%"), ("E1", "external_input", None, "mA"),
            ("E2", "external_input", None, "mA"))  # fmt: skip


def make_batch(start: int, size: int, t0: datetime) -> list[Record]:
    rows: list[Record] = []
    for i in range(start, start + size):
        frame, slot = divmod(i, len(CHANNELS))
        channel, kind, name, unit = CHANNELS[slot]
        at = t0 + timedelta(milliseconds=100 * frame)
        rows.append((
            f"an-{frame % 32}", channel, kind, name, 20.9 + (i % 1000) / 1000, unit,
            True, False, False, False, False, "continuous", 10**12 + frame, at, None, None,
            None,
        ))  # fmt: skip
    return rows


async def build_spool(directory: Path, rows: int, batch: int) -> Spool:
    spool = Spool(directory, synchronous="OFF", max_bytes=1 << 40, cache_rows=0)
    await spool.open()
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    for start in range(0, rows, batch):
        await spool.append(make_batch(start, min(batch, rows - start), t0))
    await spool.close()
    return Spool(directory, max_bytes=1 << 40, cache_rows=0)


async def drain_once(template: Path, work: Path, dsn: str, args: argparse.Namespace) -> float:
    """Seconds for the real Writer to empty a copy of the template spool into a fresh
    ``samples`` table (created by the sink, with its index and checkpoint table)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    await conn.execute(f"DROP TABLE IF EXISTS samples, {CHECKPOINT_TABLE}")
    await conn.close()
    await asyncio.to_thread(shutil.rmtree, work, ignore_errors=True)
    await asyncio.to_thread(shutil.copytree, template, work)
    spool = Spool(work, max_bytes=1 << 40, cache_rows=0)
    await spool.open()
    settings = SinkSettings(
        type="postgres", max_write_rows=args.chunk,
        # "none": the raw side's LIKE ... INCLUDING ALL copies a plain table (the default
        # month partitions would send these 2025 rows to DEFAULT: not like for like)
        postgres=PostgresSettings(dsn=dsn, create_table=True, partition="none"),
    )
    writer = Writer(spool, Destination(settings), Metrics(CollectorRegistry()),
                    max_write_rows=args.chunk)
    started = time.perf_counter()
    task = asyncio.create_task(writer.run())
    while spool.stats.samples > 0 or not writer.health.up:
        if task.done():
            task.result()
            raise RuntimeError("writer stopped early")
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    writer.request_stop()
    await task
    await writer.aclose()
    await spool.close()
    conn = await asyncpg.connect(dsn)
    count = await conn.fetchval("SELECT count(*) FROM samples")
    await conn.close()
    assert count == args.rows, f"{count} rows in Postgres, expected {args.rows}"
    return elapsed


async def raw_once(dsn: str, data: list[tuple[object, ...]], columns: list[str],
                   chunk: int) -> float:
    """Seconds for raw asyncpg COPY of the same rows, in the same chunks, into a fresh
    table identical to the sink's (LIKE ... INCLUDING ALL: columns and indexes)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS raw_copy")
        await conn.execute("CREATE TABLE raw_copy (LIKE samples INCLUDING ALL)")
        started = time.perf_counter()
        for start in range(0, len(data), chunk):
            await conn.copy_records_to_table(
                "raw_copy", records=data[start : start + chunk], columns=columns
            )
        return time.perf_counter() - started
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> None:
    import asyncpg
    from pg import fresh_database, resolve_server

    server = resolve_server()
    try:
        with fresh_database(server) as dsn, tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            template = Path(tmp) / "template"
            spool = await build_spool(template, args.rows, args.batch)
            await spool.open()
            print(f"spool built: {args.rows:,} rows in batches of {args.batch} "
                  f"({time.perf_counter() - started:.1f} s), {spool.stats.bytes / 1e6:.1f} MB "
                  f"payload, {spool.stats.batches:,} batches")
            await spool.close()
            drains: list[float] = []
            raws: list[float] = []
            data: list[tuple[object, ...]] = []
            columns: list[str] = []
            for round_ in range(1, args.repeat + 1):
                drains.append(args.rows / await drain_once(template, Path(tmp) / "work",
                                                           dsn, args))
                if not data:  # the sink's table exists now: the raw side copies its layout
                    conn = await asyncpg.connect(dsn)
                    columns = [r["column_name"] for r in await conn.fetch(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE table_name = 'samples' ORDER BY ordinal_position")]
                    await conn.close()
                    order = [ROW_COLUMNS.index(c) for c in columns]
                    t0 = datetime(2025, 1, 1, tzinfo=UTC)
                    data = [tuple(r[i] for i in order) for r in make_batch(0, args.rows, t0)]
                raws.append(args.rows / await raw_once(dsn, data, columns, args.chunk))
                print(f"round {round_}: drain {drains[-1]:,.0f} rows/s, raw COPY "
                      f"{raws[-1]:,.0f} rows/s ({drains[-1] / raws[-1]:.0%})", flush=True)
            rate, raw_rate = max(drains), max(raws)
            print(f"drained {args.rows:,} rows into Postgres: best {rate:,.0f} rows/s "
                  f"(target >= 100,000) [{'PASS' if rate >= 100_000 else 'BELOW TARGET'}]")
            print(f"raw asyncpg copy_records_to_table, the same {args.rows:,} rows, same server, "
                  f"an identical table and indexes, chunks of {args.chunk:,}, interleaved, best "
                  f"of {args.repeat}: {raw_rate:,.0f} rows/s -> drain at {rate / raw_rate:.0%} "
                  f"of raw COPY (target >= 90 %) [{'PASS' if rate >= 0.9 * raw_rate else 'FAIL'}]")
    finally:
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=20_000, help="max_write_rows")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; best of")
    asyncio.run(main(parser.parse_args()))
