"""Helpers for the deployment tests: paths into the repository and external tools.

The tools these tests drive (systemd-analyze, shellcheck, hadolint, logrotate) are real
programs. Outside CI a missing one skips its test with the install hint; under CI
(``$CI`` set, as .ci/run runs) a missing tool is a failure, so CI never goes green by
skipping the checks it is there to run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNIT_DIR = DEPLOY / "systemd"
INSTALL_SH = DEPLOY / "install.sh"
EXAMPLE_CONFIG = REPO / "etc" / "servomexd" / "servomexd.toml"
SHIPPED_EXEC = "/opt/servomexd/venv/bin/servomexd"
"""The ExecStart= binary the unit files name (install.sh rewrites it for --prefix)."""


def require_tool(name: str, hint: str) -> str:
    """Path of an external program; skip without it, but fail under CI."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    message = f"{name} is not installed ({hint})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run this check", pytrace=False)
    pytest.skip(message)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a program, capturing text output; never raises on a non-zero exit."""
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def installed_servomexd() -> Path:
    """The servomexd console script of the interpreter running the tests (.venv)."""
    script = Path(sys.executable).parent / "servomexd"
    assert script.exists(), f"{script} missing: run scripts/setup (pip install -e .)"
    return script


def parse_unit(text: str) -> list[tuple[str, str, str]]:
    """A systemd unit file as (section, key, value) in file order; repeated keys kept.

    Follows systemd's syntax: '#' and ';' comment lines, backslash line continuation.
    """
    entries: list[tuple[str, str, str]] = []
    section = ""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries
