"""Reading the spool for the deliverer, and reading ahead while a backlog drains.

Step 6 of the exactly-once argument in ``deliverer.py``: the next chunk is read (and
decoded) during the current write, only after the chunk being written, and dropped on
any failure, so reading ahead can neither skip nor repeat a batch.
"""

from __future__ import annotations

import asyncio

from servomexd.delivery.flusher import Flusher
from servomexd.spool import Spool, SpoolBatch

Chunk = tuple[list[SpoolBatch], bool]
"""Batches read from the spool, and whether the flusher had finished before the read."""


class ReadAhead:
    """The next chunk of pending batches: read now, or already read during a write."""

    def __init__(self, spool: Spool, feed: Flusher) -> None:
        self.spool = spool
        self.feed = feed
        self._prefetched: asyncio.Task[Chunk] | None = None

    async def next_chunk(self, after_seq: int, max_rows: int) -> Chunk:
        """The chunk read ahead, else the batches after ``after_seq`` read now."""
        task, self._prefetched = self._prefetched, None
        if task is not None:
            return await task
        return await self.read(after_seq, max_rows)

    def prefetch(self, batches: list[SpoolBatch], max_rows: int) -> None:
        """While a backlog drains, read and decode the next chunk during this write."""
        if sum(len(batch.records) for batch in batches) >= max_rows // 2:
            self._prefetched = asyncio.create_task(self.read(batches[-1].seq, max_rows))

    async def read(self, after_seq: int, max_rows: int) -> Chunk:
        """Pending batches after ``after_seq``. The wake-up event is cleared first, so a
        batch spooled during the read sets it again and is never slept through."""
        flusher_was_done = self.feed.finished
        self.feed.spooled.clear()
        batches = await self.spool.read_after(after_seq, max_rows)
        return batches, flusher_was_done

    async def drop(self) -> None:
        """Cancel a read-ahead whose result is no longer wanted (after a failed write)."""
        task, self._prefetched = self._prefetched, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait([task])  # propagates our own cancellation, not the task's outcome
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" warning
