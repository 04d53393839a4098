"""Continuous-ASCII sessions: a link (serial port or device server) feeding the framer.

The analyser broadcasts on its own; the session only listens. Each read is bounded
by ``read_timeout`` so the loop never blocks indefinitely in the driver; a silent
line simply produces no events (the supervisor's ``silence_timeout`` decides when
silence means a dead link). A lost link (EOF, I/O error, adapter unplugged) ends
``events()`` with ``ServomexConnectionError``.

Frames are stamped with the moment the link received the chunk holding their
terminator (``ByteLink.arrival``), not when the loop handed it on: wall clock (UTC)
for storage, monotonic for ordering and latency.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

from servomexd.acquisition.base import DeviceSession, SessionFactory
from servomexd.acquisition.settings import ContinuousDeviceSettings
from servomexd.link.connect import describe_port, open_link
from servomexd.link.line import line_of
from servomexd.link.serial import SerialSettings
from servomexd.link.stream import ByteLink
from servomexd.link.tcp import CONNECT_TIMEOUT
from servomexd.model import AcquisitionEvent, ProtocolKind
from servomexd.protocol.continuous import DEFAULT_MAX_LINE, ContinuousFramer

__all__ = ["ContinuousSession", "ContinuousSessionFactory"]


class ContinuousSession:
    """One open port to one broadcasting analyser."""

    def __init__(
        self,
        link: ByteLink,
        *,
        read_timeout: float,
        max_line: int,
        framer: ContinuousFramer | None = None,
    ) -> None:
        """``framer``: one that already holds the start of the stream (AUTO's listen)."""
        self._link = link
        self._read_timeout = read_timeout
        self._framer = framer if framer is not None else ContinuousFramer(max_line)

    @property
    def protocol(self) -> ProtocolKind:
        return ProtocolKind.CONTINUOUS

    @property
    def link(self) -> ByteLink:
        return self._link

    async def events(self) -> AsyncIterator[AcquisitionEvent]:
        """Frames and rejections as they arrive, until the link fails.

        The first line after opening mid-broadcast is usually a partial frame: it comes
        out as one ``noise`` (or checksum) rejection, as it should.
        """
        link = self._link
        framer = self._framer
        timeout = self._read_timeout
        while True:
            data = await link.read(timeout)
            if not data:
                continue
            wall_ns, monotonic_ns = link.arrival
            received_at = datetime.fromtimestamp(wall_ns / 1e9, UTC)
            for event in framer.feed(data, received_at=received_at, monotonic_ns=monotonic_ns):
                yield event

    async def aclose(self) -> None:
        """Release the port at once."""
        self._framer.reset()
        await self._link.close()


class ContinuousSessionFactory:
    """Opens ``ContinuousSession``s on one configured port."""

    def __init__(
        self,
        settings: SerialSettings,
        *,
        read_timeout: float = 1.0,
        max_line: int = DEFAULT_MAX_LINE,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        if read_timeout <= 0:
            raise ValueError("read_timeout must be > 0")
        self._settings = settings
        self._read_timeout = read_timeout
        self._max_line = max_line
        self._connect_timeout = connect_timeout

    @classmethod
    def for_device(cls, device: ContinuousDeviceSettings) -> ContinuousSessionFactory:
        """The factory for a configured device: its line, ``read_timeout`` and
        ``connect_timeout``."""
        return cls(
            SerialSettings(**line_of(device)),
            read_timeout=device.read_timeout,
            connect_timeout=device.connect_timeout,
        )

    @property
    def settings(self) -> SerialSettings:
        return self._settings

    @property
    def description(self) -> str:
        return f"{describe_port(self._settings)} continuous"

    @property
    def connect_timeout(self) -> float:
        return self._connect_timeout

    def session_on(self, link: ByteLink, framer: ContinuousFramer) -> ContinuousSession:
        """A session on a link already open (AUTO keeps the one it listened on)."""
        return ContinuousSession(
            link, read_timeout=self._read_timeout, max_line=self._max_line, framer=framer
        )

    async def open(self) -> ContinuousSession:
        """Open the port or connect to the device server; ``ServomexConnectionError`` if it
        is missing, busy, denied, refused or unreachable."""
        link = await open_link(self._settings, connect_timeout=self._connect_timeout)
        return ContinuousSession(link, read_timeout=self._read_timeout, max_line=self._max_line)


if TYPE_CHECKING:  # mypy proves both classes meet the supervisor's contract
    _factory: SessionFactory = ContinuousSessionFactory(SerialSettings("/dev/null"))
    _session: DeviceSession = cast(ContinuousSession, None)
