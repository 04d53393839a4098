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


def expand(
    sql: str, start: datetime, end: datetime, interval_ms: int = 10_000, gas: str | None = None
) -> str:
    """Grafana's macro and variable expansion for the PostgreSQL datasource."""
    sql = sql.replace("$__interval_ms", str(interval_ms))
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
    sql = sql.replace("$site", "'plant-a/line-2'")
    sql = sql.replace("$device", "'bench'").replace("$channel", "'I1','I2','I3','E1','E2'")
    if gas is not None:  # Grafana sends the values themselves
        sql = sql.replace("$gas", gas)
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

    config = PostgresConfig(
        dsn=pg_dsn, create_table=True, partition="day", rollups=("1m", "1h"),
        site="plant-a/line-2",
    )
    async with PostgresSink(config) as sink:
        await sink.write_many(samples)

    now = datetime.now(UTC)
    conn = await asyncpg.connect(pg_dsn)
    try:
        by_interval: dict[int, dict[str, list[Any]]] = {}
        for interval_ms in (10_000, 60_000, 3_600_000):  # raw, 1 min rollup, 1 h rollup
            results: dict[str, list[Any]] = {}
            for where, sql in queries():
                rows = await conn.fetch(
                    expand(sql, now - timedelta(hours=2), now + timedelta(1), interval_ms)
                )
                assert rows, f"{where} returned no rows at {interval_ms} ms"
                results[where] = rows
            by_interval[interval_ms] = results
            latest = results["panel 'Latest stored reading per channel'"]
            assert {r["channel"]: r["value"] for r in latest} == pytest.approx(last)
            assert [tuple(r) for r in results["panel 'Rows stored'"]] == [(31,)]
            assert [tuple(r) for r in results["panel 'Error rows'"]] == [(1,)]
            assert [r["device"] for r in results["variable device"]] == ["bench"]
            assert [r["site"] for r in results["variable site"]] == ["plant-a/line-2"]
            gases = {r["name"] for r in results["variable gas"]}
            assert gases == {s.reading.name for s in samples if s.reading and s.reading.name}
            assert len(gases) > 1  # one readings panel each
        # the 1 min rollup gives the raw averages exactly (same one-minute groups)
        raw, rolled = (
            [tuple(r) for r in by_interval[ms]["panel 'Readings: $gas'"]]
            for ms in (10_000, 60_000)
        )
        assert [r[:2] for r in raw] == [r[:2] for r in rolled]
        assert [r[2] for r in raw] == pytest.approx([r[2] for r in rolled])
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("interval_ms", "scanned", "skipped"),
    [(10_000, "samples", "samples_1"), (60_000, "samples_1m", "samples_1h"),
     (3_600_000, "samples_1h", "samples_1m")],
)
async def test_each_panel_reads_one_table_for_its_interval(
    pg_dsn: str, interval_ms: int, scanned: str, skipped: str
) -> None:
    config = PostgresConfig(
        dsn=pg_dsn, create_table=True, partition="day", rollups=("1m", "1h"), site="s"
    )
    async with PostgresSink(config):
        pass
    now = datetime.now(UTC)
    conn = await asyncpg.connect(pg_dsn)
    try:
        sql = dict(queries())["panel 'Readings: $gas'"]
        plan = "\n".join(
            r[0] for r in await conn.fetch(
                "EXPLAIN " + expand(sql, now - timedelta(hours=1), now, interval_ms, "'Oxygen'")
            )
        )
    finally:
        await conn.close()
    relations = set(re.findall(r" on (\w+)", plan))
    assert relations, plan
    assert all(r.startswith(scanned) for r in relations), plan
    assert not any(r.startswith(skipped) for r in relations if r != scanned), plan
