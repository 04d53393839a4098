"""One supervisor per analyser: open, read, detect a dead link, close at once, back off, retry.

The loop (in the spirit of Home Assistant's dsmr reconnect loop and aiomqtt's client):

    open a session  --fails-->  link down, back off, retry (a missing port is not fatal)
    read events; one watchdog per session ends it after ``silence_timeout`` without
        a frame (not counting the daemon's own lag: ``_SilenceWatchdog``)
        frame     -> metrics + samples into the buffer; link up at the first one
        rejection -> counted by reason + an error row into the buffer
    EOF / transport error / OSError / silence  -> close the session AT ONCE, link down,
        back off (jittered, reset after a healthy period), reopen

A device is silent only if nothing arrived, not if the daemon did not look: after a
stall longer than ``silence_timeout`` (SIGSTOP, a VM pause, heavy swapping, a CPU-starved
host) the deadline has passed when the process resumes, and closing the port would
discard what the kernel holds. The watchdog's check then runs late, which proves the loop
itself was stalled, so it gives the reader a turn (at least ``silence_grace``) for as
long as its checks keep running late; even on time it grants one ``silence_grace``
before closing the port.

Closing at once matters: a descriptor held open on an unplugged USB adapter makes the
kernel give the replugged adapter a new name (ttyUSB1), and the path we reopen would
not find it. Every exception is contained in the device's own task: one analyser's
trouble never reaches another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import NamedTuple, Protocol

import structlog

from servomexd.acquisition.base import DeviceSession, SessionFactory, raise_if_stop_requested
from servomexd.acquisition.rejections import RejectionLog
from servomexd.backoff import Backoff
from servomexd.errors import ServomexError
from servomexd.metrics import Metrics
from servomexd.model import AcquisitionEvent, Frame, Rejection, Sample

log = structlog.get_logger("servomexd.supervisor")

_CLOSE_TIMEOUT = 2.0
_SILENCE_GRACE = 0.5
"""Seconds a reader gets, once the silence deadline has passed, to hand on what is already
waiting (at most ``silence_timeout``; more while the loop itself runs late)."""
_OPEN_WARN_AFTER = 10.0
"""An open() still pending after this is reported (an open normally takes milliseconds)."""


class SampleBuffer(Protocol):
    """Where acquired samples go (the writer's in-memory buffer); must never block."""

    def add_samples(self, samples: Sequence[Sample]) -> None: ...


class LinkHealth(NamedTuple):
    """One device's link as readiness, the status line and the summary see it."""

    name: str
    up: bool
    error: str | None
    frames: int
    rejections: int
    reconnects: int


_LAG_GRACE = 0.05
"""A watchdog check this late means the loop itself was busy: bytes may be waiting."""


class _SilenceWatchdog:
    """Expires the session's ``asyncio.timeout`` after ``silence_timeout`` without a frame.

    It accounts for the daemon's own lag: a check that runs late means the
    event loop was busy, and the frame that would have fed it may be waiting unread in
    the kernel, so the check is retried once the loop had a turn to read it, for as
    long as the checks keep running late. A device is not declared silent for the
    daemon's own delay; a dead one is declared once the loop keeps time again.
    """

    def __init__(self, timeout: float, clock: Callable[[], float], grace: float) -> None:
        self.timeout = timeout
        self.grace = grace
        self._clock = clock
        self._fed = clock()
        self._granted = 0.0
        self._expiry: asyncio.Timeout | None = None
        self._handle: asyncio.TimerHandle | None = None

    def fed(self) -> None:
        self._fed = self._clock()

    def arm(self, expiry: asyncio.Timeout) -> None:
        self._expiry = expiry
        self._schedule(self.timeout)

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        self._handle = loop.call_at(due, self._check, due)

    def _check(self, due: float) -> None:
        self._handle = None
        late = asyncio.get_running_loop().time() - due
        remaining = self._fed + self.timeout - self._clock()
        if remaining > 0:
            self._granted = 0.0
            self._schedule(remaining)
            return
        if late > _LAG_GRACE:
            # The loop was busy (for as long as it stays so): its bytes may be waiting
            # unread; the reader gets a turn before anything is declared.
            self._schedule(max(late, self.grace))
            return
        if not self._granted:
            # On time, but the link may hold bytes not handed on yet (serial links wake
            # their readers on a shared tick): one short grace.
            self._granted = self.grace
            self._schedule(self.grace)
            return
        if self._expiry is not None:
            self._expiry.reschedule(asyncio.get_running_loop().time())


class DeviceSupervisor:
    """Keeps one analyser's link alive for as long as ``run()`` runs."""

    def __init__(
        self,
        name: str,
        factory: SessionFactory,
        buffer: SampleBuffer,
        metrics: Metrics,
        *,
        silence_timeout: float,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        open_warn_after: float = _OPEN_WARN_AFTER,
        silence_grace: float = _SILENCE_GRACE,
    ) -> None:
        self.name = name
        self.factory = factory
        self.buffer = buffer
        self.metrics = metrics
        self.silence_timeout = silence_timeout
        self.backoff = backoff if backoff is not None else Backoff()
        self._clock = clock
        self.open_warn_after = open_warn_after
        self.silence_grace = min(silence_grace, silence_timeout)
        self.link_up = False
        self.running = False
        self.sessions_opened = 0
        self.reconnects = 0
        self.frames = 0
        self.rejections = 0
        self.last_frame: Frame | None = None
        self.last_error: str | None = "not connected yet"
        self._last_reason: str | None = None
        self._log = log.bind(device=name)
        self._rejection_log = RejectionLog(self._log, clock)
        metrics.register_device(name)

    def health(self) -> LinkHealth:
        return LinkHealth(
            self.name, self.link_up, self.last_error, self.frames, self.rejections,
            self.reconnects,
        )

    async def run(self) -> None:
        """Supervise until cancelled. Never raises anything but ``CancelledError``."""
        self.running = True
        try:
            while True:
                reason = await self._one_session()
                # A driver that turned our cancellation into a link error must not
                # make us reconnect: the request to stop still stands.
                raise_if_stop_requested()
                delay = self.backoff.next_delay()
                self._link_down(reason, delay)
                await asyncio.sleep(delay)
        finally:
            self.running = False
            self._set_link(False)

    async def _one_session(self) -> str:
        """Open, read until the link fails; returns why it ended."""
        opening = asyncio.ensure_future(self.factory.open())
        try:
            await asyncio.wait({opening}, timeout=self.open_warn_after)
            if not opening.done():
                # Not retried (a second open would pile another blocked thread on the same
                # wedged adapter), but reported: otherwise the device looks merely absent.
                self.last_error = (
                    f"opening {self.factory.description} has not returned after "
                    f"{self.open_warn_after:g} s"
                )
                self._log.warning(
                    "device.open_hanging",
                    target=self.factory.description,
                    waited_s=self.open_warn_after,
                    hint="a wedged USB adapter or driver; replugging it usually clears it",
                )
            session = await opening
        except asyncio.CancelledError:
            opening.cancel()
            raise
        except Exception as exc:  # contained: a device's failure must not leave its task
            return _describe(exc)
        self.sessions_opened += 1
        if self.sessions_opened > 1:
            self.reconnects += 1
            self.metrics.reconnects.labels(self.name).inc()
        self._log.info("device.port_opened", target=self.factory.description)
        try:
            return await self._read(session)
        finally:
            self._set_link(False)
            await _close(session, self._log)

    async def _read(self, session: DeviceSession) -> str:
        events = session.events()
        iterator: AsyncIterator[AcquisitionEvent] = aiter(events)
        # One watchdog per session, not a timer per event: a frame only stamps the
        # clock, and the watchdog re-arms itself when it finds a newer frame.
        watchdog = _SilenceWatchdog(self.silence_timeout, self._clock, self.silence_grace)
        first = True
        try:
            async with asyncio.timeout(None) as expiry:
                watchdog.arm(expiry)
                try:
                    while True:
                        event = await anext(iterator)
                        if isinstance(event, Frame):
                            watchdog.fed()
                            self._on_frame(event, first)
                            first = False
                        elif isinstance(event, Rejection):
                            self._on_rejection(event)
                finally:
                    watchdog.disarm()
        except TimeoutError:
            return f"no valid frame for {self.silence_timeout:g} s (silence_timeout)"
        except StopAsyncIteration:
            return "end of stream (EOF)"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return _describe(exc)
        finally:
            closer = getattr(iterator, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()

    def _on_frame(self, frame: Frame, first: bool) -> None:
        self.frames += 1
        self._rejection_log.frame()
        self.last_frame = frame
        self.metrics.observe_frame(self.name, frame)
        self.buffer.add_samples(frame.as_samples(self.name))
        if first:
            self.backoff.mark_healthy()
            self._set_link(True)
            self.last_error = None
            self._last_reason = None
            self._log.info(
                "device.link_up",
                target=self.factory.description,
                protocol=frame.protocol.value,
                channels=len(frame.readings),
                reconnects=self.reconnects,
            )

    def _on_rejection(self, rejection: Rejection) -> None:
        self.rejections += 1
        self.metrics.observe_rejection(self.name, rejection.reason)
        self.buffer.add_samples([rejection.as_sample(self.name)])
        if not self._rejection_log.rejected(rejection.reason, str(rejection.error)):
            self._log.debug(
                "device.frame_rejected", reason=rejection.reason, error=str(rejection.error)
            )

    def _set_link(self, up: bool) -> None:
        self.link_up = up
        self.metrics.link_up.labels(self.name).set(1 if up else 0)

    def _link_down(self, reason: str, delay: float) -> None:
        self.last_error = reason
        # The first failure (or a new reason) is a warning; the same failure repeating
        # while the port stays missing is only info, so the journal is not flooded.
        level = "warning" if reason != self._last_reason else "info"
        self._last_reason = reason
        getattr(self._log, level)(
            "device.link_down",
            reason=reason,
            retry_in_s=round(delay, 2),
            target=self.factory.description,
        )


def _describe(exc: BaseException) -> str:
    """The reason for a log line that carries the port as ``target`` already: a
    servomexd error's message and context without its port, else type and text."""
    if isinstance(exc, ServomexError):
        extra = [f"{k}={v}" for k, v in exc.context.items() if k not in _NAMED_ELSEWHERE]
        return exc.message + (f" [{', '.join(extra)}]" if extra else "")
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_NAMED_ELSEWHERE = frozenset({"port", "target"})


async def _close(session: DeviceSession, logger: structlog.typing.FilteringBoundLogger) -> None:
    """Close the session now, even while being cancelled (the fd must not linger)."""
    task = asyncio.ensure_future(session.aclose())
    try:
        await asyncio.wait_for(asyncio.shield(task), _CLOSE_TIMEOUT)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, _CLOSE_TIMEOUT)
        raise
    except Exception as exc:
        logger.warning("device.close_failed", error=_describe(exc))
