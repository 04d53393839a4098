"""One daemon, 32 analysers over raw TCP at 10 frames/s plus 8 Modbus TCP devices at 1 Hz.

The network counterpart of bench_daemon.py: the same CPU (% of one core, from
/proc/<pid>/stat over the measured window), RSS and frame-to-commit latency (the
simulator's ``sent_at`` to the moment a reader process first sees the row; an upper
bound, pessimistic by up to one poll), plus frames lost (continuous frames written to
a connected client inside the window and never committed) and Modbus polls stored.

Every analyser is its own device server on 127.0.0.1 (a TcpWire per continuous
simulator; a pymodbus Modbus TCP server per gateway), all in one simulator process
whose CPU is not counted. Targets: as the local 32-analyser benchmark, CPU < 25 % of
one core, 0 frames lost.

    .venv/bin/python bench/bench_network.py [--devices 32] [--modbus 8] [--duration 60]
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from measure import (
    cpu_seconds,
    percentile,
    rss_mb,
    sqlite_tables,
    start_daemon,
    start_simulators,
    wait_simulators,
)

POLL = 0.01

SIMULATORS = textwrap.dedent(
    """
    import asyncio, signal, sys
    from servomexd.model import ProtocolKind
    from servomexd.simulator.continuous import ContinuousSimulator
    from servomexd.simulator.modbus import ModbusSimulator
    from servomexd.simulator.tcp import TcpWire

    async def main(directory, count, period, modbus):
        sims = [
            ContinuousSimulator("unused", period=period, seed=i, wire=TcpWire("127.0.0.1", 0),
                                emit_log=f"{directory}/emit-{i}.jsonl")
            for i in range(count)
        ]
        gateways = [
            ModbusSimulator(protocol=ProtocolKind.MODBUS_TCP, addresses=[1], seed=i,
                            listen=("127.0.0.1", 0), record_wire=False)
            for i in range(modbus)
        ]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = [asyncio.create_task(s.run()) for s in sims]
        for gateway in gateways:
            await gateway.start()
        await asyncio.gather(*(s.ready.wait() for s in sims))
        with open(f"{directory}/endpoints.txt.tmp", "w") as out:
            for s in sims:
                out.write(f"continuous {s.link}\\n")
            for g in gateways:
                out.write(f"modbus_tcp {g.link_path}\\n")
        import os
        os.replace(f"{directory}/endpoints.txt.tmp", f"{directory}/endpoints.txt")
        await stop.wait()
        for s in sims:
            s.stop()
        await asyncio.gather(*tasks)
        for gateway in gateways:
            await gateway.stop()

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])))
    """
)


def write_config(tmp: Path, endpoints: list[tuple[str, str]], flush_interval: float) -> Path:
    lines = []
    for i, (protocol, url) in enumerate(endpoints):
        lines += ["[[devices]]", f'name = "an-{i:02d}"', f'port = "{url}"']
        if protocol == "modbus_tcp":
            lines += ['protocol = "modbus_tcp"', "address = 1", "poll_interval = 1.0",
                      "silence_timeout = 10.0"]  # fmt: skip
    lines += sqlite_tables(tmp, flush_interval)
    path = tmp / "servomexd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="servomexd-bench-net-") as name:
        tmp = Path(name)
        sims = start_simulators(SIMULATORS, tmp, args.devices, args.period, args.modbus)
        daemon: subprocess.Popen[bytes] | None = None
        try:
            wait_simulators(sims, (tmp / "endpoints.txt").exists, 60)
            endpoints = [
                (kind, url)
                for kind, _, url in (
                    line.partition(" ") for line in (tmp / "endpoints.txt").read_text().splitlines()
                )
            ]
            config = write_config(tmp, endpoints, args.flush_interval)
            daemon = start_daemon(config, tmp / "daemon.log")
            db = tmp / "samples.sqlite"
            while not db.exists():
                time.sleep(0.1)
            print(f"warming up {args.warmup:g} s ...", flush=True)
            time.sleep(args.warmup)
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            last_rowid = conn.execute("SELECT coalesce(max(rowid), 0) FROM samples").fetchone()[0]
            seen: dict[tuple[str, int], float] = {}
            polls: set[tuple[str, int]] = set()
            rss: list[float] = []
            cpu0, wall0 = cpu_seconds(daemon.pid), time.monotonic()
            window_start = time.time()
            next_rss = 0.0
            while time.monotonic() - wall0 < args.duration:
                now = time.time()
                for rowid, device, value, protocol, mono in conn.execute(
                    "SELECT rowid, device, value, protocol, monotonic_ns FROM samples "
                    "WHERE rowid > ? AND channel = 'E1' AND error IS NULL ORDER BY rowid",
                    (last_rowid,),
                ):
                    last_rowid = rowid
                    if protocol == "modbus_tcp":
                        polls.add((device, mono))
                    else:
                        seen.setdefault((device, round(value * 1000)), now)
                if time.monotonic() >= next_rss:
                    rss.append(rss_mb(daemon.pid))
                    next_rss = time.monotonic() + 1.0
                time.sleep(POLL)
            cpu1, wall1 = cpu_seconds(daemon.pid), time.monotonic()
            window_end = time.time()
            errors = conn.execute("SELECT count(*) FROM samples WHERE error IS NOT NULL")
            error_rows = errors.fetchone()[0]
            conn.close()
        finally:
            if daemon is not None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(15)
            sims.send_signal(signal.SIGTERM)
            sims.wait(15)
        latencies: list[float] = []
        sent_in_window = 0
        for i in range(args.devices):
            for line in (tmp / f"emit-{i}.jsonl").read_text().splitlines():
                entry = json.loads(line)
                if "index" not in entry or entry.get("dropped"):
                    continue
                if not window_start <= entry["sent_at"] <= window_end - args.flush_interval - 0.5:
                    continue
                sent_in_window += 1
                key = (f"an-{i:02d}", round(entry["values"]["E1"] * 1000))
                if key in seen:
                    latencies.append(seen[key] - entry["sent_at"])
        cpu = 100 * (cpu1 - cpu0) / (wall1 - wall0)
        lost = sent_in_window - len(latencies)
        print(
            f"{args.devices} analysers over raw TCP every {args.period:g} s + {args.modbus} "
            f"Modbus TCP devices at 1 Hz into SQLite, flush_interval {args.flush_interval:g} s, "
            f"measured {args.duration:g} s"
        )
        print(
            f"daemon CPU: {cpu:.1f} % of one core (target < 25 %) "
            f"[{'PASS' if cpu < 25 else 'FAIL'}]"
        )
        peak = max(rss) if rss else 0.0
        print(f"daemon RSS: {rss[-1] if rss else 0:.1f} MB at the end, peak {peak:.1f} MB")
        if latencies:
            p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
            print(
                f"frame -> commit (poll every {POLL * 1000:.0f} ms, upper bound): "
                f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
                f"max {max(latencies) * 1000:.0f} ms"
            )
        print(
            f"continuous frames sent in the window: {sent_in_window:,}, committed: "
            f"{len(latencies):,}, lost: {lost} [{'PASS' if lost == 0 else 'FAIL'}]"
        )
        print(
            f"Modbus TCP polls stored in the window: {len(polls):,} "
            f"(expected about {args.modbus * args.duration:.0f}); error rows: {error_rows}"
        )
        return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=32)
    parser.add_argument("--modbus", type=int, default=8)
    parser.add_argument("--period", type=float, default=0.1)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--flush-interval", type=float, default=1.0)
    sys.exit(main(parser.parse_args()))
