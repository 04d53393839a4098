"""The sink the deliverer writes to now, and how it changes between two writes.

Three things replace or reset the open sink without touching what is delivered: a
SIGHUP or a due roll reopens a file sink, a reload switches to another sink, and a
failure closes it so the next attempt starts from a fresh connection or file. They live
here, apart from ``deliverer.py``'s exactly-once steps, because none of them decides
which batches are sent: after a switch or a failure the deliverer syncs the checkpoint
again (its step 4), and that alone decides what is sent next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from servomexd.delivery.health import SinkHealth
from servomexd.destination import Destination

log = structlog.get_logger("servomexd.writer")

CLOSE_TIMEOUT = 5.0
"""Longest wait for a sink to close; a close that hangs (a pool waiting on a dead
connection) is abandoned."""


class CurrentSink:
    """The open destination and its health; reopen, switch and close-after-failure."""

    def __init__(
        self, destination: Destination, health: SinkHealth, *, backlog: Callable[[], int]
    ) -> None:
        self.destination = destination
        self.health = health
        self._backlog = backlog
        self.reopen_requested = False
        self._switch: tuple[Destination, SinkHealth, asyncio.Future[None]] | None = None
        self.interrupt = asyncio.Event()
        """Wakes a retry pause early (a sink switch is waiting)."""

    @property
    def switch_pending(self) -> bool:
        return self._switch is not None

    def request_switch(
        self, destination: Destination, health: SinkHealth
    ) -> asyncio.Future[None]:
        """Ask for a switch to ``destination`` between two writes; the future completes
        once switched."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._switch = (destination, health, done)
        self.interrupt.set()
        return done

    async def switch(self) -> None:
        """Close the old sink and make the requested one current (it opens at the sync)."""
        assert self._switch is not None
        destination, health, done = self._switch
        self._switch = None
        old, previous = self.destination, self.health
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await old.close()
        except Exception as exc:
            error = str(exc) or type(exc).__name__
            log.warning("sink.close_failed", sink=previous.sink, error=error)
        previous.closed()
        self.destination, self.health = destination, health
        log.info(
            "sink.switched",
            closed=old.description,
            target=destination.description,
            hint="pending batches go to the new sink; committed ones were acked",
        )
        if not done.done():
            done.set_result(None)

    async def failed(self, exc: BaseException, action: str, rows: int = 0) -> None:
        """Record the failure, then forget the sink: the next attempt starts fresh."""
        self.health.failed(exc, action, rows=rows, backlog=self._backlog())
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.destination.close()
        except Exception as close_exc:
            log.debug("sink.close_after_failure", error=str(close_exc) or type(close_exc).__name__)

    async def reopen(self, write_timeout: float) -> None:
        """Reopen a file sink (SIGHUP) or roll it to a new file (its interval is due)."""
        rolled = self.destination.roll_due()
        self.reopen_requested = False
        if not rolled and not self.destination.reopens_on_hup:
            log.info("sink.reopen_skipped", sink=self.health.sink, reason="not a file sink")
            return
        previous = self.destination.current_path
        try:
            async with asyncio.timeout(write_timeout):
                await self.destination.close()
                await self.destination.open()
        except Exception as exc:
            await self.failed(exc, "reopen")
            return
        log.info(
            "sink.rolled" if rolled else "sink.reopened",
            sink=self.health.sink,
            closed=None if previous is None else str(previous),
            target=self.destination.description,
        )

    async def aclose(self) -> None:
        """Close the sink (after delivery ended)."""
        try:
            await self.destination.close()
        except Exception as exc:
            log.warning("sink.close_failed", sink=self.health.sink, error=str(exc))
        self.health.closed()
