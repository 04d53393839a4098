"""Fleet scale on one PostgreSQL: daemons writing together, feature cost, query cost.

    .venv/bin/python bench/bench_fleet.py write    [--daemons 4] [--devices 32] [--duration 60]
    .venv/bin/python bench/bench_fleet.py features [--rows 100000] [--repeat 3]
    .venv/bin/python bench/bench_fleet.py query    [--rows 20000000] [--days 31]

write     ``--daemons`` servomexd processes share ``--devices`` simulated analysers (10
          frames/s each by default) and write one partitioned table with 1m/1h rollups
          on a throwaway cluster (tests/pg.py PgCluster, fsync off, track_commit_timestamp
          on). Prints aggregate rows/s, PostgreSQL CPU (postmaster and its backends, from
          /proc), each daemon's CPU, frames lost (sent in the window, not stored) and the
          frame-to-commit latency: the simulator's ``sent_at`` against the commit time of
          the row's transaction (``pg_xact_commit_timestamp(xmin)``), so no polling skews it.
features  ``PostgresSink.write_records`` with a checkpoint (the daemon's path) at batch 64 and
          1000: plain table vs day-partitioned table with a site column and 1m + 1h rollups,
          runs interleaved, best of ``--repeat`` (target: features >= 70 % of plain).
query     backfills ``--rows`` rows over ``--days`` days with one SQL statement (32 devices x
          5 channels, evenly spaced), the rollups with one GROUP BY each (same keys, buckets
          and columns as the sink's), then times the Postgres dashboard's "Readings" panel
          for 1 h, 1 day and the whole range: raw rows against the rollup the dashboard
          picks, same grouping interval (target: whole range < 300 ms from rollups and >= 50x
          faster than raw). Also: EXPLAIN of a last-hour query (partitions touched) and the
          time to drop one day partition (target < 1 s).

Postgres for features/query: $SERVOMEXD_TEST_PG_DSN, else 127.0.0.1:5432, else a throwaway
cluster; a fresh database is created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "sinks"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_daemon import SIMULATORS  # noqa: E402
from fleetdata import records_at  # noqa: E402
from measure import (  # noqa: E402
    cpu_seconds,
    percentile,
    start_daemon,
    start_simulators,
    wait_simulators,
)

from servomexd.sinks import PostgresConfig, PostgresSink  # noqa: E402
from servomexd.sinks import pg_partitions as parts  # noqa: E402
from servomexd.sinks.pg_ddl import locked_ddl  # noqa: E402

DASHBOARD = ROOT / "deploy" / "grafana" / "postgres.json"


# --- 1. fleet write ------------------------------------------------------------------------


def pg_cpu(data_dir: Path) -> float:
    """CPU seconds of the postmaster and every process it forked (backends, workers)."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    total = cpu_seconds(postmaster)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == postmaster:
                total += cpu_seconds(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return total


def daemon_config(home: Path, index: int, devices: range, dsn: str) -> Path:
    lines = ["[daemon]", f'site = "site-{index}"']
    for i in devices:
        lines += ["[[devices]]", f'name = "an-{i:02d}"', f'port = "{home.parent}/tty-{i}"']
    lines += [
        "[sink]", 'type = "postgres"', "flush_interval = 1.0",
        "[sink.postgres]", f'dsn = "{dsn}"', 'partition = "day"', 'rollups = ["1m", "1h"]',
        "[spool]", f'path = "{home}/spool"',
        "[metrics]", 'listen = "127.0.0.1:0"',
        "[log]", 'level = "info"', 'format = "journald"',
    ]  # fmt: skip
    home.mkdir(parents=True, exist_ok=True)
    path = home / "servomexd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def stored_e1(dsn: str) -> tuple[int, dict[tuple[str, int], float]]:
    """(row count, {(device, E1 key): commit time}) of everything stored."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        total = await conn.fetchval("SELECT count(*) FROM samples")
        rows = await conn.fetch(
            "SELECT device, value, extract(epoch FROM pg_xact_commit_timestamp(xmin)) AS at "
            "FROM samples WHERE channel = 'E1'"
        )
    finally:
        await conn.close()
    return int(total), {(r["device"], round(r["value"] * 1000)): float(r["at"]) for r in rows}


async def row_count(dsn: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM samples"))
    finally:
        await conn.close()


def bench_write(args: argparse.Namespace) -> None:
    from pg import PgCluster

    cluster = PgCluster()
    with tempfile.TemporaryDirectory(prefix="servomexd-fleet-") as name:
        tmp = Path(name)
        cluster.init()
        with (cluster.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\ntrack_commit_timestamp = on\n")
        cluster.start()
        sims = start_simulators(SIMULATORS, tmp, 0, args.devices, args.period)
        daemons: list[subprocess.Popen[bytes]] = []
        try:
            wait_simulators(
                sims, lambda: all((tmp / f"tty-{i}").exists() for i in range(args.devices)), 30
            )
            per = -(-args.devices // args.daemons)
            for d in range(args.daemons):
                devices = range(d * per, min(args.devices, (d + 1) * per))
                config = daemon_config(tmp / f"host-{d}", d, devices, cluster.dsn)
                daemons.append(start_daemon(config, tmp / f"daemon-{d}.log"))
            print(f"warming up {args.warmup:g} s ...", flush=True)
            time.sleep(args.warmup)
            rows0 = asyncio.run(row_count(cluster.dsn))
            cpu0 = [cpu_seconds(p.pid) for p in daemons]
            pg0, wall0, start = pg_cpu(cluster.data_dir), time.monotonic(), time.time()
            time.sleep(args.duration)
            cpu1 = [cpu_seconds(p.pid) for p in daemons]
            pg1, wall1, end = pg_cpu(cluster.data_dir), time.monotonic(), time.time()
            rows1 = asyncio.run(row_count(cluster.dsn))
            time.sleep(3.0)  # let the window's last frames commit
        finally:
            for p in daemons:
                p.send_signal(signal.SIGTERM)
            for p in daemons:
                p.wait(20)
            sims.send_signal(signal.SIGTERM)
            sims.wait(15)
        try:
            _, committed = asyncio.run(stored_e1(cluster.dsn))
        finally:
            cluster.cleanup()
        latencies, sent, lost = [], 0, 0
        for i in range(args.devices):
            for line in (tmp / f"emit-{i}.jsonl").read_text().splitlines():
                entry = json.loads(line)
                if "index" not in entry or not start <= entry["sent_at"] <= end:
                    continue
                sent += 1
                at = committed.get((f"an-{i:02d}", round(entry["values"]["E1"] * 1000)))
                if at is None:
                    lost += 1
                else:
                    latencies.append(at - entry["sent_at"])
        span = wall1 - wall0
        print(f"{args.daemons} daemons, {args.devices} analysers x 5 channels every "
              f"{args.period:g} s into one partitioned table with 1m/1h rollups, {span:.0f} s")
        print(f"aggregate: {(rows1 - rows0) / span:,.0f} rows/s")
        print(f"PostgreSQL CPU: {100 * (pg1 - pg0) / span:.1f} % of one core")
        for d, (a, b) in enumerate(zip(cpu0, cpu1, strict=True)):
            print(f"daemon {d} CPU: {100 * (b - a) / span:.1f} % of one core")
        print(f"frames sent in the window: {sent:,}, lost: {lost} (target 0)")
        if latencies:
            print(f"frame -> commit: p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
                  f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, "
                  f"max {max(latencies) * 1000:.0f} ms")


# --- 2. feature cost -----------------------------------------------------------------------


async def bench_features(args: argparse.Namespace, dsn: str) -> None:
    import asyncpg

    start = datetime.now(UTC) - timedelta(minutes=30)
    rows: list[Any] = []
    while len(rows) < args.rows:
        rows += records_at(start + timedelta(seconds=len(rows) // 5 * 0.1), 200,
                           f"an-{len(rows) % 32:02d}")  # fmt: skip
    rows = rows[: args.rows]
    layouts = {
        "plain": {"table": "plain"},
        "partitioned + site + 1m/1h rollups": {
            "table": "fleet", "partition": "day", "rollups": ("1m", "1h"), "site": "bench"
        },
    }
    conn = await asyncpg.connect(dsn)
    seq = iter(range(1, 10**9))

    def run_for(batch: int, layout: dict[str, Any]) -> Callable[[], Awaitable[float]]:
        async def run() -> float:
            table = layout["table"]
            await conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_1m, {table}_1h CASCADE")
            config = PostgresConfig(dsn=dsn, create_table=True, **layout)
            async with PostgresSink(config) as sink:
                began = time.perf_counter()
                for offset in range(0, len(rows), batch):
                    await sink.write_records(
                        rows[offset : offset + batch], checkpoint=("bench", next(seq))
                    )
                return time.perf_counter() - began

        return run

    try:
        for batch in (int(b) for b in args.batches.split(",")):
            rates = dict.fromkeys(layouts, 0.0)
            for _ in range(args.repeat):
                for name, layout in layouts.items():
                    rates[name] = max(rates[name], len(rows) / await run_for(batch, layout)())
            plain = rates["plain"]
            for name, rate in rates.items():
                print(f"batch {batch:>4}  {name:<36} {rate:>10,.0f} rows/s  "
                      f"{100 * rate / plain:5.1f} % of plain")
    finally:
        await conn.close()


# --- 3. query cost -------------------------------------------------------------------------


def readings_sql() -> str:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return next(p for p in panels if p["title"] == "Readings: $gas")["targets"][0]["rawSql"]


def expand(sql: str, start: datetime, end: datetime, group_s: int, guard_ms: int) -> str:
    """Grafana's expansion; ``guard_ms`` picks the branch, ``group_s`` the grouping."""
    sql = sql.replace("$__interval_ms", str(guard_ms))
    sql = re.sub(r"\$__timeGroupAlias\((\w+),\s*[^)]*\)",
                 rf'floor(extract(epoch from \1) / {group_s}) * {group_s} AS "time"', sql)
    sql = re.sub(r"\$__timeFilter\((\w+)\)",
                 rf"\1 BETWEEN '{start.isoformat()}' AND '{end.isoformat()}'", sql)
    sql = sql.replace("${table:raw}", "public.samples")
    sql = sql.replace("$site", "'bench'").replace("$device", "'an-00'")
    # the panel repeats per gas: each copy's $gas is one quoted value
    sql = sql.replace("$gas", "'I1'")
    return sql.replace("$channel", "'I1','I2','I3','E1','E2'")


def grafana_interval(span: timedelta, points: int = 1000) -> int:
    """Grafana's rounded $__interval for ``points`` points over ``span`` (seconds)."""
    raw = span.total_seconds() / points
    for step in (1, 5, 10, 15, 30, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200):
        if raw <= step:
            return step
    return 86400


async def timed(conn: Any, sql: str, repeat: int = 3) -> tuple[float, int]:
    """Best time of ``repeat`` runs, and the rows the query returned (points drawn)."""
    best, rows = float("inf"), 0
    for _ in range(repeat):
        began = time.perf_counter()
        rows = len(await conn.fetch(sql))
        best = min(best, time.perf_counter() - began)
    return best, rows


async def bench_query(args: argparse.Namespace, dsn: str) -> None:
    import asyncpg

    end = datetime.now(UTC).replace(microsecond=0)
    first = end - timedelta(days=args.days)
    config = PostgresConfig(dsn=dsn, create_table=True, partition="day",
                            rollups=("1m", "1h"), site="bench")  # fmt: skip
    async with PostgresSink(config):
        pass
    conn = await asyncpg.connect(dsn)
    try:
        async def make(c: Any) -> None:
            await parts.ensure_ahead(c, "public", "samples", "received_at", "day", first,
                                     ahead=args.days + 1)
            for table in ("samples_1m", "samples_1h"):
                await parts.ensure_ahead(c, "public", table, "bucket", "month", first,
                                         ahead=args.days // 28 + 2)

        await locked_ddl(conn, make)
        per_series = args.rows // (32 * 5)
        step = args.days * 86400 / per_series
        began = time.perf_counter()
        await conn.execute(
            "INSERT INTO samples (site, device, channel, kind, name, value, unit, ok, fault, "
            "maintenance, calibrating, warming_up, protocol, monotonic_ns, received_at) "
            "SELECT 'bench', 'an-' || lpad(d::text, 2, '0'), ch, 'input', ch, "
            "20 + sin(i / 500.0) + d * 0.01, '%', i % 97 <> 0, false, false, false, false, "
            "'continuous', i::bigint * 1000000000, "
            # float8: left untyped, $2 is taken as integer and the step silently truncated
            "$1::timestamptz + make_interval(secs => i * $2::float8) "
            "FROM generate_series(0, $3 - 1) AS i, generate_series(0, 31) AS d, "
            "unnest(ARRAY['I1', 'I2', 'I3', 'E1', 'E2']) AS ch",
            first, step, per_series,
        )  # fmt: skip
        loaded = time.perf_counter() - began
        for table, seconds in (("samples_1m", 60), ("samples_1h", 3600)):
            await conn.execute(
                f"INSERT INTO {table} SELECT site, device, coalesce(channel, ''), "
                "coalesce(name, ''), coalesce(unit, ''), "
                f"to_timestamp(floor(extract(epoch FROM received_at) / {seconds}) * {seconds}), "
                "count(*), count(value), count(*) FILTER (WHERE ok), "
                "count(*) FILTER (WHERE error IS NOT NULL), min(value), max(value), "
                "coalesce(sum(value), 0) FROM samples GROUP BY 1, 2, 3, 4, 5, 6"
            )
        await conn.execute("VACUUM ANALYZE samples, samples_1m, samples_1h")
        total = await conn.fetchval("SELECT count(*) FROM samples")
        print(f"backfilled {total:,} rows over {args.days} days in {loaded:.0f} s "
              f"(+ rollups, {time.perf_counter() - began:.0f} s in all)")
        sql = readings_sql()
        for label, span in (("1 h", timedelta(hours=1)), ("1 day", timedelta(days=1)),
                            ("whole range", end - first)):  # fmt: skip
            group = grafana_interval(span)
            raw, points = await timed(conn, expand(sql, end - span, end, group, 1000))
            if group < 60:
                print(f"{label:<12} interval {group:>5} s  {points:>5} points  raw "
                      f"{raw * 1000:8.1f} ms (the dashboard reads raw rows here)")
                continue
            rolled, rolled_points = await timed(
                conn, expand(sql, end - span, end, group, group * 1000)
            )
            # The rollup branch filters whole buckets, so the partial bucket at the start
            # of the range (raw rows after its start, bucket stamped before) is left out.
            if not 0 <= points - rolled_points <= 1:
                raise SystemExit(f"{label}: raw drew {points} points, rollup {rolled_points}")
            print(f"{label:<12} interval {group:>5} s  {points:>5} points  raw "
                  f"{raw * 1000:8.1f} ms  rollup {rolled * 1000:7.1f} ms  ({raw / rolled:,.0f}x)")
        # literal bounds, as Grafana's $__timeFilter sends them: pruned at plan time
        # (the other branches are planned but never run: their one-time filter is false)
        plan = await conn.fetch(
            "EXPLAIN (ANALYZE, COSTS OFF) " + expand(sql, end - timedelta(hours=1), end, 5, 1000)
        )
        touched = sorted({
            match for row in plan if "never executed" not in row[0]
            for match in re.findall(r" on (samples_\w+)", row[0])
            if not match.endswith("_idx")  # "Bitmap Index Scan on <index>"
        })  # fmt: skip
        print(f"last-hour query touches {len(touched)} partition(s): {', '.join(touched)}")

        async def drop_oldest(c: Any) -> list[parts.Dropped]:
            oldest = min(p.upper for p in await parts.list_partitions(c, "public", "samples")
                         if not p.is_default)  # fmt: skip
            return await parts.drop_expired(c, "public", "samples", oldest)

        began = time.perf_counter()
        dropped = await locked_ddl(conn, drop_oldest) or []
        took = time.perf_counter() - began
        for item in dropped:
            print(f"dropped {item.name} (~{item.rows_estimate:,} rows) in {took * 1000:.0f} ms "
                  "(target < 1 s)")
    finally:
        await conn.close()


# --- main ----------------------------------------------------------------------------------


def with_database(run: Callable[[str], Awaitable[None]]) -> None:
    from pg import fresh_database, resolve_server

    server = resolve_server()
    try:
        with fresh_database(server) as dsn:
            asyncio.run(run(dsn))
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["write", "features", "query"])
    parser.add_argument("--daemons", type=int, default=4)
    parser.add_argument("--devices", type=int, default=32)
    parser.add_argument("--period", type=float, default=0.1)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--days", type=int, default=31)
    parser.add_argument("--batches", default="64,1000",
                        help="features: batch sizes (the daemon commits about 400 rows per "
                        "0.25 s at 32 analysers)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    os.environ.setdefault("PYTHONHASHSEED", "0")
    if args.part == "write":
        bench_write(args)
    elif args.part == "features":
        args.rows = args.rows or 100_000
        with_database(lambda dsn: bench_features(args, dsn))
    else:
        args.rows = args.rows or 20_000_000
        with_database(lambda dsn: bench_query(args, dsn))


if __name__ == "__main__":
    main()
