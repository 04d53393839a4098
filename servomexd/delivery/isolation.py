"""Poison rows: find the rows a sink refuses for their data and quarantine them.

Step 7 of the exactly-once argument in ``deliverer.py``. A write refused for its data
(``SinkFailure.DATA``) is retried batch by batch; the batch that still fails is
searched with ``probe_records`` (a write the sink always rolls back, so nothing
commits), halving it down to single rows. Rows refused alone ``_CONFIRM`` times move
from the batch to the spool's quarantine table in ONE spool transaction that rewrites
the batch under its own seq; the rest of the batch is then written with
``checkpoint=(stream, seq, seq)`` like any other write. Only the spool's content of a
batch the sink never committed changes, so order and the checkpoint argument hold.

Nothing is quarantined on weak evidence: a transient or operator failure during the
search ends it (the deliverer syncs again, steps 4-5); a batch refused whole while
every row passes alone is retried, and reported as a fault once the refusal keeps
coming back; a batch whose every row is refused is quarantined only if the sink is
seen taking other rows (otherwise it is a fault for an operator: a trigger refusing
everything is not poison).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import structlog

from servomexd.delivery.current_sink import CurrentSink
from servomexd.delivery.health import update_spool_gauges
from servomexd.errors import ServomexSinkFault, SinkFailure, sink_failure
from servomexd.metrics import Metrics
from servomexd.rows import Record
from servomexd.spool import Spool, SpoolBatch

log = structlog.get_logger("servomexd.writer")

_CONFIRM = 3
"""Times a row must be refused alone, with a data error, before it is quarantined."""
_ACCEPTS_ROWS_WINDOW = 600.0
"""A batch whose every row is refused is quarantined only if the sink committed a write
this recently, or accepts the next pending batch in a probe: a sink refusing everything
(a trigger raising for every row) is a fault for an operator, not poison."""
_QUARANTINE_POLL = 5.0
"""Seconds between checks for quarantined rows an operator marked for retry."""


class Delivery(Protocol):
    """What the isolation needs of the deliverer it works for."""

    spool: Spool
    metrics: Metrics
    sink: CurrentSink
    write_timeout: float

    def written(self, seq: int, rows: int, seconds: float) -> None: ...

    def passed(self, seq: int) -> None: ...

    async def acked(self) -> None: ...


class PoisonIsolation:
    """Writes a refused chunk batch by batch and cleans the batch that fails alone."""

    def __init__(self, delivery: Delivery, wake: asyncio.Event) -> None:
        self._d = delivery
        self._wake = wake
        self._unisolated = (0, 0)
        """(seq, times) of a batch refused whole while every row passed alone."""
        self._polled_at = 0.0

    async def poll_retries(self) -> None:
        """Every few seconds: rows marked for retry (``servomexd spool retry-quarantine``)
        go back into delivery, and the quarantine gauge follows a drop-quarantine."""
        now = time.monotonic()
        if now - self._polled_at < _QUARANTINE_POLL:
            return
        self._polled_at = now
        try:
            moved = await self._d.spool.requeue_quarantine()
        except Exception as exc:
            log.error("spool.requeue_failed", error=str(exc))
            return
        if moved:
            log.warning("spool.quarantine_requeued", samples=moved)
            self._wake.set()
        update_spool_gauges(self._d.spool, self._d.metrics)

    async def isolate(self, batches: list[SpoolBatch]) -> bool:
        """A write was refused for its data: write the batches one by one, and clean
        the one that fails alone. True when every batch was delivered."""
        d = self._d
        for batch in batches:
            if len(batches) > 1:
                try:
                    async with asyncio.timeout(d.write_timeout):
                        await d.sink.destination.write_records(
                            batch.records,
                            checkpoint=(d.spool.stream_id, batch.seq, batch.seq),
                        )
                except Exception as exc:
                    if sink_failure(exc) is not SinkFailure.DATA:
                        await d.sink.failed(exc, "write", rows=len(batch.records))
                        return False
                else:
                    d.written(batch.seq, len(batch.records), 0.0)
                    continue
            if not await self._clean(batch):
                return False
        await d.acked()
        return True

    async def _clean(self, batch: SpoolBatch) -> bool:
        """Find the rows of ``batch`` the sink refuses alone, quarantine them, write the
        rest under the batch's seq."""
        d = self._d
        try:
            bad, error = await self._refused_rows(batch.records)
        except Exception as exc:
            await d.sink.failed(exc, "probe", rows=len(batch.records))
            return False
        if not bad:
            await self._not_isolated(batch, error)
            return False
        if len(bad) == len(batch.records) and not await self._sink_accepts_rows(batch.seq):
            await d.sink.failed(
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
        records = await self._quarantine(batch, bad, error)
        if records is None:
            return False
        if not records:
            d.passed(batch.seq)
            return True
        started = time.perf_counter()
        try:
            async with asyncio.timeout(d.write_timeout):
                await d.sink.destination.write_records(
                    records, checkpoint=(d.spool.stream_id, batch.seq, batch.seq)
                )
        except Exception as exc:
            await d.sink.failed(exc, "write", rows=len(records))
            return False
        d.written(batch.seq, len(records), time.perf_counter() - started)
        return True

    async def _not_isolated(self, batch: SpoolBatch, error: str) -> None:
        """Refused together, accepted alone: the cause went away meanwhile (a trigger
        dropped), or a constraint across rows. Retried with backoff; only a refusal
        that keeps coming back is for an operator."""
        seq, times = self._unisolated
        times = times + 1 if seq == batch.seq else 1
        self._unisolated = (batch.seq, times)
        log.warning(
            "sink.refusal_not_isolated",
            sink=self._d.sink.health.sink,
            seq=batch.seq,
            rows=len(batch.records),
            times=times,
            hint="every row passes alone; the batch is retried",
        )
        if times >= _CONFIRM:
            await self._d.sink.failed(
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

    async def _quarantine(
        self, batch: SpoolBatch, bad: list[int], error: str
    ) -> list[Record] | None:
        """Move rows ``bad`` of ``batch`` to the quarantine; the rows left to write, or
        None when the spool could not do it."""
        d = self._d
        try:
            result = await d.spool.quarantine(batch.seq, bad, error)
            records = await d.spool.records_of(batch.seq) if result.remaining else []
        except Exception as exc:  # the batch left the spool meanwhile (overflow)
            log.error("spool.quarantine_failed", seq=batch.seq, error=str(exc))
            return None
        d.metrics.quarantined_samples.inc(result.quarantined)
        log.error(
            "spool.quarantined",
            sink=d.sink.health.sink,
            seq=batch.seq,
            samples=result.quarantined,
            lost=result.overflowed,
            delivered=result.remaining,
            error=error,
            hint="the sink refuses these rows; inspect with servomexd spool export "
            "--quarantine, then retry-quarantine after fixing the cause, or drop-quarantine",
        )
        update_spool_gauges(d.spool, d.metrics)
        return records

    async def _refused_rows(self, records: list[Record]) -> tuple[list[int], str]:
        """Indexes of the rows refused alone ``_CONFIRM`` times, and the error text.
        Halving search with probes (never committed); any failure other than a data
        error is raised: systemic faults never quarantine."""
        bad: list[int] = []
        error = ""

        async def refused(lo: int, hi: int) -> bool:
            nonlocal error
            try:
                async with asyncio.timeout(self._d.write_timeout):
                    await self._d.sink.destination.probe_records(records[lo:hi])
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
        last = self._d.sink.health.last_write_at
        if last is not None and time.monotonic() - last < _ACCEPTS_ROWS_WINDOW:
            return True
        try:
            following = await self._d.spool.read_after(seq, 1, hold=False)
            if not following:
                return False
            async with asyncio.timeout(self._d.write_timeout):
                await self._d.sink.destination.probe_records(following[0].records)
        except Exception:
            return False
        return True
