"""servomexd/delivery/deliverer.py: spool -> sink with checkpoints: the exactly-once steps."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rig import FlakyDestination, Rig, rec, stored, until

from servomexd.config import SinkSettings
from servomexd.destination import Destination
from servomexd.errors import ServomexSinkCheckpointConflict
from servomexd.rows import Record
from servomexd.spool import Spool


async def test_ambiguous_failure_after_commit_is_not_duplicated(tmp_path: Path) -> None:
    async with Rig(tmp_path) as rig:
        rig.dest.fail = lambda n: "after" if n == 1 else None
        for i in range(5):
            rig.add([rec(10 * i + j) for j in range(10)])
            await asyncio.sleep(0.03)
        await until(lambda: rig.idle)
        assert rig.metric("servomexd_sink_errors_total", sink="sqlite") == 1
    values = stored(rig.db)
    assert sorted(values) == [float(i) for i in range(50)]  # nothing lost, nothing twice
    assert values == sorted(values)  # in order


class LateCommitDestination(FlakyDestination):
    """Write ``late`` times out, and its COMMIT lands only after the writer has re-read the
    checkpoint (a COMMIT still in flight on the old connection): the stale checkpoint
    must not make the retry store the rows twice."""

    def __init__(self, settings: SinkSettings, late: int) -> None:
        super().__init__(settings)
        self.late = late
        self.pending: tuple[list[Record], tuple[str, int, int]] | None = None
        self.conflicts = 0
        self.on_resync: Callable[[], Any] = lambda: None

    async def write_records(self, records: Sequence[Record], *, checkpoint: Any) -> None:
        if len(self.writes) == self.late and self.pending is None:
            self.writes.append(len(records))
            self.pending = (list(records), checkpoint)
            raise TimeoutError("injected: no reply; the COMMIT is still on its way")
        self.writes.append(len(records))
        try:
            await Destination.write_records(self, records, checkpoint=checkpoint)
        except ServomexSinkCheckpointConflict:
            self.conflicts += 1
            raise

    async def read_checkpoint(self, stream: str) -> int:
        stale = await super().read_checkpoint(stream)
        if self.pending is not None:
            records, checkpoint = self.pending
            self.pending = None
            await Destination.write_records(self, records, checkpoint=checkpoint)
            await self.on_resync()
        return stale


async def test_late_commit_after_checkpoint_read_is_not_duplicated(tmp_path: Path) -> None:
    rig = Rig(tmp_path, make_dest=lambda settings: LateCommitDestination(settings, late=1))
    assert isinstance(rig.dest, LateCommitDestination)

    async def more_while_retrying() -> None:
        # More batches spooled meanwhile: the retry merges them with the late one.
        for i in range(3, 5):
            rig.add([rec(10 * i + j) for j in range(10)])
            await rig.writer.flusher.flush()

    rig.dest.on_resync = more_while_retrying
    async with rig:
        for i in range(3):
            rig.add([rec(10 * i + j) for j in range(10)])
            await asyncio.sleep(0.03)
        await until(lambda: rig.idle)
        assert rig.dest.conflicts == 1  # the retry was refused inside its transaction
    # nothing lost, nothing twice (the hook's own flush may spool 30-49 before 20-29)
    assert sorted(stored(rig.db)) == [float(i) for i in range(50)]


async def test_outage_spools_then_drains_in_large_chunks(tmp_path: Path) -> None:
    async with Rig(tmp_path) as rig:
        rig.add([rec(i) for i in range(10)])
        await until(lambda: len(stored(rig.db)) == 10)
        rig.dest.down = True
        rig.add([rec(10)])
        await until(lambda: not rig.writer.health.up)
        for i in range(11, 400):
            rig.add([rec(i)])  # acquisition never blocks
            if i % 10 == 0:
                await asyncio.sleep(0.01)
        # the gauge follows the spool once the flush that appended has resumed
        await until(lambda: rig.spool.stats.samples == 390)
        await until(lambda: rig.metric("servomexd_spool_pending_samples") == 390, within=2)
        assert rig.metric("servomexd_sink_up", sink="sqlite") == 0
        writes_before = len(rig.dest.writes)
        rig.dest.down = False
        await until(lambda: len(stored(rig.db)) == 400)
        # the backlog (>= 39 spool batches) went out in a few merged writes
        assert len(rig.dest.writes) - writes_before <= 3
        assert max(rig.dest.writes) > rig.writer.flusher.batch_size
    assert stored(rig.db) == [float(i) for i in range(400)]


async def test_failure_before_commit_is_retried(tmp_path: Path) -> None:
    async with Rig(tmp_path) as rig:
        rig.dest.fail = lambda n: "before" if n < 3 else None
        rig.add([rec(i) for i in range(30)])
        await until(lambda: len(stored(rig.db)) == 30)
    assert stored(rig.db) == [float(i) for i in range(30)]


async def test_stop_with_sink_down_keeps_data_in_spool(tmp_path: Path) -> None:
    rig = Rig(tmp_path, flush_interval=30.0, batch_size=10_000)
    rig.dest.down = True
    async with rig:
        rig.add([rec(i) for i in range(5)])
        await asyncio.wait_for(rig.stop(), 3)
    async with Spool(tmp_path / "spool") as spool:
        assert spool.stats.samples == 5
    # next run delivers them
    rig2 = Rig(tmp_path)
    async with rig2:
        await until(lambda: len(stored(rig2.db)) == 5)


async def test_restart_after_ambiguous_crash_does_not_duplicate(tmp_path: Path) -> None:
    """Rows committed by the sink but never acked in the spool (a crash in between)."""
    spool = Spool(tmp_path / "spool")
    async with spool:
        seq = await spool.append([rec(i) for i in range(5)])
        stream = spool.stream_id
    dest = Destination(SinkSettings(path=tmp_path / "out.sqlite"))
    await dest.open()
    await dest.write_records([rec(i) for i in range(5)], checkpoint=(stream, seq))
    await dest.close()
    async with Rig(tmp_path) as rig:
        rig.add([rec(5)])
        await until(lambda: len(stored(rig.db)) >= 6 and rig.spool.stats.batches == 0)
    assert stored(rig.db) == [float(i) for i in range(6)]


async def test_file_sink_is_at_least_once(tmp_path: Path) -> None:
    """Documented: without a checkpoint an ambiguous failure repeats the batch."""
    async with Rig(tmp_path, kind="jsonl") as rig:
        rig.dest.fail = lambda n: "after" if n == 0 else None
        rig.add([rec(i) for i in range(10)])
        await until(lambda: rig.spool.stats.batches == 0 and len(rig.dest.writes) >= 2)
    lines = rig.db.read_text().splitlines()
    assert len(lines) == 20


class AckFailsOnce(Spool):
    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.ack_failures = 0

    async def ack(self, upto_seq: int) -> int:
        if self.ack_failures == 0:
            self.ack_failures += 1
            raise sqlite3.OperationalError("injected: disk I/O error")
        return await super().ack(upto_seq)


async def test_checkpoint_ack_failure_is_retried_not_fatal(tmp_path: Path) -> None:
    """A spool error while acking the sink's checkpoint must not end the writer (the
    daemon would exit 70) nor deliver again what the sink already holds."""
    async with Spool(tmp_path / "spool") as spool:
        seq = await spool.append([rec(i) for i in range(5)])
        stream = spool.stream_id
    dest = Destination(SinkSettings(path=tmp_path / "out.sqlite"))
    await dest.open()
    await dest.write_records([rec(i) for i in range(5)], checkpoint=(stream, seq))
    await dest.close()
    failing = AckFailsOnce(tmp_path / "spool")
    rig = Rig(tmp_path, spool=failing)
    async with rig:
        rig.add([rec(5)])
        await until(lambda: len(stored(rig.db)) >= 6 or rig.task is None or rig.task.done())
        assert rig.task is not None and not rig.task.done()
        await until(lambda: rig.spool.stats.batches == 0)
    assert failing.ack_failures == 1
    assert stored(rig.db) == [float(i) for i in range(6)]


class HeldDestination(FlakyDestination):
    """The first write waits for ``release``: the batch stays in the deliverer's hands."""

    def __init__(self, settings: SinkSettings) -> None:
        super().__init__(settings)
        self.release = asyncio.Event()
        self.holding = asyncio.Event()

    async def write_records(self, records: Sequence[Record], *, checkpoint: Any) -> None:
        if not self.holding.is_set():
            self.holding.set()
            await self.release.wait()
        await super().write_records(records, checkpoint=checkpoint)


async def test_overflow_of_a_batch_being_delivered_is_not_counted_when_it_arrives(
    tmp_path: Path,
) -> None:
    """Overflow drops the batch the deliverer is writing; the write then commits: it is
    stored, so only the batches that really never reached the sink count as dropped."""
    spool = Spool(tmp_path / "spool", max_bytes=1)  # every append drops every older batch
    async with Rig(tmp_path, make_dest=HeldDestination, spool=spool) as rig:
        dest = rig.dest
        assert isinstance(dest, HeldDestination)
        rig.add([rec(i) for i in range(10)])
        await until(dest.holding.is_set)
        for b in range(1, 4):  # each drops the one before, the held one first
            await spool.append([rec(10 * b + j) for j in range(10)])
        assert spool.dropped_samples == 20  # batches 2 and 3; batch 1 is in flight
        dest.release.set()
        await until(lambda: rig.idle and spool.stats.batches == 0)
    values = stored(rig.db)
    assert values[:10] == [float(i) for i in range(10)]  # the held batch arrived
    assert len(values) + spool.dropped_samples == 40  # every sample stored or counted
    assert sorted(set(values)) == sorted(values)


async def test_overflow_of_a_batch_whose_write_fails_is_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1)
    async with Rig(tmp_path, make_dest=HeldDestination, spool=spool) as rig:
        dest = rig.dest
        assert isinstance(dest, HeldDestination)
        dest.fail = lambda n: "before" if n == 0 else None
        rig.add([rec(i) for i in range(10)])
        await until(dest.holding.is_set)
        await spool.append([rec(10 + j) for j in range(10)])
        assert spool.dropped_samples == 0
        dest.release.set()
        await until(lambda: spool.dropped_samples == 10)
        await until(lambda: rig.idle and spool.stats.batches == 0)
    assert stored(rig.db) == [float(10 + j) for j in range(10)]
