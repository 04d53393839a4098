"""pipe: flush on batch size, on interval (even while the stream stalls), at the end;
under asyncio and trio."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Sequence

import anyio
import anyio.lowlevel
import pytest
from sinkdata import frame

from servomexd.model import Sample
from servomexd.sinks import AcquisitionSummary, InMemorySink, pipe

pytestmark = pytest.mark.anyio  # every async test runs under asyncio and trio


class RecordingSink(InMemorySink):
    """InMemorySink that remembers each write's size and time."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[int, float]] = []

    async def write_many(self, samples: Sequence[Sample]) -> None:
        await super().write_many(samples)
        self.writes.append((len(samples), time.monotonic()))


async def ticks(count: int, *, delay: float = 0.0) -> AsyncIterator[list[Sample]]:
    for index in range(count):
        yield frame(index).as_samples("dev")
        if delay:
            await anyio.sleep(delay)


async def test_flushes_at_batch_size_and_leftover() -> None:
    sink = RecordingSink()
    await sink.open()
    summary = await pipe(ticks(7), sink, batch_size=10, flush_interval=60)
    # 5 samples per tick: 10, 10, 10 (after ticks 2, 4, 6) then the 5 left over
    assert [size for size, _ in sink.writes] == [10, 10, 10, 5]
    assert summary.samples_emitted == 35 == len(sink.samples)
    assert summary.batches_written == 4
    assert summary.started_at <= summary.finished_at
    assert isinstance(summary, AcquisitionSummary)
    expected = [s for index in range(7) for s in frame(index).as_samples("dev")]
    assert sink.samples == expected


async def test_interval_flush_while_stream_stalls() -> None:
    sink = RecordingSink()
    await sink.open()
    stall = 1.0
    yielded_at: list[float] = []

    async def stalled() -> AsyncIterator[list[Sample]]:
        yielded_at.append(time.monotonic())
        yield frame(0).as_samples("dev")
        await anyio.sleep(stall)  # the analyser goes quiet, far longer than the interval
        yielded_at.append(time.monotonic())
        yield frame(1).as_samples("dev")

    summaries: list[AcquisitionSummary] = []

    async def run_pipe() -> None:
        summaries.append(await pipe(stalled(), sink, batch_size=1000, flush_interval=0.1))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run_pipe)
        deadline = time.monotonic() + 5
        while not sink.writes and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a list
            await anyio.sleep(0.01)
        assert sink.writes, "the buffered samples were not flushed while the stream stalled"
        first_size, first_at = sink.writes[0]
        assert first_size == 5
        assert len(yielded_at) == 1, "flushed only because the next item arrived"
        assert first_at - yielded_at[0] < stall / 2
    [summary] = summaries
    assert summary.samples_emitted == 10
    assert [size for size, _ in sink.writes] == [5, 5]


async def test_interval_flush_with_steady_stream() -> None:
    sink = RecordingSink()
    await sink.open()
    summary = await pipe(ticks(12, delay=0.03), sink, batch_size=10_000, flush_interval=0.1)
    assert summary.samples_emitted == 60
    assert len(sink.writes) >= 2  # several interval flushes, not one at the end
    assert sum(size for size, _ in sink.writes) == 60


async def test_accepts_single_samples_and_empty_stream() -> None:
    sink = RecordingSink()
    await sink.open()

    async def singles() -> AsyncIterator[Sample]:
        for sample in frame(0).as_samples("dev"):
            yield sample

    assert (await pipe(singles(), sink, batch_size=2)).samples_emitted == 5
    assert [size for size, _ in sink.writes] == [2, 2, 1]

    async def empty() -> AsyncIterator[list[Sample]]:
        return
        yield []  # pragma: no cover

    summary = await pipe(empty(), sink)
    assert summary.samples_emitted == 0


@pytest.mark.parametrize(
    ("batch_size", "flush_interval"),
    [(0, 1.0), (-1, 1.0), (1, 0.0), (1, -0.5), (1, float("nan")), (True, 1.0)],
)
async def test_rejects_bad_arguments(batch_size: int, flush_interval: float) -> None:
    with pytest.raises(ValueError):
        await pipe(ticks(1), InMemorySink(), batch_size=batch_size, flush_interval=flush_interval)


async def test_sink_failure_propagates_and_closes_the_stream() -> None:
    closed = anyio.Event()

    async def source() -> AsyncIterator[list[Sample]]:
        try:
            while True:
                yield frame(0).as_samples("dev")
                await anyio.lowlevel.checkpoint()
        finally:
            closed.set()

    class FailingSink(InMemorySink):
        async def write_many(self, samples: Sequence[Sample]) -> None:
            raise OSError("disk on fire")

    sink = FailingSink()
    await sink.open()
    with pytest.raises(OSError, match="disk on fire"):
        await pipe(source(), sink, batch_size=5)
    assert closed.is_set()


async def test_source_failure_flushes_what_arrived_first() -> None:
    sink = RecordingSink()
    await sink.open()

    async def source() -> AsyncIterator[list[Sample]]:
        yield frame(0).as_samples("dev")
        raise ConnectionError("adapter unplugged")

    with pytest.raises(ConnectionError):
        await pipe(source(), sink, batch_size=100, flush_interval=60)
    assert len(sink.samples) == 5


async def test_items_racing_the_flush_deadline_are_never_lost() -> None:
    # Items arrive around the flush deadline again and again: each wait that gives up
    # at its deadline must leave the item that was just arriving in place.
    rng = random.Random(16)
    delays = [rng.uniform(0, 0.01) for _ in range(150)]

    async def source() -> AsyncIterator[list[Sample]]:
        for index, delay in enumerate(delays):
            await anyio.sleep(delay)
            yield frame(index).as_samples("dev")

    sink = RecordingSink()
    await sink.open()
    summary = await pipe(source(), sink, batch_size=1000, flush_interval=0.005)
    expected = [s for index in range(len(delays)) for s in frame(index).as_samples("dev")]
    assert sink.samples == expected
    assert summary.samples_emitted == len(expected)
    assert summary.batches_written == len(sink.writes) > 10  # flushed on the deadline


async def test_cancelling_pipe_closes_the_stream_and_writes_no_more() -> None:
    closed = anyio.Event()

    async def source() -> AsyncIterator[list[Sample]]:
        try:
            yield frame(0).as_samples("dev")
            await anyio.sleep_forever()
            yield frame(1).as_samples("dev")  # pragma: no cover
        finally:
            closed.set()

    sink = RecordingSink()
    await sink.open()
    with anyio.move_on_after(0.2) as scope:
        await pipe(source(), sink, batch_size=1000, flush_interval=60)
    assert scope.cancelled_caught
    assert closed.is_set()
    assert sink.writes == []  # cancelled before the flush interval: nothing written
