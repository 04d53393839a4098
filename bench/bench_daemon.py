"""One daemon, 32 simulated analysers each broadcasting every 0.1 s (1,600 rows/s) into SQLite.

Prints the daemon's CPU (% of one core, from /proc/<pid>/stat utime+stime over the
measured window), its RSS (from /proc/<pid>/status), and the end-to-end latency from
"frame sent" to "row committed":

* sent: the simulator's emit log ``sent_at`` (wall clock right after the write to the pty);
* committed: this script polls the SQLite file every POLL seconds from another process
  and stamps each new row when it first becomes visible to a reader, which is after the
  commit. So the figure is an upper bound, pessimistic by up to one poll interval.

Targets: CPU < 25 % of one core, RSS < 80 MB, p99 < flush_interval + 100 ms.
The 32 analysers run in one separate simulator process (its CPU is not counted).

    .venv/bin/python bench/bench_daemon.py [--devices 32] [--period 0.1] [--duration 60]
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

from measure import cpu_seconds, percentile, rss_mb, sqlite_tables

ROOT = Path(__file__).resolve().parents[1]
POLL = 0.01

SIMULATORS = textwrap.dedent(
    """
    import asyncio, signal, sys
    from servomexd.simulator.continuous import ContinuousSimulator

    async def main(directory, count, period):
        sims = [
            ContinuousSimulator(f"{directory}/tty-{i}", period=period, seed=i,
                                emit_log=f"{directory}/emit-{i}.jsonl")
            for i in range(count)
        ]
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: [s.stop() for s in sims])
        await asyncio.gather(*(s.run() for s in sims))

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
    """
)


def write_config(tmp: Path, devices: int, flush_interval: float) -> Path:
    lines = []
    for i in range(devices):
        lines += ["[[devices]]", f'name = "an-{i:02d}"', f'port = "{tmp}/tty-{i}"']
    lines += sqlite_tables(tmp, flush_interval)
    path = tmp / "servomexd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="servomexd-bench-") as name:
        tmp = Path(name)
        sims = subprocess.Popen(
            [sys.executable, "-c", SIMULATORS, str(tmp), str(args.devices), str(args.period)],
            cwd=ROOT,
        )
        daemon: subprocess.Popen[bytes] | None = None
        try:
            deadline = time.monotonic() + 30
            while not all((tmp / f"tty-{i}").exists() for i in range(args.devices)):
                if time.monotonic() > deadline or sims.poll() is not None:
                    raise SystemExit("simulators did not start")
                time.sleep(0.1)
            config = write_config(tmp, args.devices, args.flush_interval)
            log = (tmp / "daemon.log").open("wb")
            daemon = subprocess.Popen(
                [sys.executable, "-m", "servomexd", "run", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            )
            db = tmp / "samples.sqlite"
            while not db.exists():
                time.sleep(0.1)
            print(f"warming up {args.warmup:g} s ...", flush=True)
            time.sleep(args.warmup)
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            last_rowid = conn.execute("SELECT coalesce(max(rowid), 0) FROM samples").fetchone()[0]
            seen: dict[tuple[str, int], float] = {}
            rss: list[float] = []
            cpu0, wall0 = cpu_seconds(daemon.pid), time.monotonic()
            window_start = time.time()
            next_rss = 0.0
            rows_seen = 0
            while time.monotonic() - wall0 < args.duration:
                now = time.time()
                for rowid, device, value in conn.execute(
                    "SELECT rowid, device, value FROM samples WHERE rowid > ? "
                    "AND channel = 'E1' ORDER BY rowid", (last_rowid,),
                ):
                    last_rowid = rowid
                    seen.setdefault((device, round(value * 1000)), now)
                rows_seen = last_rowid
                if time.monotonic() >= next_rss:
                    rss.append(rss_mb(daemon.pid))
                    next_rss = time.monotonic() + 1.0
                time.sleep(POLL)
            cpu1, wall1 = cpu_seconds(daemon.pid), time.monotonic()
            window_end = time.time()
            total_rows = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
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
                if "index" not in entry:
                    continue
                # frames sent inside the window, leaving one flush interval for the tail
                if not window_start <= entry["sent_at"] <= window_end - args.flush_interval - 0.5:
                    continue
                sent_in_window += 1
                key = (f"an-{i:02d}", round(entry["values"]["E1"] * 1000))
                if key in seen:
                    latencies.append(seen[key] - entry["sent_at"])
        cpu = 100 * (cpu1 - cpu0) / (wall1 - wall0)
        rate = args.devices * 5 / args.period
        print(f"{args.devices} analysers x 5 channels every {args.period:g} s = "
              f"{rate:,.0f} rows/s into SQLite, flush_interval {args.flush_interval:g} s, "
              f"measured {args.duration:g} s")
        print(f"rows committed: {total_rows:,} (last rowid seen {rows_seen:,})")
        print(f"daemon CPU: {cpu:.1f} % of one core (target < 25 %) "
              f"[{'PASS' if cpu < 25 else 'FAIL'}]")
        peak = max(rss) if rss else 0.0
        print(f"daemon RSS: {rss[-1] if rss else 0:.1f} MB at the end, peak {peak:.1f} MB "
              f"(target < 80 MB) [{'PASS' if peak < 80 else 'FAIL'}]")
        if latencies:
            p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
            target = args.flush_interval + 0.1
            print(f"latency sent -> committed (poll every {POLL * 1000:.0f} ms, upper bound): "
                  f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max "
                  f"{max(latencies) * 1000:.0f} ms (target p99 < {target * 1000:.0f} ms) "
                  f"[{'PASS' if p99 < target else 'FAIL'}]")
        print(f"frames sent in the window: {sent_in_window:,}, seen committed: {len(latencies):,}"
              f" ({sent_in_window - len(latencies)} not seen)")
        return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=32)
    parser.add_argument("--period", type=float, default=0.1)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--flush-interval", type=float, default=1.0)
    sys.exit(main(parser.parse_args()))
