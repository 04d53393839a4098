"""The shipped alert rules and scrape config, checked and unit-tested by the real promtool."""

from __future__ import annotations

import re
from pathlib import Path

from obs_tools import RULE_TESTS, RULES, SCRAPE, require_tool, run_tool


def test_promtool_check_rules() -> None:
    promtool = require_tool("promtool")
    result = run_tool([promtool, "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    promtool = require_tool("promtool")
    result = run_tool([promtool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The unit tests are not vacuous: a loosened threshold makes them fail."""
    promtool = require_tool("promtool")
    broken = RULES.read_text().replace("> 300)", "> 30000)")
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    result = run_tool([promtool, "test", "rules", RULE_TESTS.name], cwd=tmp_path)
    assert result.returncode != 0
    assert "ServomexdDeviceNoData" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_resolving_test() -> None:
    alerts = set(re.findall(r"^\s*- alert: (\w+)\s*$", RULES.read_text(), re.MULTILINE))
    assert len(alerts) >= 10
    fires: set[str] = set()
    quiet: set[str] = set()
    # Each alert_rule_test entry: "alertname: X" followed by "exp_alerts: []" (quiet) or a
    # list of expected alerts (fires).
    for name, rest in re.findall(
        r"alertname: (\w+)\n\s*exp_alerts:(.*?)(?=\n\s*- eval_time:|\n\s*- name:|\Z)",
        RULE_TESTS.read_text(),
        re.DOTALL,
    ):
        (quiet if rest.strip() == "[]" else fires).add(name)
    assert alerts - fires == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested quiet/resolved"
    assert (fires | quiet) <= alerts, "tests for alerts that do not exist"


def test_every_alert_has_runbook_annotations() -> None:
    blocks = re.split(r"^\s*- alert: ", RULES.read_text(), flags=re.MULTILINE)[1:]
    for block in blocks:
        name = block.split()[0]
        for key in ("severity:", "summary:", "description:", "runbook:"):
            assert key in block, f"{name} lacks {key}"


def test_example_scrape_config_is_valid() -> None:
    promtool = require_tool("promtool")
    result = run_tool([promtool, "check", "config", SCRAPE.name], cwd=SCRAPE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
