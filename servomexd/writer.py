"""The delivery loop: memory buffer -> spool (durable) -> sink (exactly once) -> ack.

Two tasks:

* the **flusher** moves the in-memory buffer into the spool every ``flush_interval``
  (a timer, so it holds when the devices go quiet) or as soon as ``batch_size`` samples
  wait. The spool commit is the durability point: SIGKILL or power loss lose at most
  the last ``flush_interval`` of readings;
* the **deliverer** sends spool batches in seq order with
  ``write_records(records, checkpoint=(stream_id, last_seq))`` and then acks them.

On start and after every sink failure the deliverer first asks the sink for its
checkpoint and acks everything up to it: a write that committed but whose reply was
lost (a timeout after COMMIT) is then acked, not written twice. File sinks have no
checkpoint: for them this is at-least-once. A failed sink is closed, retried with
jittered exponential backoff and, meanwhile, the spool absorbs the data: acquisition
never waits for the sink. When it returns, the backlog drains in large chunks
(several spool batches merged per write, up to ``max_write_rows`` rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import structlog

from servomexd.acquisition.backoff import Backoff
from servomexd.destination import Destination
from servomexd.errors import ServomexSinkCheckpointConflict, ServomexSinkFault
from servomexd.metrics import Metrics
from servomexd.model import Sample
from servomexd.rows import Record, sample_to_record
from servomexd.spool import Spool, SpoolBatch

log = structlog.get_logger("servomexd.writer")

_CLOSE_TIMEOUT = 5.0
_MIN_BUFFER_CAP = 100_000
"""Samples kept in memory at most while the spool itself cannot be written (disk full)."""


class Writer:
    """Owns the memory buffer, the flusher and the deliverer."""

    def __init__(
        self,
        spool: Spool,
        destination: Destination,
        metrics: Metrics,
        *,
        batch_size: int = 64,
        flush_interval: float = 1.0,
        max_write_rows: int = 20_000,
        write_timeout: float = 60.0,
        retry_max_delay: float = 30.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.spool = spool
        self.destination = destination
        self.metrics = metrics
        self.sink_name = destination.kind
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_write_rows = max_write_rows
        self.write_timeout = write_timeout
        self.backoff = backoff or Backoff(initial=0.5, cap=retry_max_delay, healthy_after=10.0)
        self._buffer: list[Record] = []
        self._buffer_cap = max(_MIN_BUFFER_CAP, 20 * batch_size)
        self._full = asyncio.Event()
        self._spooled = asyncio.Event()
        self._stop = asyncio.Event()
        self._reopen = False
        self._flusher_done = False
        # state for health, status and the shutdown summary
        self.sink_up = False
        self.spool_ok = True
        self.samples_accepted = 0
        self.samples_written = 0
        self.buffer_dropped = 0
        self.last_sink_error: str | None = None
        self.sink_fault: str | None = None
        """Set while the sink fails for a reason only an operator can fix (a certificate):
        /readyz then reports not ready, and retries slow down to ``retry_max_delay``."""
        self._fault_retry_delay = retry_max_delay
        self._down_since: float | None = None
        self._delivered = 0
        self._draining = False
        self._drain_started = 0.0
        self._drain_written_before = 0
        self.first_sync = asyncio.Event()
        """Set once the sink has been tried at start (opened or failed)."""
        metrics.register_sink(self.sink_name)

    # --- acquisition side: synchronous, never blocks ------------------------------------

    def add_samples(self, samples: Sequence[Sample]) -> None:
        self.add_records([sample_to_record(s) for s in samples])

    def add_records(self, records: Sequence[Record]) -> None:
        self._buffer.extend(records)
        self.samples_accepted += len(records)
        if len(self._buffer) >= self.batch_size:
            self._full.set()
        if len(self._buffer) > self._buffer_cap:
            # Only reachable while the spool cannot be written: bound memory, count loss.
            excess = len(self._buffer) - self._buffer_cap
            del self._buffer[:excess]
            self.buffer_dropped += excess
            self.metrics.spool_dropped_samples.inc(excess)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def backlog(self) -> int:
        """Samples accepted but not yet committed to the sink (spool + memory)."""
        return self.spool.stats.samples + len(self._buffer)

    def request_reopen(self) -> None:
        """SIGHUP: reopen the sink's file between two writes."""
        self._reopen = True
        self._spooled.set()

    def request_stop(self) -> None:
        """Flush what is buffered, deliver what can be delivered, then return from run()."""
        self._stop.set()
        self._full.set()
        self._spooled.set()

    # --- the two loops -------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._flusher(), name="writer-flusher")
            tg.create_task(self._deliverer(), name="writer-deliverer")

    async def _flusher(self) -> None:
        spool_backoff = Backoff(initial=0.2, cap=5.0)
        try:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_interval):
                        await self._full.wait()
                self._full.clear()
                if not await self.flush():
                    await self._sleep(spool_backoff.next_delay())
                else:
                    spool_backoff.reset()
            await self.flush()
        finally:
            self._flusher_done = True
            self._spooled.set()

    async def flush(self) -> bool:
        """Move the memory buffer into the spool; False when the spool refused it."""
        self._update_spool_metrics()
        if not self._buffer:
            return True
        records, self._buffer = self._buffer, []
        # Shielded: a cancellation (the shutdown deadline) must neither lose the records
        # (an append still queued behind another spool call would never run) nor spool
        # them twice (one already running commits on the spool thread regardless).
        append = asyncio.ensure_future(self.spool.append(records))
        try:
            await asyncio.shield(append)
        except asyncio.CancelledError:
            append.add_done_callback(lambda task: self._requeue_if_failed(task, records))
            raise
        except Exception as exc:
            # Put them back in front; add_records bounds the memory if this persists.
            self._buffer[:0] = records
            if self.spool_ok:
                log.error("spool.append_failed", error=str(exc), buffered=len(self._buffer))
            self.spool_ok = False
            return False
        if not self.spool_ok:
            log.warning("spool.append_recovered", buffered=len(self._buffer))
        self.spool_ok = True
        self._update_spool_metrics()
        self._spooled.set()
        return True

    def _requeue_if_failed(self, append: asyncio.Future[int], records: list[Record]) -> None:
        """An append that outlived its cancelled flush: if it failed, the records go back
        in front of the buffer for the final flush."""
        if append.cancelled() or append.exception() is not None:
            self._buffer[:0] = records

    async def _deliverer(self) -> None:
        synced = False
        # While a backlog drains, the next chunk is read and decoded (spool thread) while
        # the current one is being written: the sink, not the spool, sets the pace.
        prefetched: asyncio.Task[tuple[list[SpoolBatch], bool]] | None = None
        try:
            while True:
                if self._reopen or self.destination.roll_due():
                    await self._reopen_destination()
                if not synced:
                    synced = await self._sync_checkpoint()
                    self.first_sync.set()
                    if not synced:
                        if self._stop.is_set():
                            return
                        await self._sleep(self._retry_delay())
                        continue
                try:
                    if prefetched is not None:
                        batches, flusher_was_done = await prefetched
                        prefetched = None
                    else:
                        batches, flusher_was_done = await self._read(self._delivered)
                except Exception as exc:
                    prefetched = None
                    log.error("spool.read_failed", error=str(exc))
                    if self._stop.is_set():
                        return
                    await self._sleep(1.0)
                    continue
                if not batches:
                    # Only a read that began after the final flush proves nothing is left.
                    if self._stop.is_set() and flusher_was_done:
                        return
                    if not self._reopen:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(self._idle_wait()):
                                await self._spooled.wait()
                    continue
                rows = sum(len(batch.records) for batch in batches)
                if rows >= self.max_write_rows // 2:
                    prefetched = asyncio.create_task(self._read(batches[-1].seq))
                if not await self._deliver(batches):
                    await _discard(prefetched)
                    prefetched = None
                    synced = False
                    if self._stop.is_set():
                        return
                    await self._sleep(self._retry_delay())
        finally:
            await _discard(prefetched)

    def _retry_delay(self) -> float:
        delay = self.backoff.next_delay()
        # An operator-needed fault is retried slowly, so fixing it needs no restart.
        return max(delay, self._fault_retry_delay) if self.sink_fault else delay

    async def _read(self, after_seq: int) -> tuple[list[SpoolBatch], bool]:
        """Pending batches after ``after_seq``, and whether the flusher had finished before
        the read began. The wake-up event is cleared first, so a batch spooled during
        the read sets it again and is never slept through."""
        flusher_was_done = self._flusher_done
        self._spooled.clear()
        batches = await self.spool.read_after(after_seq, self.max_write_rows)
        return batches, flusher_was_done

    def _idle_wait(self) -> float:
        if self.destination.kind == "parquet":
            return min(5.0, self.destination.settings.parquet.roll_interval)
        return 5.0

    async def _sync_checkpoint(self) -> bool:
        """(Re)open the sink and ack what it already committed."""
        try:
            async with asyncio.timeout(self.write_timeout):
                await self.destination.open()
                checkpoint = await self.destination.read_checkpoint(self.spool.stream_id)
        except Exception as exc:
            await self._sink_failed(exc, "open")
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
        self._update_spool_metrics()
        if self._down_since is None or self.spool.stats.batches == 0:
            self._sink_recovered()
        # else: after an outage, only a committed write proves recovery (a full disk
        # lets the file reopen but refuses every write: no recovered/down flapping).
        return True

    async def _deliver(self, batches: list[SpoolBatch]) -> bool:
        last = batches[-1].seq
        records: list[Record] = (
            batches[0].records
            if len(batches) == 1
            else [record for batch in batches for record in batch.records]
        )
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.write_timeout):
                await self.destination.write_records(
                    records, checkpoint=(self.spool.stream_id, last, batches[0].seq)
                )
        except ServomexSinkCheckpointConflict as exc:
            # An earlier attempt of this write committed after all (its COMMIT landed
            # after we re-read the checkpoint): nothing was written now. Re-read the
            # checkpoint, ack what the sink holds and go on; the sink is healthy.
            log.warning(
                "sink.checkpoint_conflict",
                sink=self.sink_name,
                first_seq=batches[0].seq,
                last_seq=last,
                error=str(exc),
            )
            return False
        except Exception as exc:
            await self._sink_failed(exc, "write", rows=len(records))
            return False
        elapsed = time.perf_counter() - started
        if self._down_since is not None:
            self._sink_recovered()
        self.metrics.sink_write_seconds.labels(self.sink_name).observe(elapsed)
        self.metrics.samples_written.labels(self.sink_name).inc(len(records))
        self.samples_written += len(records)
        self._delivered = last
        try:
            await self.spool.ack(last)
        except Exception as exc:
            # Harmless for exactly-once sinks (the checkpoint re-acks it after a restart).
            log.error("spool.ack_failed", seq=last, error=str(exc))
        self._update_spool_metrics()
        if self._down_since is None and self.spool.stats.batches == 0 and self._draining:
            self._draining = False
            took = time.monotonic() - self._drain_started
            log.info(
                "sink.backlog_drained",
                sink=self.sink_name,
                samples=self.samples_written - self._drain_written_before,
                seconds=round(took, 2),
            )
        return True

    async def _sink_failed(self, exc: BaseException, action: str, rows: int = 0) -> None:
        self.metrics.sink_errors.labels(self.sink_name).inc()
        self.metrics.sink_up.labels(self.sink_name).set(0)
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        fault = exc if isinstance(exc, ServomexSinkFault) else None
        if fault is not None and fault.message != self.sink_fault:
            log.error(
                "sink.fault",
                sink=self.sink_name,
                check=fault.context.get("check"),
                error=fault.message,
                retry_s=self._fault_retry_delay,
                hint="an operator must fix this; retried slowly, no restart needed",
            )
        self.sink_fault = None if fault is None else fault.message
        if self.sink_up or self._down_since is None:
            self._down_since = time.monotonic()
            log.error(
                "sink.down",
                sink=self.sink_name,
                target=self.destination.description,
                action=action,
                rows=rows,
                error=error,
                backlog_samples=self.backlog,
                hint="samples keep being spooled; delivery resumes when the sink is back",
            )
        elif error != self.last_sink_error:
            log.warning("sink.still_down", sink=self.sink_name, action=action, error=error)
        self.sink_up = False
        self.last_sink_error = error
        # Forget the sink: the next attempt starts from a fresh connection / file. A
        # close that hangs (a pool waiting on a dead connection) is abandoned.
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self.destination.close()
        except Exception as close_exc:
            log.debug("sink.close_after_failure", error=str(close_exc) or type(close_exc).__name__)

    def _sink_recovered(self) -> None:
        self.metrics.sink_up.labels(self.sink_name).set(1)
        if self._down_since is not None:
            outage = time.monotonic() - self._down_since
            backlog = self.spool.stats.samples
            log.warning(
                "sink.recovered",
                sink=self.sink_name,
                target=self.destination.description,
                outage_s=round(outage, 1),
                backlog_samples=backlog,
            )
            self._draining = backlog > 0
            self._drain_started = time.monotonic()
            self._drain_written_before = self.samples_written
        elif not self.sink_up:
            log.info(
                "sink.opened",
                sink=self.sink_name,
                target=self.destination.description,
                backlog_samples=self.spool.stats.samples,
            )
        self._down_since = None
        self.sink_up = True
        self.last_sink_error = None
        self.sink_fault = None
        self.backoff.mark_healthy()

    async def _reopen_destination(self) -> None:
        rolled = self.destination.roll_due()
        self._reopen = False
        if not rolled and not self.destination.reopens_on_hup:
            log.info("sink.reopen_skipped", sink=self.sink_name, reason="not a file sink")
            return
        previous = self.destination.current_path
        try:
            async with asyncio.timeout(self.write_timeout):
                await self.destination.close()
                await self.destination.open()
        except Exception as exc:
            await self._sink_failed(exc, "reopen")
            return
        log.info(
            "sink.rolled" if rolled else "sink.reopened",
            sink=self.sink_name,
            closed=None if previous is None else str(previous),
            target=self.destination.description,
        )

    async def _sleep(self, delay: float) -> None:
        """Sleep, but wake at once when asked to stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stop.wait()

    def _update_spool_metrics(self) -> None:
        stats = self.spool.stats
        self.metrics.spool_pending_samples.set(stats.samples)
        self.metrics.spool_bytes.set(stats.bytes)
        self.metrics.spool_oldest_age_seconds.set(stats.oldest_age())

    async def aclose(self) -> None:
        """Close the sink (after ``run()`` returned or was cancelled)."""
        try:
            await self.destination.close()
        except Exception as exc:
            log.warning("sink.close_failed", sink=self.sink_name, error=str(exc))
        self.metrics.sink_up.labels(self.sink_name).set(0)
        self.sink_up = False


async def _discard(task: asyncio.Task[Any] | None) -> None:
    """Cancel a prefetch whose result is no longer wanted (after a failed write)."""
    if task is None:
        return
    task.cancel()
    await asyncio.wait([task])  # propagates our own cancellation, not the task's outcome
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" warning
