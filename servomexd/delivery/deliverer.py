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
   the spool that the sink already holds; step 4 resolves them. The ack runs on the
   spool's thread while the next write goes to the sink (``acks.py``): that write
   reads only batches after ``last``, and acks run in seq order, one at a time.
4. Before the first write, and after every failure (``_synced`` is cleared),
   ``_sync_checkpoint`` reads the sink's checkpoint ``c``, acks the spool up to ``c``
   and restarts reading from the oldest batch left (``_delivered = 0``). So the next
   write starts exactly at the first batch the sink does not hold.
5. A write whose outcome is unknown (a timeout, a connection lost during COMMIT) either
   committed (its checkpoint is read in step 4: acked, not resent) or did not (resent).
   A COMMIT that lands only after step 4 re-read the checkpoint makes the resend
   conflict in step 2: nothing is written twice; the conflict leads back to step 4.
6. Reading ahead (``readahead.py``) reads only after the batch being written and is
   discarded on any failure, so it can neither skip nor repeat a batch.

7. Poison rows (``isolation.py``, which states the argument in full): a write refused
   for its data (``SinkFailure.DATA``) is retried batch by batch; in the batch that
   still fails, rows the sink refuses alone (found by probes it always rolls back) move
   to the spool's quarantine table in ONE spool transaction that rewrites the batch
   under its seq; the rest of the batch is then written by step 2 like any other. Order
   and the checkpoint argument are untouched: only the spool's content of that batch
   changed, before it was ever committed. A transient or operator failure during the
   search ends it without quarantining anything (steps 4-5 then apply).

Reopening, rolling and switching the sink (``current_sink.py``) happen between two
writes and end in step 4 like a failure does: they never decide what is sent.

The one loss the spool allows is explicit: over ``max_bytes`` it drops the oldest
batches and counts them; a dropped batch the deliverer already holds in memory is
counted only if the write carrying it fails (``Spool.settle`` / ``Spool.release``).
Sinks without a checkpoint (files) read ``c = 0`` in step 4, so an unknown outcome
is written again: at-least-once, as documented.

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
from servomexd.delivery.acks import SpoolAcks
from servomexd.delivery.current_sink import CurrentSink
from servomexd.delivery.flusher import Flusher
from servomexd.delivery.health import SinkHealth, update_spool_gauges
from servomexd.delivery.isolation import PoisonIsolation
from servomexd.delivery.readahead import ReadAhead
from servomexd.delivery.waiting import wait_or_timeout
from servomexd.destination import Destination
from servomexd.errors import ServomexSinkCheckpointConflict, SinkFailure, sink_failure
from servomexd.metrics import Metrics
from servomexd.rows import Record
from servomexd.spool import Spool, SpoolBatch

log = structlog.get_logger("servomexd.writer")

_IDLE_WAIT = 5.0
"""Longest sleep with nothing to deliver (a roll or a reopen is checked at least this often)."""
_READ_RETRY = 1.0


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
        self.sink = CurrentSink(destination, health, backlog=backlog)
        self.feed = feed
        self.metrics = metrics
        self.backoff = backoff
        self.max_write_rows = max_write_rows
        self.write_timeout = write_timeout
        self._stop = stop
        self._synced = False
        self._delivered = 0
        """Seq of the last batch written since the last sync (0: read from the oldest)."""
        self._ahead = ReadAhead(spool, feed)
        self._acks = SpoolAcks(spool, self._after_ack)
        self._isolation = PoisonIsolation(self, feed.spooled)
        self.first_sync = asyncio.Event()
        """Set once the sink has been tried at start (opened or failed)."""
        roll = destination.roll_interval
        self._idle_wait = _IDLE_WAIT if roll is None else min(_IDLE_WAIT, roll)

    @property
    def destination(self) -> Destination:
        """The sink being delivered to (a reload may replace it)."""
        return self.sink.destination

    @property
    def health(self) -> SinkHealth:
        return self.sink.health

    def request_reopen(self) -> None:
        """SIGHUP: reopen the sink's file between two writes."""
        self.sink.reopen_requested = True
        self.feed.spooled.set()

    def switch(self, destination: Destination, health: SinkHealth) -> asyncio.Future[None]:
        """Deliver to ``destination`` from the next round on (a reload changed the sink).

        Between two writes the old sink is closed and the new one synced like after a
        failure (step 4): batches the old sink committed were acked and left the spool;
        every other batch goes to the new sink. The future completes once switched."""
        done = self.sink.request_switch(destination, health)
        self.feed.spooled.set()
        return done

    # --- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until stopped and the spool holds nothing the flusher could add to."""
        try:
            while await self._round():
                pass
        finally:
            await self._ahead.drop()
            await self._acks.settled()

    async def _round(self) -> bool:
        """One step: reopen if asked, sync if needed, deliver one chunk. False: done."""
        if self.sink.switch_pending:
            await self._ahead.drop()
            await self.sink.switch()
            self._synced = False
            self.backoff.reset()
        if self.sink.reopen_requested or self.destination.roll_due():
            await self.sink.reopen(self.write_timeout)
        await self._isolation.poll_retries()
        if not self._synced:
            self._synced = await self._sync_checkpoint()
            self.first_sync.set()
            return self._synced or await self._pause(self._retry_delay())
        try:
            batches, flusher_was_done = await self._ahead.next_chunk(
                self._delivered, self.max_write_rows
            )
        except Exception as exc:
            log.error("spool.read_failed", error=str(exc))
            return await self._pause(_READ_RETRY)
        if not batches:
            await self._acks.settled()
            # Only a read that began after the final flush proves nothing is left.
            if self._stop.is_set() and flusher_was_done:
                return False
            if not self.sink.reopen_requested:
                await wait_or_timeout(self.feed.spooled, self._idle_wait)
            return True
        self._ahead.prefetch(batches, self.max_write_rows)
        if await self._write(batches):
            return True
        await self._ahead.drop()
        self._synced = False
        return await self._pause(self._retry_delay())

    def _retry_delay(self) -> float:
        """Backoff; an operator-needed fault is retried slowly (every ``cap`` seconds),
        so fixing it needs no restart and the server is not hammered meanwhile."""
        delay = self.backoff.next_delay()
        return max(delay, self.backoff.cap) if self.health.fault is not None else delay

    async def _pause(self, delay: float) -> bool:
        """Wait before a retry, waking at once on stop or a sink switch; False when
        stopping."""
        if self._stop.is_set():
            return False
        if self.sink.switch_pending:
            return True
        self.sink.interrupt.clear()
        waits = [
            asyncio.ensure_future(self._stop.wait()),
            asyncio.ensure_future(self.sink.interrupt.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        return True

    # --- the exactly-once steps -----------------------------------------------------------

    async def _sync_checkpoint(self) -> bool:
        """(Re)open the sink and ack what it already committed (step 4)."""
        await self._acks.settled()
        # Whatever was read before is forgotten: overflow losses among it count now.
        self.spool.release()
        try:
            async with asyncio.timeout(self.write_timeout):
                await self.destination.open()
                checkpoint = await self.destination.read_checkpoint(self.spool.stream_id)
        except Exception as exc:
            await self.sink.failed(exc, "open")
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
            if sink_failure(exc) is SinkFailure.DATA and self.destination.supports_probe:
                self.health.refused(exc, first_seq=first, last_seq=last, rows=len(records))
                return await self._isolation.isolate(batches)
            await self.sink.failed(exc, "write", rows=len(records))
            return False
        self.written(last, len(records), time.perf_counter() - started)
        self._acks.behind(last)
        return True

    def written(self, seq: int, rows: int, seconds: float) -> None:
        """Batches up to ``seq`` were committed by the sink (step 3 follows: ``acked``)."""
        if self.health.in_outage:
            self._recovered()
        self.health.wrote(rows, seconds)
        self._delivered = seq
        self.spool.settle(seq)

    def passed(self, seq: int) -> None:
        """Batch ``seq`` left the spool without a write (all its rows were quarantined)."""
        self._delivered = seq

    async def acked(self) -> None:
        """Ack the spool up to the last batch written (step 3), now."""
        await self._acks.now(self._delivered)

    def _after_ack(self) -> None:
        update_spool_gauges(self.spool, self.metrics)
        if self.spool.stats.batches == 0:
            self.health.spool_emptied()

    def _recovered(self) -> None:
        self.health.recovered(backlog=self.spool.stats.samples)
        self.backoff.mark_healthy()

    async def aclose(self) -> None:
        """Close the sink (after ``run()`` returned or was cancelled)."""
        await self.sink.aclose()
