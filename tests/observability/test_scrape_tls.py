"""A real Prometheus scrapes ``servomexd run`` over TLS with basic auth.

The daemon reads an exporter-toolkit web-config.yml (certificate made here, bcrypt
hash of the scrape password); Prometheus runs the job from
deploy/prometheus/scrape-tls.yml with only the target and file paths changed, plus a
second job with a wrong password that must be refused (401) and counted.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from obs_tools import (
    REPO,
    PrometheusServer,
    free_port,
    http_get_json,
    require_tool,
    start_daemon,
    stop_process,
    wait_for,
    wait_serving,
)
from tlscerts import CertificateAuthority

pytestmark = pytest.mark.e2e

SCRAPE_TLS = REPO / "deploy" / "prometheus" / "scrape-tls.yml"
PASSWORD = "scrape-password-for-the-test"


@dataclass
class TlsRig:
    tmp: Path
    url: str
    ca_file: Path
    daemon: subprocess.Popen[bytes]
    prometheus: PrometheusServer | None = None

    def daemon_log(self) -> str:
        return (self.tmp / "daemon.log").read_text(errors="replace")

    def get(self, path: str, auth: str | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path)
        if auth is not None:
            request.add_header("Authorization", auth)
        context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


def scrape_job(name: str, port: int, ca_file: Path, password_file: Path) -> dict[str, Any]:
    """The documented job, pointed at this daemon."""
    document = yaml.safe_load(SCRAPE_TLS.read_text())
    (job,) = document["scrape_configs"]
    job = {**job, "job_name": name, "scrape_interval": "1s", "scrape_timeout": "1s"}
    job["tls_config"] = {**job["tls_config"], "ca_file": str(ca_file)}
    job["basic_auth"] = {**job["basic_auth"], "password_file": str(password_file)}
    job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    return job


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRig]:
    prometheus_bin = require_tool("prometheus")
    tmp = tmp_path_factory.mktemp("scrape-tls")
    ca = CertificateAuthority("metrics CA")
    ca_file = ca.write(tmp)
    ca.issue("127.0.0.1", hosts=("127.0.0.1",)).write(tmp, "metrics")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    (tmp / "web-config.yml").write_text(
        "tls_server_config:\n  cert_file: metrics.crt\n  key_file: metrics.key\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    port = free_port()
    config = tmp / "servomexd.toml"
    config.write_text(f"""
[[devices]]
name = "absent"
port = "{tmp / 'no-such-port'}"

[sink]
type = "sqlite"
path = "{tmp / 'samples.sqlite'}"

[spool]
path = "{tmp / 'spool'}"

[metrics]
listen = "127.0.0.1:{port}"
web_config = "{tmp / 'web-config.yml'}"

[log]
format = "json"
""")
    log = (tmp / "daemon.log").open("wb")
    daemon = start_daemon(config, log)
    rig = TlsRig(tmp, f"https://127.0.0.1:{port}", ca_file, daemon)
    try:
        wait_serving(
            daemon,
            lambda: rig.get("/healthz")[0] == 200,
            lambda: rig.daemon_log()[-4000:],
            "daemon /healthz over https",
        )
        (tmp / "password").write_text(PASSWORD)
        (tmp / "wrong-password").write_text("not-" + PASSWORD)
        (tmp / "prom").mkdir()
        rig.prometheus = PrometheusServer(
            prometheus_bin, tmp / "prom", [],
            scrape_configs=[
                scrape_job("servomexd", port, ca_file, tmp / "password"),
                scrape_job("servomexd-wrong-password", port, ca_file, tmp / "wrong-password"),
            ],
        )
        rig.prometheus.wait_ready()
        yield rig
    finally:
        stop_process(daemon)
        if rig.prometheus is not None:
            rig.prometheus.stop()
        log.close()


def targets(rig: TlsRig) -> dict[str, dict[str, Any]]:
    assert rig.prometheus is not None
    data = http_get_json(rig.prometheus.url + "/api/v1/targets")
    return {t["labels"]["job"]: t for t in data["data"]["activeTargets"]}


def test_prometheus_scrapes_over_tls_with_basic_auth(rig: TlsRig) -> None:
    assert rig.prometheus is not None
    prometheus = rig.prometheus
    wait_for(lambda: targets(rig).get("servomexd", {}).get("health") == "up", 30,
             what="the TLS + basic auth target up")
    target = targets(rig)["servomexd"]
    assert target["scrapeUrl"] == rig.url + "/metrics"
    series = prometheus.query('count({job="servomexd", __name__=~"servomexd_.+"})')
    assert float(series[0]["value"][1]) > 10
    device = prometheus.query('servomexd_link_up{job="servomexd"}')
    assert [s["metric"]["device"] for s in device] == ["absent"]


def test_wrong_password_is_refused_and_counted(rig: TlsRig) -> None:
    assert rig.prometheus is not None
    prometheus = rig.prometheus

    def refused() -> bool:
        target = targets(rig).get("servomexd-wrong-password", {})
        return target.get("health") == "down" and "401" in target.get("lastError", "")

    wait_for(refused, 30, what="the wrong-password target refused with 401")

    def counted() -> bool:
        result = prometheus.query(
            'servomexd_http_unauthorized_requests_total{job="servomexd", reason="invalid"}'
        )
        return bool(result) and float(result[0]["value"][1]) >= 1

    wait_for(counted, 30, what="the 401s counted")
    status, body = rig.get("/metrics")
    assert status == 401
    assert json.loads(body) == {"error": "authentication required"}


def test_daemon_logged_its_endpoint_security(rig: TlsRig) -> None:
    events = [json.loads(line) for line in rig.daemon_log().splitlines() if line.startswith("{")]
    listening = [e for e in events if e.get("event") == "metrics.listening"]
    assert listening and listening[0]["tls"] is True and listening[0]["basic_auth"] is True
    assert not [e for e in events if e.get("event") == "metrics.exposed"]
    assert PASSWORD not in rig.daemon_log()


def test_documented_tls_scrape_config_is_valid() -> None:
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "config", SCRAPE_TLS.name], cwd=SCRAPE_TLS.parent,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (job,) = yaml.safe_load(SCRAPE_TLS.read_text())["scrape_configs"]
    assert job["scheme"] == "https"
    assert set(job["basic_auth"]) == {"username", "password_file"}  # no inline password
