"""End to end over a real pty: the in-process simulator on one side, a session on the other."""

from __future__ import annotations

import asyncio
import io
import json
import time
from datetime import UTC
from pathlib import Path

import pytest

from servomexd.acquisition.continuous import ContinuousSession, ContinuousSessionFactory
from servomexd.errors import ServomexConnectionError
from servomexd.link.serial import SerialSettings
from servomexd.model import Frame, ProtocolKind, Rejection
from servomexd.simulator.continuous import ContinuousSimulator
from servomexd.simulator.pty import PtyDevice

FIXTURES = Path(__file__).parents[1] / "fixtures"


def emitted(log: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.getvalue().splitlines()]


async def collect(
    session: ContinuousSession, frames: int, within: float = 10.0
) -> list[Frame | Rejection]:
    events: list[Frame | Rejection] = []
    stream = session.events()

    async def run() -> None:
        async for event in stream:
            events.append(event)
            if sum(isinstance(e, Frame) for e in events) >= frames:
                return

    await asyncio.wait_for(run(), within)
    return events


def test_factory_contract(tmp_path: Path) -> None:
    factory = ContinuousSessionFactory(SerialSettings(str(tmp_path / "a"), baudrate=9600))
    assert factory.description == f"{tmp_path / 'a'} @9600 8N1 continuous"
    with pytest.raises(ValueError):
        ContinuousSessionFactory(SerialSettings("/dev/x"), read_timeout=0)


async def test_frames_arrive_exactly_as_sent(tmp_path: Path) -> None:
    log = io.StringIO()
    link = tmp_path / "analyser"
    async with ContinuousSimulator(link, period=0.05, emit_log=log, seed=3) as simulator:
        factory = ContinuousSessionFactory(SerialSettings(str(link)), read_timeout=0.2)
        session = await factory.open()
        assert session.protocol is ProtocolKind.CONTINUOUS
        try:
            events = await collect(session, 20)
        finally:
            await session.aclose()
        assert simulator.sent >= 20
    frames = [e for e in events if isinstance(e, Frame)]
    rejections = [e for e in events if isinstance(e, Rejection)]
    # Opening mid-broadcast may cut at most the first line.
    assert len(rejections) <= 1 and all(e is events[0] for e in rejections)
    sent = [entry["frame"] for entry in emitted(log) if "frame" in entry]
    received = [f.raw.decode() for f in frames]
    start = sent.index(received[0])
    assert received == sent[start : start + len(received)]  # none lost, none reordered
    by_frame = {entry["frame"]: entry for entry in emitted(log) if "frame" in entry}
    for frame in frames:
        values = {r.channel.value: r.value for r in frame.readings}
        assert values == by_frame[frame.raw.decode()]["values"]
        assert frame.received_at.tzinfo is UTC
        sent_at = by_frame[frame.raw.decode()]["sent_at"]
        assert isinstance(sent_at, float)
        assert 0 <= frame.received_at.timestamp() - sent_at < 1.0
    stamps = [f.monotonic_ns for f in frames]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


async def test_frames_are_stamped_when_they_arrived_not_when_they_were_read(
    tmp_path: Path,
) -> None:
    """A frame that waited 0.3 s before the session read it (a busy loop) still carries
    the time its bytes came in, on both clocks."""
    lines = (FIXTURES / "continuous_4100_idle_5ch.bin").read_bytes().splitlines(keepends=True)
    with PtyDevice(tmp_path / "analyser") as device:
        session = await ContinuousSessionFactory(SerialSettings(str(device.link))).open()
        try:
            device.write(b"\n")  # the first line after opening counts as a partial one
            written_wall, written = time.time(), time.monotonic_ns()
            device.write(lines[0] + lines[1])
            await asyncio.sleep(0.3)
            read_at = time.monotonic_ns()
            events = await collect(session, 2)
        finally:
            await session.aclose()
    frames = [e for e in events if isinstance(e, Frame)]
    assert len(frames) == 2
    for frame in frames:
        assert written <= frame.monotonic_ns < read_at - 100_000_000
        assert abs(frame.received_at.timestamp() - written_wall) < 0.1


async def test_corrupt_frames_and_noise_become_rejections(tmp_path: Path) -> None:
    log = io.StringIO()
    link = tmp_path / "analyser"
    async with ContinuousSimulator(link, period=0.04, emit_log=log, corrupt_every=3, noise_every=4):
        session = await ContinuousSessionFactory(SerialSettings(str(link))).open()
        try:
            events = await collect(session, 16)
        finally:
            await session.aclose()
    entries = emitted(log)
    corrupt = {e["frame"] for e in entries if e.get("corrupt")}
    good = {e["frame"] for e in entries if "frame" in e and not e.get("corrupt")}
    noise = {e["noise"] for e in entries if "noise" in e}
    body = events[1:]  # the first line may be a partial one
    checksum = [e for e in body if isinstance(e, Rejection) and e.reason == "checksum"]
    noisy = [e for e in body if isinstance(e, Rejection) and e.reason == "noise"]
    assert checksum and noisy
    assert all(e.raw.decode() in corrupt for e in checksum)
    assert all(e.raw.decode("latin-1") in noise for e in noisy)
    assert all(f.raw.decode() in good for f in body if isinstance(f, Frame))
    assert not [
        e for e in body if isinstance(e, Rejection) and e.reason not in ("checksum", "noise")
    ]


async def test_unplug_ends_the_session_and_replug_recovers(tmp_path: Path) -> None:
    link = tmp_path / "analyser"
    async with ContinuousSimulator(link, period=0.05) as simulator:
        factory = ContinuousSessionFactory(SerialSettings(str(link)), read_timeout=0.5)
        session = await factory.open()
        await collect(session, 2)
        stream = session.events()
        simulator.unplug()
        started = time.monotonic()
        with pytest.raises(ServomexConnectionError):
            async with asyncio.timeout(5):
                async for _ in stream:
                    pass
        assert time.monotonic() - started < 1.5
        await session.aclose()
        with pytest.raises(ServomexConnectionError):
            await factory.open()  # the adapter is gone: the path does not exist
        simulator.replug()
        session = await factory.open()
        try:
            events = await collect(session, 3)
        finally:
            await session.aclose()
        assert sum(isinstance(e, Frame) for e in events) == 3


async def test_a_silent_line_yields_nothing_but_stays_open(tmp_path: Path) -> None:
    link = tmp_path / "analyser"
    async with ContinuousSimulator(link, period=30.0):
        session = await ContinuousSessionFactory(SerialSettings(str(link)), read_timeout=0.1).open()
        stream = session.events()
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.6):
                    async for _ in stream:
                        pass
            assert session.link.is_open
        finally:
            await session.aclose()
