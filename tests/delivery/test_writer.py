"""servomexd/delivery/writer.py: the three parts started together, and their snapshot."""

from __future__ import annotations

from pathlib import Path

import pytest
from rig import Rig, rec, until
from sinks.sinkdata import frame, varied_samples
from structlog.testing import capture_logs

from servomexd.rows import sample_to_record


async def test_acquired_samples_are_spooled_as_the_reference_records(tmp_path: Path) -> None:
    """The hot path encodes with the fast encoder: the spool holds exactly what
    ``sample_to_record`` gives, as plain values (the spool's marshal format refuses
    ``StrEnum`` members)."""
    rig = Rig(tmp_path)
    samples = varied_samples(12) + frame(3).as_samples("dev")
    await rig.spool.open()
    try:
        rig.writer.flusher.add_samples(samples)
        assert await rig.writer.flusher.flush()
        spooled = [r for batch in await rig.spool.peek() for r in batch.records]
    finally:
        await rig.spool.close()
    assert spooled == [sample_to_record(s) for s in samples]
    for record in spooled:
        for value in record[:12]:
            assert value is None or type(value) in (str, float, int, bool)


async def test_snapshot_follows_the_sink_and_the_spool(tmp_path: Path) -> None:
    async with Rig(tmp_path) as rig:
        rig.add([rec(i) for i in range(25)])
        await until(lambda: rig.idle and rig.writer.health.samples_written == 25)
        up = rig.writer.snapshot()
        assert (up.sink_type, up.sink_up, up.sink_error) == ("sqlite", True, None)
        assert (up.samples_accepted, up.samples_written, up.backlog) == (25, 25, 0)
        assert up.spool_accepting
        rig.dest.down = True
        rig.add([rec(25)])
        await until(lambda: not rig.writer.health.up)
        down = rig.writer.snapshot()
        assert not down.sink_up
        assert down.sink_error == "ServomexSinkWriteError: connection refused"
        assert down.backlog == 1 and down.samples_accepted == 26
        rig.dest.down = False


async def test_a_full_spool_is_not_accepting(tmp_path: Path) -> None:
    rig = Rig(tmp_path, spool_limit=1)
    rig.dest.down = True
    async with rig:
        rig.add([rec(i) for i in range(3)])
        await until(lambda: rig.spool.stats.bytes > 0)
        assert not rig.writer.snapshot().spool_accepting


@pytest.mark.parametrize(
    ("kind", "event"), [("jsonl", "sink.reopened"), ("sqlite", "sink.reopen_skipped")]
)
async def test_sighup_reopens_a_file_sink_and_skips_a_database(
    tmp_path: Path, kind: str, event: str
) -> None:
    with capture_logs() as logs:
        async with Rig(tmp_path, kind) as rig:
            rig.add([rec(1)])
            await until(lambda: rig.idle and rig.writer.health.up)
            rig.writer.request_reopen()
            await until(lambda: any(e["event"] == event for e in logs))
    assert [e["event"] for e in logs].count(event) == 1
