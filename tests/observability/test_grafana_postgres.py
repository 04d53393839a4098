"""deploy/grafana/postgres.json: every SQL query runs against a real samples table.

The table is created and filled by the real PostgresSink from the bench capture; the
Grafana macros are expanded the way Grafana's PostgreSQL datasource expands them.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from obs_tools import REPO, iter_panels

from servomexd.model import Frame, Rejection, Sample
from servomexd.protocol.continuous import ContinuousFramer
from servomexd.sinks import PostgresConfig, PostgresSink

DASHBOARD = REPO / "deploy" / "grafana" / "postgres.json"
CAPTURE = Path(__file__).resolve().parents[1] / "fixtures" / "continuous_4100_live_5ch.bin"


def expand(sql: str, start: datetime, end: datetime) -> str:
    """Grafana's macro and variable expansion for the PostgreSQL datasource."""
    sql = re.sub(
        r"\$__timeGroupAlias\((\w+),\s*[^)]*\)",
        r'floor(extract(epoch from \1) / 60) * 60 AS "time"',
        sql,
    )
    sql = re.sub(
        r"\$__timeFilter\((\w+)\)",
        rf"\1 BETWEEN '{start.isoformat()}' AND '{end.isoformat()}'",
        sql,
    )
    sql = sql.replace("${table:raw}", "public.samples")
    sql = sql.replace("$device", "'bench'").replace("$channel", "'I1','I2','I3','E1','E2'")
    # Every stored gas name: what "All" of the gas variable selects.
    sql = sql.replace("$gas", "SELECT DISTINCT name FROM public.samples WHERE name IS NOT NULL")
    assert "$" not in sql, f"unexpanded Grafana syntax in {sql!r}"
    return sql


def queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [
        (f"panel {p['title']!r}", t["rawSql"])
        for p in iter_panels(dashboard["panels"]) for t in p.get("targets", [])
    ]
    found += [
        (f"variable {v['name']}", v["query"])
        for v in dashboard["templating"]["list"] if v["type"] == "query"
    ]
    return found


def test_one_readings_panel_per_gas() -> None:
    """O2 (around 21 %) and CO or CO2 (around 0.1 %) never share an axis."""
    dashboard = json.loads(DASHBOARD.read_text())
    readings = [p for p in iter_panels(dashboard["panels"]) if p["type"] == "timeseries"
                and "avg(value)" in p["targets"][0]["rawSql"]]  # fmt: skip
    assert [p["repeat"] for p in readings] == ["gas"]
    assert "AND name IN ($gas)" in readings[0]["targets"][0]["rawSql"]


def test_dashboard_shape() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert "__inputs" not in dashboard
    assert dashboard["schemaVersion"] == 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["table"]["query"] == "public.samples"
    for panel in iter_panels(dashboard["panels"]):
        assert panel["datasource"]["uid"] == "${datasource}"
    assert len(queries()) >= 7


async def test_every_query_runs_on_the_sink_table(pg_dsn: str) -> None:
    framer = ContinuousFramer()
    samples: list[Sample] = []
    last: dict[str, float] = {}
    for event in framer.feed(b"noise line\n" + CAPTURE.read_bytes()):
        if isinstance(event, Frame):
            samples.extend(event.as_samples("bench"))
            for reading in event.readings:
                assert reading.value is not None
                last[reading.channel.value] = reading.value
        else:
            assert isinstance(event, Rejection)
            samples.append(event.as_sample("bench"))
    assert len(samples) == 31  # 6 frames x 5 channels + 1 error row

    async with PostgresSink(PostgresConfig(dsn=pg_dsn, create_table=True)) as sink:
        await sink.write_many(samples)

    now = datetime.now(UTC)
    conn = await asyncpg.connect(pg_dsn)
    try:
        results: dict[str, list[Any]] = {}
        for where, sql in queries():
            rows = await conn.fetch(expand(sql, now - timedelta(hours=1), now + timedelta(1)))
            assert rows, f"{where} returned no rows"
            results[where] = rows
        latest = results["panel 'Latest stored reading per channel'"]
        assert {r["channel"]: r["value"] for r in latest} == pytest.approx(last)
        assert results["panel 'Rows stored'"][0]["rows"] == 31
        assert results["panel 'Error rows'"][0]["errors"] == 1
        devices = [r["device"] for r in results["variable device"]]
        assert devices == ["bench"]
        gases = {r["name"] for r in results["variable gas"]}
        assert gases == {s.reading.name for s in samples if s.reading and s.reading.name}
        assert len(gases) > 1  # one readings panel each
    finally:
        await conn.close()
