"""servomexd/delivery/health.py: the sink's state, its logs and metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry
from rig import Rig, rec, stored, until
from structlog.testing import capture_logs

from servomexd.delivery.health import SinkHealth
from servomexd.metrics import Metrics


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


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _health(clock: Clock) -> tuple[SinkHealth, Metrics]:
    metrics = Metrics(CollectorRegistry())
    return SinkHealth("sqlite", lambda: "sqlite:/x.sqlite", metrics, clock=clock), metrics


def _value(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"sink": "sqlite"})


def test_outage_logs_once_per_transition_with_its_duration_and_backlog() -> None:
    clock = Clock()
    health, metrics = _health(clock)
    with capture_logs() as logs:
        health.recovered(backlog=0)
        health.failed(OSError("disk full"), "write", rows=7, backlog=70)
        clock.now += 1
        health.failed(OSError("disk full"), "open", rows=0, backlog=80)  # same error: quiet
        health.failed(TimeoutError(), "open", rows=0, backlog=90)  # changed: still_down
        clock.now += 11.5
        health.recovered(backlog=90)
    assert [e["event"] for e in logs] == [
        "sink.opened", "sink.down", "sink.still_down", "sink.recovered",
    ]
    down, still, recovered = logs[1], logs[2], logs[3]
    assert down["error"] == "OSError: disk full" and down["rows"] == 7
    assert down["backlog_samples"] == 70 and down["target"] == "sqlite:/x.sqlite"
    assert still["error"] == "TimeoutError" and still["action"] == "open"
    assert recovered["outage_s"] == 12.5 and recovered["backlog_samples"] == 90
    assert _value(metrics, "servomexd_sink_errors_total") == 3
    assert _value(metrics, "servomexd_sink_up") == 1
    assert health.up and health.last_error is None and not health.in_outage


def test_backlog_drained_once_after_recovery_counting_the_rows_since() -> None:
    clock = Clock()
    health, metrics = _health(clock)
    health.wrote(5, 0.01)
    health.failed(OSError("x"), "write", rows=5, backlog=5)
    health.spool_emptied()  # still down: no drain yet
    health.recovered(backlog=300)
    with capture_logs() as logs:
        health.wrote(200, 0.1)
        clock.now += 2
        health.wrote(100, 0.1)
        health.spool_emptied()
        health.spool_emptied()
    assert [e["event"] for e in logs] == ["sink.backlog_drained"]
    assert logs[0]["samples"] == 300 and logs[0]["seconds"] == 2.0
    assert _value(metrics, "servomexd_samples_written_total") == 305
    assert health.samples_written == 305


def test_a_recovery_with_an_empty_spool_is_not_a_drain() -> None:
    health, _ = _health(Clock())
    health.failed(OSError("x"), "open", rows=0, backlog=0)
    health.recovered(backlog=0)
    with capture_logs() as logs:
        health.spool_emptied()
    assert logs == []


def test_closed_sets_the_gauge_down_without_an_outage() -> None:
    health, metrics = _health(Clock())
    health.recovered(backlog=0)
    health.closed()
    assert _value(metrics, "servomexd_sink_up") == 0
    assert not health.up and not health.in_outage
