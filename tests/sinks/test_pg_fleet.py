"""servomexd/sinks/pg_fleet.py: bookkeeping after a write (no server needed here)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleetdata import records_at
from structlog.testing import capture_logs

from servomexd.rows import ROW_COLUMNS
from servomexd.sinks import PostgresConfig
from servomexd.sinks.pg_fleet import FleetLayout
from servomexd.sinks.pg_stats import table_stats

RECEIVED = ROW_COLUMNS.index("received_at")


def test_rows_sent_to_default_are_reported_once_a_minute_not_per_write() -> None:
    """A backlog from months ago drains in hundreds of writes: the first is reported at
    once, the rest in one summary a minute later; the counter takes every row."""
    now = [1000.0]
    config = PostgresConfig(dsn="postgresql://x@127.0.0.1/db", table="drained", partition="day")
    layout = FleetLayout(config, clock=lambda: now[0])
    today = datetime.now(UTC)
    layout._covered = (today - timedelta(days=1), today + timedelta(days=2))  # as maintenance sets
    stats = table_stats("public.drained")
    before = stats.rows_to_default
    old = today - timedelta(days=90)
    batches = [records_at(old + timedelta(minutes=i), 4) for i in range(5)]
    with capture_logs() as logs:
        for batch in batches:
            layout.note_write(batch, "stream")
            now[0] += 1.0
        layout.note_write(records_at(today, 4), "stream")  # covered: not counted
        now[0] += 60.0
        layout.note_write(batches[0], "stream")
    reports = [e for e in logs if e["event"] == "sink.rows_to_default_partition"]
    sizes = [len(batch) for batch in batches]
    assert [(e["rows"], e["writes"]) for e in reports] == [
        (sizes[0], 1),
        (sum(sizes[1:]) + sizes[0], 5),
    ]
    assert reports[1]["oldest"] == min(r[RECEIVED] for r in batches[0]).isoformat()
    assert stats.rows_to_default - before == sum(sizes) + sizes[0]


def test_rows_not_yet_reported_are_reported_when_the_sink_closes() -> None:
    now = [0.0]
    config = PostgresConfig(dsn="postgresql://x@127.0.0.1/db", table="closing", partition="day")
    layout = FleetLayout(config, clock=lambda: now[0])
    today = datetime.now(UTC)
    layout._covered = (today - timedelta(days=1), today + timedelta(days=2))
    old = records_at(today - timedelta(days=30), 2)
    with capture_logs() as logs:
        layout.note_write(old, "stream")  # reported at once
        layout.note_write(old, "stream")  # within the minute: held
        layout.report_pending()
        layout.report_pending()  # nothing left: no second line
    reports = [e for e in logs if e["event"] == "sink.rows_to_default_partition"]
    assert [e["rows"] for e in reports] == [len(old), len(old)]
