"""Continuous mode over a device server: a real loopback TCP server on one side, the
real session and supervisor on the other.

Segment boundaries must not matter, garbage must be counted, memory must stay
bounded, and every way a TCP link dies (refused, closed, stalled) must end in a
link-down naming the cause, then a reconnect.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from servomexd.acquisition.continuous import ContinuousSession, ContinuousSessionFactory
from servomexd.acquisition.supervisor import DeviceSupervisor
from servomexd.backoff import Backoff
from servomexd.link.serial import SerialSettings
from servomexd.metrics import Metrics
from servomexd.model import ChannelId, Frame, Rejection, Sample
from servomexd.protocol.continuous import ContinuousFramer, build_frame
from servomexd.simulator.continuous import ContinuousSimulator, simulated_blocks
from servomexd.simulator.tcp import Rfc2217Wire, TcpWire

pytestmark = pytest.mark.timeout(60)

CLOCK = datetime(2026, 3, 1, 12, 0, 0)


def frames_bytes(count: int) -> list[bytes]:
    return [build_frame(simulated_blocks(i, 5), clock=CLOCK) + b"\n" for i in range(count)]


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110  # state owned by other tasks
            await asyncio.sleep(0.02)


class RawServer:
    """A loopback server whose one accepted socket the test writes to directly."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.url = f"socket://127.0.0.1:{self.listener.getsockname()[1]}"

    async def accept(self) -> socket.socket:
        peer, _ = await asyncio.get_running_loop().sock_accept(self.listener)
        peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return peer


@pytest.fixture
async def server() -> AsyncIterator[RawServer]:
    srv = RawServer()
    yield srv
    srv.listener.close()


async def opened(server: RawServer, **kwargs: Any) -> tuple[ContinuousSession, socket.socket]:
    factory = ContinuousSessionFactory(SerialSettings(server.url), read_timeout=0.2, **kwargs)
    assert factory.description == f"{server.url} continuous"
    task = asyncio.ensure_future(factory.open())
    peer = await server.accept()
    return await task, peer


async def collect(session: ContinuousSession, frames: int) -> list[Frame | Rejection]:
    events: list[Frame | Rejection] = []
    async with asyncio.timeout(15):
        async for event in session.events():
            events.append(event)
            if sum(isinstance(e, Frame) for e in events) >= frames:
                break
    return events


async def test_a_frame_split_byte_by_byte_and_many_in_one_segment(server: RawServer) -> None:
    session, peer = await opened(server)
    sent = frames_bytes(12)
    try:
        loop = asyncio.get_running_loop()
        for byte in sent[0]:  # one frame, one segment per byte
            await loop.sock_sendall(peer, bytes([byte]))
            await asyncio.sleep(0.0005)
        await loop.sock_sendall(peer, b"".join(sent[1:]))  # eleven frames, one segment
        events = await collect(session, 12)
    finally:
        await session.aclose()
        peer.close()
    assert all(isinstance(e, Frame) for e in events)
    expected = [e for e in ContinuousFramer().feed(b"".join(sent)) if isinstance(e, Frame)]
    assert [f.raw for f in events] == [f.raw for f in expected]

    def decoded(frame: Frame) -> list[tuple[Any, ...]]:
        return [(r.channel, r.name, r.value, r.unit, r.status) for r in frame.readings]

    assert [decoded(f) for f in events] == [decoded(f) for f in expected]


async def test_garbage_is_rejected_and_an_endless_line_does_not_grow_memory(
    server: RawServer,
) -> None:
    session, peer = await opened(server)
    good = frames_bytes(2)
    try:
        loop = asyncio.get_running_loop()
        collector = asyncio.create_task(collect(session, 2))
        await loop.sock_sendall(peer, good[0] + b"#\x00\xff garbage\n")
        # 4 MB with no terminator: the framer drops it as one overlong line.
        chunk = bytes(range(32, 127)) * 700
        for _ in range(60):
            await loop.sock_sendall(peer, chunk)
        await loop.sock_sendall(peer, b"\n" + good[1])
        events = await collector
        assert len(session._framer._buffer) < session._framer.max_line  # type: ignore[attr-defined]
    finally:
        await session.aclose()
        peer.close()
    reasons = [e.reason for e in events if isinstance(e, Rejection)]
    assert reasons == ["noise", "overlong"]
    assert [e.raw for e in events if isinstance(e, Frame)] == [g[:-1] for g in good]


# --- the simulator's device server, through the supervisor ----------------------------------


class Buffer:
    def __init__(self) -> None:
        self.samples: list[Sample] = []

    def add_samples(self, samples: Sequence[Sample]) -> None:
        self.samples.extend(samples)


def supervisor_for(url: str, silence: float = 1.0) -> tuple[DeviceSupervisor, Buffer]:
    buffer = Buffer()
    supervisor = DeviceSupervisor(
        "stack-3",
        ContinuousSessionFactory(SerialSettings(url), read_timeout=0.2, connect_timeout=1.0),
        buffer,
        Metrics(CollectorRegistry()),
        silence_timeout=silence,
        backoff=Backoff(initial=0.1, cap=0.3, floor=0.02),
    )
    return supervisor, buffer


def stored_frames(buffer: Buffer) -> list[int]:
    """Frame indexes stored, in order: E1 ramps one step per simulated frame."""
    return [
        round((s.reading.value - 4.0) * 1000)
        for s in buffer.samples
        if s.error is None and s.reading is not None and s.channel is ChannelId.E1
    ]


def link_downs(logs: list[dict[str, Any]]) -> list[str]:
    return [str(e["reason"]) for e in logs if e["event"] == "device.link_down"]


@pytest.mark.parametrize("wire_class", [TcpWire, Rfc2217Wire])
async def test_server_restart_reconnects_and_stores_every_frame_sent_while_connected(
    wire_class: type[TcpWire],
) -> None:
    emit = io.StringIO()
    wire = wire_class("127.0.0.1", 0)
    simulator = ContinuousSimulator(
        "unused", period=0.1, emit_log=emit, wire=wire, unplug_after=1.5, replug_after=1.0
    )
    with capture_logs() as logs:
        async with simulator:
            supervisor, buffer = supervisor_for(str(simulator.link))
            task = asyncio.create_task(supervisor.run())
            try:
                await until(lambda: wire.connections >= 2 and len(stored_frames(buffer)) > 25)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    sent = [json.loads(line) for line in emit.getvalue().splitlines()]
    delivered = [e["index"] for e in sent if "frame" in e and not e.get("dropped")]
    stored = stored_frames(buffer)
    assert len(stored) == len(set(stored)), "no duplicates"
    assert stored == sorted(stored)
    # Every frame sent while a client was connected is stored, except the ones in flight
    # when the server went away and, on RFC 2217, those sent while the client was still
    # negotiating (pyserial purges its input when the open completes).
    edges = [e["at"] for e in sent if e.get("event") in ("connect", "disconnect", "unplug")]
    sent_at = {e["index"]: e["sent_at"] for e in sent if "frame" in e}
    missing = [
        f for f in delivered if f not in stored and min(abs(sent_at[f] - t) for t in edges) > 0.4
    ]
    assert not missing, [e for e in sent if "frame" not in e or e["index"] in missing]
    assert set(stored) <= set(delivered)
    downs = link_downs(logs)
    assert downs, "the server going away is a link-down"
    assert any("refused" in reason for reason in downs), downs  # while it was away
    assert supervisor.reconnects >= 1


async def test_half_open_is_caught_by_silence_timeout_and_reconnected() -> None:
    emit = io.StringIO()
    wire = TcpWire("127.0.0.1", 0)
    simulator = ContinuousSimulator("unused", period=0.1, emit_log=emit, wire=wire, stall_after=1.0)
    with capture_logs() as logs:
        async with simulator:
            supervisor, buffer = supervisor_for(str(simulator.link), silence=1.0)
            task = asyncio.create_task(supervisor.run())
            try:
                await until(lambda: wire.connections >= 2 and len(stored_frames(buffer)) > 12)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    downs = link_downs(logs)
    assert any("silence_timeout" in reason for reason in downs), downs
    events = [json.loads(line) for line in emit.getvalue().splitlines()]
    assert any(e.get("event") == "stall" for e in events)
    assert any(e.get("stalled") for e in events), "frames were withheld on the stalled link"
    stored = set(stored_frames(buffer))
    assert not stored & {e["index"] for e in events if e.get("stalled")}


async def test_a_stale_session_holding_the_one_client_slot_is_retried_and_reported() -> None:
    wire = TcpWire("127.0.0.1", 0)
    simulator = ContinuousSimulator("unused", period=0.1, wire=wire)
    with capture_logs() as logs:
        async with simulator:
            host, port = "127.0.0.1", wire.port
            stale = socket.create_connection((host, port))  # the old session nobody closed
            await until(lambda: wire.connections == 1)
            supervisor, buffer = supervisor_for(str(simulator.link))
            task = asyncio.create_task(supervisor.run())
            try:
                await until(lambda: wire.refused >= 2)
                assert not buffer.samples
                stale.close()  # the device server finally drops it
                await until(lambda: len(stored_frames(buffer)) >= 3)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                stale.close()
    downs = link_downs(logs)
    assert any("closed by the peer" in r or "reset" in r for r in downs), downs
