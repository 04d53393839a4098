"""The common-mistakes table of docs/operations.md, made against the real commands.

Each row of the table (section 9) names a case; the scenario of the same name below makes
that mistake through ``python -m servomexd`` (check-config, or a running daemon with real
ptys and a real simulator) and the test checks the exit status, the journald priority of
the line and every message excerpt the table shows. A row without a scenario, or a
scenario without a row, fails too: the documentation and the software cannot drift.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_harness import (
    PYTHON,
    ROOT,
    STUBBORN_RUN,
    DaemonProc,
    Simulator,
    wait_for,
    write_config,
)

DOCS = ROOT / "docs" / "operations.md"
KEEPS_RUNNING = "keeps running"
# Root without the permission-bypass capabilities and without supplementary groups: file
# permissions apply to it as to the service user (the interpreter stays readable).
UNPRIVILEGED = [
    "setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-all",
    "--clear-groups", "--",
]  # fmt: skip


@dataclass(frozen=True)
class Row:
    case: str
    command: str
    exit: str
    priority: str
    needles: list[str]


def table_rows() -> list[Row]:
    text = DOCS.read_text()
    section = text.split("## 9. What the error means and what to do", 1)[1]
    rows: list[Row] = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or not cells[0].startswith("`"):
            continue
        rows.append(Row(
            case=cells[0].strip("`"),
            command=cells[1],
            exit=cells[2],
            priority=cells[3].strip("`"),
            needles=re.findall(r"`([^`]+)`", cells[4]),
        ))  # fmt: skip
    return rows


@dataclass
class Outcome:
    exit: str
    output: str


Scenario = Callable[[Path], Outcome]
SCENARIOS: dict[str, Scenario] = {}


def scenario(case: str) -> Callable[[Scenario], Scenario]:
    def register(func: Scenario) -> Scenario:
        SCENARIOS[case] = func
        return func

    return register


def _cli(*args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None) -> Outcome:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SERVOMEXD_")}
    full_env.pop("CREDENTIALS_DIRECTORY", None)
    full_env.update(env or {})
    result = subprocess.run(
        [*(prefix or []), PYTHON, "-m", "servomexd", *args], capture_output=True, text=True,
        cwd=ROOT, env=full_env, timeout=60, check=False,
    )  # fmt: skip
    return Outcome(str(result.returncode), result.stderr + result.stdout)


def _running(config: Path, needles: list[str], *, launcher: list[str] | None = None) -> Outcome:
    """Run the daemon until every needle is in its output (or it exits)."""
    daemon = DaemonProc(config, launcher=launcher)
    try:
        with contextlib.suppress(AssertionError):
            wait_for(
                lambda: all(n in daemon.text() for n in needles) or daemon.proc.poll() is not None,
                30, "the expected lines",
            )  # fmt: skip
        running = daemon.proc.poll() is None
        code = daemon.terminate() [0] if running else daemon.proc.returncode
        return Outcome(KEEPS_RUNNING if running else str(code), daemon.text())
    finally:
        daemon.cleanup()


@contextlib.contextmanager
def _pty(owner: tuple[int, int] | None = None, mode: int = 0o660) -> Iterator[tuple[str, int]]:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    try:
        if owner is not None:
            os.chown(path, *owner)
            os.chmod(path, mode)
        yield path, slave
    finally:
        os.close(slave)
        os.close(master)


def _config(tmp: Path, text: str) -> Path:
    path = tmp / "servomexd.toml"
    path.write_text(text)
    return path


DEVICE = '[[devices]]\nname = "a"\nport = "{port}"\n'


def _unprivileged_available() -> bool:
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


# --- configuration ------------------------------------------------------------------------


@scenario("devices-single-brackets")
def _(tmp: Path) -> Outcome:
    return _cli("check-config", "--config",
                str(_config(tmp, '[devices]\nname = "a"\nport = "/dev/ttyX"\n')))  # fmt: skip


@scenario("unknown-key-at-run")
def _(tmp: Path) -> Outcome:
    return _cli("run", "--config", str(_config(tmp, DEVICE.format(port="/dev/x") +
                                               "baud_rate = 9600\n")))  # fmt: skip


@scenario("env-variable-typo")
def _(tmp: Path) -> Outcome:
    config = _config(tmp, DEVICE.format(port="/dev/x"))
    return _cli("check-config", "--config", str(config), env={"SERVOMEXD_LOG__LEVLE": "debug"})


@scenario("no-configuration")
def _(tmp: Path) -> Outcome:
    if Path("/etc/servomexd/servomexd.toml").exists():
        pytest.skip("this host has a configuration at the default path")
    return _cli("run")


@scenario("password-file-missing")
def _(tmp: Path) -> Outcome:
    return _cli("check-config", "--no-port-check", "--config", str(_config(
        tmp, DEVICE.format(port="/dev/x") + '[sink]\ntype = "postgres"\n[sink.postgres]\n'
        f'host = "db"\npassword_file = "{tmp / "nothing-here"}"\n')))  # fmt: skip


@scenario("password-file-empty")
def _(tmp: Path) -> Outcome:
    (tmp / "pw").write_text("\n")
    return _cli("check-config", "--no-port-check", "--config", str(_config(
        tmp, DEVICE.format(port="/dev/x") + '[sink]\ntype = "postgres"\n[sink.postgres]\n'
        f'host = "db"\npassword_file = "{tmp / "pw"}"\n')))  # fmt: skip


@scenario("password-source")
def _(tmp: Path) -> Outcome:
    creds = tmp / "credentials"
    creds.mkdir()
    (creds / "pg-password").write_text("Cr3dential-Secret\n")
    outcome = _cli("check-config", "--no-port-check", "--config", str(_config(
        tmp, DEVICE.format(port="/dev/x") + '[sink]\ntype = "postgres"\n[sink.postgres]\n'
        'host = "db"\n')), env={"CREDENTIALS_DIRECTORY": str(creds)})  # fmt: skip
    assert "Cr3dential-Secret" not in outcome.output
    return outcome


# --- ports in check-config ----------------------------------------------------------------


@scenario("port-missing")
def _(tmp: Path) -> Outcome:
    return _cli("check-config", "--config",
                str(_config(tmp, DEVICE.format(port=tmp / "ttyUSB-not-plugged"))))  # fmt: skip


@scenario("port-regular-file")
def _(tmp: Path) -> Outcome:
    (tmp / "ttyFile").write_text("")
    return _cli("check-config", "--config", str(_config(tmp, DEVICE.format(port=tmp / "ttyFile"))))


@scenario("port-directory")
def _(tmp: Path) -> Outcome:
    return _cli("check-config", "--config", str(_config(tmp, DEVICE.format(port=tmp))))


@scenario("port-permission-check")
def _(tmp: Path) -> Outcome:
    if not _unprivileged_available():
        pytest.skip("needs root and setpriv to drop the permission bypass")
    with _pty(owner=(65534, 20)) as (port, _):
        config = _config(tmp, DEVICE.format(port=port))
        config.chmod(0o644)
        return _cli("check-config", "--config", str(config), prefix=UNPRIVILEGED)


@scenario("same-adapter-two-names")
def _(tmp: Path) -> Outcome:
    with _pty() as (port, _):
        alias = tmp / "servomex-stack"
        alias.symlink_to(port)
        text = DEVICE.format(port=alias) + DEVICE.replace('"a"', '"b"').format(port=port)
        return _cli("check-config", "--config", str(_config(tmp, text)))


# --- daemon start-up ----------------------------------------------------------------------


@scenario("metrics-port-in-use")
def _(tmp: Path) -> Outcome:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = write_config(tmp, [{"name": "a", "port": str(tmp / "tty")}])
        text = config.read_text().replace(
            'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{taken.getsockname()[1]}"'
        )
        config.write_text(text)
        return _cli("run", "--config", str(config))


@scenario("spool-not-writable")
def _(tmp: Path) -> Outcome:
    blocker = tmp / "not-a-dir"
    blocker.write_text("")
    config = write_config(tmp, [{"name": "a", "port": str(tmp / "tty")}])
    config.write_text(config.read_text().replace(str(tmp / "spool"), str(blocker / "spool")))
    return _cli("run", "--config", str(config))


# --- the running daemon -------------------------------------------------------------------


def _needles(case: str) -> list[str]:
    return next(r.needles for r in table_rows() if r.case == case)


@scenario("link-port-missing")
def _(tmp: Path) -> Outcome:
    port = str(tmp / "ttyUSB-gone")
    config = write_config(tmp, [{"name": "a", "port": port}])
    outcome = _running(config, _needles("link-port-missing"))
    down = next(line for line in outcome.output.splitlines() if "event=device.link_down" in line)
    assert down.count(port) == 1, down  # the port once (target=), the cause once (reason=)
    return outcome


@scenario("modbus-port-missing")
def _(tmp: Path) -> Outcome:
    config = write_config(
        tmp, [{"name": "m", "port": str(tmp / "ttyUSB-gone"), "protocol": "modbus_rtu"}]
    )
    return _running(config, _needles("modbus-port-missing"))


@scenario("auto-port-missing")
def _(tmp: Path) -> Outcome:
    port = str(tmp / "ttyUSB-gone")
    config = write_config(tmp, [{"name": "x", "port": port, "protocol": "auto"}])
    outcome = _running(config, _needles("auto-port-missing"))
    down = next(line for line in outcome.output.splitlines() if "event=device.link_down" in line)
    assert down.count(port) == 1, down
    return outcome


def _denied(tmp: Path, case: str, protocol: str) -> Outcome:
    if not _unprivileged_available():
        pytest.skip("needs root and setpriv to drop the permission bypass")
    with _pty(owner=(65534, 20)) as (port, _):
        config = write_config(tmp, [{"name": "a", "port": port, "protocol": protocol}])
        return _running(config, _needles(case),
                        launcher=[*UNPRIVILEGED, PYTHON, "-m", "servomexd"])  # fmt: skip


@scenario("link-permission-denied")
def _(tmp: Path) -> Outcome:
    return _denied(tmp, "link-permission-denied", "continuous")


@scenario("modbus-permission-denied")
def _(tmp: Path) -> Outcome:
    return _denied(tmp, "modbus-permission-denied", "modbus_rtu")


@scenario("link-port-busy")
def _(tmp: Path) -> Outcome:
    with _pty() as (port, slave):
        fcntl.flock(slave, fcntl.LOCK_EX | fcntl.LOCK_NB)
        config = write_config(tmp, [{"name": "a", "port": port}])
        outcome = _running(config, _needles("link-port-busy"))
    assert re.search(rf"busy: held by [^;]*pid {os.getpid()} \(", outcome.output), outcome.output
    return outcome


@scenario("link-not-a-tty")
def _(tmp: Path) -> Outcome:
    (tmp / "ttyFile").write_text("")
    config = write_config(tmp, [{"name": "a", "port": str(tmp / "ttyFile")}])
    return _running(config, _needles("link-not-a-tty"))


def _rejecting(tmp: Path, case: str, flag: str) -> Outcome:
    sim = Simulator(tmp, period=0.05, args=[flag, "2"])
    try:
        config = write_config(tmp, [{"name": "a", "port": str(sim.link)}])
        outcome = _running(config, _needles(case))
    finally:
        sim.stop()
    # Rate limited: one warning for the device, not one per bad frame.
    warnings = [line for line in outcome.output.splitlines()
                if line.startswith("<4>event=device.frame_rejected ")]  # fmt: skip
    assert len(warnings) == 1, outcome.output
    return outcome


@scenario("frames-noise")
def _(tmp: Path) -> Outcome:
    return _rejecting(tmp, "frames-noise", "--noise-every")


@scenario("frames-checksum")
def _(tmp: Path) -> Outcome:
    return _rejecting(tmp, "frames-checksum", "--corrupt-every")


@scenario("stop-overrun")
def _(tmp: Path) -> Outcome:
    config = write_config(tmp, [{"name": "stuck", "port": str(tmp / "tty-none")}])
    daemon = DaemonProc(config, launcher=[PYTHON, "-c", STUBBORN_RUN])
    try:
        daemon.wait_ready(30)
        code, _ = daemon.terminate(30)
        return Outcome(str(code), daemon.text())
    finally:
        daemon.cleanup()


# --- the test -----------------------------------------------------------------------------


def test_table_and_scenarios_match() -> None:
    cases = [row.case for row in table_rows()]
    assert len(cases) == len(set(cases)), cases
    assert sorted(cases) == sorted(SCENARIOS), (
        f"in the table only: {sorted(set(cases) - set(SCENARIOS))}; "
        f"scenario only: {sorted(set(SCENARIOS) - set(cases))}"
    )


@pytest.mark.parametrize("row", table_rows(), ids=lambda row: row.case)
def test_common_mistake(row: Row, tmp_path: Path) -> None:
    outcome = SCENARIOS[row.case](tmp_path)
    assert outcome.exit == row.exit, outcome.output
    assert row.needles, row
    for needle in row.needles:
        assert needle in outcome.output, f"{needle!r} not in:\n{outcome.output}"
    assert "Traceback" not in outcome.output
    if row.priority:
        line = next(line for line in outcome.output.splitlines() if row.needles[0] in line)
        assert line.startswith(row.priority), line


def test_modbus_devices_on_one_adapter_under_two_names_share_one_bus(tmp_path: Path) -> None:
    """Two slaves on one RS485 adapter, configured by two paths to it (a udev alias and the
    device path): one bus, one open, both record; not two clients fighting over the port."""
    sim = Simulator(
        tmp_path, "bus", period=0.2,
        args=["--protocol", "modbus_rtu", "--address", "30", "--address", "31"],
    )  # fmt: skip
    alias = tmp_path / "servomex-rs485"
    alias.symlink_to(sim.link.resolve())
    daemon: DaemonProc | None = None
    try:
        devices = [
            {"name": f"ox{address}", "port": str(port), "protocol": "modbus_rtu",
             "address": address, "poll_interval": 0.25, "inter_request_delay": 0.02,
             "request_timeout": 0.5, "silence_timeout": 5.0}
            for address, port in ((30, sim.link), (31, alias))
        ]  # fmt: skip
        config = write_config(tmp_path, devices)
        checked = _cli("check-config", "--config", str(config))
        assert checked.exit == "0", checked.output
        daemon = DaemonProc(config)
        daemon.wait_ready()
        wait_for(lambda: len(daemon.events("device.link_up")) == 2, 30, "both links up")
        text = daemon.text()
        assert len(daemon.events("modbus.port_opened")) == 1, text
        assert not daemon.events("device.link_down"), text
        assert daemon.terminate()[0] == 0
    finally:
        if daemon is not None:
            daemon.cleanup()
        sim.stop()


def test_under_systemd_every_line_carries_a_priority(tmp_path: Path) -> None:
    """JOURNAL_STREAM set and log.format = "auto": journald format, <N> on every line."""
    config = write_config(tmp_path, [{"name": "a", "port": str(tmp_path / "ttyUSB-gone")}])
    config.write_text(config.read_text().replace('format = "journald"', 'format = "auto"'))
    daemon = DaemonProc(config, env={"JOURNAL_STREAM": "8:12345"})
    try:
        wait_for(lambda: bool(daemon.events("device.link_down")), 20, "device.link_down")
        assert daemon.terminate()[0] == 0
        lines = daemon.text().splitlines()
        assert lines and all(re.match(r"<[0-7]>event=", line) for line in lines), lines
    finally:
        daemon.cleanup()
