"""An asyncio transport over a link that sends, so pymodbus can frame Modbus over RFC 2217.

pymodbus opens ``rfc2217://`` through pyserial on the event loop thread (a blocking
connect and negotiation) and then watches ``fileno()``, which pyserial's RFC 2217
client does not have. Rather than hand-write Modbus framing, servomexd keeps pymodbus
for the frames and gives it this transport instead: ``Rfc2217Link`` does the Telnet
part off the loop, a pump task hands received bytes to the pymodbus protocol, and a
lost link is reported to it as ``connection_lost``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

from servomexd.errors import ServomexConnectionError
from servomexd.link.stream import ByteLink


class WritableLink(ByteLink, Protocol):
    """A link that also sends (``Rfc2217Link``): what a transport for pymodbus needs."""

    def write(self, data: bytes) -> None: ...

__all__ = ["LinkTransport", "settle_closes"]


class StreamProtocol(Protocol):
    """What the transport calls (``asyncio.Protocol`` and pymodbus's ``ModbusProtocol``)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...


_READ_SLICE = 0.5
"""Bound of one read in the pump (reads return at once when bytes arrive)."""


class LinkTransport(asyncio.Transport):
    """Feeds ``protocol`` from ``link`` until the link is lost or ``close()``."""

    def __init__(self, link: WritableLink, protocol: StreamProtocol) -> None:
        super().__init__()
        self._link = link
        self._protocol = protocol
        self._closing = False
        self._pump: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Announce the connection and start reading (call on the loop)."""
        self._protocol.connection_made(self)
        self._pump = asyncio.get_running_loop().create_task(
            self._read_loop(), name=f"link pump {self._link.describe()}"
        )

    async def _read_loop(self) -> None:
        error: BaseException | None = None
        try:
            while not self._closing:
                data = await self._link.read(_READ_SLICE)
                if data and not self._closing:
                    self._protocol.data_received(data)
        except (ServomexConnectionError, OSError) as exc:
            error = exc
        if not self._closing:
            self._closing = True
            with contextlib.suppress(Exception):
                await self._link.close()
            self._protocol.connection_lost(
                error if isinstance(error, Exception) else ConnectionError("link lost")
            )

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        try:
            self._link.write(bytes(data))
        except ServomexConnectionError:
            self.abort()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._pump is not None:
            self._pump.cancel()
        task = asyncio.get_running_loop().create_task(self._link.close())
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)

    def abort(self) -> None:
        self.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": self._link.describe()}.get(name, default)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_reading(self) -> bool:
        return not self._closing


_SETTLE_TIMEOUT = 8.0
"""An RFC 2217 close may take about 7 s (pyserial's own negotiation timeouts)."""

_CLOSING: set[asyncio.Task[None]] = set()
"""Closes in flight (a task needs a strong reference until it is done)."""


async def settle_closes() -> None:
    """Wait (bounded) for the links this module is still closing.

    A device server that takes one client frees its slot only once the old connection
    is closed; AUTO switching framings reconnects at once and would be refused.
    """
    if not _CLOSING:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_SETTLE_TIMEOUT):
            await asyncio.gather(*_CLOSING, return_exceptions=True)
