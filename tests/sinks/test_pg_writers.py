"""The writers registry warns when two daemons write the same site and device."""

from __future__ import annotations

from datetime import UTC, datetime

from fleetdata import records_at
from structlog.testing import capture_logs

from servomexd.sinks import PostgresConfig, PostgresSink
from servomexd.sinks.pg_writers import HEARTBEAT_S, WriterHeartbeat


async def test_same_site_and_device_from_two_streams_is_warned(pg_dsn: str) -> None:
    cfg = PostgresConfig(dsn=pg_dsn, create_table=True, site="plant-a")
    rows = records_at(datetime.now(UTC), 2, "stack-1")
    async with PostgresSink(cfg) as first, PostgresSink(cfg) as second:
        with capture_logs() as logs:
            await first.write_records(rows, checkpoint=("spool-a", 1))
            await second.write_records(rows, checkpoint=("spool-b", 1))
    warned = [e for e in logs if e["event"] == "sink.duplicate_writer"]
    assert [(e["site"], e["device"]) for e in warned] == [("plant-a", "stack-1")]


async def test_a_restart_with_the_same_spool_or_another_site_is_not_warned(pg_dsn: str) -> None:
    rows = records_at(datetime.now(UTC), 2, "stack-1")
    with capture_logs() as logs:
        runs = (("plant-a", "spool-a"), ("plant-a", "spool-a"), ("plant-b", "x"))
        for seq, (site, stream) in enumerate(runs, start=1):
            cfg = PostgresConfig(dsn=pg_dsn, create_table=True, site=site)
            async with PostgresSink(cfg) as sink:
                await sink.write_records(rows, checkpoint=(stream, seq))
    assert not [e for e in logs if e["event"] == "sink.duplicate_writer"]


async def test_heartbeat_is_due_on_its_interval_and_for_a_new_device() -> None:
    now = [100.0]
    beat = WriterHeartbeat("public", "plant-a", clock=lambda: now[0])
    assert beat.due(now[0])  # never claimed yet
    await beat.beat(conn=None)  # nothing written yet: no statement, only the next time
    assert not beat.due(now[0])
    assert beat.due(now[0] + HEARTBEAT_S)
    beat.note(["stack-1"], "spool-a")
    assert beat.due(now[0])  # a device not yet claimed is claimed at once


def test_without_a_site_there_is_no_heartbeat() -> None:
    beat = WriterHeartbeat("public", None)
    beat.note(["stack-1"], "spool-a")
    assert not beat.due(1e9)
