"""Memory buffer -> spool: the durability point of every sample.

Acquisition hands samples to ``add_samples`` (synchronous, never blocks, never waits
for the disk or the sink); they are encoded into records by the one fast row encoder
and buffered. ``run()`` moves the buffer into the spool as one group commit when
``flush_interval`` has elapsed since the previous flush began (a fixed cadence, so
the wait does not grow by the time a flush takes, and it holds when the devices go
quiet) or as soon as ``batch_size`` records wait, whichever comes first. The spool
commit is the durability point: SIGKILL or power loss lose at most the last
``flush_interval`` of readings.

Each cycle costs one hand-off to the spool's thread and one fsync, so fewer, larger
commits are what makes many analysers cheap (issue 17: 25 cycles a second at 32
analysers with batches of 64 cost a third of the daemon's CPU). ``DEFAULT_BATCH_SIZE``
is therefore large: at 32 analysers (1,600 rows/s) the interval decides, and the size
only cuts in for hundreds of analysers or after a stall.

While the spool refuses appends (disk full) the records stay buffered, up to a cap;
beyond it the oldest are dropped and counted (``servomexd_spool_dropped_samples_total``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from servomexd.backoff import Backoff
from servomexd.delivery.health import update_spool_gauges
from servomexd.delivery.waiting import wait_or_timeout
from servomexd.metrics import Metrics
from servomexd.model import Sample
from servomexd.rows import Record
from servomexd.sinks.encoding import RowEncoder
from servomexd.spool import Spool

log = structlog.get_logger("servomexd.writer")

DEFAULT_BATCH_SIZE = 5_000
"""Records per group commit at most (``[sink] batch_size``)."""
DEFAULT_FLUSH_INTERVAL = 0.25
"""Seconds between group commits (``[sink] flush_interval``): the crash-loss bound and
most of the frame-to-row latency. At 32 analysers 0.25 s costs 2.4 % of a core against
2.1 % for 1 s, for a p99 latency of 0.35 s instead of 1 s (docs/performance.md)."""
_MIN_BUFFER_CAP = 100_000
"""Samples kept in memory at most while the spool itself cannot be written (disk full)."""


class Flusher:
    """Owns the memory buffer and moves it into the spool."""

    def __init__(
        self,
        spool: Spool,
        metrics: Metrics,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    ) -> None:
        self.spool = spool
        self.metrics = metrics
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.buffer_cap = max(_MIN_BUFFER_CAP, 20 * batch_size)
        self.spooled = asyncio.Event()
        """Set when records reached the spool, or when the flusher finished."""
        self.finished = False
        """The final flush is over: no more records will reach the spool."""
        self.spool_ok = True
        self.samples_accepted = 0
        self.dropped = 0
        self._buffer: list[Record] = []
        self._full = asyncio.Event()
        self._encoder = RowEncoder()

    # --- acquisition side: synchronous, never blocks ------------------------------------

    def add_samples(self, samples: Sequence[Sample]) -> None:
        self.add_records(self._encoder.native_records(samples))

    def add_records(self, records: Sequence[Record]) -> None:
        self._buffer.extend(records)
        self.samples_accepted += len(records)
        if len(self._buffer) >= self.batch_size:
            self._full.set()
        if len(self._buffer) > self.buffer_cap:
            # Only reachable while the spool cannot be written: bound memory, count loss.
            excess = len(self._buffer) - self.buffer_cap
            del self._buffer[:excess]
            self.dropped += excess
            self.metrics.spool_dropped_samples.inc(excess)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def wake(self) -> None:
        """Flush now instead of at the next tick (the stop request)."""
        self._full.set()

    # --- the loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Flush on time or size until ``stop`` is set, then once more."""
        spool_backoff = Backoff(initial=0.2, cap=5.0)
        loop = asyncio.get_running_loop()
        due = loop.time() + self.flush_interval
        try:
            while not stop.is_set():
                await wait_or_timeout(self._full, max(0.0, due - loop.time()))
                self._full.clear()
                # The next flush is due one interval after this one BEGINS: a record
                # buffered while this commit runs still waits at most flush_interval.
                due = loop.time() + self.flush_interval
                if await self.flush():
                    spool_backoff.reset()
                else:
                    await wait_or_timeout(stop, spool_backoff.next_delay())
            await self.flush()
        finally:
            self.finished = True
            self.spooled.set()

    async def flush(self) -> bool:
        """Move the memory buffer into the spool; False when the spool refused it."""
        update_spool_gauges(self.spool, self.metrics)
        self.metrics.buffered_samples.set(len(self._buffer))
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
            self.metrics.buffered_samples.set(len(self._buffer))
            if self.spool_ok:
                log.error("spool.append_failed", error=str(exc), buffered=len(self._buffer))
            self.spool_ok = False
            return False
        if not self.spool_ok:
            log.warning("spool.append_recovered", buffered=len(self._buffer))
        self.spool_ok = True
        update_spool_gauges(self.spool, self.metrics)
        self.metrics.buffered_samples.set(len(self._buffer))
        self.spooled.set()
        return True

    def _requeue_if_failed(self, append: asyncio.Future[int], records: list[Record]) -> None:
        """An append that outlived its cancelled flush: if it failed, the records go back
        in front of the buffer for the final flush."""
        if append.cancelled() or append.exception() is not None:
            self._buffer[:0] = records
