"""A live /metrics endpoint checked by promtool and scraped by a real Prometheus server.

The endpoint runs in a background thread with its own event loop: a ``Metrics``
registry fed from the real bench captures through the real ``ContinuousFramer``
(every frame and rejection observed as the supervisor does), plus sink and spool
activity, served by ``MetricsServer``. The daemon-level version of these checks
(simulator -> daemon subprocess -> Prometheus) is in test_daemon_scrape.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from obs_tools import (
    RULES,
    PrometheusServer,
    dashboard_queries,
    http_get_json,
    require_tool,
    run_tool,
    wait_for,
)
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from servomexd.http import MetricsServer
from servomexd.metrics import Metrics
from servomexd.model import Frame, Rejection

CAPTURE = Path(__file__).resolve().parents[1] / "fixtures" / "continuous_4100_live_5ch.bin"

# Dashboard queries that legitimately return nothing on a healthy feed: they filter
# for raised status flags, and the bench captures have none.
MAY_BE_EMPTY = ("servomexd_channel_status",)


class Ready:
    def readiness(self) -> tuple[bool, dict[str, object]]:
        return True, {"devices": {"bench": "up"}}


class FedEndpoint:
    """MetricsServer + a feeder replaying the capture, on a private loop in a thread."""

    def __init__(self, period: float = 0.05) -> None:
        self.metrics = Metrics(CollectorRegistry())
        self.period = period
        self.frames_fed = 0
        self.rejections_fed = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="metrics-endpoint", daemon=True)
        self.port = 0

    def __enter__(self) -> FedEndpoint:
        self._thread.start()
        assert self._started.wait(10), "endpoint did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        from servomexd.protocol.continuous import ContinuousFramer

        self._stop = asyncio.Event()
        server = MetricsServer("127.0.0.1", 0, self.metrics.registry, Ready())
        await server.start()
        self.port = server.bound_port
        m = self.metrics
        m.register_device("bench")
        m.register_sink("sqlite")
        m.link_up.labels("bench").set(1)
        m.sink_up.labels("sqlite").set(1)
        self._started.set()
        lines = CAPTURE.read_bytes().splitlines(keepends=True)
        framer = ContinuousFramer()
        index = 0
        try:
            while not self._stop.is_set():
                chunk = lines[index % len(lines)]
                if index % 7 == 3:
                    chunk = b"\x00\xffgarbage\n" + chunk  # a noise line now and then
                index += 1
                for event in framer.feed(chunk):
                    if isinstance(event, Frame):
                        m.observe_frame("bench", event)
                        self.frames_fed += 1
                    else:
                        assert isinstance(event, Rejection)
                        m.observe_rejection("bench", event.reason)
                        self.rejections_fed += 1
                m.samples_written.labels("sqlite").inc(5)
                m.sink_write_seconds.labels("sqlite").observe(0.002 + 0.001 * (index % 5))
                m.spool_pending_samples.set(index % 3)
                m.spool_bytes.set(100 * (index % 3))
                m.spool_oldest_age_seconds.set(0.1 * (index % 3))
                await asyncio.sleep(self.period)
        finally:
            await server.stop()

    def scrape(self, accept: str | None = None) -> bytes:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/metrics")
        if accept:
            request.add_header("Accept", accept)
        with urllib.request.urlopen(request, timeout=5) as response:
            body: bytes = response.read()
            return body


@pytest.fixture(scope="module")
def endpoint() -> Iterator[FedEndpoint]:
    with FedEndpoint() as fed:
        wait_for(lambda: fed.frames_fed >= 5, 10, what="frames fed")
        yield fed


def test_promtool_check_metrics_on_live_scrape(endpoint: FedEndpoint) -> None:
    promtool = require_tool("promtool")
    body = endpoint.scrape()
    assert b"servomexd_reading{" in body
    result = run_tool([promtool, "check", "metrics"], stdin=body)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip() == "", result.stdout + result.stderr


def test_promtool_check_metrics_would_flag_a_bad_metric() -> None:
    """The check above is not vacuous: promtool complains about a misnamed counter."""
    promtool = require_tool("promtool")
    bad = b"# HELP servomexd_bad a counter without _total\n# TYPE servomexd_bad counter\n" \
          b"servomexd_bad 1\n"
    result = run_tool([promtool, "check", "metrics"], stdin=bad)
    assert result.returncode != 0
    assert "_total" in result.stdout + result.stderr


def test_scrape_reflects_what_was_fed(endpoint: FedEndpoint) -> None:
    before = endpoint.frames_fed
    body = endpoint.scrape().decode()
    after = endpoint.frames_fed
    families = {f.name: f for f in text_string_to_metric_families(body)}
    # The feeder keeps running (on the loop that serves the scrape), so the exported
    # count lies between the feeder's own counts read before and after the scrape.
    frames = [s for s in families["servomexd_frames"].samples if s.name.endswith("_total")]
    assert 5 <= before <= frames[0].value <= after
    readings = {s.labels["channel"]: s for s in families["servomexd_reading"].samples}
    assert set(readings) == {"I1", "I2", "I3", "E1", "E2"}
    assert readings["I1"].labels["name"] == "Oxygen"
    assert readings["I1"].labels["unit"] == "%"
    assert 20.0 < readings["I1"].value < 21.0
    rejected = {s.labels["reason"]: s.value for s in families["servomexd_frames_rejected"].samples
                if s.name.endswith("_total")}
    assert rejected["noise"] >= 1


def test_openmetrics_scrape_is_valid(endpoint: FedEndpoint) -> None:
    body = endpoint.scrape("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    assert b"servomexd_frames_total{device=\"bench\"}" in body


def test_prometheus_scrapes_and_every_dashboard_query_returns_data(
    endpoint: FedEndpoint, tmp_path: Path
) -> None:
    binary = require_tool("prometheus")
    (tmp_path / "servomexd-rules.yml").write_text(RULES.read_text())
    prometheus = PrometheusServer(binary, tmp_path, [f"127.0.0.1:{endpoint.port}"],
                                  rule_files=["servomexd-rules.yml"])
    try:
        prometheus.wait_ready()
        wait_for(prometheus.targets_healthy, 20, what="target up")
        # Rate windows are 10 s in the substituted queries: wait until they hold samples.
        wait_for(
            lambda: bool(prometheus.query("rate(servomexd_frames_total[10s]) > 0")),
            30, what="rates over scraped data",
        )
        empty = []
        for where, _raw, expr in dashboard_queries():
            if not prometheus.query(expr) and not any(m in expr for m in MAY_BE_EMPTY):
                empty.append(f"{where}: {expr}")
        assert empty == [], "dashboard queries without data:\n" + "\n".join(empty)

        up = prometheus.query('up{job="servomexd"}')
        assert [float(r["value"][1]) for r in up] == [1.0]

        # The alert rules evaluate cleanly against real data, and none fires on a
        # healthy feed.
        def rules_evaluated() -> bool:
            groups = http_get_json(prometheus.url + "/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return bool(rules) and all(
                not r.get("lastEvaluation", "0001").startswith("0001") for r in rules
            )

        wait_for(rules_evaluated, 20, what="rule evaluation")
        groups = http_get_json(prometheus.url + "/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) >= 10
        assert [r["name"] for r in rules if r["health"] != "ok"] == []
        assert [r["name"] for r in rules if r.get("state") == "firing"] == []
    finally:
        prometheus.stop()


def test_healthz_while_fed(endpoint: FedEndpoint) -> None:
    started = time.monotonic()
    data = http_get_json(f"http://127.0.0.1:{endpoint.port}/healthz")
    assert data["status"] == "ok"
    assert time.monotonic() - started < 3.0  # answered at once, even on a loaded box
