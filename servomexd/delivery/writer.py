"""The delivery side as one component: memory buffer -> spool -> sink -> ack.

Three parts, one job each: ``Flusher`` (buffer to spool, the durability point),
``Deliverer`` (spool to sink, exactly once: the argument is in ``deliverer.py``) and
``SinkHealth`` (up/down, its logs and metrics). ``Writer`` builds them, runs the two
loops in one task group, and reports a ``DeliveryHealth`` snapshot.
"""

from __future__ import annotations

import asyncio

from servomexd.backoff import Backoff
from servomexd.delivery.deliverer import Deliverer
from servomexd.delivery.flusher import DEFAULT_BATCH_SIZE, DEFAULT_FLUSH_INTERVAL, Flusher
from servomexd.delivery.health import DeliveryHealth, SinkHealth
from servomexd.destination import Destination
from servomexd.metrics import Metrics
from servomexd.spool import Spool


class Writer:
    """The flusher, the deliverer and the sink's health, started and stopped together."""

    def __init__(
        self,
        spool: Spool,
        destination: Destination,
        metrics: Metrics,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_write_rows: int = 20_000,
        write_timeout: float = 60.0,
        retry_max_delay: float = 30.0,
        backoff: Backoff | None = None,
        spool_limit: int | None = None,
    ) -> None:
        self.spool = spool
        self.spool_limit = spool_limit
        """Readiness counts the spool as full from this many bytes (None: no limit)."""
        self._stop = asyncio.Event()
        self._metrics = metrics
        self.flusher = Flusher(
            spool, metrics, batch_size=batch_size, flush_interval=flush_interval
        )
        self.deliverer = Deliverer(
            spool,
            destination,
            self.flusher,
            SinkHealth(destination.kind, lambda: destination.description, metrics),
            metrics,
            stop=self._stop,
            backlog=self.backlog,
            backoff=backoff or Backoff(initial=0.5, cap=retry_max_delay, healthy_after=10.0),
            max_write_rows=max_write_rows,
            write_timeout=write_timeout,
        )

    @property
    def first_sync(self) -> asyncio.Event:
        """Set once the sink has been tried at start (opened or failed)."""
        return self.deliverer.first_sync

    def backlog(self) -> int:
        """Samples accepted but not yet committed to the sink (spool + memory)."""
        return self.spool.stats.samples + self.flusher.buffered

    def snapshot(self) -> DeliveryHealth:
        stats = self.spool.stats
        below_limit = self.spool_limit is None or stats.bytes < self.spool_limit
        return DeliveryHealth(
            sink_type=self.destination.kind,
            sink_up=self.health.up,
            sink_error=self.health.last_error,
            sink_fault=self.health.fault,
            spool_accepting=self.flusher.spool_ok and below_limit,
            spool=stats,
            buffered=self.flusher.buffered,
            samples_accepted=self.flusher.samples_accepted,
            samples_written=self.health.samples_written,
        )

    @property
    def destination(self) -> Destination:
        """The sink being delivered to (a reload may replace it)."""
        return self.deliverer.destination

    @property
    def health(self) -> SinkHealth:
        return self.deliverer.health

    async def replace_destination(self, destination: Destination) -> None:
        """A reload changed the sink: flush the memory buffer to the spool, then let the
        deliverer close the old sink and open ``destination`` between two writes.
        Nothing is lost or sent twice: the spool holds everything not yet acked.
        Returns once switched (a caller's timeout does not undo the switch)."""
        await self.flusher.flush()
        health = SinkHealth(destination.kind, lambda: destination.description, self._metrics)
        await asyncio.shield(self.deliverer.switch(destination, health))

    def request_reopen(self) -> None:
        """SIGHUP: reopen the sink's file between two writes."""
        self.deliverer.request_reopen()

    def request_stop(self) -> None:
        """Flush what is buffered, deliver what can be delivered, then return from run()."""
        self._stop.set()
        self.flusher.wake()
        self.flusher.spooled.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.flusher.run(self._stop), name="writer-flusher")
            tg.create_task(self.deliverer.run(), name="writer-deliverer")

    async def aclose(self) -> None:
        """Close the sink (after ``run()`` returned or was cancelled)."""
        await self.deliverer.aclose()
