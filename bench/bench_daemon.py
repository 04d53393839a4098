"""One daemon, N simulated analysers each broadcasting every 0.1 s, into SQLite.

Per run it prints the daemon's CPU (% of one core, /proc/<pid>/stat utime+stime over
the measured window), its main thread's CPU per frame decoded (the event loop's cost:
/proc/<pid>/task/<pid>/stat over the frames counted by ``servomexd_frames_total``), its
peak RSS, the reconnects (``servomexd_reconnects_total``), the event-loop lag, the
frames lost and stored twice, and the end-to-end latency "frame sent" -> "row committed":

* sent: the simulator's emit log ``sent_at`` (wall clock right after the write to the pty);
* committed: this script polls the SQLite file every POLL seconds from another process
  and stamps each new row when it first becomes visible to a reader, which is after the
  commit. So the figure is an upper bound, pessimistic by up to one poll interval.

Targets (issue 17): at 32 analysers at most 8 % of a core and RSS under 60 MB; for
every N: 0 frames lost, 0 reconnects, p99 under 2 s; main-thread CPU per frame at most
100 us. The simulators run in separate processes beside the daemon (their CPU is not
counted, but they share the machine, as in the issue).

    .venv/bin/python bench/bench_daemon.py [--devices 32] [--duration 60]
    .venv/bin/python bench/bench_daemon.py --curve 8,32,64,128,192,256 --duration 30
    .venv/bin/python bench/bench_daemon.py --devices 32 --compare /path/to/other/checkout

``--compare TREE`` runs TREE's daemon (``PYTHONPATH=TREE``, this interpreter) and this
checkout's alternately, ``--rounds`` times per N, so that both see the same machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POLL = 0.01
DEVICES_PER_SIMULATOR = 64
SCRAPE_EVERY = 10.0

SIMULATORS = textwrap.dedent(
    """
    import asyncio, signal, sys
    from servomexd.simulator.continuous import ContinuousSimulator

    async def main(directory, first, count, period):
        sims = [
            ContinuousSimulator(f"{directory}/tty-{i}", period=period, seed=i,
                                emit_log=f"{directory}/emit-{i}.jsonl")
            for i in range(first, first + count)
        ]
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: [s.stop() for s in sims])
        await asyncio.gather(*(s.run() for s in sims))

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
    """
)


@dataclass
class Result:
    label: str
    devices: int
    cpu: float
    main_us_per_frame: float
    main_system_share: float
    """Of the main thread's CPU, the part spent in the kernel (system calls)."""
    rss_peak: float
    reconnects: float
    lag_max: float
    frames: float
    sent: int
    dropped: int
    """Frames the simulator could not write: the port's kernel buffer was full (the
    daemon fell behind reading), as a real UART would overrun."""
    lost: int
    duplicates: int
    p50: float
    p99: float

    def failures(self, flush_interval: float) -> list[str]:
        failed = []
        if self.devices == 32 and self.cpu > 8:
            failed.append("CPU > 8 %")
        if self.devices == 32 and self.rss_peak >= 60:
            failed.append("RSS >= 60 MB")
        if self.main_us_per_frame > 100:
            failed.append("main thread > 100 us/frame")
        if self.lost or self.dropped:
            failed.append("frames lost")
        if self.duplicates:
            failed.append("duplicates")
        if self.reconnects:
            failed.append("reconnects")
        if self.p99 >= 2.0:
            failed.append("p99 >= 2 s")
        return failed

    def line(self, flush_interval: float) -> str:
        failed = self.failures(flush_interval)
        return (
            f"{self.label:>8} N={self.devices:<4} cpu {self.cpu:5.1f} %  main "
            f"{self.main_us_per_frame:6.1f} us/frame ({self.main_system_share:4.0%} sys)  "
            f"rss {self.rss_peak:5.1f} MB  "
            f"reconnects {self.reconnects:4.0f}  lag {self.lag_max * 1000:6.0f} ms  "
            f"lost {self.lost:5d}/{self.sent:<6d} overrun {self.dropped:5d} "
            f"dup {self.duplicates:3d}  "
            f"p50 {self.p50 * 1000:5.0f} ms  p99 {self.p99 * 1000:6.0f} ms  "
            f"[{'PASS' if not failed else 'FAIL: ' + ', '.join(failed)}]"
        )


def cpu_seconds(pid: int, tid: int | None = None, *, system_only: bool = False) -> float:
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (stime if system_only else utime + stime) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrape(port: int) -> dict[str, float]:
    """Sums of the servomexd_* families (over their labels), and the lag gauge."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("servomexd_"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        try:
            sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        except ValueError:
            continue
    return sums


def write_config(tmp: Path, devices: int, args: argparse.Namespace, port: int) -> Path:
    lines = []
    for i in range(devices):
        lines += ["[[devices]]", f'name = "an-{i:03d}"', f'port = "{tmp}/tty-{i}"']
    lines += ["[sink]", f'path = "{tmp}/samples.sqlite"']
    if args.flush_interval:
        lines.append(f"flush_interval = {args.flush_interval}")
    if args.batch_size:
        lines.append(f"batch_size = {args.batch_size}")
    lines += [
        "[spool]", f'path = "{tmp}/spool"',
        "[metrics]", f'listen = "127.0.0.1:{port}"',
        "[log]", 'level = "info"', 'format = "journald"',
    ]  # fmt: skip
    path = tmp / "servomexd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run_once(label: str, tree: Path, devices: int, args: argparse.Namespace) -> Result:
    with tempfile.TemporaryDirectory(prefix="servomexd-bench-") as name:
        tmp = Path(name)
        sims = [
            subprocess.Popen(
                [sys.executable, "-c", SIMULATORS, str(tmp), str(first),
                 str(min(DEVICES_PER_SIMULATOR, devices - first)), str(args.period)],
                cwd=ROOT,
            )
            for first in range(0, devices, DEVICES_PER_SIMULATOR)
        ]
        daemon: subprocess.Popen[bytes] | None = None
        try:
            deadline = time.monotonic() + 60
            while not all((tmp / f"tty-{i}").exists() for i in range(devices)):
                if time.monotonic() > deadline or any(s.poll() is not None for s in sims):
                    raise SystemExit("simulators did not start")
                time.sleep(0.1)
            port = free_port()
            config = write_config(tmp, devices, args, port)
            log = (tmp / "daemon.log").open("wb")
            env = {**os.environ, "PYTHONPATH": str(tree)}
            profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
            daemon = subprocess.Popen(
                [sys.executable, *profile, "-m", "servomexd", "run", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, cwd=tree, env=env,
            )
            db = tmp / "samples.sqlite"
            while not db.exists():
                if daemon.poll() is not None:
                    raise SystemExit(f"daemon exited: {(tmp / 'daemon.log').read_text()[-2000:]}")
                time.sleep(0.1)
            time.sleep(args.warmup)
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            last_rowid = conn.execute("SELECT coalesce(max(rowid), 0) FROM samples").fetchone()[0]
            seen: dict[tuple[str, int], float] = {}
            rss: list[float] = []
            lags: list[float] = []
            before = scrape(port)
            cpu0, main0 = cpu_seconds(daemon.pid), cpu_seconds(daemon.pid, daemon.pid)
            sys0 = cpu_seconds(daemon.pid, daemon.pid, system_only=True)
            wall0 = time.monotonic()
            window_start = time.time()
            next_sample = 0.0
            next_scrape = time.monotonic() + SCRAPE_EVERY
            while time.monotonic() - wall0 < args.duration:
                now = time.time()
                for rowid, device, value in conn.execute(
                    "SELECT rowid, device, value FROM samples WHERE rowid > ? "
                    "AND channel = 'E1' ORDER BY rowid", (last_rowid,),
                ):
                    last_rowid = rowid
                    seen.setdefault((device, round(value * 1000)), now)
                if time.monotonic() >= next_sample:
                    rss.append(rss_mb(daemon.pid))
                    next_sample = time.monotonic() + 1.0
                if time.monotonic() >= next_scrape:  # as often as a Prometheus would
                    next_scrape = time.monotonic() + SCRAPE_EVERY
                    lag = scrape(port).get("servomexd_event_loop_lag_seconds")
                    if lag is not None:  # not exported before issue 17
                        lags.append(lag)
                time.sleep(POLL)
            cpu1, main1 = cpu_seconds(daemon.pid), cpu_seconds(daemon.pid, daemon.pid)
            sys1 = cpu_seconds(daemon.pid, daemon.pid, system_only=True)
            wall1 = time.monotonic()
            after = scrape(port)
            if "servomexd_event_loop_lag_seconds" in after:  # not exported before issue 17
                lags.append(after["servomexd_event_loop_lag_seconds"])
            window_end = time.time()
            # let the tail of the window commit, then look for duplicates
            tail_end = time.monotonic() + (args.flush_interval or 1.0) + 3.0
            while time.monotonic() < tail_end:
                for rowid, device, value in conn.execute(
                    "SELECT rowid, device, value FROM samples WHERE rowid > ? "
                    "AND channel = 'E1' ORDER BY rowid", (last_rowid,),
                ):
                    last_rowid = rowid
                    seen.setdefault((device, round(value * 1000)), time.time())
                time.sleep(POLL)
            duplicates = conn.execute(
                "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM samples "
                "WHERE channel = 'E1' GROUP BY device, value HAVING n > 1)"
            ).fetchone()[0]
            conn.close()
        finally:
            if daemon is not None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(30)
            for sim in sims:
                sim.send_signal(signal.SIGTERM)
            for sim in sims:
                sim.wait(15)
        latencies: list[float] = []
        sent = lost = dropped = 0
        for i in range(devices):
            for line in (tmp / f"emit-{i}.jsonl").read_text().splitlines():
                entry = json.loads(line)
                if "index" not in entry:
                    continue
                if not window_start <= entry["sent_at"] <= window_end:
                    continue
                if entry.get("dropped"):  # the pty buffer was full: never reached the port
                    dropped += 1
                    continue
                sent += 1
                key = (f"an-{i:03d}", round(entry["values"]["E1"] * 1000))
                if key in seen:
                    latencies.append(seen[key] - entry["sent_at"])
                else:
                    lost += 1
        frames = after.get("servomexd_frames_total", 0.0) - before.get(
            "servomexd_frames_total", 0.0
        )
        return Result(
            label=label,
            devices=devices,
            cpu=100 * (cpu1 - cpu0) / (wall1 - wall0),
            main_us_per_frame=1e6 * (main1 - main0) / frames if frames else float("inf"),
            main_system_share=(sys1 - sys0) / (main1 - main0) if main1 > main0 else 0.0,
            rss_peak=max(rss) if rss else 0.0,
            reconnects=after.get("servomexd_reconnects_total", 0.0),
            lag_max=max(lags) if lags else float("nan"),
            frames=frames,
            sent=sent,
            dropped=dropped,
            lost=lost,
            duplicates=int(duplicates),
            p50=percentile(latencies, 0.5),
            p99=percentile(latencies, 0.99),
        )


def main(args: argparse.Namespace) -> int:
    counts = [int(n) for n in args.curve.split(",")] if args.curve else [args.devices]
    trees = [("this", ROOT)]
    if args.compare:
        trees = [("other", Path(args.compare).resolve()), *trees]
    print(f"{platform_line()}; period {args.period:g} s, flush_interval "
          f"{args.flush_interval or 'default'}{' s' if args.flush_interval else ''},"
          f" batch_size {args.batch_size or 'default'}, {args.duration:g} s per run")
    results: list[Result] = []
    for n in counts:
        for _ in range(args.rounds):
            for label, tree in trees:
                result = run_once(label, tree, n, args)
                results.append(result)
                print(result.line(args.flush_interval), flush=True)
    for label, _ in trees:
        first_fail = next(
            (r for r in results if r.label == label and r.failures(args.flush_interval)), None
        )
        print(f"{label}: first N where a target fails: "
              f"{first_fail.devices if first_fail else 'none'}")
    return 0


def platform_line() -> str:
    load = os.getloadavg()
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
            f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=32)
    parser.add_argument("--curve", help="comma-separated analyser counts, e.g. "
                        "8,32,64,128,192,256 (overrides --devices)")
    parser.add_argument("--compare", help="another checkout to run interleaved with this one")
    parser.add_argument("--rounds", type=int, default=1, help="runs per N (and per checkout)")
    parser.add_argument("--period", type=float, default=0.1)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--flush-interval", type=float, default=0.0,
                        help="0: the daemon's default (0.25 s); the issue measured 1 s")
    parser.add_argument("--profile", help="write the daemon's cProfile (main thread) here")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the daemon's default")
    sys.exit(main(parser.parse_args()))
