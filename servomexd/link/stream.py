"""What every link offers acquisition, and the receive buffer the network links share.

``ByteLink`` is the interface a session reads through: a local serial port
(``SerialLink``), raw TCP (``TcpLink``) and RFC 2217 (``Rfc2217Link``) all meet it, so
acquisition never asks where its bytes come from. ``BufferedLink`` holds the
bounded-read logic once for the network links: bytes are pushed into a
``Receiver`` (by an asyncio protocol, or from a reader thread), and ``read`` waits
on it with the caller's timeout.

Memory is bounded: above ``high_water`` buffered bytes the link stops reading
(TCP flow control then slows the sender; a device server drops at its serial side),
so an endless stream nobody consumes cannot grow the process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol, Self

from servomexd.errors import (
    ServomexConnectionError,
    ServomexValidationError,
)

__all__ = [
    "HIGH_WATER",
    "Arrival",
    "BufferedLink",
    "ByteLink",
    "Receiver",
    "check_read",
    "describe_cause",
    "now_arrival",
    "take_from",
]

HIGH_WATER = 256 * 1024
"""Bytes buffered before a link stops reading (as ``servomexd.link.serial``)."""


Arrival = tuple[int, int]
"""When bytes came off the wire: (``time.time_ns()``, ``time.monotonic_ns()``)."""


def now_arrival() -> Arrival:
    return time.time_ns(), time.monotonic_ns()


class ByteLink(Protocol):
    """Bytes in and out of one analyser's line, every wait bounded by the caller."""

    def describe(self) -> str: ...

    @property
    def arrival(self) -> Arrival:
        """When the newest byte the last ``read`` returned was received: frames are
        stamped with it, not with the moment the loop got round to handing them on."""
        ...

    @property
    def is_open(self) -> bool: ...

    async def read(self, timeout: float, *, max_bytes: int | None = None) -> bytes: ...  # noqa: ASYNC109

    def reset_input(self) -> None: ...

    async def close(self) -> None: ...


class Receiver:
    """The receive side of a link: buffered bytes, a wake-up event, how the link ended.

    ``pause``/``resume`` are the flow-control hooks of the transport feeding it.
    """

    def __init__(
        self,
        high_water: int = HIGH_WATER,
        *,
        pause: Callable[[], None] | None = None,
        resume: Callable[[], None] | None = None,
    ) -> None:
        self.buffer = bytearray()
        self.arrival: Arrival = (0, 0)
        """When the newest buffered byte was received."""
        self.readable = asyncio.Event()
        self.closed = asyncio.Event()
        self.lost = False
        self.error: BaseException | None = None
        self.paused = False
        self.high_water = high_water
        self.pause = pause
        self.resume = resume

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.arrival = now_arrival()
        self.readable.set()
        if len(self.buffer) >= self.high_water and not self.paused:
            self.paused = True  # a reader thread without a pause hook polls this flag
            if self.pause is not None:
                self.pause()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.error = exc
        self.readable.set()
        self.closed.set()

    def take(self, max_bytes: int | None) -> bytes:
        data = take_from(self.buffer, max_bytes)
        if self.paused and len(self.buffer) < self.high_water // 2 and not self.lost:
            self.paused = False
            if self.resume is not None:
                self.resume()
        return data


class BufferedLink:
    """Bounded reads over a ``Receiver``; subclasses connect, write and close."""

    def __init__(self, target: str) -> None:
        self._target = target
        self._receiver: Receiver | None = None
        self._closed_by_us = False
        self._arrival: Arrival = (0, 0)

    def describe(self) -> str:
        return self._target

    @property
    def arrival(self) -> Arrival:
        return self._arrival

    @property
    def is_open(self) -> bool:
        receiver = self._receiver
        return receiver is not None and not receiver.lost and not self._closed_by_us

    def _require(self) -> Receiver:
        if self._receiver is None:
            raise ServomexConnectionError("link is not open", context={"port": self._target})
        if self._closed_by_us:
            raise ServomexConnectionError("link is closed", context={"port": self._target})
        return self._receiver

    def _lost(self, receiver: Receiver) -> ServomexConnectionError:
        cause = receiver.error
        text = "closed by the peer" if cause is None else describe_cause(cause)
        error = ServomexConnectionError(f"link lost: {text}", context={"port": self._target})
        error.__cause__ = cause
        return error

    async def read(self, timeout: float, *, max_bytes: int | None = None) -> bytes:  # noqa: ASYNC109
        """The bytes received so far, waiting up to ``timeout`` s for the first one;
        ``b""`` after ``timeout`` of silence; ``ServomexConnectionError`` once the link
        is lost (after the bytes received before the loss have been returned)."""
        check_read(timeout, max_bytes)
        receiver = self._require()
        if not receiver.buffer:
            if receiver.lost:
                raise self._lost(receiver)
            receiver.readable.clear()
            try:
                async with asyncio.timeout(timeout):
                    await receiver.readable.wait()
            except TimeoutError:
                return b""
            if self._closed_by_us:
                raise ServomexConnectionError(
                    "link closed while reading", context={"port": self._target}
                )
            if not receiver.buffer:
                raise self._lost(receiver)
        self._arrival = receiver.arrival
        return receiver.take(max_bytes)

    def reset_input(self) -> None:
        """Discard everything received and not yet read."""
        self._require().buffer.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        raise NotImplementedError


def check_read(timeout: float, max_bytes: int | None) -> None:
    """The arguments of every ``ByteLink.read``, checked the same way for all links."""
    if timeout <= 0:
        raise ServomexValidationError("read timeout must be > 0", context={"timeout": timeout})
    if max_bytes is not None and max_bytes < 1:
        raise ServomexValidationError("max_bytes must be >= 1", context={"max_bytes": max_bytes})


def take_from(buffer: bytearray, max_bytes: int | None) -> bytes:
    """Up to ``max_bytes`` from the front of ``buffer`` (all of it with None)."""
    if max_bytes is None or max_bytes >= len(buffer):
        data = bytes(buffer)
        buffer.clear()
    else:
        data = bytes(buffer[:max_bytes])
        del buffer[:max_bytes]
    return data


def describe_cause(error: BaseException) -> str:
    """A short, operator-readable cause: refused, reset, unreachable, timed out, ..."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (server down, wrong port, or its one client slot is taken)"
    if isinstance(error, ConnectionResetError):
        return "connection reset by the peer"
    if isinstance(error, TimeoutError):
        return "timed out"
    text = str(error) or type(error).__name__
    return text.splitlines()[0]
