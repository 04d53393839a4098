"""servomexd/delivery/flusher.py: memory buffer -> spool, on time or size, never blocking."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from rig import Rig, rec, stored, until

from servomexd.rows import Record
from servomexd.spool import Spool


async def test_steady_state_exactly_once_and_timer_flush(tmp_path: Path) -> None:
    async with Rig(tmp_path) as rig:
        rig.add([rec(i) for i in range(25)])
        await until(lambda: len(stored(rig.db)) == 25)
        # 3 samples: below batch_size, must still be written by the timer
        rig.add([rec(i) for i in range(25, 28)])
        await until(lambda: len(stored(rig.db)) == 28, within=2)
        await until(lambda: rig.spool.stats.batches == 0)
        assert rig.writer.health.up
        assert rig.metric("servomexd_samples_written_total", sink="sqlite") == 28
        assert rig.metric("servomexd_sink_up", sink="sqlite") == 1
    assert stored(rig.db) == [float(i) for i in range(28)]


async def test_stop_flushes_buffer_and_delivers(tmp_path: Path) -> None:
    rig = Rig(tmp_path, flush_interval=30.0, batch_size=10_000)
    async with rig:
        rig.add([rec(i) for i in range(7)])
        await asyncio.sleep(0.05)
        assert stored(rig.db) == []  # only buffered so far
        await rig.stop()
    assert stored(rig.db) == [float(i) for i in range(7)]


async def test_add_never_blocks_and_memory_is_bounded_when_spool_fails(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    async with rig:
        await rig.spool.close()  # appends now fail
        rig.add([rec(i) for i in range(rig.writer.flusher.buffer_cap + 500)])
        await until(lambda: not rig.writer.flusher.spool_ok)
        assert rig.writer.flusher.buffered <= rig.writer.flusher.buffer_cap
        assert rig.writer.flusher.dropped >= 500
        assert rig.metric("servomexd_spool_dropped_samples_total") >= 500
        rig.writer.request_stop()
        await asyncio.wait_for(rig.task, 5)


async def test_samples_held_in_memory_have_their_own_gauge(tmp_path: Path) -> None:
    """The spool cannot be written (its disk full): the samples wait in memory, and
    servomexd_buffered_samples says so while servomexd_spool_pending_samples reads 0."""
    rig = Rig(tmp_path)
    async with rig:
        await rig.spool.close()  # appends now fail
        rig.add([rec(i) for i in range(300)])
        await until(lambda: not rig.writer.flusher.spool_ok)
        await until(lambda: rig.metric("servomexd_buffered_samples") == 300)
        assert rig.metric("servomexd_spool_pending_samples") == 0
        await rig.spool.open()  # space is back: the buffer goes to the spool and the sink
        await until(lambda: len(stored(rig.db)) == 300)
        await until(lambda: rig.metric("servomexd_buffered_samples") == 0)
        rig.writer.request_stop()
        await asyncio.wait_for(rig.task, 5)


async def test_flush_cancelled_while_the_spool_is_busy_loses_nothing(tmp_path: Path) -> None:
    """The shutdown deadline cancels the writer while its final append waits behind
    another spool call (a prefetch read): the records must still be spooled, once."""
    rig = Rig(tmp_path)
    await rig.spool.open()
    try:
        gate = threading.Event()
        busy = asyncio.ensure_future(rig.spool._call(gate.wait, 5.0))
        rig.add([rec(i) for i in range(5)])
        flushing = asyncio.create_task(rig.writer.flusher.flush())
        await asyncio.sleep(0.05)
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        gate.set()
        await busy
        assert await rig.writer.flusher.flush()  # what the daemon does after cancelling the writer
        await until(lambda: rig.spool.stats.samples >= 5, within=3)
        await asyncio.sleep(0.05)
        values = [r[4] for b in await rig.spool.peek() for r in b.records]
        assert values == [float(i) for i in range(5)]
    finally:
        await rig.spool.close()


class SlowSpool(Spool):
    """A real spool whose commits take ``delay`` s on its thread (a slow disk), and which
    notes when each batch became durable."""

    def __init__(self, directory: Path, delay: float) -> None:
        super().__init__(directory)
        self.delay = delay
        self.committed: list[tuple[float, list[float]]] = []

    async def append(self, records: Sequence[Record]) -> int:
        await self._call(time.sleep, self.delay)
        seq = await super().append(records)
        self.committed.append((time.monotonic(), [float(r[4]) for r in records]))
        return seq


async def test_group_commit_cadence_does_not_grow_with_commit_time(tmp_path: Path) -> None:
    """Flushes are due flush_interval after the previous one BEGAN: a record waits at most
    flush_interval plus one commit before it is durable, not plus two."""
    interval, commit = 0.5, 0.4
    spool = SlowSpool(tmp_path / "spool", commit)
    added: dict[float, float] = {}
    async with Rig(tmp_path, spool=spool, flush_interval=interval, batch_size=100_000) as rig:
        for i in range(150):  # 3 s of a steady stream
            rig.add([rec(i)])
            added[float(i)] = time.monotonic()
            await asyncio.sleep(0.02)
        await until(lambda: sum(len(v) for _, v in spool.committed) == 150)
    ages = [at - added[value] for at, values in spool.committed for value in values]
    assert max(ages) < interval + commit + 0.2, max(ages)
    assert len(spool.committed) <= 3 / interval + 2  # about one group commit per interval


async def test_a_full_batch_is_committed_before_the_interval(tmp_path: Path) -> None:
    async with Rig(tmp_path, flush_interval=30.0, batch_size=100) as rig:
        rig.add([rec(i) for i in range(100)])
        await until(lambda: len(stored(rig.db)) == 100, within=5)
        rig.add([rec(i) for i in range(100, 150)])
        await asyncio.sleep(0.3)
        assert len(stored(rig.db)) == 100  # the rest waits for the interval or the stop
