"""Which index should SqliteSink create: insert cost against the queries users run.

Builds the sink's own table (``SqliteSink`` with ``create_table``) once per candidate
index, fills each with the same rows (N analysers x 5 channels at 10 Hz, devices
interleaved as the daemon writes them), then, interleaved and best of ``--repeat``:

* insert: raw ``executemany`` of the sink's INSERT, one transaction per batch
  (synchronous=FULL, WAL, as the sink), at batch 64 and 1,600 (one group commit of
  32 analysers);
* the queries from the docs and dashboards, on the filled table:
  latest-I1 (README), latest-ok (docs/operations.md), errors-by-device-1d
  (docs/operations.md), grafana-window-all (deploy/grafana/postgres.json "Readings",
  every device, 5 min), grafana-window-one (the same for one device and channel),
  one-channel-1h (one device and channel over an hour, averaged per minute).

    .venv/bin/python bench/bench_sqlite_index.py [--rows 600000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from servomexd.sinks.sqlite import SqliteSink

CANDIDATES: dict[str, str | None] = {
    "device,channel,received_at": '("device", "channel", "received_at")',
    "received_at": '("received_at")',
    "received_at,device,channel": '("received_at", "device", "channel")',
    "none": None,
}
START = datetime(2026, 11, 1, tzinfo=UTC)


def rows(first_frame: int, frames: int, devices: int) -> list[tuple[object, ...]]:
    """``frames`` broadcast slots of every device from ``first_frame``, in time order."""
    out: list[tuple[object, ...]] = []
    for slot in range(first_frame, first_frame + frames):
        at = (START + timedelta(seconds=slot / 10)).isoformat()
        for d in range(devices):
            device = f"an-{d:03d}"
            error = "checksum mismatch" if (slot + d) % 997 == 0 else None
            for c, (channel, name) in enumerate(
                (("I1", "O2"), ("I2", "CO"), ("I3", "CO2"), ("E1", None), ("E2", None))
            ):
                out.append((
                    device, channel, "transducer", name, 20.9 + c + slot % 100 / 1000, "%",
                    "true", "false", "false", "false", "false", "continuous", slot * 10**8,
                    at, None, None, error,
                ))  # fmt: skip
    return out


def build(path: Path, index: str | None) -> str:
    """The sink's table, with ``index`` instead of the sink's own; returns its INSERT."""
    sink = SqliteSink(path, create_table=True)
    asyncio.run(_open_close(sink))
    conn = sqlite3.connect(path, isolation_level=None)
    for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'samples' "
        "AND sql IS NOT NULL"
    ).fetchall():
        conn.execute(f'DROP INDEX "{name}"')
    if index is not None:
        conn.execute(f'CREATE INDEX "bench_idx" ON "samples" {index}')
    columns = [row[1] for row in conn.execute('PRAGMA table_info("samples")')]
    conn.close()
    names = ", ".join(f'"{c}"' for c in columns)
    return f'INSERT INTO "samples" ({names}) VALUES ({", ".join("?" for _ in columns)})'


async def _open_close(sink: SqliteSink) -> None:
    await sink.open()
    await sink.close()


def insert(conn: sqlite3.Connection, sql: str, data: list[tuple[object, ...]], batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(data), batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, data[i : i + batch])
        conn.execute("COMMIT")
    return time.perf_counter() - started


def queries(end: datetime) -> dict[str, str]:
    def iso(t: datetime) -> str:
        return t.isoformat()

    return {
        "latest-I1": "SELECT received_at, device, value, unit, ok FROM samples "
        "WHERE channel = 'I1' ORDER BY received_at DESC LIMIT 10",
        "latest-ok": "SELECT device, channel, name, value, unit, received_at FROM samples "
        "WHERE error IS NULL ORDER BY received_at DESC LIMIT 10",
        "errors-by-device-1d": "SELECT device, count(*) FROM samples WHERE error IS NOT NULL "
        f"AND received_at > '{iso(end - timedelta(days=1))}' GROUP BY device",
        "grafana-window-all": "SELECT substr(received_at, 1, 16) AS t, device, channel, "
        f"avg(value) FROM samples WHERE received_at >= '{iso(end - timedelta(minutes=5))}' "
        f"AND received_at <= '{iso(end)}' AND value IS NOT NULL GROUP BY 1, 2, 3",
        "grafana-window-one": "SELECT substr(received_at, 1, 16) AS t, avg(value) FROM samples "
        f"WHERE received_at >= '{iso(end - timedelta(minutes=5))}' AND received_at <= "
        f"'{iso(end)}' AND device = 'an-003' AND channel = 'I1' GROUP BY 1",
        "one-channel-1h": "SELECT substr(received_at, 1, 16) AS t, avg(value) FROM samples "
        f"WHERE received_at >= '{iso(end - timedelta(hours=1))}' AND device = 'an-003' "
        "AND channel = 'I1' GROUP BY 1",
    }


def best(fn: Callable[[], float], repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def main(args: argparse.Namespace) -> int:
    slots = args.rows // (args.devices * 5)
    fill = rows(0, slots, args.devices)
    extra_slots = 64_000 // (args.devices * 5)
    with tempfile.TemporaryDirectory(prefix="servomexd-idx-") as name:
        tmp = Path(name)
        conns: dict[str, tuple[sqlite3.Connection, str]] = {}
        for label, index in CANDIDATES.items():
            path = tmp / f"{label.replace(',', '_')}.sqlite"
            sql = build(path, index)
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            started = time.perf_counter()
            insert(conn, sql, fill, 5000)
            took = time.perf_counter() - started
            print(f"filled {label:<28} {len(fill):,} rows in {took:5.1f} s", flush=True)
            conns[label] = (conn, sql)
        results: dict[tuple[str, str], float] = {}
        next_slot = slots
        for _ in range(args.repeat):
            for batch in (64, 1600):
                data = rows(next_slot, extra_slots, args.devices)
                next_slot += extra_slots
                for label, (conn, sql) in conns.items():
                    rate = len(data) / insert(conn, sql, data, batch)
                    key = (label, f"insert batch {batch}")
                    results[key] = max(results.get(key, 0.0), rate)
            end = START + timedelta(seconds=next_slot / 10)
            for qname, query in queries(end).items():
                for label, (conn, _) in conns.items():
                    started = time.perf_counter()
                    conn.execute(query).fetchall()
                    elapsed = time.perf_counter() - started
                    key = (label, qname)
                    results[key] = min(results.get(key, float("inf")), elapsed)
        print(f"\n{args.devices} analysers, {len(fill):,} rows before the measured inserts, "
              f"best of {args.repeat}, interleaved")
        labels = list(CANDIDATES)
        print(f"{'':<22}" + "".join(f"{label:>28}" for label in labels))
        for what in ("insert batch 64", "insert batch 1600"):
            print(f"{what + ' rows/s':<22}"
                  + "".join(f"{results[(label, what)]:>28,.0f}" for label in labels))
        for qname in queries(START):
            print(f"{qname + ' ms':<22}"
                  + "".join(f"{results[(label, qname)] * 1000:>28.1f}" for label in labels))
        for conn, _ in conns.values():
            conn.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600_000)
    parser.add_argument("--devices", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    sys.exit(main(parser.parse_args()))
