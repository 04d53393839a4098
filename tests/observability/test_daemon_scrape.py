"""The running daemon, fed by simulated analysers, as Prometheus sees it.

Two simulated analysers on pseudo-terminals feed one ``servomexd run`` subprocess
(SQLite sink). "live" is the ``servomexd simulate`` CLI broadcasting continuously.
"exact" sends exactly FRAMES frames plus noise lines, built by the simulator's own
frame code on the simulator's ``PtyDevice``, but only once the daemon holds the port
open: opening a serial port flushes its input (pyserial does, like a real adapter),
so frames a simulator sends before the daemon's open are lost by design and "exactly
N" could not be asserted. A real ``prometheus`` server scrapes the daemon every
second. The tests prove: the scrape passes ``promtool check metrics``; the exported
counts and readings equal what was sent over the wire; and every dashboard query
returns data from Prometheus.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from obs_tools import (
    REPO,
    RULES,
    PrometheusServer,
    dashboard_queries,
    free_port,
    http_get_json,
    require_tool,
    run_tool,
    start_daemon,
    stop_process,
    wait_for,
    wait_serving,
)
from prometheus_client.parser import text_string_to_metric_families

from servomexd.protocol.continuous import build_frame, parse_frame
from servomexd.simulator.continuous import simulated_blocks
from servomexd.simulator.pty import PtyDevice

pytestmark = pytest.mark.e2e

FRAMES = 30
NOISE_EVERY = 7
PERIOD = 0.1
# Dashboard queries allowed to be empty on a healthy run: raised status flags only.
MAY_BE_EMPTY = (
    "servomexd_channel_status",
    "servomexd_pg_",  # Postgres partition figures: this rig's sink is SQLite
)


@dataclass
class Rig:
    tmp: Path
    metrics_url: str
    daemon: subprocess.Popen[bytes]
    exact: PtyDevice
    live_sim: subprocess.Popen[bytes] | None = None
    prometheus: PrometheusServer | None = None

    def scrape(self) -> bytes:
        with urllib.request.urlopen(self.metrics_url + "/metrics", timeout=5) as response:
            body: bytes = response.read()
            return body

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = self.scrape().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def value(self, metric: str, /, **labels: str) -> float | None:
        return self.samples().get((metric, tuple(sorted(labels.items()))))

    def daemon_log(self) -> str:
        return (self.tmp / "daemon.log").read_text(errors="replace")[-4000:]


def _simulator(tmp: Path, name: str, *extra: str) -> subprocess.Popen[bytes]:
    log = (tmp / f"{name}-sim.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "servomexd", "simulate", "--link", str(tmp / name),
         "--period", str(PERIOD), "--emit-log", str(tmp / f"{name}.jsonl"), *extra],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
    )


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("daemon-scrape")
    port = free_port()
    config = tmp / "servomexd.toml"
    config.write_text(f"""
[[devices]]
name = "exact"
port = "{tmp / 'exact'}"
silence_timeout = 2.0

[[devices]]
name = "live"
port = "{tmp / 'live'}"
silence_timeout = 2.0

[sink]
type = "sqlite"
path = "{tmp / 'samples.sqlite'}"
synchronous = "NORMAL"
flush_interval = 0.2

[spool]
path = "{tmp / 'spool'}"
synchronous = "NORMAL"

[metrics]
listen = "127.0.0.1:{port}"

[log]
format = "json"
""")
    env = {**os.environ, "SERVOMEXD_CONFIG": str(config)}
    daemon_log = (tmp / "daemon.log").open("wb")
    exact = PtyDevice(tmp / "exact").open()
    daemon = start_daemon(config, daemon_log, env)
    rig = Rig(tmp, f"http://127.0.0.1:{port}", daemon, exact)
    try:
        def healthy() -> bool:
            health = http_get_json(rig.metrics_url + "/healthz", timeout=1)
            return bool(health["status"] == "ok")

        wait_serving(daemon, healthy, rig.daemon_log, "daemon /healthz")
        wait_for(lambda: _holds_open(daemon.pid, exact.slave_name), 30,
                 what="daemon opening the exact port")
        prometheus_bin = require_tool("prometheus")
        (tmp / "prom").mkdir()
        (tmp / "prom" / RULES.name).write_text(RULES.read_text())
        rig.prometheus = PrometheusServer(prometheus_bin, tmp / "prom", [f"127.0.0.1:{port}"],
                                          rule_files=[RULES.name])
        rig.live_sim = _simulator(tmp, "live", "--seed", "7")
        rig.prometheus.wait_ready()
        yield rig
    finally:
        for process in (rig.live_sim, daemon):
            if process is not None:
                stop_process(process)
        exact.close()
        if rig.prometheus is not None:
            rig.prometheus.stop()
        daemon_log.close()


def _holds_open(pid: int, device: str | None) -> bool:
    """Whether process ``pid`` has ``device`` open (a real check, via /proc)."""
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            if os.readlink(fd) == device:
                return True
        except OSError:
            continue
    return False


def _send_exact(device: PtyDevice) -> tuple[list[bytes], int]:
    """FRAMES frames as the simulator builds them, a noise line before every 7th."""
    frames: list[bytes] = []
    noise = 0
    for index in range(FRAMES):
        if (index + 1) % NOISE_EVERY == 0:
            line = b"#\x7f\xffnoise " + str(index).encode() + b"\n"
            assert device.write(line) == len(line)
            noise += 1
        clock = datetime.now().replace(microsecond=0)
        raw = build_frame(simulated_blocks(index, 3, period=PERIOD), clock=clock)
        assert device.write(raw + b"\n") == len(raw) + 1, "the pty dropped a frame"
        frames.append(raw)
        time.sleep(PERIOD)
    return frames, noise


def test_frames_counted_exactly_and_readings_equal_the_last_frame_sent(rig: Rig) -> None:
    sent_at = time.time()
    frames, noise = _send_exact(rig.exact)
    assert noise == FRAMES // NOISE_EVERY

    wait_for(lambda: rig.value("servomexd_frames_total", device="exact") == FRAMES, 20,
             what=f"frames_total == {FRAMES}: {rig.daemon_log()}")
    time.sleep(0.5)  # nothing more may arrive
    assert rig.value("servomexd_frames_total", device="exact") == FRAMES
    rejected = sum(
        v for (name, labels), v in rig.samples().items()
        if name == "servomexd_frames_rejected_total" and ("device", "exact") in labels
    )
    assert rejected == noise

    last = parse_frame(frames[-1])
    assert len(last.readings) == 5
    for reading in last.readings:
        exported = rig.value(
            "servomexd_reading", device="exact", channel=reading.channel.value,
            name=reading.name or "", unit=reading.unit_label,
        )
        assert exported == reading.value, reading.channel
        for flag, raised in zip(
            ("fault", "maintenance", "calibrating", "warming_up"), reading.status.flags(),
            strict=False,
        ):
            assert rig.value("servomexd_channel_status", device="exact",
                             channel=reading.channel.value, flag=flag) == float(raised)
    assert rig.value("servomexd_samples_received_total", device="exact") == FRAMES * 5 + noise
    # The newest frame's wall clock is the moment the daemon received it: within the
    # sending window.
    newest = rig.value("servomexd_last_sample_timestamp_seconds", device="exact")
    assert newest is not None and sent_at <= newest <= time.time()


def test_promtool_check_metrics_on_the_daemon(rig: Rig) -> None:
    promtool = require_tool("promtool")
    wait_for(lambda: (rig.value("servomexd_frames_total", device="live") or 0) > 0, 30,
             what="live frames")
    body = rig.scrape()
    for name in (b"servomexd_build_info", b"servomexd_reading{", b"servomexd_sink_up{",
                 b"servomexd_spool_pending_samples", b"process_resident_memory_bytes"):
        assert name in body
    result = run_tool([promtool, "check", "metrics"], stdin=body)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip() == ""


def test_health_endpoints_of_the_daemon(rig: Rig) -> None:
    assert http_get_json(rig.metrics_url + "/healthz")["status"] == "ok"
    wait_for(lambda: (rig.value("servomexd_link_up", device="live") or 0) == 1, 30,
             what="live link up")
    try:
        with urllib.request.urlopen(rig.metrics_url + "/readyz", timeout=5) as response:
            status, body = response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        status, body = error.code, json.loads(error.read())
    # "exact" stops after its frames, so the daemon is (correctly) not ready once it has;
    # either way the answer names its state.
    assert status in (200, 503)
    assert body["status"] == ("ready" if status == 200 else "not ready")
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(rig.metrics_url + "/nope", timeout=5)
    assert missing.value.code == 404


def test_every_dashboard_query_returns_data_from_prometheus(rig: Rig) -> None:
    prometheus = rig.prometheus
    assert prometheus is not None
    wait_for(prometheus.targets_healthy, 30, what="prometheus target up")
    wait_for(
        lambda: bool(prometheus.query('rate(servomexd_frames_total{device="live"}[10s]) > 0')),
        40, what="rates over scraped data",
    )
    wait_for(
        lambda: bool(prometheus.query("rate(servomexd_samples_written_total[10s]) > 0")),
        40, what="sink writes scraped",
    )
    empty = [
        f"{where}: {expr}" for where, _raw, expr in dashboard_queries()
        if not prometheus.query(expr) and not any(m in expr for m in MAY_BE_EMPTY)
    ]
    assert empty == [], "dashboard queries without data:\n" + "\n".join(empty)
    # What Prometheus stored agrees with what the daemon serves.
    reading = prometheus.query('servomexd_reading{device="live", channel="I1"}')
    assert len(reading) == 1
    assert reading[0]["metric"]["name"] == "Oxygen"
    assert reading[0]["metric"]["unit"] == "%"
    groups = http_get_json(prometheus.url + "/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert [r["name"] for r in rules if r["health"] == "err"] == []
