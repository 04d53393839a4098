"""Spool -> sink, exactly once for sinks that keep a checkpoint.

Why no sample is lost and none is stored twice (each step names the code that does it):

1. A record reaches the sink only from the spool. ``Spool.append`` gives each batch the
   next ``seq`` of the spool's ``stream_id`` and commits it durably first (``Flusher``).
2. ``_write`` sends consecutive batches ``first..last`` in seq order as ONE write with
   ``checkpoint=(stream, last, first)``. A checkpointing sink commits the rows and
   ``stream -> last`` in one transaction, and inside it refuses the write
   (``ServomexSinkCheckpointConflict``) when its stored checkpoint is already
   ``>= first``: it already holds those batches.
3. Only after that write returned does ``_write`` ack the spool up to ``last``; the
   spool forgets acked batches only. A crash between commit and ack leaves batches in
   the spool that the sink already holds; step 4 resolves them.
4. Before the first write, and after every failure (``_synced`` is cleared),
   ``_sync_checkpoint`` reads the sink's checkpoint ``c``, acks the spool up to ``c``
   and restarts reading from the oldest batch left (``_delivered = 0``). So the next
   write starts exactly at the first batch the sink does not hold.
5. A write whose outcome is unknown (a timeout, a connection lost during COMMIT) either
   committed (its checkpoint is read in step 4: acked, not resent) or did not (resent).
   A COMMIT that lands only after step 4 re-read the checkpoint makes the resend
   conflict in step 2: nothing is written twice; the conflict leads back to step 4.
6. Reading ahead (``_prefetch``) reads only after the batch being written and is
   discarded on any failure, so it can neither skip nor repeat a batch.

The one loss the spool allows is explicit: over ``max_bytes`` it drops the oldest
batches and counts them. Sinks without a checkpoint (files) read ``c = 0`` in step 4,
so an unknown outcome is written again: at-least-once, as documented.

A failed sink is closed and retried with jittered exponential backoff; meanwhile the
spool absorbs the data and acquisition never waits. A backlog drains in large chunks
(several spool batches merged per write, up to ``max_write_rows`` rows) while the
next chunk is read and decoded: the sink, not the spool, sets the pace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from servomexd.backoff import Backoff
from servomexd.delivery.flusher import Flusher
from servomexd.delivery.health import SinkHealth, update_spool_gauges
from servomexd.delivery.waiting import wait_or_timeout
from servomexd.destination import Destination
from servomexd.errors import ServomexSinkCheckpointConflict
from servomexd.metrics import Metrics
from servomexd.rows import Record
from servomexd.spool import Spool, SpoolBatch

log = structlog.get_logger("servomexd.writer")

_CLOSE_TIMEOUT = 5.0
_IDLE_WAIT = 5.0
"""Longest sleep with nothing to deliver (a roll or a reopen is checked at least this often)."""
_READ_RETRY = 1.0

Chunk = tuple[list[SpoolBatch], bool]
"""Batches read from the spool, and whether the flusher had finished before the read."""


class Deliverer:
    """Sends spool batches to the destination in seq order and acks them."""

    def __init__(
        self,
        spool: Spool,
        destination: Destination,
        feed: Flusher,
        health: SinkHealth,
        metrics: Metrics,
        *,
        stop: asyncio.Event,
        backlog: Callable[[], int],
        backoff: Backoff,
        max_write_rows: int = 20_000,
        write_timeout: float = 60.0,
    ) -> None:
        self.spool = spool
        self.destination = destination
        self.feed = feed
        self.health = health
        self.metrics = metrics
        self.backoff = backoff
        self.max_write_rows = max_write_rows
        self.write_timeout = write_timeout
        self._stop = stop
        self._backlog = backlog
        self._synced = False
        self._delivered = 0
        """Seq of the last batch written since the last sync (0: read from the oldest)."""
        self._prefetched: asyncio.Task[Chunk] | None = None
        self._reopen = False
        self.first_sync = asyncio.Event()
        """Set once the sink has been tried at start (opened or failed)."""
        roll = destination.roll_interval
        self._idle_wait = _IDLE_WAIT if roll is None else min(_IDLE_WAIT, roll)

    def request_reopen(self) -> None:
        """SIGHUP: reopen the sink's file between two writes."""
        self._reopen = True
        self.feed.spooled.set()

    # --- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until stopped and the spool holds nothing the flusher could add to."""
        try:
            while await self._round():
                pass
        finally:
            await self._drop_prefetch()

    async def _round(self) -> bool:
        """One step: reopen if asked, sync if needed, deliver one chunk. False: done."""
        if self._reopen or self.destination.roll_due():
            await self._reopen_destination()
        if not self._synced:
            self._synced = await self._sync_checkpoint()
            self.first_sync.set()
            return self._synced or await self._pause(self._retry_delay())
        try:
            batches, flusher_was_done = await self._next_chunk()
        except Exception as exc:
            log.error("spool.read_failed", error=str(exc))
            return await self._pause(_READ_RETRY)
        if not batches:
            # Only a read that began after the final flush proves nothing is left.
            if self._stop.is_set() and flusher_was_done:
                return False
            if not self._reopen:
                await wait_or_timeout(self.feed.spooled, self._idle_wait)
            return True
        self._prefetch(batches)
        if await self._write(batches):
            return True
        await self._drop_prefetch()
        self._synced = False
        return await self._pause(self._retry_delay())

    def _retry_delay(self) -> float:
        delay = self.backoff.next_delay()
        # An operator-needed fault is retried slowly, so fixing it needs no restart.
        return max(delay, self.backoff.cap) if self.health.fault else delay

    async def _pause(self, delay: float) -> bool:
        """Wait before a retry, waking at once on stop; False when stopping."""
        if self._stop.is_set():
            return False
        await wait_or_timeout(self._stop, delay)
        return True

    # --- reading ahead ------------------------------------------------------------------

    async def _next_chunk(self) -> Chunk:
        task, self._prefetched = self._prefetched, None
        if task is not None:
            return await task
        return await self._read(self._delivered)

    def _prefetch(self, batches: list[SpoolBatch]) -> None:
        """While a backlog drains, read and decode the next chunk during this write."""
        if sum(len(batch.records) for batch in batches) >= self.max_write_rows // 2:
            self._prefetched = asyncio.create_task(self._read(batches[-1].seq))

    async def _read(self, after_seq: int) -> Chunk:
        """Pending batches after ``after_seq``. The wake-up event is cleared first, so a
        batch spooled during the read sets it again and is never slept through."""
        flusher_was_done = self.feed.finished
        self.feed.spooled.clear()
        batches = await self.spool.read_after(after_seq, self.max_write_rows)
        return batches, flusher_was_done

    async def _drop_prefetch(self) -> None:
        """Cancel a read-ahead whose result is no longer wanted (after a failed write)."""
        task, self._prefetched = self._prefetched, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait([task])  # propagates our own cancellation, not the task's outcome
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" warning

    # --- the exactly-once steps -----------------------------------------------------------

    async def _sync_checkpoint(self) -> bool:
        """(Re)open the sink and ack what it already committed (step 4)."""
        try:
            async with asyncio.timeout(self.write_timeout):
                await self.destination.open()
                checkpoint = await self.destination.read_checkpoint(self.spool.stream_id)
        except Exception as exc:
            await self._failed(exc, "open")
            return False
        if checkpoint:
            try:
                acked = await self.spool.ack(checkpoint)
            except Exception as exc:
                # Not synced: delivering now would re-send batches the sink already holds.
                # Retried like a sink failure instead of ending the writer (and the daemon).
                log.error("spool.ack_failed", seq=checkpoint, error=str(exc))
                return False
            if acked:
                log.info(
                    "sink.checkpoint_acked",
                    checkpoint=checkpoint,
                    batches=acked,
                    hint="already committed by the sink before the last failure",
                )
        self._delivered = 0
        update_spool_gauges(self.spool, self.metrics)
        if not self.health.in_outage or self.spool.stats.batches == 0:
            self._recovered()
        # else: after an outage, only a committed write proves recovery (a full disk
        # lets the file reopen but refuses every write: no recovered/down flapping).
        return True

    async def _write(self, batches: list[SpoolBatch]) -> bool:
        """Write ``batches`` as one checkpointed write, then ack them (steps 2 and 3)."""
        first, last = batches[0].seq, batches[-1].seq
        records: list[Record] = (
            batches[0].records
            if len(batches) == 1
            else [record for batch in batches for record in batch.records]
        )
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.write_timeout):
                await self.destination.write_records(
                    records, checkpoint=(self.spool.stream_id, last, first)
                )
        except ServomexSinkCheckpointConflict as exc:
            # An earlier attempt of this write committed after all (step 5): nothing was
            # written now. Re-read the checkpoint and go on; the sink is healthy.
            log.warning(
                "sink.checkpoint_conflict",
                sink=self.health.sink,
                first_seq=first,
                last_seq=last,
                error=str(exc),
            )
            return False
        except Exception as exc:
            await self._failed(exc, "write", rows=len(records))
            return False
        if self.health.in_outage:
            self._recovered()
        self.health.wrote(len(records), time.perf_counter() - started)
        self._delivered = last
        try:
            await self.spool.ack(last)
        except Exception as exc:
            # Harmless for exactly-once sinks (the checkpoint re-acks it after a restart).
            log.error("spool.ack_failed", seq=last, error=str(exc))
        update_spool_gauges(self.spool, self.metrics)
        if self.spool.stats.batches == 0:
            self.health.spool_emptied()
        return True

    # --- sink state -----------------------------------------------------------------------

    def _recovered(self) -> None:
        self.health.recovered(backlog=self.spool.stats.samples)
        self.backoff.mark_healthy()

    async def _failed(self, exc: BaseException, action: str, rows: int = 0) -> None:
        self.health.failed(exc, action, rows=rows, backlog=self._backlog())
        # Forget the sink: the next attempt starts from a fresh connection / file. A
        # close that hangs (a pool waiting on a dead connection) is abandoned.
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self.destination.close()
        except Exception as close_exc:
            log.debug("sink.close_after_failure", error=str(close_exc) or type(close_exc).__name__)

    async def _reopen_destination(self) -> None:
        rolled = self.destination.roll_due()
        self._reopen = False
        if not rolled and not self.destination.reopens_on_hup:
            log.info("sink.reopen_skipped", sink=self.health.sink, reason="not a file sink")
            return
        previous = self.destination.current_path
        try:
            async with asyncio.timeout(self.write_timeout):
                await self.destination.close()
                await self.destination.open()
        except Exception as exc:
            await self._failed(exc, "reopen")
            return
        log.info(
            "sink.rolled" if rolled else "sink.reopened",
            sink=self.health.sink,
            closed=None if previous is None else str(previous),
            target=self.destination.description,
        )

    async def aclose(self) -> None:
        """Close the sink (after ``run()`` returned or was cancelled)."""
        try:
            await self.destination.close()
        except Exception as exc:
            log.warning("sink.close_failed", sink=self.health.sink, error=str(exc))
        self.health.closed()
