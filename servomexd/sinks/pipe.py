"""``pipe``: drain a stream of per-tick sample batches into a sink.

Unlike the published driver, the flush interval holds while the stream is
silent: the next item is awaited with a deadline, so a sample buffered just
before the analyser goes quiet is written within ``flush_interval``, not when
the next frame happens to arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from servomexd.model import Sample
from servomexd.sinks.base import SampleSink


@dataclass(frozen=True, slots=True)
class AcquisitionSummary:
    started_at: datetime
    finished_at: datetime
    samples_emitted: int
    """Samples handed to the sink (and accepted by it)."""
    batches_written: int = 0


async def _next_item(iterator: AsyncIterator[Any]) -> Any:
    return await anext(iterator)


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
    when the stream ends. A failed write propagates (the stream is closed).
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
    last_flush = time.monotonic()
    pending: asyncio.Task[Any] | None = None

    async def flush() -> None:
        nonlocal emitted, batches, last_flush, buffer
        if buffer:
            batch, buffer = buffer, []
            await sink.write_many(batch)
            emitted += len(batch)
            batches += 1
        last_flush = time.monotonic()

    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(_next_item(iterator))
            timeout = None
            if buffer:
                timeout = max(0.0, last_flush + flush_interval - time.monotonic())
            done, _ = await asyncio.wait((pending,), timeout=timeout)
            if not done:
                await flush()
                continue
            finished, pending = pending, None
            try:
                item = finished.result()
            except StopAsyncIteration:
                break
            except Exception:
                # The source failed: keep what it delivered before failing.
                await flush()
                raise
            if isinstance(item, Sample):
                buffer.append(item)
            else:
                buffer.extend(item)
            if len(buffer) >= batch_size or (
                buffer and time.monotonic() - last_flush >= flush_interval
            ):
                await flush()
        await flush()
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.wait((pending,))
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
    return AcquisitionSummary(started_at, datetime.now(UTC), emitted, batches)
