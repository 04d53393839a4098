"""``pipe``: drain a stream of per-tick sample batches into a sink.

Unlike the published driver, the flush interval holds while the stream is
silent: a helper task pulls the next item while ``pipe`` waits for it with a
deadline, so a sample buffered just before the analyser goes quiet is written
within ``flush_interval``, not when the next frame happens to arrive.

Backend-neutral (AnyIO task group, events and cancel scopes): runs under asyncio
and trio alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from time import monotonic
from typing import Any

import anyio

from servomexd.model import Sample
from servomexd.sinks.base import SampleSink


@dataclass(frozen=True, slots=True)
class AcquisitionSummary:
    started_at: datetime
    finished_at: datetime
    samples_emitted: int
    """Samples handed to the sink (and accepted by it)."""
    batches_written: int = 0


class _Handoff:
    """One item at a time from the puller task to ``pipe``.

    The item lives here, not in a channel, so ``pipe`` giving up a wait at its flush
    deadline can never lose it (a cancelled ``acquire`` leaves the token in place);
    the puller asks for the next item only when ``pipe`` has dealt with this one, as
    a plain ``async for`` would. Two reusable semaphores, nothing allocated per item.
    """

    __slots__ = ("emptied", "ended", "error", "filled", "item")

    def __init__(self) -> None:
        self.filled = anyio.Semaphore(0, fast_acquire=True)
        self.emptied = anyio.Semaphore(0, fast_acquire=True)
        self.item: Sequence[Sample] | Sample | None = None
        self.error: Exception | None = None
        self.ended = False


async def _pull(iterator: AsyncIterator[Any], handoff: _Handoff) -> None:
    while True:
        try:
            handoff.item = await anext(iterator)
        except StopAsyncIteration:
            handoff.ended = True
        except Exception as exc:
            # Handed over, not raised: pipe re-raises it as it is (no ExceptionGroup).
            handoff.error = exc
        handoff.filled.release()
        if handoff.ended or handoff.error is not None:
            return
        await handoff.emptied.acquire()


class _Batcher:
    """The samples buffered for the sink, and what has been written so far."""

    __slots__ = (
        "batch_size", "batches", "buffer", "emitted", "flush_interval", "last_flush", "sink"
    )

    def __init__(self, sink: SampleSink, batch_size: int, flush_interval: float) -> None:
        self.sink = sink
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.buffer: list[Sample] = []
        self.emitted = 0
        self.batches = 0
        self.last_flush = monotonic()

    def add(self, item: Sequence[Sample] | Sample | None) -> None:
        if isinstance(item, Sample):
            self.buffer.append(item)
        elif item is not None:
            self.buffer.extend(item)

    def full(self) -> bool:
        """A whole batch is buffered, or the flush interval has passed with something in it."""
        buffer = self.buffer
        return len(buffer) >= self.batch_size or (
            bool(buffer) and monotonic() - self.last_flush >= self.flush_interval
        )

    async def flush(self) -> None:
        if self.buffer:
            batch, self.buffer = self.buffer, []
            await self.sink.write_many(batch)
            self.emitted += len(batch)
            self.batches += 1
        self.last_flush = monotonic()


async def _drain(handoff: _Handoff, batcher: _Batcher) -> None:
    """Take the puller's items into the batcher until the stream ends; a flush deadline
    that passes while the stream is silent flushes without waiting for the next item."""
    filled = handoff.filled
    while True:
        try:
            filled.acquire_nowait()
        except anyio.WouldBlock:
            if batcher.buffer:
                deadline = batcher.last_flush + batcher.flush_interval
                with anyio.move_on_after(deadline - monotonic()) as wait:
                    await filled.acquire()
                if wait.cancelled_caught:  # the deadline came first: flush, keep waiting
                    await batcher.flush()
                    continue
            else:
                await filled.acquire()
        if handoff.ended:
            break
        if handoff.error is not None:
            await batcher.flush()  # keep what the source delivered before failing
            raise handoff.error
        item, handoff.item = handoff.item, None
        batcher.add(item)
        if batcher.full():
            await batcher.flush()
        handoff.emptied.release()
    await batcher.flush()


async def pipe(
    stream: AsyncIterable[Sequence[Sample] | Sample],
    sink: SampleSink,
    *,
    batch_size: int = 64,
    flush_interval: float = 1.0,
) -> AcquisitionSummary:
    """Write every sample of ``stream`` to ``sink``; the sink must already be open.

    Flushes when ``batch_size`` samples are buffered or ``flush_interval`` seconds
    have passed since the last flush, whichever comes first, and flushes the rest
    when the stream ends. A failed write propagates (the stream is closed); so does
    a failure of the stream, after what it delivered before failing is written.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not flush_interval > 0:  # also rejects NaN
        raise ValueError(f"flush_interval must be > 0, got {flush_interval!r}")

    started_at = datetime.now(UTC)
    iterator = aiter(stream)
    batcher = _Batcher(sink, batch_size, flush_interval)
    failure: Exception | None = None
    try:
        async with anyio.create_task_group() as tasks:
            handoff = _Handoff()
            tasks.start_soon(_pull, iterator, handoff)
            try:
                await _drain(handoff, batcher)
            except Exception as exc:
                # Raised after the task group, so callers see it as it is.
                failure = exc
            tasks.cancel_scope.cancel()
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
    if failure is not None:
        raise failure
    return AcquisitionSummary(started_at, datetime.now(UTC), batcher.emitted, batcher.batches)
