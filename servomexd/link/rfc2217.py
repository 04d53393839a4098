"""RFC 2217 to a serial device server (``rfc2217://HOST:PORT``), read like a serial port.

RFC 2217 is Telnet plus option negotiation: baud rate, data bits, parity and stop
bits are sent to the device server, which sets its serial port accordingly. pyserial
implements the client (``serial.rfc2217.Serial``: the negotiation, IAC escaping and
a reader thread of its own); it is a blocking API, so this module keeps it off the
event loop: the open (connect plus negotiation) and the close run in an executor,
one reader thread per link hands bytes to the loop, and writes go through the
executor. The connect itself is pyserial's (``socket.create_connection`` with its own
5 s timeout, host resolved at every open); ``connect_timeout`` bounds the whole open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from functools import partial
from typing import Any, Self

import serial
import serial.rfc2217

from servomexd.link.endpoint import NetworkEndpoint
from servomexd.link.stream import HIGH_WATER, BufferedLink, Receiver
from servomexd.link.tcp import CONNECT_TIMEOUT, connect_error, enable_keepalive

__all__ = ["Rfc2217Link"]

log = logging.getLogger(__name__)

_READ_SLICE = 0.2
"""How long the reader thread blocks per read: the latency of noticing ``close()``."""


class Rfc2217Link(BufferedLink):
    """One RFC 2217 session. ``serial_kwargs`` are sent to the device server."""

    def __init__(
        self,
        endpoint: NetworkEndpoint,
        serial_kwargs: dict[str, Any],
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        high_water: int = HIGH_WATER,
    ) -> None:
        super().__init__(endpoint.url)
        self.endpoint = endpoint
        self.serial_kwargs = serial_kwargs
        self.connect_timeout = connect_timeout
        self._high_water = high_water
        self._port: serial.rfc2217.Serial | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._writes: set[asyncio.Future[None]] = set()

    @classmethod
    async def open(
        cls,
        endpoint: NetworkEndpoint,
        serial_kwargs: dict[str, Any],
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        high_water: int = HIGH_WATER,
    ) -> Self:
        link = cls(endpoint, serial_kwargs, connect_timeout=connect_timeout, high_water=high_water)
        await link._connect()
        return link

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        opening = loop.run_in_executor(
            None,
            # The read timeout goes in here: setting it later renegotiates the whole line
            # (a blocking round trip to the server).
            partial(
                serial.rfc2217.Serial,
                self.endpoint.url,
                **{**self.serial_kwargs, "timeout": _READ_SLICE},
            ),
        )
        try:
            async with asyncio.timeout(self.connect_timeout):
                port = await asyncio.shield(opening)
        except (TimeoutError, asyncio.CancelledError) as error:
            opening.add_done_callback(_close_when_opened)
            if isinstance(error, asyncio.CancelledError):
                raise
            raise connect_error(self.endpoint, error, self.connect_timeout) from error
        except (OSError, serial.SerialException, ValueError) as error:
            cause = error.__cause__ or error.__context__
            raise connect_error(
                self.endpoint, cause if isinstance(cause, OSError) else error, self.connect_timeout
            ) from error
        enable_keepalive(getattr(port, "_socket", None))
        receiver = Receiver(self._high_water)
        self._port = port
        self._receiver = receiver
        self._thread = threading.Thread(
            target=self._read_loop, args=(loop, port, receiver), name=f"rfc2217 {self._target}",
            daemon=True,
        )  # fmt: skip
        self._thread.start()
        log.debug("rfc2217 link open: %s %s", self._target, self.serial_kwargs)

    def _read_loop(
        self, loop: asyncio.AbstractEventLoop, port: serial.rfc2217.Serial, receiver: Receiver
    ) -> None:
        """Runs in its own thread: blocking reads, bytes handed to the loop."""
        error: BaseException | None = None
        try:
            while not self._stop.is_set():
                # Memory bound: stop taking bytes while the loop side is full. pyserial's
                # own queue then grows, as a UART's FIFO would overflow; the session
                # drains far faster than any serial line fills.
                if receiver.paused:
                    self._stop.wait(_READ_SLICE)
                    continue
                data = port.read(max(1, port.in_waiting))
                if data:
                    loop.call_soon_threadsafe(receiver.data_received, data)
        except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
            # TypeError/AttributeError: pyserial's port torn down under us by close().
            error = exc
        if not self._stop.is_set():
            with contextlib.suppress(RuntimeError):  # loop closed at shutdown
                loop.call_soon_threadsafe(receiver.connection_lost, error)

    def write(self, data: bytes) -> None:
        receiver = self._require()
        port = self._port
        if receiver.lost or port is None:
            raise self._lost(receiver)
        future = asyncio.get_running_loop().run_in_executor(None, port.write, data)
        self._writes.add(future)
        future.add_done_callback(self._written)

    def _written(self, future: asyncio.Future[None]) -> None:
        self._writes.discard(future)
        if not future.cancelled() and future.exception() is not None and self._receiver:
            self._receiver.connection_lost(future.exception())

    async def close(self) -> None:
        """Close the session; the socket is shut down before this returns."""
        port, receiver = self._port, self._receiver
        if port is None or receiver is None or self._closed_by_us:
            return
        self._closed_by_us = True
        self._stop.set()
        receiver.connection_lost(None)
        # pyserial's close joins its reader thread (up to its socket timeout) and sleeps:
        # never on the loop.
        try:
            await asyncio.get_running_loop().run_in_executor(None, _close_port, port)
        except OSError as error:
            log.debug("closing %s: %s", self._target, error)
        receiver.buffer.clear()

    @property
    def applied(self) -> dict[str, Any]:
        """The settings the session sent (for logs): baud rate, framing."""
        port = self._port
        if port is None:
            return {}
        return {
            "baudrate": port.baudrate,
            "bytesize": port.bytesize,
            "parity": port.parity,
            "stopbits": port.stopbits,
        }


def _close_port(port: serial.rfc2217.Serial) -> None:
    with contextlib.suppress(serial.SerialException):
        port.close()


def _close_when_opened(opening: asyncio.Future[serial.rfc2217.Serial]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        _close_port(opening.result())
