"""``servomexd demo``: a simulated analyser and the daemon in one go, for a first look.

Starts ``servomexd simulate`` on a pseudo-terminal inside the demo directory (a
subprocess, exactly as a real analyser would be a separate thing on a serial port),
writes a real configuration file next to it, runs the real daemon into
``<dir>/samples.sqlite`` with metrics on localhost, and prints one summary line every
couple of seconds. Ctrl-C (or ``--duration``) stops it cleanly and prints where the
data is and how to look at it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from servomexd.config import Settings, load_settings, split_listen
from servomexd.daemon import Daemon
from servomexd.errors import ServomexConfigError
from servomexd.logs import configure_logging

_SUMMARY_EVERY = 2.0
_LINK_WAIT = 15.0


def _free_listen(listen: str) -> tuple[str, str | None]:
    """``listen``, or the same host on a free port when it is taken (and why)."""
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            shown = f"[{host}]" if family == socket.AF_INET6 else host
            return f"{shown}:0", f"{listen} is in use (is servomexd already running?)"
    return listen, None


def write_config(
    directory: Path, *, link: Path, protocol: str, period: float, metrics_listen: str
) -> Path:
    device = [
        "[[devices]]",
        'name = "demo-analyser"',
        f"port = {json.dumps(str(link))}",
        f'protocol = "{protocol}"',
        f"silence_timeout = {max(5.0, 5 * period):g}",
    ]
    if protocol != "continuous":
        device += ["address = 1", f"poll_interval = {period:g}"]
    text = "\n".join(
        [
            "# Written by `servomexd demo`: a complete, real configuration.",
            "# Run the daemon on it yourself with: servomexd run --config <this file>",
            *device,
            "",
            "[sink]",
            'type = "sqlite"',
            f"path = {json.dumps(str(directory / 'samples.sqlite'))}",
            "",
            "[spool]",
            f"path = {json.dumps(str(directory / 'spool'))}",
            "",
            "[metrics]",
            f'listen = "{metrics_listen}"',
            "",
            "[log]",
            'level = "info"',
            "",
        ]
    )
    path = directory / "servomexd.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _start_simulator(
    directory: Path, link: Path, protocol: str, period: float
) -> subprocess.Popen[bytes]:
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    command = [
        sys.executable, "-m", "servomexd", "simulate",
        "--link", str(link), "--protocol", protocol, "--period", f"{period:g}",
    ]  # fmt: skip
    log = (directory / "simulator.log").open("ab")
    try:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C goes to us; we stop the simulator ourselves
        )
    finally:
        log.close()


def _stop_simulator(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _summary(daemon: Daemon, started: float, *, final: bool = False) -> str:
    frames = sum(s.frames for s in daemon.supervisors)
    rejected = sum(s.rejections for s in daemon.supervisors)
    writer = daemon.writer
    written = writer.snapshot().samples_written if writer else 0
    latest = "-"
    for sup in daemon.supervisors:
        frame = sup.last_frame
        if frame is None:
            continue
        for reading in frame.readings:
            if reading.channel.value == "I1" and reading.value is not None:
                name = reading.name or "I1"
                latest = f"{name} {reading.value:.3f} {reading.unit_label}"
    link = "up" if all(s.link_up for s in daemon.supervisors) else "down"
    state = "stopped" if final else f"link {link}"
    return (
        f"[{time.monotonic() - started:6.1f} s] {state}  frames {frames}  "
        f"rejected {rejected}  samples written {written}  latest {latest}"
    )


async def _run(settings: Settings, duration: float | None) -> tuple[int, Daemon]:
    daemon = Daemon(settings)
    started = time.monotonic()

    async def report() -> None:
        await daemon.ready.wait()
        port = daemon.metrics_port
        if port is not None:
            print(
                f"metrics: http://{settings.metrics.host}:{port}/metrics   "
                f"(health: /healthz, /readyz)",
                flush=True,
            )
        print("recording... Ctrl-C to stop", flush=True)
        while True:
            await asyncio.sleep(_SUMMARY_EVERY)
            print(_summary(daemon, started), flush=True)

    async def stop_after() -> None:
        if duration is None:
            return
        await daemon.ready.wait()
        await asyncio.sleep(duration)
        daemon.request_stop("demo --duration elapsed")

    helpers = [asyncio.create_task(report()), asyncio.create_task(stop_after())]
    try:
        code = await daemon.serve()
    finally:
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    print(_summary(daemon, started, final=True), flush=True)
    return code, daemon


def _row_count(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    except sqlite3.Error:
        return 0
    try:
        return int(conn.execute("SELECT count(*) FROM samples").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def run_demo(args: argparse.Namespace) -> int:
    directory = Path(args.dir).resolve()
    protocol: str = args.protocol
    period: float = args.period
    link = directory / "analyser"
    try:
        listen, why = _free_listen(args.metrics_listen)
        directory.mkdir(parents=True, exist_ok=True)
        config = write_config(
            directory, link=link, protocol=protocol, period=period, metrics_listen=listen
        )
        settings = load_settings(config)
    except (OSError, ValueError, ServomexConfigError) as exc:
        # A bad --dir or --metrics-listen: one line, like the other sub-commands.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"servomexd demo: {reason} ({directory}, {args.metrics_listen})", file=sys.stderr)
        return 2
    configure_logging("info", "console" if sys.stderr.isatty() else "journald", sys.stderr)
    print(f"servomexd demo in {directory}", flush=True)
    if why:
        print(f"note: {why}; using a free port instead", flush=True)
    simulator = _start_simulator(directory, link, protocol, period)
    try:
        deadline = time.monotonic() + _LINK_WAIT
        while not link.exists():
            if simulator.poll() is not None or time.monotonic() > deadline:
                print(
                    f"servomexd demo: the simulator did not start; see {directory}/simulator.log",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.05)
        print(f"simulated {protocol} analyser on {link} (one frame every {period:g} s)")
        code, _ = asyncio.run(_run(settings, args.duration))
    except KeyboardInterrupt:
        code = 0
    finally:
        _stop_simulator(simulator)
    db = directory / "samples.sqlite"
    print()
    print(f"stopped. {_row_count(db)} rows in {db}")
    print(f"configuration used: {config}")
    query = (
        "SELECT received_at, device, channel, name, value, unit, ok FROM samples "
        "ORDER BY received_at DESC LIMIT 10;"
    )
    if shutil.which("sqlite3"):
        print(f"look at them:  sqlite3 -header -column {db} \"{query}\"")
    else:
        print(
            f"look at them:  python3 -c 'import sqlite3; "
            f"[print(r) for r in sqlite3.connect(\"{db}\").execute(\"{query}\")]'"
        )
    return code
