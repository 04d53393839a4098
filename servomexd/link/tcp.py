"""Raw TCP to a serial device server (``socket://HOST:PORT``), read like a serial port.

A device server in "TCP server" mode passes the bytes of its serial line, nothing
else, so a TCP stream stands in for the port. Differences that shape this module:

* Connecting can hang (a host that drops SYNs): it is bounded by ``connect_timeout``
  (default 5 s). The host name is resolved at every connect, so a device server that
  got a new DHCP lease is followed.
* A dead peer can leave the connection up for hours (a power cut, a firewall that
  dropped its state). TCP keepalive is turned on so the kernel eventually notices,
  but the real guard is the supervisor's ``silence_timeout``: no data for that long
  closes the link and reconnects, whatever TCP believes.
* Refused, reset, unreachable and timed-out connections all end as
  ``ServomexConnectionError`` with the cause in the message (the supervisor logs it
  and backs off with jitter, as for a local port).

Segment boundaries carry no meaning: the receive buffer is one byte stream, as on a
serial line, so a frame split across segments and several frames in one segment
decode alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Self

from servomexd.errors import ServomexConnectionError
from servomexd.link.endpoint import NetworkEndpoint
from servomexd.link.stream import HIGH_WATER, BufferedLink, Receiver, describe_cause

__all__ = ["CONNECT_TIMEOUT", "KEEPALIVE", "TcpLink", "connect_error", "enable_keepalive"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
KEEPALIVE = (10, 5, 3)
"""Idle seconds before the first probe, seconds between probes, probes before the kernel
declares the peer dead: about 25 s, shorter than any sensible silence_timeout x 3."""
_CLOSE_WAIT = 1.0


def enable_keepalive(sock: socket.socket | None) -> None:
    """TCP keepalive plus no Nagle delay (Modbus requests are small and must go now)."""
    if sock is None:
        return
    idle, interval, count = KEEPALIVE
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; macOS has TCP_KEEPALIVE instead
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        if hasattr(socket, "TCP_KEEPINTVL"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        if hasattr(socket, "TCP_KEEPCNT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)


def connect_error(endpoint: NetworkEndpoint, error: BaseException, timeout: float) -> Exception:
    """The ``ServomexConnectionError`` for a failed connect, naming the cause."""
    if isinstance(error, TimeoutError):
        cause = f"connect timed out after {timeout:g} s"
    elif isinstance(error, socket.gaierror):
        cause = f"cannot resolve host {endpoint.host!r} ({error.strerror})"
    else:
        cause = describe_cause(error)
    failure = ServomexConnectionError(
        f"cannot connect to {endpoint.url}: {cause}", context={"port": endpoint.url}
    )
    failure.__cause__ = error
    return failure


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def data_received(self, data: bytes) -> None:
        self.receiver.data_received(data)

    def eof_received(self) -> bool:
        return False  # close our side too: a half-closed device server sends nothing more

    def connection_lost(self, exc: Exception | None) -> None:
        self.receiver.connection_lost(exc)


class TcpLink(BufferedLink):
    """One TCP connection to a device server. ``async with await TcpLink.open(ep)``."""

    def __init__(
        self,
        endpoint: NetworkEndpoint,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        high_water: int = HIGH_WATER,
    ) -> None:
        super().__init__(endpoint.url)
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self._high_water = high_water
        self._transport: asyncio.Transport | None = None

    @classmethod
    async def open(
        cls,
        endpoint: NetworkEndpoint,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        high_water: int = HIGH_WATER,
    ) -> Self:
        link = cls(endpoint, connect_timeout=connect_timeout, high_water=high_water)
        await link._connect()
        return link

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        receiver = Receiver(self._high_water)
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, _ = await loop.create_connection(
                    lambda: _TcpProtocol(receiver), self.endpoint.host, self.endpoint.port
                )
        except (OSError, TimeoutError) as error:
            raise connect_error(self.endpoint, error, self.connect_timeout) from error
        assert isinstance(transport, asyncio.Transport)
        receiver.pause = transport.pause_reading
        receiver.resume = transport.resume_reading
        enable_keepalive(transport.get_extra_info("socket"))
        self._transport = transport
        self._receiver = receiver
        log.debug("tcp link open: %s (%s)", self._target, transport.get_extra_info("peername"))

    async def close(self) -> None:
        """Close now (abort: unsent bytes are dropped, the socket is released at once)."""
        transport, receiver = self._transport, self._receiver
        if transport is None or receiver is None or self._closed_by_us:
            return
        self._closed_by_us = True
        transport.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_WAIT):
                await receiver.closed.wait()
        receiver.buffer.clear()
