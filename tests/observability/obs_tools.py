"""Helpers for the observability tests: the real Prometheus tools and the dashboard's PromQL.

promtool and prometheus come from Debian's ``prometheus`` package (scripts/setup
--system installs it). Without them these tests skip on a developer machine, but
fail in CI (env CI or SERVOMEXD_REQUIRE_PROMETHEUS set) so a broken setup can
never pass as green.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "servomexd-rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "servomexd-rules.test.yml"
SCRAPE = REPO / "deploy" / "prometheus" / "scrape.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "servomexd.json"
PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"

# Concrete stand-ins for the dashboard's template variables. Grafana's "All" of a
# multi-value variable is the allValue ".*"; the rate window is what Grafana would
# pick for a 1 s scrape interval (4 x scrape interval, at least), a bit more for slack.
VARIABLES = {
    "datasource": None,  # never inside PromQL
    "job": ".*",
    "site": ".*",
    "instance": ".*",
    "device": ".*",
    "gas": ".*",
    "__rate_interval": "10s",
    "__interval": "5s",
    "__range": "1m",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def require_tool(name: str) -> str:
    """Path of a Prometheus tool; skip without it, except in CI where it must exist."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} not installed (apt-get install prometheus, or scripts/setup --system)"
    if os.environ.get("CI") or os.environ.get("SERVOMEXD_REQUIRE_PROMETHEUS"):
        pytest.fail(message)
    pytest.skip(message)


def run_tool(args: list[str], *, stdin: bytes | None = None, cwd: Path | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, input=stdin.decode() if stdin is not None else None, capture_output=True,
        text=True, cwd=cwd, timeout=timeout, check=False,
    )


def substitute(expr: str) -> str:
    """Replace Grafana variables by concrete values; an unknown variable is a test failure."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in VARIABLES or VARIABLES[name] is None:
            raise AssertionError(f"dashboard uses variable ${name} the tests do not know")
        value = VARIABLES[name]
        assert value is not None
        return value

    return _VARIABLE.sub(replace, expr)


def load_dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(where, raw expression, substituted expression) for every PromQL in the dashboard.

    Panel targets, plus the series selector inside each ``label_values(...)`` variable
    query (the rest of label_values is Grafana syntax, not PromQL).
    """
    dashboard = load_dashboard()
    queries: list[tuple[str, str, str]] = []
    for panel in iter_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            where = f"panel {panel['id']} {panel['title']!r} target {target['refId']}"
            queries.append((where, expr, substitute(expr)))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        definition = variable["definition"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definition)
        assert match, f"variable {variable['name']}: unexpected query {definition!r}"
        selector = match.group(1)
        queries.append((f"variable {variable['name']}", selector, substitute(selector)))
    return queries


def recording_rules_document(exprs: list[str]) -> str:
    """A rules file (JSON is valid YAML) holding each expression as a recording rule."""
    rules = [{"record": f"servomexd_dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)]
    return json.dumps({"groups": [{"name": "dashboard-expressions", "rules": rules}]}, indent=1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get_json(url: str, timeout: float = 5) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data = json.loads(response.read())
    assert isinstance(data, dict)
    return data


class PrometheusServer:
    """A throwaway ``prometheus`` server scraping given targets every second."""

    def __init__(self, binary: str, workdir: Path, targets: list[str],
                 rule_files: list[str] | None = None,
                 scrape_configs: list[dict[str, Any]] | None = None) -> None:
        """``scrape_configs`` replaces the default plain-HTTP job over ``targets``."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "scrape_configs": scrape_configs or [
                {"job_name": "servomexd", "static_configs": [{"targets": targets}]}
            ],
        }
        if rule_files:
            config["rule_files"] = rule_files
        (workdir / "prometheus.yml").write_text(json.dumps(config))
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise AssertionError("prometheus did not become ready")

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            data = http_get_json(url)
        except urllib.error.HTTPError as error:
            raise AssertionError(f"query {expr!r} failed: {error.read()!r}") from error
        assert data["status"] == "success", data
        result = data["data"]["result"]
        assert isinstance(result, list)
        return result

    def targets_healthy(self) -> bool:
        data = http_get_json(self.url + "/api/v1/targets")
        active = data["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def wait_for(condition: Any, timeout: float, interval: float = 0.2, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or condition}")


def start_daemon(
    config: Path, log: Any, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``servomexd run --config PATH`` from the repository, its output into ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "servomexd", "run", "--config", str(config)],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
    )  # fmt: skip


def wait_serving(
    daemon: subprocess.Popen[bytes],
    probe: Callable[[], bool],
    log_tail: Callable[[], str],
    what: str,
) -> None:
    """Wait up to 30 s for ``probe()``; a daemon that exits meanwhile fails with its log."""

    def serving() -> bool:
        if daemon.poll() is not None:
            raise AssertionError(f"daemon exited {daemon.returncode}: {log_tail()}")
        try:
            return probe()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    wait_for(serving, 30, what=what)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 15 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
