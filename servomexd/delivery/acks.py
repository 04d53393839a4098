"""Step 3 of the exactly-once argument (``deliverer.py``): acking the spool.

An ack runs on the spool's thread while the deliverer already writes the next chunk to
the sink, instead of between the two writes: during a backlog drain the sink, not the
spool's fsync, sets the pace. Acks are chained, so they reach the spool in seq order,
one at a time; a later write only ever reads batches after the ones being acked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from servomexd.spool import Spool

log = structlog.get_logger("servomexd.writer")


class SpoolAcks:
    """Acks the spool up to a seq, in the background or now."""

    def __init__(self, spool: Spool, after: Callable[[], None]) -> None:
        self.spool = spool
        self._after = after
        """Called after every ack (gauges, "spool emptied")."""
        self._running: asyncio.Task[None] | None = None

    def behind(self, seq: int) -> None:
        """Ack up to ``seq`` while the caller goes on (after the acks already running)."""
        self._running = asyncio.create_task(self._after_previous(self._running, seq))

    async def now(self, seq: int) -> None:
        """Ack up to ``seq`` and return when it is done."""
        await self.settled()
        await self._ack(seq)

    async def settled(self) -> None:
        """Wait for the acks running in the background (before a sync, idling, the end)."""
        task, self._running = self._running, None
        if task is not None:
            await asyncio.shield(task)

    async def _after_previous(self, previous: asyncio.Task[None] | None, seq: int) -> None:
        if previous is not None:
            await previous
        await self._ack(seq)

    async def _ack(self, seq: int) -> None:
        try:
            await self.spool.ack(seq)
        except Exception as exc:
            # Harmless for exactly-once sinks (the checkpoint re-acks it after a restart).
            log.error("spool.ack_failed", seq=seq, error=str(exc))
        self._after()
