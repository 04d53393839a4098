"""deploy/prometheus/fleet-scrape.yml: valid, and its relabelling puts `site` on targets.

A real ``prometheus`` scrapes two tiny exporters on loopback with the file's own
scrape job (only the target file, the static target and the interval are swapped).
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from obs_tools import REPO, free_port, http_get_json, require_tool, run_tool, wait_for

FLEET_SCRAPE = REPO / "deploy" / "prometheus" / "fleet-scrape.yml"


class _Exporter(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'servomexd_build_info{version="0"} 1\n'
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def exporters() -> Iterator[list[int]]:
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Exporter) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield [server.server_address[1] for server in servers]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_fleet_scrape_config_is_valid() -> None:
    promtool = require_tool("promtool")
    result = run_tool([promtool, "check", "config", FLEET_SCRAPE.name], cwd=FLEET_SCRAPE.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_site_from_the_target_file_and_from_the_host_name(
    tmp_path: Path, exporters: list[int]
) -> None:
    binary = require_tool("prometheus")
    text = FLEET_SCRAPE.read_text()
    targets = tmp_path / "targets.yml"
    targets.write_text(
        f'- targets: ["127.0.0.1:{exporters[0]}"]\n  labels: {{__site: "plant-a/line-2"}}\n'
    )
    text = text.replace("/etc/prometheus/servomexd-targets/*.yml", str(targets))
    text = re.sub(r'- targets: \["cab-1[^\]]*\]', f'- targets: ["127.0.0.1:{exporters[1]}"]', text)
    text = text.replace("scrape_interval: 15s", "scrape_interval: 1s")
    text = text.replace("scrape_timeout: 5s", "scrape_timeout: 1s")
    text = re.sub(r"rule_files:\n  - servomexd-rules.yml\n", "", text)
    config = tmp_path / "prometheus.yml"
    config.write_text(text)
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api/v1/query?query=servomexd_build_info"
    try:

        def scraped() -> bool:
            try:
                return len(http_get_json(url)["data"]["result"]) == 2
            except OSError:
                return False

        wait_for(scraped, 30, what="both exporters scraped")
        series = [r["metric"] for r in http_get_json(url)["data"]["result"]]
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    labelled = sorted((m.get("site", ""), m["instance"]) for m in series)
    # a target file's site wins; an IP address gives no site (only DNS names do)
    assert labelled == [("", "127.0.0.1"), ("plant-a/line-2", "127.0.0.1")]
    assert not any(k.startswith("__") and k != "__name__" for m in series for k in m)


def test_site_derived_from_a_dns_name() -> None:
    """The host-name rule as Prometheus applies it (RE2, anchored; Python agrees here)."""
    rule = re.search(r'source_labels: \[site, __address__\]\n\s+regex: "([^"]+)"',
                     FLEET_SCRAPE.read_text())
    assert rule is not None
    regex = re.compile(rule.group(1).replace("\\\\", "\\"))
    match = regex.fullmatch(";cab-1.plant-a.example:9723")
    assert match is not None and match.group(1) == "plant-a"
    assert regex.fullmatch("plant-x;cab-1.plant-a.example:9723") is None  # explicit site kept
    assert regex.fullmatch(";10.0.0.7:9723") is None
