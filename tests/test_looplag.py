"""LoopLagMonitor on a real event loop: a blocked loop shows as lag, overload sheds
the per-channel gauges (never samples) with a log line and a metric, and clears."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs
from test_metrics import frame, reading, value

from servomexd.looplag import LoopLagMonitor
from servomexd.metrics import Metrics
from servomexd.model import ChannelId


async def test_a_blocked_loop_is_measured_shed_and_cleared() -> None:
    m = Metrics(CollectorRegistry())
    m.observe_frame("ana1", frame(reading(ChannelId.I1, "O2", 20.9)))
    monitor = LoopLagMonitor(m, period=0.02, window=0.3, overload_after=0.2)
    with capture_logs() as logs:
        task = asyncio.create_task(monitor.run())
        await asyncio.sleep(0.4)
        assert value(m, "servomexd_event_loop_lag_seconds") is not None
        assert monitor.lag < 0.2
        assert value(m, "servomexd_overload") == 0
        time.sleep(0.35)  # noqa: ASYNC251  # the loop is stuck, as under a CPU hog
        await asyncio.sleep(0.05)
        lag = value(m, "servomexd_event_loop_lag_seconds")
        assert lag is not None and 0.3 <= lag < 1.0
        assert value(m, "servomexd_overload") == 1
        # shed: the data age stays, the per-channel detail leaves the scrape
        assert value(m, "servomexd_last_sample_timestamp_seconds", device="ana1") is not None
        assert value(m, "servomexd_reading", device="ana1", channel="I1", name="O2",
                     unit="%") is None
        m.observe_frame("ana1", frame(reading(ChannelId.I1, "O2", 20.8)))
        assert value(m, "servomexd_frames_total", device="ana1") == 2  # frames still count
        await asyncio.sleep(0.8)  # a quiet window clears it
        assert value(m, "servomexd_overload") == 0
        assert value(m, "servomexd_reading", device="ana1", channel="I1", name="O2",
                     unit="%") == 20.8
        task.cancel()
    events = [entry["event"] for entry in logs]
    assert events.count("daemon.overloaded") == 1
    assert events.count("daemon.overload_cleared") == 1
    assert monitor.worst >= 0.3
