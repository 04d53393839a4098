"""Fault soak: simulated analysers into PostgreSQL while faults are injected, then an
exact account of every frame.

Runs a throwaway PostgreSQL cluster (tests/pg.py), ``--continuous`` Continuous-ASCII and
``--modbus`` Modbus RTU simulated analysers on ptys (a few with garbage bursts, two
unplugged and replugged once), and the real daemon (``python -m servomexd run``). A
trigger on the table refuses about one E1 row in ``--poison-every`` (a poison row the
daemon must quarantine, not block on). Every ``--fault-every`` seconds the next fault of
the schedule runs:

    pg_restart  PostgreSQL stopped (fast) for 5 s, then started
    reload      the configuration rewritten (a device's silence_timeout) + SIGHUP
    sigstop     the daemon frozen 3 s (longer than silence_timeout), then SIGCONT
    pg_crash    PostgreSQL stopped (immediate: a crash) for 3 s, then started
    sigterm     the daemon stopped (SIGTERM) and started again
    sigkill     the daemon killed (SIGKILL) and started again

At the end the simulators stop, a last daemon drains the spool, and the Continuous
devices' emitted frames (emit logs; each frame's E1 value is unique) are compared with
the stored rows and the spool's quarantine:

* duplicated: frames stored more than once (target 0);
* lost: frames sent while a daemon was running (from its READY to its stop; minus one
  flush_interval before a SIGKILL, which the memory buffer may lose by design) that are
  neither stored nor quarantined nor counted as dropped (target 0);
* quarantined: E1 rows in the quarantine, which must equal the rows the trigger refused;
* RSS and open fds of the daemon: first incarnation after warm-up, last before stop.

Modbus devices are polled (nothing is "sent" unasked): they are checked for duplicates.
E1 repeats after 16,000 frames (53 minutes at the default 0.2 s period): for longer
runs raise ``--period`` so each device sends fewer than 16,000 frames.

    .venv/bin/python bench/bench_soak.py --minutes 30
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from pg import PgCluster, free_port, run_async  # noqa: E402

PYTHON = sys.executable
FLUSH_INTERVAL = 0.5
SCHEDULE = ("pg_restart", "reload", "sigstop", "pg_crash", "sigterm", "sigkill")

SIMULATORS = textwrap.dedent(
    """
    import asyncio, signal, sys
    from servomexd.simulator.continuous import ContinuousSimulator

    async def main(directory, count, period):
        sims = []
        for i in range(count):
            extra = {}
            if i % 4 == 1:
                extra["noise_every"] = 40  # garbage bursts
            if i in (2, 3):
                extra.update(unplug_after=30.0 + 20 * i, replug_after=5.0)
            sims.append(ContinuousSimulator(
                f"{directory}/tty-c{i}", period=period, seed=i,
                emit_log=f"{directory}/emit-c{i}.jsonl", **extra))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: [s.stop() for s in sims])
        await asyncio.gather(*(s.run() for s in sims))

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
    """
)

COLUMNS = (
    "device text, channel text, kind text, name text, value double precision, unit text, "
    "ok boolean, fault boolean, maintenance boolean, calibrating boolean, warming_up boolean, "
    "protocol text, monotonic_ns bigint, received_at timestamptz, requested_at timestamptz, "
    "latency_s double precision, error text"
)


@dataclass
class Incarnation:
    proc: subprocess.Popen[bytes]
    log: Path
    started: float
    ready: float | None = None
    ended: float | None = None
    killed: bool = False
    rss_fd: list[tuple[float, int, int]] = field(default_factory=list)


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.pg = PgCluster()
        self.port = free_port()
        self.incarnations: list[Incarnation] = []
        self.faults: Counter[str] = Counter()
        self.silence = 2.0
        self.sims: list[subprocess.Popen[bytes]] = []
        self.timeline: list[tuple[str, float]] = []

    # --- setup -------------------------------------------------------------------------

    def start_pg(self) -> None:
        self.pg.start()
        poison = self.args.poison_every

        async def schema() -> None:
            import asyncpg

            conn = await asyncpg.connect(self.pg.dsn)
            await conn.execute(f"CREATE TABLE IF NOT EXISTS samples ({COLUMNS})")
            await conn.execute(
                "CREATE OR REPLACE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN IF NEW.channel = 'E1' AND NEW.monotonic_ns % {poison} = 0 THEN "
                "RAISE EXCEPTION 'soak poison row'; END IF; RETURN NEW; END $$"
            )
            await conn.execute(
                "CREATE OR REPLACE TRIGGER poison BEFORE INSERT ON samples "
                "FOR EACH ROW EXECUTE FUNCTION poison()"
            )
            await conn.close()

        run_async(schema)

    def start_sims(self) -> None:
        a = self.args
        self.sims.append(subprocess.Popen(
            [PYTHON, "-c", SIMULATORS, str(self.work), str(a.continuous), str(a.period)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        for i in range(a.modbus):
            self.sims.append(subprocess.Popen(
                [PYTHON, "-m", "servomexd", "simulate", "--protocol", "modbus_rtu",
                 "--link", str(self.work / f"tty-m{i}"), "--period", str(a.period),
                 "--seed", str(100 + i)],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
        deadline = time.monotonic() + 20
        links = [self.work / f"tty-c{i}" for i in range(a.continuous)]
        links += [self.work / f"tty-m{i}" for i in range(a.modbus)]
        while not all(link.exists() for link in links):
            if time.monotonic() > deadline:
                raise SystemExit("simulators did not come up")
            time.sleep(0.1)

    def write_config(self) -> Path:
        a = self.args
        lines = []
        for i in range(a.continuous):
            silence = self.silence if i == 0 else 2.0
            lines += ["[[devices]]", f'name = "c{i}"', f'port = "{self.work}/tty-c{i}"',
                      f"silence_timeout = {silence}"]  # fmt: skip
        for i in range(a.modbus):
            lines += ["[[devices]]", f'name = "m{i}"', f'port = "{self.work}/tty-m{i}"',
                      'protocol = "modbus_rtu"', f"poll_interval = {a.period}",
                      "silence_timeout = 5.0"]  # fmt: skip
        lines += [
            "[sink]", 'type = "postgres"', f"flush_interval = {FLUSH_INTERVAL}",
            "retry_max_delay = 2.0", "shutdown_timeout = 5.0",
            "[sink.postgres]", f'dsn = "{self.pg.dsn}"', "create_table = false",
            "[spool]", f'path = "{self.work / "spool"}"',
            "[metrics]", f'listen = "127.0.0.1:{self.port}"',
            "[log]", 'level = "info"', 'format = "journald"',
        ]  # fmt: skip
        path = self.work / "servomexd.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    # --- the daemon ----------------------------------------------------------------------

    def start_daemon(self) -> Incarnation:
        log = self.work / f"daemon-{len(self.incarnations)}.log"
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        proc = subprocess.Popen(
            [PYTHON, "-m", "servomexd", "run", "--config", str(self.work / "servomexd.toml")],
            cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        inc = Incarnation(proc, log, time.time())
        self.incarnations.append(inc)
        deadline = time.monotonic() + 30
        while "event=daemon.ready" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"daemon did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        inc.ready = time.time()
        return inc

    @property
    def daemon(self) -> Incarnation:
        return self.incarnations[-1]

    def sample_resources(self) -> None:
        pid = self.daemon.proc.pid
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            rss = next(int(line.split()[1]) for line in status.splitlines()
                       if line.startswith("VmRSS:"))  # fmt: skip
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            self.daemon.rss_fd.append((time.time(), rss, fds))

    def stop_daemon(self, sig: int = signal.SIGTERM) -> None:
        inc = self.daemon
        inc.killed = sig == signal.SIGKILL
        inc.ended = time.time()
        inc.proc.send_signal(sig)
        inc.proc.wait(30)

    def metric(self, name: str) -> float | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                body = r.read().decode()
        except OSError:
            return None
        for line in body.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    # --- faults --------------------------------------------------------------------------

    def fault(self, name: str) -> None:
        self.faults[name] += 1
        self.timeline.append((name, time.time()))
        if name == "pg_restart":
            self.pg.stop("fast")
            time.sleep(5)
            self.pg.start()
        elif name == "pg_crash":
            self.pg.stop("immediate")
            time.sleep(3)
            self.pg.start()
        elif name == "sigstop":
            os.kill(self.daemon.proc.pid, signal.SIGSTOP)
            time.sleep(3)
            os.kill(self.daemon.proc.pid, signal.SIGCONT)
        elif name == "reload":
            self.silence = 2.5 if self.silence == 2.0 else 2.0
            self.write_config()
            os.kill(self.daemon.proc.pid, signal.SIGHUP)
        elif name in ("sigterm", "sigkill"):
            self.sample_resources()
            self.stop_daemon(signal.SIGTERM if name == "sigterm" else signal.SIGKILL)
            time.sleep(1)
            self.start_daemon()

    # --- the run -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        a = self.args
        self.start_pg()
        self.start_sims()
        self.write_config()
        self.start_daemon()
        started = time.monotonic()
        end = started + a.minutes * 60
        next_fault = started + a.fault_every
        index = 0
        warmed = False
        while time.monotonic() < end:
            time.sleep(0.5)
            if not warmed and time.monotonic() - started > min(30, a.fault_every / 2):
                self.sample_resources()
                warmed = True
            if time.monotonic() >= next_fault:
                self.fault(SCHEDULE[index % len(SCHEDULE)])
                index += 1
                next_fault = time.monotonic() + a.fault_every
        self.sample_resources()
        for sim in self.sims:
            sim.send_signal(signal.SIGTERM)
        for sim in self.sims:
            sim.wait(30)
        time.sleep(1)
        self.stop_daemon()
        # a last daemon drains whatever the spool still holds
        self.start_daemon()
        deadline = time.monotonic() + 120
        while (self.metric("servomexd_spool_pending_samples") or 0) > 0:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.stop_daemon()
        return self.account()

    # --- the account -----------------------------------------------------------------------

    def account(self) -> dict[str, Any]:
        rows = run_async(self._rows)
        quarantine = self._quarantine()
        windows = [
            (inc.ready + 1.0, (inc.ended or time.time()) - (FLUSH_INTERVAL + 0.5
                                                            if inc.killed else 0.5))
            for inc in self.incarnations[:-1] if inc.ready is not None
        ]  # fmt: skip
        # Frames a device restart or an unplug cuts off are not the daemon's loss: c0
        # restarts at each reload (its settings change), an unplugged adapter's kernel
        # buffer is gone, a replugged one has no reader until it is reopened. Counted apart.
        reload_cuts = [(at - 0.5, at + 2.0) for name, at in self.timeline if name == "reload"]
        sent = stored = duplicated = lost = refused = outside = cut = 0
        lost_frames: list[dict[str, Any]] = []
        for i in range(self.args.continuous):
            frames = []
            unplugs: list[float] = []
            replugs: list[float] = []
            emit = self.work / f"emit-c{i}.jsonl"
            for line in emit.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    entry = json.loads(line)
                    if entry.get("event") == "unplug":
                        unplugs.append(float(entry["at"]))
                    if entry.get("event") == "replug":
                        replugs.append(float(entry["at"]))
                    if "index" in entry and not entry.get("dropped"):
                        frames.append(entry)
            # a replugged adapter is reopened within the quick retry (1 s): what it
            # sends before that has no reader
            cuts = [(at - 1.0, at) for at in unplugs] + [(at, at + 1.5) for at in replugs]
            cuts += reload_cuts if i == 0 else []
            by_e1 = {round(f["values"]["E1"] * 1000): f for f in frames}
            counts: Counter[int] = Counter()
            for device, channel, value, *_ in rows:
                if device == f"c{i}" and channel == "E1" and value is not None:
                    frame = by_e1.get(round(value * 1000))
                    if frame is not None:
                        counts[frame["index"]] += 1
            held = {round(r[4] * 1000) for r in quarantine if r[0] == f"c{i}" and r[1] == "E1"}
            refused += len(held)
            sent += len(frames)
            stored += len(counts)
            duplicated += sum(1 for n in counts.values() if n > 1)
            for frame in frames:
                key = round(frame["values"]["E1"] * 1000)
                if frame.get("corrupt") or frame["index"] in counts or key in held:
                    continue
                at = float(frame["sent_at"])
                if not any(lo <= at <= hi for lo, hi in windows):
                    outside += 1
                elif any(lo <= at <= hi for lo, hi in cuts):
                    cut += 1
                else:
                    lost += 1
                    lost_frames.append({"device": f"c{i}", "index": frame["index"],
                                        "sent_at": at})  # fmt: skip
        modbus_dups = Counter(
            (d, c, mono) for d, c, _v, mono, *_ in rows if d.startswith("m") and mono is not None
        )
        logs = "".join(inc.log.read_text(errors="replace") for inc in self.incarnations)
        dropped = sum(
            int(part.split("=", 1)[1])
            for line in logs.splitlines() if "event=spool.overflow_dropped_oldest" in line
            or "event=spool.dropped" in line
            for part in line.split() if part.startswith("dropped_samples=")
        )  # fmt: skip
        first = self.incarnations[0].rss_fd
        last = self.incarnations[-2].rss_fd if len(self.incarnations) > 1 else first
        return {
            "minutes": self.args.minutes,
            "devices": {"continuous": self.args.continuous, "modbus": self.args.modbus},
            "faults": dict(self.faults),
            "daemon_incarnations": len(self.incarnations),
            "frames_sent": sent,
            "frames_stored": stored,
            "frames_duplicated": duplicated,
            "frames_lost": lost,
            "frames_not_read_daemon_down": outside,
            "frames_cut_by_device_restart_or_unplug": cut,
            "lost_frames": lost_frames[:20],
            "faults_at": [(name, round(at, 2)) for name, at in self.timeline],
            "e1_rows_quarantined": refused,
            "samples_dropped_logged": dropped,
            "modbus_rows": sum(modbus_dups.values()),
            "modbus_duplicated_rows": sum(n - 1 for n in modbus_dups.values() if n > 1),
            "rss_kib_start_end": [first[0][1] if first else None, last[-1][1] if last else None],
            "fds_start_end": [first[0][2] if first else None, last[-1][2] if last else None],
        }

    async def _rows(self) -> list[tuple[Any, ...]]:
        import asyncpg

        conn = await asyncpg.connect(self.pg.dsn)
        try:
            records = await conn.fetch(
                "SELECT device, channel, value, monotonic_ns, received_at FROM samples"
            )
        finally:
            await conn.close()
        return [tuple(r) for r in records]

    def _quarantine(self) -> list[tuple[Any, ...]]:
        from servomexd.spool import SPOOL_FILENAME, decode_records

        conn = sqlite3.connect(self.work / "spool" / SPOOL_FILENAME)
        try:
            payloads = [row[0] for row in conn.execute("SELECT payload FROM quarantine")]
        finally:
            conn.close()
        return [tuple(r) for p in payloads for r in decode_records(p)]

    def cleanup(self) -> None:
        for inc in self.incarnations:
            if inc.proc.poll() is None:
                inc.proc.kill()
        for sim in self.sims:
            if sim.poll() is None:
                sim.kill()
        self.pg.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--continuous", type=int, default=12)
    parser.add_argument("--modbus", type=int, default=4)
    parser.add_argument("--period", type=float, default=0.2, help="frame / poll period, s")
    parser.add_argument("--fault-every", type=float, default=30.0, help="seconds between faults")
    parser.add_argument(
        "--poison-every", type=int, default=4001,
        help="the trigger refuses E1 rows whose monotonic_ns %% N == 0",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.minutes * 60 / args.period >= 16_000:
        parser.error("E1 values would repeat (16,000 frames per device): raise --period")
    work = Path(tempfile.mkdtemp(prefix="servomexd-soak-"))
    soak = Soak(args, work)
    try:
        result = soak.run()
    finally:
        soak.cleanup()
    result["work_dir"] = str(work) if args.keep else None
    print(json.dumps(result, indent=2))
    ok = result["frames_duplicated"] == 0 and result["frames_lost"] == 0
    ok = ok and result["modbus_duplicated_rows"] == 0
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
