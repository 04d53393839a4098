"""Bytes in from one serial port, with every wait bounded.

The link only reads: a continuous-mode analyser broadcasts, and Modbus polling goes
through pymodbus's own serial client (``acquisition/modbus_bus.py``).

pyserial opens and configures the port (in an executor: an open can block on a
wedged adapter); reading is ours: the fd is registered with the loop's ``add_reader``
(epoll) and read with one ``os.read`` per wake-up. pyserial's own ``read`` polls with
``select()``, which raises ``filedescriptor out of range in select()`` for any
descriptor at or above 1024, and a daemon with ~200 ports (five descriptors each:
the port and pyserial's abort pipes) crosses that line (issue 17). Two facts of
serial lines shape this module:

* A serial line has no EOF. A read on a silent port never returns by itself, so
  ``SerialLink.read`` always takes a timeout and returns ``b""`` when it expires:
  silence is normal (the analyser's frame period may be long) and it is the
  supervisor's job to decide when silence means the link is dead.
* An unplugged USB adapter (or a pty whose master went away) makes the fd
  readable with no data, or fails the read with EIO. Both end the link (the fd is
  released at once); the next ``read`` raises ``ServomexConnectionError``, never a hang.

``close()`` releases the file descriptor immediately, not in a background task: a
descriptor still held when a USB adapter is replugged makes the kernel enumerate
it under a new name (ttyUSB1), and the daemon would never find its analyser again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios
import weakref
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any, Self

import serial

from servomexd.errors import (
    ServomexConnectionError,
    ServomexValidationError,
)
from servomexd.link.diagnose import diagnose
from servomexd.link.line import BAUDRATES
from servomexd.link.stream import Arrival, check_read, now_arrival, take_from

__all__ = ["BAUDRATES", "SerialLink", "SerialSettings"]

log = logging.getLogger(__name__)

_PARITIES = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}
_BYTESIZES = {5: serial.FIVEBITS, 6: serial.SIXBITS, 7: serial.SEVENBITS, 8: serial.EIGHTBITS}
_STOPBITS = {1: serial.STOPBITS_ONE, 1.5: serial.STOPBITS_ONE_POINT_FIVE, 2: serial.STOPBITS_TWO}

_HIGH_WATER = 256 * 1024
"""Bytes buffered before the link stops reading the fd (the kernel then buffers, and
eventually drops, like a real UART): memory stays bounded if nobody reads."""
_WAKE_TICK = 0.1
"""Readers that received bytes are woken together on a shared tick of this many seconds
instead of one by one: with hundreds of analysers the loop then runs every reader in
one pass with warm caches rather than one wake-up per frame (issue 17). Bytes are still
taken from the kernel as they arrive; only handing them on waits, at most this long."""
_READ_SIZE = 64 * 1024
"""Bytes taken per wake-up: everything the tty has (its buffer is 4 KiB) in one call."""


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """How to open one port. Defaults are the analyser's: 19200 baud, 8-N-1, no flow
    control (docs/protocol.md#serial-line)."""

    port: str
    baudrate: int = 19200
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1

    def __post_init__(self) -> None:
        if not isinstance(self.port, str) or not self.port.strip():
            raise ServomexValidationError("serial port path must be a non-empty string")
        if "\x00" in self.port:
            raise ServomexValidationError("serial port path contains a NUL byte")
        if isinstance(self.baudrate, bool) or self.baudrate not in BAUDRATES:
            raise ServomexValidationError(
                f"baudrate must be one of {', '.join(map(str, BAUDRATES))}",
                context={"baudrate": self.baudrate},
            )
        if isinstance(self.bytesize, bool) or self.bytesize not in _BYTESIZES:
            raise ServomexValidationError(
                "bytesize must be 5, 6, 7 or 8", context={"bytesize": self.bytesize}
            )
        if self.parity not in _PARITIES:
            raise ServomexValidationError(
                'parity must be "N", "E" or "O"', context={"parity": self.parity}
            )
        if isinstance(self.stopbits, bool) or self.stopbits not in _STOPBITS:
            raise ServomexValidationError(
                "stopbits must be 1, 1.5 or 2", context={"stopbits": self.stopbits}
            )

    @property
    def framing(self) -> str:
        """The usual short form, e.g. ``8N1``."""
        stop = "1.5" if self.stopbits == 1.5 else str(int(self.stopbits))
        return f"{self.bytesize}{self.parity}{stop}"

    def describe(self) -> str:
        """Log-safe one-liner, e.g. ``/dev/ttyUSB0 @19200 8N1``."""
        return f"{self.port} @{self.baudrate} {self.framing}"

    def serial_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``serial.Serial`` / ``serial_for_url``."""
        return {
            "baudrate": self.baudrate,
            "bytesize": _BYTESIZES[self.bytesize],
            "parity": _PARITIES[self.parity],
            "stopbits": _STOPBITS[self.stopbits],
            "xonxoff": False,
            "rtscts": False,
            "dsrdtr": False,
        }


class _TickWaker:
    """Wakes every reader that got bytes since the last tick, on the next tick."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[_FdReader] = []
        self.handle: asyncio.TimerHandle | None = None

    def add(self, reader: _FdReader) -> None:
        self.pending.append(reader)
        if self.handle is None:
            due = (self.loop.time() // _WAKE_TICK + 1) * _WAKE_TICK
            self.handle = self.loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self.handle = None
        pending, self.pending = self.pending, []
        for reader in pending:
            reader.queued = False
            reader.wake()


_wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _TickWaker] = (
    weakref.WeakKeyDictionary()
)


def _waker(loop: asyncio.AbstractEventLoop) -> _TickWaker:
    waker = _wakers.get(loop)
    if waker is None:
        waker = _wakers[loop] = _TickWaker(loop)
    return waker


class _FdReader:
    """Reads one non-blocking fd when the loop says it is readable; remembers how the
    link ended. Pausing stops watching the fd (the kernel then buffers, like a UART)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, port: serial.Serial, high_water: int):
        self.loop = loop
        self.port = port
        self.fd: int = port.fd
        self.buffer = bytearray()
        self.arrival: Arrival = (0, 0)
        """When the newest buffered byte was read from the kernel (before any tick)."""
        self.lost = False
        self.error: BaseException | None = None
        self.paused = False
        self.watching = False
        self.high_water = high_water
        self.queued = False
        """A wake-up is waiting for the next tick."""
        self._tick = _waker(loop)
        # One lazily re-armed timer per port instead of one per read (issue 17): a read
        # only moves the deadline; the timer, when it fires, re-arms at the newest one.
        self._waiter: asyncio.Future[bool] | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    async def wait(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait for bytes, a loss or a close: True; False after ``timeout`` of silence."""
        loop = self.loop
        self._deadline = loop.time() + timeout
        if self._timer is None or self._timer_at > self._deadline:
            self._arm(self._deadline)
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        try:
            return await waiter
        finally:
            self._waiter = None

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # nobody waits: the next wait arms again
        if self.loop.time() < self._deadline:
            self._arm(self._deadline)
        else:
            waiter.set_result(False)

    def wake(self) -> None:
        """End a pending ``wait`` with True (bytes arrived, the link was lost or closed)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def start(self) -> None:
        os.set_blocking(self.fd, False)
        # pyserial leaves VMIN=0 (it times its reads with select), and then a read that
        # finds no data returns 0 bytes instead of EAGAIN: indistinguishable from a
        # hang-up. A pty can report readable before its data is there (the kernel moves
        # it over asynchronously), so under load links were "lost" for nothing. With
        # VMIN=1 an empty read means EAGAIN, and only a real hang-up reads as EOF.
        with contextlib.suppress(termios.error):
            attrs = termios.tcgetattr(self.fd)
            attrs[6][termios.VMIN] = 1
            attrs[6][termios.VTIME] = 0
            termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
        self._watch()

    def _watch(self) -> None:
        self.loop.add_reader(self.fd, self._on_readable)
        self.watching = True

    def _unwatch(self) -> None:
        if self.watching:
            self.watching = False
            self.loop.remove_reader(self.fd)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:  # EIO: the adapter was unplugged, the pty master closed
            self._lose(error)
            return
        if not data:  # readable with no data: a hang-up
            self._lose(None)
            return
        self.buffer += data
        self.arrival = now_arrival()
        if not self.queued and self._waiter is not None:
            self.queued = True
            self._tick.add(self)
        if len(self.buffer) >= self.high_water and not self.paused:
            self.paused = True
            self._unwatch()

    def resume_if_drained(self) -> None:
        if self.paused and len(self.buffer) < self.high_water // 2 and not self.lost:
            self.paused = False
            self._watch()

    def _lose(self, error: BaseException | None) -> None:
        """The link is gone: stop watching and release the fd now (see the module doc)."""
        self.lost = True
        self.error = error
        self.wake()
        self.release()

    def release(self) -> None:
        """Stop watching and close the port; idempotent."""
        self._unwatch()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.port.is_open:
            try:
                self.port.close()
            except (OSError, serial.SerialException) as error:
                log.debug("closing %s: %s", self.port.port, error)


class SerialLink:
    """One open serial port: bounded reads and an immediate close.

    The I/O methods take an explicit ``timeout`` (hence the ASYNC109 waivers): a
    serial read without its own bound is exactly the hang this class exists to
    prevent, so callers cannot forget it.

    Usage::

        async with await SerialLink.open(settings) as link:
            data = await link.read(1.0)   # b"" after 1 s of silence
    """

    def __init__(self, settings: SerialSettings, *, high_water: int = _HIGH_WATER) -> None:
        self._settings = settings
        self._high_water = high_water
        self._reader: _FdReader | None = None
        self._closed_by_us = False
        self._arrival: Arrival = (0, 0)

    # --- lifecycle -----------------------------------------------------------------------

    @classmethod
    async def open(cls, settings: SerialSettings, *, high_water: int = _HIGH_WATER) -> Self:
        """Open ``settings.port`` (symlinks such as /dev/serial/by-id/... are followed).

        Raises ``ServomexConnectionError`` when the port is missing, busy (another
        process holds it: the port is locked exclusively) or not permitted.
        """
        link = cls(settings, high_water=high_water)
        await link._open()
        return link

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        # Opening can block (a wedged USB device), so it runs in an executor. If we are
        # cancelled meanwhile, the port is closed as soon as the open finishes, so a
        # shutdown or a supervisor timeout never leaks the fd.
        opening = loop.run_in_executor(
            None,
            partial(
                serial.Serial,
                self._settings.port,
                exclusive=True,
                **self._settings.serial_kwargs(),
            ),
        )
        try:
            port = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_when_opened)
            raise
        except (serial.SerialException, OSError, ValueError) as error:
            raise ServomexConnectionError(
                f"cannot open serial port: {diagnose(self._settings.port, error)}",
                context={"port": self._settings.port},
            ) from error
        reader = _FdReader(loop, port, self._high_water)
        try:
            reader.start()
        except BaseException:
            reader.release()
            raise
        self._reader = reader
        log.debug("serial port open: %s", self.describe())

    def describe(self) -> str:
        """The settings, plus the real device when ``port`` is a symlink."""
        text = self._settings.describe()
        real = os.path.realpath(self._settings.port)
        return text if real == self._settings.port else f"{text} ({real})"

    @property
    def settings(self) -> SerialSettings:
        return self._settings

    @property
    def arrival(self) -> Arrival:
        return self._arrival

    @property
    def is_open(self) -> bool:
        """True until the link is closed or lost."""
        reader = self._reader
        return reader is not None and not reader.lost and not self._closed_by_us

    async def close(self) -> None:
        """Close the port now; idempotent. The fd is released before this returns."""
        reader = self._reader
        if reader is None or self._closed_by_us:
            return
        self._closed_by_us = True
        reader.release()
        reader.buffer.clear()
        reader.wake()  # a pending read wakes up and reports the close

    async def __aenter__(self) -> Self:
        if self._reader is None:
            await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- I/O ---------------------------------------------------------------------------------

    def _require(self) -> _FdReader:
        if self._reader is None:
            raise ServomexConnectionError(
                "serial link is not open", context={"port": self._settings.port}
            )
        if self._closed_by_us:
            raise ServomexConnectionError(
                "serial link is closed", context={"port": self._settings.port}
            )
        return self._reader

    def _lost(self, reader: _FdReader) -> ServomexConnectionError:
        cause = reader.error
        message = "serial link lost" if cause is None else f"serial link lost: {_cause(cause)}"
        error = ServomexConnectionError(message, context={"port": self._settings.port})
        error.__cause__ = cause
        return error

    async def read(self, timeout: float, *, max_bytes: int | None = None) -> bytes:  # noqa: ASYNC109
        """Return the bytes received so far (waiting up to ``timeout`` seconds for the
        first one); ``b""`` when the line stayed silent for ``timeout``.

        Raises ``ServomexConnectionError`` once the link is lost (EOF, I/O error, adapter
        unplugged), after any bytes received before the loss have been returned.
        """
        check_read(timeout, max_bytes)
        reader = self._require()
        if not reader.buffer:
            if reader.lost:
                raise self._lost(reader)
            if not await reader.wait(timeout):
                return b""
            if self._closed_by_us:
                raise ServomexConnectionError(
                    "serial link closed while reading", context={"port": self._settings.port}
                )
            if not reader.buffer:
                raise self._lost(reader)
        self._arrival = reader.arrival
        data = take_from(reader.buffer, max_bytes)
        reader.resume_if_drained()
        return data

    def reset_input(self) -> None:
        """Discard everything received and not yet read (ours and the kernel's)."""
        reader = self._require()
        reader.buffer.clear()
        if not reader.lost:
            with contextlib.suppress(OSError, serial.SerialException):
                reader.port.reset_input_buffer()


def _close_when_opened(opening: asyncio.Future[serial.Serial]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        with contextlib.suppress(OSError, serial.SerialException):
            opening.result().close()


def _cause(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text.splitlines()[0] if text else type(error).__name__
