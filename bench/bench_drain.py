"""How fast a spooled backlog drains into PostgreSQL once it returns (target >= 100k rows/s).

Builds a spool holding ROWS rows in batches of BATCH (what an outage leaves behind at
the default batch_size), then runs the daemon's real Writer against a real PostgresSink
and times it from start until the spool is empty, i.e. every row committed with its
checkpoint and acked. Postgres: $SERVOMEXD_TEST_PG_DSN, else 127.0.0.1:5432, else a
throwaway initdb cluster (tests/pg.py).

    .venv/bin/python bench/bench_drain.py [--rows 1000000] [--batch 64] [--chunk 20000]
"""

from __future__ import annotations

import argparse
import asyncio
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
from servomexd.rows import Record  # noqa: E402
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


async def main(args: argparse.Namespace) -> None:
    from pg import fresh_database, resolve_server

    server = resolve_server()
    try:
        with fresh_database(server) as dsn, tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            spool = await build_spool(Path(tmp), args.rows, args.batch)
            print(f"spool built: {args.rows:,} rows in batches of {args.batch} "
                  f"({time.perf_counter() - started:.1f} s)")
            await spool.open()
            print(f"spool file: {spool.stats.bytes / 1e6:.1f} MB payload, "
                  f"{spool.stats.batches:,} batches")
            settings = SinkSettings(
                type="postgres", max_write_rows=args.chunk,
                postgres=PostgresSettings(dsn=dsn, create_table=True),
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
            import asyncpg

            conn = await asyncpg.connect(dsn)
            count = await conn.fetchval("SELECT count(*) FROM samples")
            assert count == args.rows, f"{count} rows in Postgres, expected {args.rows}"
            rate = args.rows / elapsed
            # The same rows through raw asyncpg COPY, same server, same run: the ceiling
            # this machine allows right now (2 cores shared with the Postgres backend).
            # same columns AND indexes as the sink's table (it indexes device, channel, time)
            await conn.execute("CREATE TABLE raw_copy (LIKE samples INCLUDING ALL)")
            columns = [r["column_name"] for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'samples' ORDER BY ordinal_position")]
            raw_rows = args.rows if args.rows <= 200_000 else 200_000
            data = make_batch(0, raw_rows, datetime(2025, 1, 1, tzinfo=UTC))
            from servomexd.rows import ROW_COLUMNS

            order = [ROW_COLUMNS.index(c) for c in columns]
            data = [tuple(r[i] for i in order) for r in data]
            t = time.perf_counter()
            for start in range(0, raw_rows, args.chunk):
                await conn.copy_records_to_table(
                    "raw_copy", records=data[start:start + args.chunk], columns=columns
                )
            raw_rate = raw_rows / (time.perf_counter() - t)
            await conn.close()
            print(f"drained {args.rows:,} rows into Postgres in {elapsed:.2f} s: "
                  f"{rate:,.0f} rows/s (target >= 100,000) "
                  f"[{'PASS' if rate >= 100_000 else 'BELOW TARGET'}]")
            print(f"raw asyncpg copy_records_to_table, same rows, same server, same indexes, "
                  f"chunks of "
                  f"{args.chunk:,}: {raw_rate:,.0f} rows/s -> drain at "
                  f"{rate / raw_rate:.0%} of the raw driver")
    finally:
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=20_000, help="max_write_rows")
    asyncio.run(main(parser.parse_args()))
