"""TcpLink against real loopback sockets: segmentation, failures and their causes, memory bound."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from servomexd.errors import ServomexConnectionError
from servomexd.link.endpoint import parse_network_port
from servomexd.link.tcp import TcpLink

pytestmark = pytest.mark.timeout(30)


class Server:
    """A one-connection TCP server whose accepted socket the test drives directly."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"socket://127.0.0.1:{self.port}"
        self.peer: socket.socket | None = None

    async def accept(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        self.listener.setblocking(False)
        peer, _ = await loop.sock_accept(self.listener)
        self.peer = peer
        return peer

    def close(self) -> None:
        for sock in (self.peer, self.listener):
            if sock is not None:
                sock.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    yield srv
    srv.close()


async def connected(server: Server) -> tuple[TcpLink, socket.socket]:
    link_task = asyncio.ensure_future(TcpLink.open(parse_network_port(server.url)))
    peer = await server.accept()
    return await link_task, peer


async def test_bytes_arrive_as_one_stream_whatever_the_segments(server: Server) -> None:
    link, peer = await connected(server)
    async with link:
        payload = b" frame one\n frame two\n"
        peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in payload:
            peer.send(bytes([byte]))
            await asyncio.sleep(0.001)
        data = b""
        while len(data) < len(payload):
            data += await link.read(1.0)
        assert data == payload
        assert await link.read(0.1) == b"", "silence is b'' after the timeout"


async def test_keepalive_and_nodelay_are_on(server: Server) -> None:
    link, _ = await connected(server)
    async with link:
        sock = link._transport.get_extra_info("socket")  # type: ignore[union-attr]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10


async def test_host_name_is_resolved(server: Server) -> None:
    endpoint = parse_network_port(f"socket://localhost:{server.port}")
    link_task = asyncio.ensure_future(TcpLink.open(endpoint))
    await server.accept()
    link = await link_task
    await link.close()


async def test_refused_is_a_connection_error_naming_the_cause() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ServomexConnectionError, match="connection refused"):
        await TcpLink.open(parse_network_port(f"socket://127.0.0.1:{port}"))


async def test_connect_timeout_is_bounded() -> None:
    # A listener that never accepts, its backlog filled: further SYNs go unanswered,
    # as with a host that drops them.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ServomexConnectionError, match=r"connect timed out after 0.5 s"):
            await TcpLink.open(
                parse_network_port(f"socket://127.0.0.1:{port}"), connect_timeout=0.5
            )
        assert loop.time() - started < 2.0
    finally:
        for sock in [*fillers, listener]:
            sock.close()


async def test_peer_close_ends_reads_after_the_last_bytes(server: Server) -> None:
    link, peer = await connected(server)
    async with link:
        peer.sendall(b"last words\n")
        peer.close()
        server.peer = None
        data = await link.read(1.0)
        assert data == b"last words\n"
        with pytest.raises(ServomexConnectionError, match="closed by the peer"):
            while True:
                await link.read(1.0)
        assert not link.is_open


async def test_reset_names_the_cause(server: Server) -> None:
    link, peer = await connected(server)
    async with link:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # linger 0: RST instead of FIN
        server.peer = None
        with pytest.raises(ServomexConnectionError, match="reset"):
            while True:
                await link.read(1.0)


async def test_an_unread_stream_stops_at_the_high_water_mark(server: Server) -> None:
    endpoint = parse_network_port(server.url)
    link_task = asyncio.ensure_future(TcpLink.open(endpoint, high_water=64 * 1024))
    peer = await server.accept()
    link = await link_task
    async with link:
        peer.setblocking(False)
        chunk = b"x" * 65536
        sent = 0
        for _ in range(400):  # offer 26 MB; TCP flow control stops the sender early
            try:
                sent += peer.send(chunk)
            except BlockingIOError:
                await asyncio.sleep(0.01)
        buffered = len(link._receiver.buffer)  # type: ignore[union-attr]
        assert buffered < 64 * 1024 + 65536 * 4, "reading paused near the mark"
        assert sent < 400 * 65536, "the sender was held back instead of us buffering it all"
        assert len(await link.read(1.0)) == buffered
