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
    buffer: list[Sample] = []
    emitted = 0
    batches = 0
    last_flush = monotonic()

    async def flush() -> None:
        nonlocal emitted, batches, last_flush, buffer
        if buffer:
            batch, buffer = buffer, []
            await sink.write_many(batch)
            emitted += len(batch)
            batches += 1
        last_flush = monotonic()

    async def drain(handoff: _Handoff) -> None:
        filled = handoff.filled
        while True:
            try:
                filled.acquire_nowait()
            except anyio.WouldBlock:
                if buffer:
                    with anyio.move_on_after(last_flush + flush_interval - monotonic()) as wait:
                        await filled.acquire()
                    if wait.cancelled_caught:  # the deadline came first: flush, keep waiting
                        await flush()
                        continue
                else:
                    await filled.acquire()
            if handoff.ended:
                break
            if handoff.error is not None:
                await flush()  # keep what the source delivered before failing
                raise handoff.error
            item, handoff.item = handoff.item, None
            if isinstance(item, Sample):
                buffer.append(item)
            elif item is not None:
                buffer.extend(item)
            if len(buffer) >= batch_size or (
                buffer and monotonic() - last_flush >= flush_interval
            ):
                await flush()
            handoff.emptied.release()
        await flush()

    failure: Exception | None = None
    try:
        async with anyio.create_task_group() as tasks:
            handoff = _Handoff()
            tasks.start_soon(_pull, iterator, handoff)
            try:
                await drain(handoff)
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
    return AcquisitionSummary(started_at, datetime.now(UTC), emitted, batches)
