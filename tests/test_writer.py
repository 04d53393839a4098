"""servomexd/writer.py: buffer -> spool -> sink with checkpoints, against a real SqliteSink.

Sink failures are injected by a thin Destination subclass (a real SQLite file is behind
it); the Postgres outage with a real server is in tests/e2e.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from servomexd.backoff import Backoff
from servomexd.config import SinkSettings
from servomexd.destination import Destination
from servomexd.errors import ServomexSinkCheckpointConflict, ServomexSinkWriteError
from servomexd.metrics import Metrics
from servomexd.rows import Record
from servomexd.spool import Spool
from servomexd.writer import Writer

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def rec(i: int) -> Record:
    return (
        "dev", "I1", "transducer", "O2", float(i), "%", True, False, False, False, False,
        "continuous", i, T0 + timedelta(milliseconds=i), None, None, None,
    )


class FlakyDestination(Destination):
    """A real sink behind it; ``fail`` decides per write: None, "before" or "after" commit."""

    def __init__(self, settings: SinkSettings) -> None:
        super().__init__(settings)
        self.fail: Callable[[int], str | None] = lambda n: None
        self.writes: list[int] = []
        self.down = False

    async def open(self) -> None:
        if self.down:
            raise ServomexSinkWriteError("connection refused")
        await super().open()

    async def write_records(
        self, records: Sequence[Record], *, checkpoint: tuple[str, int] | None
    ) -> None:
        if self.down:
            raise ServomexSinkWriteError("connection refused")
        mode = self.fail(len(self.writes))
        self.writes.append(len(records))
        if mode == "before":
            raise ServomexSinkWriteError("injected failure before commit")
        await super().write_records(records, checkpoint=checkpoint)
        if mode == "after":
            raise TimeoutError("injected: reply lost after commit")


def stored(path: Path) -> list[float]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT value FROM samples ORDER BY rowid")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polling observable state on purpose
            await asyncio.sleep(0.01)


class Rig:
    def __init__(self, tmp_path: Path, kind: str = "sqlite", **writer_kw: object) -> None:
        suffix = {"sqlite": "sqlite", "jsonl": "jsonl"}[kind]
        self.db = tmp_path / f"out.{suffix}"
        self.settings = SinkSettings(type=kind, path=self.db)
        self.metrics = Metrics(CollectorRegistry())
        self.spool = Spool(tmp_path / "spool")
        self.dest = FlakyDestination(self.settings)
        kw: dict[str, object] = {
            "batch_size": 10, "flush_interval": 0.05, "max_write_rows": 1000,
            "write_timeout": 5.0, "backoff": Backoff(initial=0.02, cap=0.05, floor=0.0),
        }
        kw.update(writer_kw)
        self.writer = Writer(self.spool, self.dest, self.metrics, **kw)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Rig:
        await self.spool.open()
        self.task = asyncio.create_task(self.writer.run())
        return self

    async def stop(self) -> None:
        self.writer.request_stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 10)
        await self.writer.aclose()
        await self.spool.close()

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None and not self.task.done():
            await self.stop()

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


async def test_steady_state_exactly_once_and_timer_flush(tmp_path: Path) -> None:
    async with Rig(tmp_path) as rig:
        rig.writer.add_records([rec(i) for i in range(25)])
        await until(lambda: len(stored(rig.db)) == 25)
        # 3 samples: below batch_size, must still be written by the timer
        rig.writer.add_records([rec(i) for i in range(25, 28)])
        await until(lambda: len(stored(rig.db)) == 28, within=2)
        await until(lambda: rig.spool.stats.batches == 0)
        assert rig.writer.sink_up
        assert rig.metric("servomexd_samples_written_total", sink="sqlite") == 28
        assert rig.metric("servomexd_sink_up", sink="sqlite") == 1
    assert stored(rig.db) == [float(i) for i in range(28)]


async def test_ambiguous_failure_after_commit_is_not_duplicated(tmp_path: Path) -> None:
    async with Rig(tmp_path) as rig:
        rig.dest.fail = lambda n: "after" if n == 1 else None
        for i in range(5):
            rig.writer.add_records([rec(10 * i + j) for j in range(10)])
            await asyncio.sleep(0.03)
        await until(lambda: rig.spool.stats.batches == 0 and rig.writer.buffered == 0)
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
    rig = Rig(tmp_path)
    rig.dest = LateCommitDestination(rig.settings, late=1)
    rig.writer.destination = rig.dest

    async def more_while_retrying() -> None:
        # More batches spooled meanwhile: the retry merges them with the late one.
        for i in range(3, 5):
            rig.writer.add_records([rec(10 * i + j) for j in range(10)])
            await rig.writer.flush()

    rig.dest.on_resync = more_while_retrying
    async with rig:
        for i in range(3):
            rig.writer.add_records([rec(10 * i + j) for j in range(10)])
            await asyncio.sleep(0.03)
        await until(lambda: rig.spool.stats.batches == 0 and rig.writer.buffered == 0)
        assert rig.dest.conflicts == 1  # the retry was refused inside its transaction
    # nothing lost, nothing twice (the hook's own flush may spool 30-49 before 20-29)
    assert sorted(stored(rig.db)) == [float(i) for i in range(50)]


async def test_outage_spools_then_drains_in_large_chunks(tmp_path: Path) -> None:
    async with Rig(tmp_path) as rig:
        rig.writer.add_records([rec(i) for i in range(10)])
        await until(lambda: len(stored(rig.db)) == 10)
        rig.dest.down = True
        rig.writer.add_records([rec(10)])
        await until(lambda: not rig.writer.sink_up)
        for i in range(11, 400):
            rig.writer.add_records([rec(i)])  # acquisition never blocks
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
        assert max(rig.dest.writes) > rig.writer.batch_size
    assert stored(rig.db) == [float(i) for i in range(400)]


async def test_sink_that_opens_but_refuses_writes_does_not_flap(tmp_path: Path) -> None:
    """A full disk: the sink reopens fine but every write fails. One sink.down, no
    sink.recovered until a write commits, then exactly one."""
    with capture_logs() as logs:
        async with Rig(tmp_path) as rig:
            rig.dest.fail = lambda n: "before" if 1 <= n <= 4 else None
            for i in range(3):
                rig.writer.add_records([rec(10 * i + j) for j in range(10)])
                await asyncio.sleep(0.03)
            await until(lambda: rig.spool.stats.batches == 0 and rig.writer.buffered == 0)
            assert rig.writer.sink_up
    events = [entry["event"] for entry in logs if entry["event"].startswith("sink.")]
    assert events.count("sink.down") == 1, events
    assert events.count("sink.recovered") == 1, events
    assert events.index("sink.recovered") > events.index("sink.down")
    assert sorted(stored(rig.db)) == [float(i) for i in range(30)]


async def test_failure_before_commit_is_retried(tmp_path: Path) -> None:
    async with Rig(tmp_path) as rig:
        rig.dest.fail = lambda n: "before" if n < 3 else None
        rig.writer.add_records([rec(i) for i in range(30)])
        await until(lambda: len(stored(rig.db)) == 30)
    assert stored(rig.db) == [float(i) for i in range(30)]


async def test_stop_flushes_buffer_and_delivers(tmp_path: Path) -> None:
    rig = Rig(tmp_path, flush_interval=30.0, batch_size=10_000)
    async with rig:
        rig.writer.add_records([rec(i) for i in range(7)])
        await asyncio.sleep(0.05)
        assert stored(rig.db) == []  # only buffered so far
        await rig.stop()
    assert stored(rig.db) == [float(i) for i in range(7)]


async def test_stop_with_sink_down_keeps_data_in_spool(tmp_path: Path) -> None:
    rig = Rig(tmp_path, flush_interval=30.0, batch_size=10_000)
    rig.dest.down = True
    async with rig:
        rig.writer.add_records([rec(i) for i in range(5)])
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
        rig.writer.add_records([rec(5)])
        await until(lambda: len(stored(rig.db)) >= 6 and rig.spool.stats.batches == 0)
    assert stored(rig.db) == [float(i) for i in range(6)]


async def test_file_sink_is_at_least_once(tmp_path: Path) -> None:
    """Documented: without a checkpoint an ambiguous failure repeats the batch."""
    async with Rig(tmp_path, kind="jsonl") as rig:
        rig.dest.fail = lambda n: "after" if n == 0 else None
        rig.writer.add_records([rec(i) for i in range(10)])
        await until(lambda: rig.spool.stats.batches == 0 and len(rig.dest.writes) >= 2)
    lines = rig.db.read_text().splitlines()
    assert len(lines) == 20


async def test_add_never_blocks_and_memory_is_bounded_when_spool_fails(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    async with rig:
        await rig.spool.close()  # appends now fail
        rig.writer.add_records([rec(i) for i in range(rig.writer._buffer_cap + 500)])
        await until(lambda: not rig.writer.spool_ok)
        assert rig.writer.buffered <= rig.writer._buffer_cap
        assert rig.writer.buffer_dropped >= 500
        assert rig.metric("servomexd_spool_dropped_samples_total") >= 500
        rig.writer.request_stop()
        await asyncio.wait_for(rig.task, 5)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_timestamped_files_never_overwrite(tmp_path: Path, kind: str) -> None:
    from servomexd.destination import timestamped_path

    base = tmp_path / f"samples.{kind}"
    first = timestamped_path(base, T0)
    first.write_text("x")
    second = timestamped_path(base, T0)
    assert first.name == f"samples-20250101T000000Z.{kind}"
    assert second != first and second.name.startswith("samples-20250101T000000Z-2")


async def test_flush_cancelled_while_the_spool_is_busy_loses_nothing(tmp_path: Path) -> None:
    """The shutdown deadline cancels the writer while its final append waits behind
    another spool call (a prefetch read): the records must still be spooled, once."""
    import threading

    rig = Rig(tmp_path)
    await rig.spool.open()
    try:
        gate = threading.Event()
        busy = asyncio.ensure_future(rig.spool._call(gate.wait, 5.0))
        rig.writer.add_records([rec(i) for i in range(5)])
        flushing = asyncio.create_task(rig.writer.flush())
        await asyncio.sleep(0.05)
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        gate.set()
        await busy
        assert await rig.writer.flush()  # what the daemon does after cancelling the writer
        await until(lambda: rig.spool.stats.samples >= 5, within=3)
        await asyncio.sleep(0.05)
        values = [r[4] for b in await rig.spool.peek() for r in b.records]
        assert values == [float(i) for i in range(5)]
    finally:
        await rig.spool.close()


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
    rig = Rig(tmp_path)
    rig.spool = AckFailsOnce(tmp_path / "spool")
    rig.writer.spool = rig.spool
    async with rig:
        rig.writer.add_records([rec(5)])
        await until(lambda: len(stored(rig.db)) >= 6 or rig.task is None or rig.task.done())
        assert rig.task is not None and not rig.task.done()
        await until(lambda: rig.spool.stats.batches == 0)
    assert rig.spool.ack_failures == 1
    assert stored(rig.db) == [float(i) for i in range(6)]


async def test_destination_memory_does_not_grow_per_reopen(tmp_path: Path) -> None:
    """Each CSV open (start, every sink recovery, SIGHUP) is a new file: the record of
    the files written must stay bounded over months of reopens."""
    dest = Destination(SinkSettings(type="csv", path=tmp_path / "out.csv"))
    for _ in range(100):
        await dest.open()
        await dest.close()
    assert len(await asyncio.to_thread(lambda: list(tmp_path.glob("out-*.csv")))) == 100
    assert 0 < len(dest.files_written) <= 64
    assert dest.files_written[-1] == dest.current_path
