"""``servomexd simulate`` as a real subprocess over a real pty."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from servomexd.errors import ServomexConnectionError
from servomexd.link.serial import SerialLink, SerialSettings
from servomexd.model import Frame, Rejection
from servomexd.protocol.continuous import ContinuousFramer, checksum, parse_frame
from servomexd.simulator.continuous import simulated_blocks


def simulate(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "servomexd", "simulate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_ready(process: subprocess.Popen[str], link: Path) -> None:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith(f"ready {link} -> /dev/pts/"), (line, process.stderr)
    assert link.is_symlink()


def wait_for(condition: object, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def read_log(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


async def read_events(link: Path, until_lost: float = 15.0) -> list[Frame | Rejection]:
    """Everything received until the simulator goes away."""
    events: list[Frame | Rejection] = []
    framer = ContinuousFramer()
    async with await SerialLink.open(SerialSettings(str(link))) as serial_link:
        deadline = time.monotonic() + until_lost
        while time.monotonic() < deadline:
            try:
                data = await serial_link.read(0.5)
            except ServomexConnectionError:
                return events
            events += framer.feed(data)
    raise AssertionError("the simulator never closed the link")


def test_frames_arrive_and_match_the_emit_log(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    link, emit = tmp_path / "ttyServomex", tmp_path / "emit.jsonl"
    process = simulate(
        "--link", str(link), "--period", "0.05", "--frames", "40", "--emit-log", str(emit),
        "--seed", "11",
    )  # fmt: skip
    processes.append(process)
    wait_ready(process, link)
    events = asyncio.run(read_events(link))
    assert process.wait(10) == 0
    assert not link.exists() and not link.is_symlink()  # removed on exit

    entries = read_log(emit)
    frames_sent = [e for e in entries if "frame" in e]
    assert [e["index"] for e in frames_sent] == list(range(40))
    for entry in frames_sent:
        raw = str(entry["frame"]).encode()
        assert entry["corrupt"] is False
        assert checksum(raw[1:-5]) == int(raw[-5:-1], 16)
        frame = parse_frame(raw)
        assert {r.channel.value: r.value for r in frame.readings} == entry["values"]
        assert isinstance(entry["sent_at"], float)
    # Values are a function of seed and index, and all 40 frames differ.
    assert frames_sent[7]["values"] == {
        b.channel.value: b.value for b in simulated_blocks(7, 11, period=0.05)
    }
    assert len({json.dumps(e["values"], sort_keys=True) for e in frames_sent}) == 40

    received = [e.raw.decode() for e in events if isinstance(e, Frame)]
    assert len(received) >= 30
    sent = [str(e["frame"]) for e in frames_sent]
    start = sent.index(received[0])
    assert received == sent[start:]  # every frame after the connection, in order
    assert not [e for e in events[1:] if isinstance(e, Rejection)]


def test_analyser_clock_follows_real_time(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    link, emit = tmp_path / "tty", tmp_path / "emit.jsonl"
    process = simulate("--link", str(link), "--period", "0.5", "--frames", "4",
                       "--emit-log", str(emit))  # fmt: skip
    processes.append(process)
    assert process.wait(15) == 0
    frames = [parse_frame(str(e["frame"]).encode()) for e in read_log(emit) if "frame" in e]
    clocks = [f.analyser.clock for f in frames]
    assert all(c is not None for c in clocks)
    span = (clocks[-1] - clocks[0]).total_seconds()  # type: ignore[operator]
    assert 1 <= span <= 3


def test_corrupt_and_noise(tmp_path: Path, processes: list[subprocess.Popen[str]]) -> None:
    link, emit = tmp_path / "tty", tmp_path / "emit.jsonl"
    process = simulate(
        "--link", str(link), "--period", "0.05", "--frames", "30", "--emit-log", str(emit),
        "--corrupt-every", "4", "--noise-every", "5",
    )  # fmt: skip
    processes.append(process)
    wait_ready(process, link)
    events = asyncio.run(read_events(link))
    assert process.wait(10) == 0
    entries = read_log(emit)
    frames_sent = [e for e in entries if "frame" in e]
    assert [e["index"] for e in frames_sent if e["corrupt"]] == [3, 7, 11, 15, 19, 23, 27]
    noise = [e for e in entries if "noise" in e]
    assert [e["before_index"] for e in noise] == [4, 9, 14, 19, 24, 29]
    for entry in frames_sent:
        raw = str(entry["frame"]).encode()
        valid = checksum(raw[1:-5]) == int(raw[-5:-1], 16)
        assert valid is not entry["corrupt"]

    # What arrived, line by line, is what the log says was sent after we connected.
    def describe(entry: dict[str, object]) -> tuple[str, str]:
        if "noise" in entry:
            return ("noise", str(entry["noise"]))
        return ("checksum" if entry["corrupt"] else "frame", str(entry["frame"]))

    got = [
        (e.reason, e.raw.decode("latin-1"))
        if isinstance(e, Rejection)
        else ("frame", e.raw.decode())
        for e in events
    ]
    sent = [describe(e) for e in entries if "frame" in e or "noise" in e]
    got = got[1:]  # the first line may have been cut by opening mid-broadcast
    start = sent.index(got[0])
    assert got == sent[start:]
    assert any(kind == "checksum" for kind, _ in got)
    assert any(kind == "noise" for kind, _ in got)


def test_unplug_and_replug(tmp_path: Path, processes: list[subprocess.Popen[str]]) -> None:
    link, emit = tmp_path / "tty", tmp_path / "emit.jsonl"
    process = simulate(
        "--link", str(link), "--period", "0.05", "--emit-log", str(emit),
        "--unplug-after", "0.8", "--replug-after", "0.8",
    )  # fmt: skip
    processes.append(process)
    wait_ready(process, link)

    async def scenario() -> tuple[list[Frame | Rejection], float]:
        before = await read_events(link)  # ends when the adapter is pulled
        lost_at = time.monotonic()
        assert not link.exists()
        await asyncio.to_thread(wait_for, link.exists)  # the new adapter appears
        async with await SerialLink.open(SerialSettings(str(link))) as again:
            framer = ContinuousFramer()
            after: list[Frame | Rejection] = []
            while sum(isinstance(e, Frame) for e in after) < 5:
                after += framer.feed(await again.read(1.0))
        return before + after, time.monotonic() - lost_at

    events, gap = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert 0.5 < gap < 5
    assert sum(isinstance(e, Frame) for e in events) >= 10
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
    assert not link.exists()
    kinds = [e.get("event") for e in read_log(emit) if "event" in e]
    assert kinds == ["plug", "unplug", "replug"]


def test_sigterm_and_sigint_stop_cleanly(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        link = tmp_path / f"tty{signum}"
        process = simulate("--link", str(link), "--period", "0.1")
        processes.append(process)
        wait_ready(process, link)
        started = time.monotonic()
        process.send_signal(signum)
        assert process.wait(10) == 0
        assert time.monotonic() - started < 3
        assert not link.exists() and not link.is_symlink()


def test_a_stale_symlink_is_replaced(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    link = tmp_path / "tty"
    os.symlink("/dev/pts/does-not-exist", link)
    process = simulate("--link", str(link), "--period", "0.1", "--frames", "3")
    processes.append(process)
    wait_ready(process, link)
    assert os.readlink(link).startswith("/dev/pts/") and link.exists()
    assert process.wait(10) == 0


def test_bad_arguments(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "servomexd", "simulate", "--link", str(tmp_path / "t"),
         "--replug-after", "1"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--replug-after needs --unplug-after" in result.stderr
    (tmp_path / "file").write_text("not a link")
    result = subprocess.run(
        [sys.executable, "-m", "servomexd", "simulate", "--link", str(tmp_path / "file")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert "not a symlink" in result.stderr and "Traceback" not in result.stderr


async def test_in_process_simulator_paces_frames_on_schedule(tmp_path: Path) -> None:
    import io

    from servomexd.simulator.continuous import ContinuousSimulator

    log = io.StringIO()
    async with ContinuousSimulator(tmp_path / "tty", period=0.1, emit_log=log) as simulator:
        await asyncio.sleep(1.05)
    sent_at = [json.loads(line)["sent_at"] for line in log.getvalue().splitlines()
               if "frame" in json.loads(line)]  # fmt: skip
    # ~11 slots in 1.05 s; a starved slot is skipped (counted), never sent in a burst
    assert 8 <= len(sent_at) + simulator.missed <= 12 and len(sent_at) >= 5
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert min(gaps) > 0.002  # a catch-up burst would send frames microseconds apart
    assert sum(gaps) / len(gaps) == pytest.approx(0.1, abs=0.03)
    assert not (tmp_path / "tty").exists()  # the link went away with the simulator
