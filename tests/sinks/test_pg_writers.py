"""The writers registry warns when two daemons write the same site and device."""

from __future__ import annotations

from datetime import UTC, datetime

from fleetdata import records_at
from structlog.testing import capture_logs

from servomexd.sinks import PostgresConfig, PostgresSink


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
