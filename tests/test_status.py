"""servomexd/status.py: /readyz and STATUS= from the components' health snapshots."""

from __future__ import annotations

import time

from servomexd.acquisition.supervisor import LinkHealth
from servomexd.delivery import DeliveryHealth
from servomexd.spool import SpoolStats
from servomexd.status import readiness, status_line

UP = LinkHealth("a", True, None, 10, 0, 0)
DOWN = LinkHealth("b", False, "no such port", 0, 0, 3)


def delivery(*, sink_up: bool, accepting: bool, samples: int = 0) -> DeliveryHealth:
    stats = SpoolStats(1 if samples else 0, samples, 4096 * bool(samples), time.time(), 7)
    return DeliveryHealth(
        sink_type="sqlite", sink_up=sink_up, sink_error=None if sink_up else "OSError: x",
        spool_accepting=accepting, spool=stats, buffered=2, samples_accepted=50,
        samples_written=40,
    )


def test_starting_until_the_delivery_side_exists() -> None:
    ready, details = readiness([UP], None, "postgres")
    assert not ready
    assert details["problems"] == ["starting"]
    assert details["sink"] == {"type": "postgres", "up": False}
    assert status_line([UP], None) == "starting"


def test_ready_when_links_up_and_sink_up() -> None:
    ready, details = readiness([UP], delivery(sink_up=True, accepting=True), "sqlite")
    assert ready and details["problems"] == []
    assert details["devices"] == {"a": "up"}
    assert details["sink"] == {"type": "sqlite", "up": True, "error": None}


def test_a_down_sink_is_ready_while_the_spool_accepts() -> None:
    ready, _ = readiness([UP], delivery(sink_up=False, accepting=True, samples=8), "sqlite")
    assert ready
    ready, details = readiness([UP], delivery(sink_up=False, accepting=False), "sqlite")
    assert not ready
    assert details["problems"] == ["sink down and spool not accepting"]


def test_a_down_link_is_named_with_its_error() -> None:
    ready, details = readiness([UP, DOWN], delivery(sink_up=True, accepting=True), "sqlite")
    assert not ready
    assert details["problems"] == ["device b link down"]
    assert details["devices"] == {"a": "up", "b": "down: no such port"}


def test_status_line_counts_links_and_backlog() -> None:
    line = status_line([UP, DOWN], delivery(sink_up=False, accepting=True, samples=8))
    assert line == "devices up 1/2, samples written 40, backlog 10, sink DOWN"
