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

7. Poison rows (``_isolate``): a write refused for its data (``SinkFailure.DATA``) is
   retried batch by batch; the batch that still fails is searched by ``probe_records``
   (a write the sink always rolls back, so nothing commits), halving it down to single
   rows. Rows that fail alone, ``_CONFIRM`` times, move from the batch to the spool's
   quarantine table in ONE spool transaction that rewrites the batch under its seq;
   the rest of the batch is then written by step 2 like any other. Order and the
   checkpoint argument are untouched: only the spool's content of that batch changed,
   before it was ever committed. A transient or operator failure during the search
   ends it without quarantining anything (steps 4-5 then apply).

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
from servomexd.delivery.flusher import Flusher
from servomexd.delivery.health import SinkHealth, update_spool_gauges
from servomexd.delivery.waiting import wait_or_timeout
from servomexd.destination import Destination
from servomexd.errors import (
    ServomexSinkCheckpointConflict,
    ServomexSinkFault,
    SinkFailure,
    sink_failure,
)
from servomexd.metrics import Metrics
from servomexd.rows import Record
from servomexd.spool import Spool, SpoolBatch

log = structlog.get_logger("servomexd.writer")

_CLOSE_TIMEOUT = 5.0
_IDLE_WAIT = 5.0
"""Longest sleep with nothing to deliver (a roll or a reopen is checked at least this often)."""
_READ_RETRY = 1.0
_CONFIRM = 3
"""Times a row must be refused alone, with a data error, before it is quarantined."""
_ACCEPTS_ROWS_WINDOW = 600.0
"""A batch whose every row is refused is quarantined only if the sink committed a write
this recently, or accepts the next pending batch in a probe: a sink refusing everything
(a trigger raising for every row) is a fault for an operator, not poison."""
_QUARANTINE_POLL = 5.0
"""Seconds between checks for quarantined rows an operator marked for retry."""

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
        self._polled_at = 0.0
        self._unisolated = (0, 0)
        """(seq, times) of a batch refused whole while every row passed alone."""
        self._switch: tuple[Destination, SinkHealth, asyncio.Future[None]] | None = None
        self._interrupt = asyncio.Event()
        """Wakes a retry pause early (a sink switch is waiting)."""
        self.first_sync = asyncio.Event()
        """Set once the sink has been tried at start (opened or failed)."""
        roll = destination.roll_interval
        self._idle_wait = _IDLE_WAIT if roll is None else min(_IDLE_WAIT, roll)

    def request_reopen(self) -> None:
        """SIGHUP: reopen the sink's file between two writes."""
        self._reopen = True
        self.feed.spooled.set()

    def switch(self, destination: Destination, health: SinkHealth) -> asyncio.Future[None]:
        """Deliver to ``destination`` from the next round on (a reload changed the sink).

        Between two writes the old sink is closed and the new one synced like after a
        failure (step 4): batches the old sink committed were acked and left the spool;
        every other batch goes to the new sink. The future completes once switched."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._switch = (destination, health, done)
        self._interrupt.set()
        self.feed.spooled.set()
        return done

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
        if self._switch is not None:
            await self._switch_destination()
        if self._reopen or self.destination.roll_due():
            await self._reopen_destination()
        await self._poll_quarantine()
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
        """Backoff; an operator-needed fault is retried slowly (every ``cap`` seconds),
        so fixing it needs no restart and the server is not hammered meanwhile."""
        delay = self.backoff.next_delay()
        return max(delay, self.backoff.cap) if self.health.fault is not None else delay

    async def _poll_quarantine(self) -> None:
        """Every few seconds: rows marked for retry (``servomexd spool retry-quarantine``)
        go back into delivery, and the quarantine gauge follows a drop-quarantine."""
        now = time.monotonic()
        if now - self._polled_at < _QUARANTINE_POLL:
            return
        self._polled_at = now
        try:
            moved = await self.spool.requeue_quarantine()
        except Exception as exc:
            log.error("spool.requeue_failed", error=str(exc))
            return
        if moved:
            log.warning("spool.quarantine_requeued", samples=moved)
            self.feed.spooled.set()
        update_spool_gauges(self.spool, self.metrics)

    async def _pause(self, delay: float) -> bool:
        """Wait before a retry, waking at once on stop or a sink switch; False when
        stopping."""
        if self._stop.is_set():
            return False
        if self._switch is not None:
            return True
        self._interrupt.clear()
        waits = [
            asyncio.ensure_future(self._stop.wait()),
            asyncio.ensure_future(self._interrupt.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        return True

    async def _switch_destination(self) -> None:
        assert self._switch is not None
        destination, health, done = self._switch
        self._switch = None
        await self._drop_prefetch()
        old, previous = self.destination, self.health
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await old.close()
        except Exception as exc:
            error = str(exc) or type(exc).__name__
            log.warning("sink.close_failed", sink=previous.sink, error=error)
        previous.closed()
        self.destination, self.health = destination, health
        self._synced = False
        self.backoff.reset()
        log.info(
            "sink.switched",
            closed=old.description,
            target=destination.description,
            hint="pending batches go to the new sink; committed ones were acked",
        )
        if not done.done():
            done.set_result(None)

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
        # Whatever was read before is forgotten: overflow losses among it count now.
        self.spool.release()
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
            if sink_failure(exc) is SinkFailure.DATA and self.destination.supports_probe:
                self.health.refused(exc, first_seq=first, last_seq=last, rows=len(records))
                return await self._isolate(batches)
            await self._failed(exc, "write", rows=len(records))
            return False
        if self.health.in_outage:
            self._recovered()
        self.health.wrote(len(records), time.perf_counter() - started)
        self._delivered = last
        self.spool.settle(last)
        try:
            await self.spool.ack(last)
        except Exception as exc:
            # Harmless for exactly-once sinks (the checkpoint re-acks it after a restart).
            log.error("spool.ack_failed", seq=last, error=str(exc))
        update_spool_gauges(self.spool, self.metrics)
        if self.spool.stats.batches == 0:
            self.health.spool_emptied()
        return True

    # --- poison rows (step 7) ------------------------------------------------------------

    async def _isolate(self, batches: list[SpoolBatch]) -> bool:
        """A write was refused for its data: write the batches one by one, and clean
        the one that fails alone. True when every batch was delivered."""
        for batch in batches:
            if len(batches) > 1:
                try:
                    async with asyncio.timeout(self.write_timeout):
                        await self.destination.write_records(
                            batch.records,
                            checkpoint=(self.spool.stream_id, batch.seq, batch.seq),
                        )
                except Exception as exc:
                    if sink_failure(exc) is not SinkFailure.DATA:
                        await self._failed(exc, "write", rows=len(batch.records))
                        return False
                else:
                    self._written(batch.seq, len(batch.records), 0.0)
                    continue
            if not await self._clean(batch):
                return False
        await self._acked()
        return True

    async def _clean(self, batch: SpoolBatch) -> bool:
        """Find the rows of ``batch`` the sink refuses alone, quarantine them, write the
        rest under the batch's seq."""
        try:
            bad, error = await self._refused_rows(batch.records)
        except Exception as exc:
            await self._failed(exc, "probe", rows=len(batch.records))
            return False
        if not bad:
            # Refused together, accepted alone: the cause went away meanwhile (a trigger
            # dropped), or a constraint across rows. Retried with backoff; only a
            # refusal that keeps coming back is for an operator.
            seq, times = self._unisolated
            times = times + 1 if seq == batch.seq else 1
            self._unisolated = (batch.seq, times)
            log.warning(
                "sink.refusal_not_isolated",
                sink=self.health.sink,
                seq=batch.seq,
                rows=len(batch.records),
                times=times,
                hint="every row passes alone; the batch is retried",
            )
            if times >= _CONFIRM:
                await self._failed(
                    ServomexSinkFault(
                        f"the sink refuses batch {batch.seq} as a whole but each row alone "
                        f"passes: {error or 'refused'}",
                        fault="other",
                        fix="a constraint across rows (UNIQUE, an aggregate check, a "
                        "statement trigger) refuses the batch; fix it in the database",
                    ),
                    "write",
                    rows=len(batch.records),
                )
            return False
        if len(bad) == len(batch.records) and not await self._sink_accepts_rows(batch.seq):
            await self._failed(
                ServomexSinkFault(
                    f"the sink refuses every row: {error}",
                    fault="rejects_every_row",
                    fix="a constraint or trigger on the table refuses all of servomexd's rows; "
                    "fix it (nothing is quarantined while no row gets through)",
                ),
                "write",
                rows=len(batch.records),
            )
            return False
        try:
            result = await self.spool.quarantine(batch.seq, bad, error)
            records = await self.spool.records_of(batch.seq) if result.remaining else []
        except Exception as exc:  # the batch left the spool meanwhile (overflow)
            log.error("spool.quarantine_failed", seq=batch.seq, error=str(exc))
            return False
        self.metrics.quarantined_samples.inc(result.quarantined)
        log.error(
            "spool.quarantined",
            sink=self.health.sink,
            seq=batch.seq,
            samples=result.quarantined,
            lost=result.overflowed,
            delivered=result.remaining,
            error=error,
            hint="the sink refuses these rows; inspect with servomexd spool export "
            "--quarantine, then retry-quarantine after fixing the cause, or drop-quarantine",
        )
        update_spool_gauges(self.spool, self.metrics)
        if not result.remaining:
            self._delivered = batch.seq
            return True
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.write_timeout):
                await self.destination.write_records(
                    records, checkpoint=(self.spool.stream_id, batch.seq, batch.seq)
                )
        except Exception as exc:
            await self._failed(exc, "write", rows=len(records))
            return False
        self._written(batch.seq, len(records), time.perf_counter() - started)
        return True

    async def _refused_rows(self, records: list[Record]) -> tuple[list[int], str]:
        """Indexes of the rows refused alone ``_CONFIRM`` times, and the error text.
        Halving search with probes (never committed); any failure other than a data
        error is raised: systemic faults never quarantine."""
        bad: list[int] = []
        error = ""

        async def refused(lo: int, hi: int) -> bool:
            nonlocal error
            try:
                async with asyncio.timeout(self.write_timeout):
                    await self.destination.probe_records(records[lo:hi])
            except Exception as exc:
                if sink_failure(exc) is not SinkFailure.DATA:
                    raise
                error = error or str(exc)
                return True
            return False

        async def search(lo: int, hi: int) -> None:
            if hi - lo == 1:
                if all([await refused(lo, hi) for _ in range(_CONFIRM - 1)]):
                    bad.append(lo)
                return
            mid = (lo + hi) // 2
            for a, b in ((lo, mid), (mid, hi)):
                if await refused(a, b):
                    await search(a, b)

        if await refused(0, len(records)):
            await search(0, len(records))
        return bad, error

    async def _sink_accepts_rows(self, seq: int) -> bool:
        """Evidence the sink takes other rows: a recent committed write, or the next
        pending batch passing a probe (a poison batch first in line after a start)."""
        last = self.health.last_write_at
        if last is not None and time.monotonic() - last < _ACCEPTS_ROWS_WINDOW:
            return True
        try:
            following = await self.spool.read_after(seq, 1, hold=False)
            if not following:
                return False
            async with asyncio.timeout(self.write_timeout):
                await self.destination.probe_records(following[0].records)
        except Exception:
            return False
        return True

    def _written(self, seq: int, rows: int, seconds: float) -> None:
        if self.health.in_outage:
            self._recovered()
        self.health.wrote(rows, seconds)
        self._delivered = seq
        self.spool.settle(seq)

    async def _acked(self) -> None:
        try:
            await self.spool.ack(self._delivered)
        except Exception as exc:
            log.error("spool.ack_failed", seq=self._delivered, error=str(exc))
        update_spool_gauges(self.spool, self.metrics)
        if self.spool.stats.batches == 0:
            self.health.spool_emptied()

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
