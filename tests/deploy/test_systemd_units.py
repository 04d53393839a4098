"""The shipped systemd units: `systemd-analyze verify` clean, exposure <= 2.0, and the
settings the daemon's lifecycle relies on (notify, watchdog, EX_CONFIG, serial access)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from deploy_helpers import (
    SHIPPED_EXEC,
    UNIT_DIR,
    installed_servomexd,
    parse_unit,
    require_tool,
    run,
)

from servomexd.cli import DEFAULT_CONFIG_PATH
from servomexd.config import CREDENTIAL_NAME, EX_CONFIG

UNITS = ["servomexd.service", "servomexd@.service"]
MAX_EXPOSURE = 2.0
SERIAL_CLASSES = {"char-ttyUSB", "char-ttyACM", "char-ttyS"}


def _analyze() -> str:
    return require_tool("systemd-analyze", "apt-get install systemd")


def _entries(unit: str, section: str | None = None) -> list[tuple[str, str]]:
    return [
        (k, v)
        for s, k, v in parse_unit((UNIT_DIR / unit).read_text())
        if section is None or s == section
    ]


def _values(unit: str, key: str, section: str = "Service") -> list[str]:
    return [v for k, v in _entries(unit, section) if k == key]


def _one(unit: str, key: str, section: str = "Service") -> str:
    values = _values(unit, key, section)
    assert len(values) == 1, f"{unit}: expected one {key}= in [{section}], got {values}"
    return values[0]


def _seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit or "s"]
    return total


def _runnable_copy(unit_name: str, tmp_path: Path, as_name: str | None = None) -> Path:
    """The unit with ExecStart= pointing at this checkout's servomexd.

    `systemd-analyze verify` insists that the ExecStart= binary exists and is executable;
    /opt/servomexd/venv does not exist on a build machine (and --root= would need a whole
    OS tree with sysinit.target), so verify a copy that differs only in that path.
    """
    text = (UNIT_DIR / unit_name).read_text()
    assert SHIPPED_EXEC in text
    target = tmp_path / (as_name or unit_name)
    target.write_text(text.replace(SHIPPED_EXEC, str(installed_servomexd())))
    return target


@pytest.mark.parametrize(
    ("unit", "as_name"),
    [
        ("servomexd.service", None),
        ("servomexd@.service", None),
        ("servomexd@.service", "servomexd@stack-1.service"),
    ],
)
def test_verify_is_clean(unit: str, as_name: str | None, tmp_path: Path) -> None:
    path = _runnable_copy(unit, tmp_path, as_name)
    result = run([_analyze(), "verify", "--man=no", path], cwd=tmp_path)
    # verify exits 0 even for unknown keys or bad values; it only warns. Any output is
    # a finding (misspelt setting, unparsable value, missing binary).
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", (
        result.stdout + result.stderr
    )


@pytest.mark.parametrize("unit", UNITS)
def test_security_exposure_at_most_2(unit: str, tmp_path: Path) -> None:
    result = run(
        [_analyze(), "security", "--offline=true", "--no-pager", UNIT_DIR / unit], cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert found, result.stdout
    exposure = float(found.group(1))
    assert exposure <= MAX_EXPOSURE, result.stdout


@pytest.mark.parametrize("unit", UNITS)
def test_lifecycle_settings(unit: str) -> None:
    assert _one(unit, "Type") == "notify"
    assert _one(unit, "NotifyAccess") == "main"
    watchdog = _seconds(_one(unit, "WatchdogSec"))
    assert 10 <= watchdog <= 120
    assert _one(unit, "Restart") == "on-failure"
    assert _seconds(_one(unit, "RestartSec")) >= 1
    # The daemon exits 78 for an invalid configuration; restarting cannot fix that.
    assert str(EX_CONFIG) in _one(unit, "RestartPreventExitStatus").split()
    # Shutdown flushes within 10 s; the stop timeout must leave room before SIGKILL.
    assert _seconds(_one(unit, "TimeoutStopSec")) >= 20
    # Start limits belong in [Unit]; in [Service] systemd 252 ignores them with a warning.
    assert _seconds(_one(unit, "StartLimitIntervalSec", "Unit")) > 0
    assert int(_one(unit, "StartLimitBurst", "Unit")) >= 3
    assert not _values(unit, "StartLimitIntervalSec") and not _values(unit, "StartLimitBurst")
    assert "PYTHONUNBUFFERED=1" in " ".join(_values(unit, "Environment")).split()


def test_execstart_runs_the_daemon_on_the_default_config() -> None:
    argv = _one("servomexd.service", "ExecStart").split()
    assert argv == [SHIPPED_EXEC, "run", "--config", DEFAULT_CONFIG_PATH]
    template = _one("servomexd@.service", "ExecStart").split()
    assert template == [SHIPPED_EXEC, "run", "--config", "/etc/servomexd/%i.toml"]


@pytest.mark.parametrize("unit", UNITS)
def test_runs_unprivileged_with_serial_access(unit: str) -> None:
    assert _one(unit, "User") == "servomexd"
    assert _one(unit, "Group") == "servomexd"
    assert "dialout" in _one(unit, "SupplementaryGroups").split()
    assert _one(unit, "CapabilityBoundingSet") == ""
    assert _one(unit, "AmbientCapabilities") == ""
    assert _one(unit, "NoNewPrivileges") == "yes"
    assert _one(unit, "DevicePolicy") == "closed"
    allowed = {tuple(v.split()) for v in _values(unit, "DeviceAllow")}
    assert {(cls, "rw") for cls in SERIAL_CLASSES} <= allowed
    # PrivateDevices=yes replaces /dev with a minimal tree without any tty adapter.
    assert _values(unit, "PrivateDevices") in ([], ["no"])
    # ProcSubset=pid hides /proc/stat: prometheus_client's process collector then exports
    # no CPU/memory metrics at all, which the dashboard and alerts rely on.
    assert _values(unit, "ProcSubset") in ([], ["all"])
    assert _one(unit, "ProtectSystem") == "strict"
    assert "servomexd" in _one(unit, "StateDirectory").split()
    assert _one(unit, "ConfigurationDirectory") == "servomexd"
    filters = _values(unit, "SystemCallFilter")
    assert filters[0] == "@system-service"
    assert all(f.startswith("~") for f in filters[1:])  # later lines only narrow it


@pytest.mark.parametrize("unit", UNITS)
def test_postgres_password_credential_is_optional(unit: str) -> None:
    (value,) = _values(unit, "LoadCredential")
    name, _, source = value.partition(":")
    assert name == CREDENTIAL_NAME
    # An absolute source path fails the whole start (243/CREDENTIALS) on systemd 252 while
    # the file is absent, and most sites (SQLite) have none. A credential-store name is
    # looked up in /etc/credstore/ etc. and skipped when missing.
    assert source and not source.startswith("/"), value


def test_template_matches_the_main_unit() -> None:
    """servomexd@.service is the same unit apart from the per-instance lines."""
    per_instance = {"Description", "ExecStart", "StateDirectory"}
    main = [e for e in _entries("servomexd.service") if e[0] not in per_instance]
    template = [e for e in _entries("servomexd@.service") if e[0] not in per_instance]
    assert main == template
    assert "%i" in _one("servomexd@.service", "Description", "Unit")
    assert "servomexd/%i" in _one("servomexd@.service", "StateDirectory").split()


@pytest.mark.parametrize("unit", UNITS)
def test_descriptor_limit_fits_256_analysers(unit: str) -> None:
    # ~5 descriptors per serial port (port + pyserial's abort pipes) x 256, plus sockets.
    assert int(_one(unit, "LimitNOFILE")) >= 4096
