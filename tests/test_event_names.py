"""Event names: dotted everywhere, and every name a runbook or a doc mentions is logged.

An operator greps the journal for the event a runbook names; a runbook naming an event the
code never logs (``spool_overflow`` for ``spool.overflow_dropped_oldest``) sends them
looking for nothing. The names are read from the code's own log calls (AST), not listed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "servomexd"
LEVELS = {"debug", "info", "warning", "error", "critical", "exception"}
EVENT = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
DOC_FILES = [
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "README.md",
    *sorted((ROOT / "deploy" / "prometheus").glob("*.yml")),
]
# How the documents name an event: event=NAME, (event NAME), journalctl ... -g NAME.
DOC_MENTION = re.compile(
    r"event[= ]`?([a-z][a-z0-9_.]*[a-z0-9_])|-g '?([a-z][a-z0-9_]*\.[a-z0-9_.]*[a-z0-9_])"
)


def _constants(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _constants(node.body) + _constants(node.orelse)
    return []


def structlog_events() -> dict[str, list[str]]:
    """Event name -> where it is logged, from the log calls of every module that does not
    use stdlib logging (structlog modules, and those handed a structlog logger)."""
    events: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        if "structlog" not in source and "import logging" in source:
            continue  # a stdlib-logging module (printf-style messages, not events)
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVELS
                and node.args
            ):
                # getattr(self._log, level)("device.link_down", ...) counts too
                for name in _constants(node.args[0]):
                    events.setdefault(name, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    for path in sorted(PACKAGE.rglob("*.py")):
        for match in re.finditer(r'getattr\([^)]*\)\(\s*"([^"]+)"', path.read_text()):
            events.setdefault(match.group(1), []).append(str(path.relative_to(ROOT)))
    return events


def test_every_structlog_event_is_dotted() -> None:
    events = structlog_events()
    assert "device.link_down" in events and "metrics.listening" in events, sorted(events)
    bad = {name: where for name, where in events.items() if not EVENT.fullmatch(name)}
    assert not bad, bad


def test_every_event_a_document_names_is_logged() -> None:
    events = set(structlog_events())
    mentioned: dict[str, str] = {}
    for path in DOC_FILES:
        for match in DOC_MENTION.finditer(path.read_text()):
            name = match.group(1) or match.group(2)
            if "." in name:
                mentioned[name] = str(path.relative_to(ROOT))
    assert "spool.overflow_dropped_oldest" in mentioned  # the spool-drop runbook
    assert "device.frames_rejected_summary" in mentioned  # operations.md section 9
    unknown = {name: where for name, where in mentioned.items() if name not in events}
    assert not unknown, unknown


def test_sink_opened_is_logged_in_one_place() -> None:
    assert len(structlog_events()["sink.opened"]) == 1
