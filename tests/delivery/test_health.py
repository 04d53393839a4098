"""servomexd/delivery/health.py: the sink's state, its logs and metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path

from rig import Rig, rec, stored, until
from structlog.testing import capture_logs


async def test_sink_that_opens_but_refuses_writes_does_not_flap(tmp_path: Path) -> None:
    """A full disk: the sink reopens fine but every write fails. One sink.down, no
    sink.recovered until a write commits, then exactly one."""
    with capture_logs() as logs:
        async with Rig(tmp_path) as rig:
            rig.dest.fail = lambda n: "before" if 1 <= n <= 4 else None
            for i in range(3):
                rig.add([rec(10 * i + j) for j in range(10)])
                await asyncio.sleep(0.03)
            await until(lambda: rig.idle)
            assert rig.writer.health.up
    events = [entry["event"] for entry in logs if entry["event"].startswith("sink.")]
    assert events.count("sink.down") == 1, events
    assert events.count("sink.recovered") == 1, events
    assert events.index("sink.recovered") > events.index("sink.down")
    assert sorted(stored(rig.db)) == [float(i) for i in range(30)]
