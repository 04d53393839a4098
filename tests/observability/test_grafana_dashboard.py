"""The Grafana dashboard: importable structure, and every PromQL in it parsed by promtool."""

from __future__ import annotations

from pathlib import Path

import pytest
from obs_tools import (
    PROVISIONING,
    dashboard_queries,
    iter_panels,
    load_dashboard,
    recording_rules_document,
    require_tool,
    run_tool,
    substitute,
)

REQUIRED_PANEL_TOPICS = {
    "servomexd_reading": "gas readings",
    "servomexd_link_up": "link state",
    "servomexd_reconnects_total": "reconnects",
    "servomexd_frames_rejected_total": "rejects by reason",
    "servomexd_samples_written_total": "samples written",
    "servomexd_sink_write_seconds_bucket": "sink latency",
    "servomexd_spool_pending_samples": "spool backlog",
    "servomexd_spool_oldest_age_seconds": "spool age",
    "process_cpu_seconds_total": "CPU",
    "process_resident_memory_bytes": "memory",
    "servomexd_channel_status": "channel status",
}


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    queries = dashboard_queries()
    assert len(queries) >= 25
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text(recording_rules_document([q[2] for q in queries]))
    result = run_tool([promtool, "check", "rules", str(rules)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_the_parse_check_catches_a_broken_expression(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    exprs = [q[2] for q in dashboard_queries()]
    exprs.append("sum by (device (rate(servomexd_frames_total[5m]))")
    rules = tmp_path / "broken.yml"
    rules.write_text(recording_rules_document(exprs))
    assert run_tool([promtool, "check", "rules", str(rules)]).returncode != 0


def test_dashboard_shape_for_grafana_10() -> None:
    dashboard = load_dashboard()
    assert "__inputs" not in dashboard  # provisioning-friendly: no import-time prompts
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] == "servomexd"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    device = variables["device"]
    assert device["type"] == "query"
    assert device["definition"].startswith("label_values(servomexd_link_up")
    assert device["definition"].endswith(", device)")
    assert device["multi"] and device["includeAll"]

    ids = [p["id"] for p in iter_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in iter_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["refId"]


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in iter_panels(load_dashboard()["panels"]):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_covers_the_required_topics() -> None:
    all_exprs = " ".join(q[1] for q in dashboard_queries())
    missing = [topic for metric, topic in REQUIRED_PANEL_TOPICS.items() if metric not in all_exprs]
    assert missing == []
    readings = [
        t for p in iter_panels(load_dashboard()["panels"]) for t in p.get("targets", [])
        if t["expr"].startswith("servomexd_reading")
    ]
    assert any(t["legendFormat"] == "{{device}} {{channel}} {{name}} ({{unit}})" for t in readings)


def test_every_device_filtered_query_honours_the_device_variable() -> None:
    per_device = ("servomexd_reading", "servomexd_link_up", "servomexd_frames_total",
                  "servomexd_channel_status", "servomexd_reconnects_total",
                  "servomexd_last_sample_timestamp_seconds")
    for where, expr, _ in dashboard_queries():
        if where.startswith("variable"):
            continue
        if any(metric in expr for metric in per_device):
            assert 'device=~"$device"' in expr, where


def test_unknown_variable_is_reported() -> None:
    with pytest.raises(AssertionError, match="nosuch"):
        substitute('up{x="$nosuch"}')


def test_provisioning_files() -> None:
    datasource = (PROVISIONING / "datasources" / "servomexd.yml").read_text()
    assert "apiVersion: 1" in datasource
    assert "type: prometheus" in datasource
    provider = (PROVISIONING / "dashboards" / "servomexd.yml").read_text()
    assert "apiVersion: 1" in provider
    assert "type: file" in provider
    assert "path: /var/lib/grafana/dashboards/servomexd" in provider


def test_process_panels_only_show_servomexd_processes() -> None:
    """process_* comes from every exporter on the host: each query must join servomexd's."""
    process = [(where, expr) for where, expr, _ in dashboard_queries() if "process_" in expr]
    assert len(process) >= 5
    for where, expr in process:
        assert "and on (job, instance) servomexd_build_info" in expr, where


def _exported_servomexd_metrics() -> set[str]:
    from prometheus_client import CollectorRegistry

    from servomexd.metrics import Metrics

    names = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        if not family.name.startswith("servomexd_"):
            continue
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        names.add(family.name + suffix)
    return names


def test_every_servomexd_metric_is_on_the_dashboard_and_documented() -> None:
    exported = _exported_servomexd_metrics()
    assert len(exported) >= 18
    exprs = " ".join(q[1] for q in dashboard_queries())
    assert sorted(m for m in exported if m not in exprs) == []
    docs = (PROVISIONING.parents[2] / "docs" / "metrics.md").read_text()
    assert sorted(m for m in exported if f"`{m}`" not in docs) == []


def test_links_up_turns_red_when_a_configured_link_is_down() -> None:
    """Up / configured, green only at 1: 2 of 3 links up is red, not a green "2"."""
    panel = next(p for p in iter_panels(load_dashboard()["panels"]) if p["title"] == "Links up")
    exprs = [t["expr"] for t in panel["targets"]]
    link_up = (
        'servomexd_link_up{job=~"$job", site=~"$site", instance=~"$instance", '
        'device=~"$device"}'
    )
    assert exprs[0] == f"sum({link_up}) / count({link_up})"
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["color"]["mode"] == "thresholds"
    steps = defaults["thresholds"]["steps"]
    assert steps == [{"color": "red", "value": None}, {"color": "green", "value": 1}]
    assert defaults["unit"] == "percentunit"


def test_one_readings_panel_per_gas() -> None:
    """O2 (around 21 %) and CO or CO2 (around 0.1 %) never share an axis."""
    dashboard = load_dashboard()
    readings = [p for p in iter_panels(dashboard["panels"]) if p["type"] == "timeseries"
                and "servomexd_reading" in p["targets"][0]["expr"]]  # fmt: skip
    assert len(readings) == 1
    assert readings[0]["repeat"] == "gas"
    assert 'name=~"$gas"' in readings[0]["targets"][0]["expr"]
    gas = next(v for v in dashboard["templating"]["list"] if v["name"] == "gas")
    assert gas["query"]["query"].endswith(", name)") and gas["includeAll"]
