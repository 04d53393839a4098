"""The shipped units under a real systemd 252 as PID 1 (systemd-nspawn), as operators use them.

One container is booted for the module (tests/system/container.py) and servomexd is
installed into it with deploy/install.sh from an offline wheelhouse. The tests then run
in file order against that one installation, as an operator would: start, read the
status and the journal, reload, crash, misconfigure, store a credential, stop, purge.

Needs Linux, root, systemd-container and mmdebstrap (``scripts/setup --system``).
Skipped with the reason otherwise, except under CI (``$CI`` set), where a missing
prerequisite fails: CI never goes green by not running this.
Run only this suite: ``sudo .venv/bin/python -m pytest tests/system -v``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from container import Container, copy_source, debian_mirror, rootfs, wheelhouse
from daemon_harness import Comparison, compare, missing_between
from harness import (
    RAW_PRIORITY,
    Simulator,
    config,
    cursor,
    install,
    journal,
    messages,
    put,
    service_started,
    show,
    spool_batches,
    sqlite_rows,
    wait_until,
)
from host_postgres import PG_DATABASE, PG_ROLE, HostPostgres
from pg import PgCluster, PgUnavailable, run_async

pytestmark = pytest.mark.timeout(900)

REPO = Path(__file__).resolve().parents[2]
UNIT = "servomexd.service"
DB = "/var/lib/servomexd/samples.sqlite"
SPOOL = "/var/lib/servomexd/spool"
PG_SOCKET = "/run/pgsock"
FLUSH = 0.3
CHANNELS = 5
"""Readings per frame of the simulated analyser: every stored frame has all of them."""


def _prerequisites() -> None:
    """Skip (fail under CI) with the reason when this machine cannot boot the container."""
    problem = None
    if not sys.platform.startswith("linux"):
        problem = f"needs Linux (systemd-nspawn); this is {sys.platform}"
    elif os.geteuid() != 0:
        problem = "needs root (systemd-nspawn, cgroups, nsenter): sudo .venv/bin/python -m pytest"
    elif missing := [t for t in ("systemd-nspawn", "mmdebstrap", "nsenter") if not shutil.which(t)]:
        problem = f"{', '.join(missing)} not installed (scripts/setup --system installs them)"
    elif sys.version_info[:2] != (3, 11):
        problem = (f"the wheelhouse is built by this interpreter for the container's Python 3.11;"
                   f" this is {sys.version.split()[0]}")  # fmt: skip
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"system suite cannot run: {problem}; CI must run it", pytrace=False)
    pytest.skip(problem)


@dataclass
class Box:
    container: Container
    pg: HostPostgres | None
    install_log: str = ""


def _device_policy_enforced(box: Container) -> None:
    """Fail unless this container really enforces DevicePolicy= (never pass vacuously)."""
    probe = ["systemd-run", "--quiet", "--wait", "--pipe", "--collect"]
    sh = ["sh", "-c", "exec 3</dev/null && echo opened"]
    free = box.run(*probe, *sh, check=False)
    strict = box.run(*probe, "-p", "DevicePolicy=strict", *sh, check=False)
    if free.returncode != 0 or "opened" not in free.stdout:
        pytest.fail(f"a plain transient unit cannot open /dev/null: {free.stdout}{free.stderr}")
    if strict.returncode == 0 or "opened" in strict.stdout:
        pytest.fail(
            "DevicePolicy=strict did not stop a unit from opening /dev/null: device policies "
            "are not enforced in this container (unified cgroups, CAP_BPF and the bpf system "
            "call are needed), so the device tests below would pass vacuously",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    _prerequisites()
    work = tmp_path_factory.mktemp("system")
    try:
        cluster: PgCluster | None = PgCluster()
    except PgUnavailable:
        if os.environ.get("CI"):
            raise
        cluster = None
    pg = None if cluster is None else HostPostgres(cluster, secrets.token_urlsafe(18))
    try:
        # The slow parts (a cold root file system, wheels, a cluster) overlap.
        with ThreadPoolExecutor(3) as pool:
            root = pool.submit(rootfs, work / "mmdebstrap.log")
            wheels = pool.submit(
                lambda: wheelhouse(copy_source(REPO, work / "src"), work / "wheelhouse")
            )
            started = pool.submit(pg.setup) if pg is not None else None
            binds = [(work / "src", "/src", True), (wheels.result(), "/wheelhouse", True)]
            if pg is not None and started is not None:
                started.result()
                binds.append((pg.cluster.socket_dir, PG_SOCKET, False))
            container = Container(root.result(), work, binds)
        try:
            container.boot()
            _device_policy_enforced(container)
            yield Box(container, pg)
        finally:
            container.shutdown()
    finally:
        if cluster is not None:
            cluster.cleanup()


@pytest.fixture(scope="module")
def installed(box: Box) -> Box:
    box.install_log = install(box.container)
    return box


@dataclass
class Running:
    box: Container
    sim: Simulator
    start_seconds: float
    before_start: str


@pytest.fixture(scope="module")
def service(installed: Box) -> Running:
    """servomexd.service recording one simulated analyser, with a second one unplugged."""
    c = installed.container
    sim = Simulator(c, "stack-1")
    put(c, "/etc/servomexd/servomexd.toml",
        config([("stack-1", sim.link), ("unplugged", "/dev/servomex-unplugged")]))  # fmt: skip
    mark = cursor(c)
    seconds = service_started(c, UNIT)
    return Running(c, sim, seconds, mark)


def _stored(run: Running) -> tuple[list[dict[str, Any]], Comparison]:
    """The frames sent and how they were stored. Rows are read first: the simulator keeps
    sending, and a frame stored after the emit log was read would look never sent."""
    rows = sqlite_rows(run.box, DB)
    frames = run.sim.frames()
    return frames, compare(frames, rows, "stack-1")


def _unit_journal(run: Running, unit: str = UNIT) -> list[dict[str, object]]:
    return journal(run.box, unit, after=run.before_start)


# --- the machinery (no container needed) ---------------------------------------------------


def test_the_mirror_comes_from_the_apt_sources(tmp_path: Path) -> None:
    # mmdebstrap must use the archive this machine's apt reaches, not a default one.
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text(
        "deb [signed-by=/k.gpg] http://old.example/debian bookworm main\n"
    )
    assert debian_mirror(tmp_path) == "http://old.example/debian"
    (tmp_path / "sources.list").unlink()
    assert debian_mirror(tmp_path) == "http://deb.debian.org/debian"


# --- install and start ---------------------------------------------------------------------


def test_systemd_252_is_pid_1(box: Box) -> None:
    c = box.container
    assert c.run("ps", "-o", "comm=", "-p", "1").stdout.strip() == "systemd"
    assert c.run("systemctl", "--version").stdout.startswith("systemd 252 ")


def test_install_sh_installs_the_service_offline(installed: Box) -> None:
    c = installed.container
    assert "installed servomexd" in installed.install_log, installed.install_log
    version = c.run("/opt/servomexd/venv/bin/servomexd", "--version").stdout
    assert version.startswith("servomexd "), version
    assert c.run("id", "-nG", "servomexd").stdout.split() == ["servomexd", "dialout"]
    unit = c.run("systemctl", "cat", UNIT).stdout
    assert "ExecStart=/opt/servomexd/venv/bin/servomexd run" in unit
    assert c.run("systemctl", "show", "-p", "LoadState", "--value", "servomexd@x").stdout.strip() \
        == "loaded"


def test_start_returns_after_ready_with_a_status_line(service: Running) -> None:
    # Type=notify: `systemctl start` returns only once READY=1 arrived, so the unit is
    # already active (not activating) and the daemon has logged its readiness.
    state = show(service.box, UNIT)
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
    assert any(m.startswith("Started servomexd.service") for m in messages(_unit_journal(service)))
    # The daemon logs its readiness just after sending READY=1: it may trail a little.
    wait_until(lambda: any("event=daemon.ready" in m for m in messages(_unit_journal(service))),
               10, "the daemon.ready event")  # fmt: skip
    assert state["StatusText"].startswith("devices up "), state
    status = service.box.run("systemctl", "status", "--no-pager", UNIT, check=False).stdout
    assert re.search(r'^\s*Status: "devices up \d/2, samples written \d+', status, re.M), status


def test_samples_reach_sqlite_exactly_once(service: Running) -> None:
    wait_until(lambda: len({r[3] for r in sqlite_rows(service.box, DB) if r[0] == "stack-1"}) >= 10,
               60, "10 frames of stack-1 in SQLite")  # fmt: skip
    frames, result = _stored(service)
    rows = sqlite_rows(service.box, DB)
    assert result.duplicates == {}
    assert len(result.stored_indexes) >= 10
    assert missing_between(result, frames, result.first, result.last) == []
    assert set(result.frame_rows.values()) == {CHANNELS}
    assert {r[0] for r in rows} <= {"stack-1"}, "the unplugged analyser produced rows"


def test_journal_priorities_come_from_the_prefixes(service: Running) -> None:
    wait_until(lambda: any(e.get("PRIORITY") == "4" for e in _unit_journal(service)), 30,
               "a warning for the unplugged analyser")  # fmt: skip
    daemon = [e for e in _unit_journal(service) if e.get("_TRANSPORT") == "stdout"]
    assert daemon, "no line from the daemon's stdout in the journal"
    texts = messages(daemon)
    assert not [m for m in texts if RAW_PRIORITY.match(m)], "a raw <N> prefix reached journald"
    by_priority = {(e["PRIORITY"], str(e["MESSAGE"]).split()[0]) for e in daemon}
    assert ("6", "event=daemon.ready") in by_priority, by_priority
    warnings = [str(e["MESSAGE"]) for e in daemon if e["PRIORITY"] == "4"]
    assert any("unplugged" in m for m in warnings), warnings


def test_reload_keeps_the_main_pid(service: Running) -> None:
    before = show(service.box, UNIT)
    mark = cursor(service.box)
    service.box.run("systemctl", "reload", UNIT)
    wait_until(lambda: any("event=daemon.sighup" in m
                           for m in messages(journal(service.box, UNIT, after=mark))),
               20, "the daemon's SIGHUP event")  # fmt: skip
    after = show(service.box, UNIT)
    assert after["MainPID"] == before["MainPID"] != "0"
    assert after["ActiveState"] == "active"
    assert after["NRestarts"] == before["NRestarts"]


# --- the sandbox ---------------------------------------------------------------------------

_CGROUP_PROBE = """
import json, os, sys
def attempt(path):
    try:
        os.close(os.open(path, os.O_RDWR))
        return "opened"
    except OSError as exc:
        return exc.strerror
result = {"outside": attempt("/dev/net/tun")}
with open("/sys/fs/cgroup" + sys.argv[1] + "/cgroup.procs", "w") as procs:
    procs.write(str(os.getpid()))
result["null"] = attempt("/dev/null")
result["tun"] = attempt("/dev/net/tun")
print(json.dumps(result))
"""


def test_device_policy_is_enforced_in_the_service_cgroup(service: Running) -> None:
    group = service.box.run("systemctl", "show", "-p", "ControlGroup", "--value", UNIT)
    probe = service.box.run("python3", "-c", _CGROUP_PROBE, group.stdout.strip())
    result = json.loads(probe.stdout)
    # /dev/net/tun (10:200) is outside the unit's allow list (pseudo devices, pts, serial).
    assert result == {"outside": "opened", "null": "opened", "tun": "Operation not permitted"}


def test_security_exposure_at_most_2(installed: Box) -> None:
    out = installed.container.run("systemd-analyze", "security", "--no-pager", UNIT).stdout
    match = re.search(r"Overall exposure level for servomexd\.service: (\d+\.\d+)", out)
    assert match, out[-2000:]
    assert float(match.group(1)) <= 2.0, out[-2000:]


# --- failures ------------------------------------------------------------------------------


def test_watchdog_aborts_a_frozen_daemon_and_systemd_restarts_it(service: Running) -> None:
    c = service.box
    dropin = "/run/systemd/system/servomexd.service.d/50-watchdog-test.conf"
    put(c, dropin, "[Service]\nWatchdogSec=4s\nRestartSec=1s\n", mode="0644", group="root")
    try:
        c.run("systemctl", "daemon-reload")
        c.run("systemctl", "restart", UNIT, timeout=120)
        ready_at = time.time()
        first = show(c, UNIT)
        time.sleep(2.0)
        mark = cursor(c)
        stopped_at = time.time()
        c.run("kill", "-STOP", first["MainPID"])

        def restarted() -> bool:
            state = show(c, UNIT)
            new_pid = state["MainPID"] not in ("0", first["MainPID"])
            return new_pid and state["ActiveState"] == "active"

        wait_until(restarted, 60, "a restart after the watchdog")
        again = show(c, UNIT)
        assert int(again["NRestarts"]) == int(first["NRestarts"]) + 1
        log = messages(journal(c, UNIT, after=mark))
        timeout = next(i for i, m in enumerate(log) if "Watchdog timeout" in m)
        abort = next(i for i, m in enumerate(log) if "SIGABRT" in m)
        restart = next(i for i, m in enumerate(log) if "Scheduled restart job" in m)
        assert timeout < abort < restart, log
        restarted_at = time.time()

        def recording_again() -> bool:
            frames, result = _stored(service)
            stored = set(result.stored_indexes)
            return any(f["sent_at"] > restarted_at + 1 and f["index"] in stored for f in frames)

        wait_until(recording_again, 30, "frames recorded after the restart")
        frames, result = _stored(service)
        assert result.duplicates == {}, "a frame was stored twice across the watchdog restart"
        # What the frozen daemon had read and spooled survived the abort (only its last
        # flush interval may have been in memory), and nothing came back twice from the spool.
        # Frames sent while no daemon was reading (the restarts) never reached one.
        cutoff = stopped_at - FLUSH - 0.5
        old = [f["index"] for f in frames if ready_at + 0.5 < f["sent_at"] < cutoff]
        assert old and not set(old) - set(result.stored_indexes), (old, result.stored_indexes)
        assert set(result.frame_rows.values()) == {CHANNELS}
    finally:
        c.run("rm", "-rf", str(Path(dropin).parent))
        c.run("systemctl", "daemon-reload")
        c.run("systemctl", "restart", UNIT, timeout=120)


def test_invalid_config_exits_78_and_is_not_restarted(installed: Box) -> None:
    c = installed.container
    unit = "servomexd@bad.service"
    put(c, "/etc/servomexd/bad.toml", config([("bad-1", "/dev/null")]) + "bogus_key = 1\n")
    # A shorter RestartSec makes "not restarted" quick to observe; the unit's
    # RestartPreventExitStatus=78 is what is under test.
    dropin = f"/run/systemd/system/{unit}.d/50-quick.conf"
    put(c, dropin, "[Service]\nRestartSec=1s\n", mode="0644", group="root")
    try:
        c.run("systemctl", "daemon-reload")
        mark = cursor(c)
        start = c.run("systemctl", "start", unit, check=False, timeout=60)
        assert start.returncode != 0
        time.sleep(3.0)
        state = show(c, unit)
        assert state["ExecMainStatus"] == "78", state
        assert (state["ActiveState"], state["Result"], state["NRestarts"]) == \
            ("failed", "exit-code", "0"), state
        entries = [e for e in journal(c, unit, after=mark) if e.get("_TRANSPORT") == "stdout"]
        errors = [str(e["MESSAGE"]) for e in entries if e.get("PRIORITY") == "3"]
        assert any("bogus_key" in m for m in errors), entries
        assert not [m for m in messages(entries) if RAW_PRIORITY.match(m)]
    finally:
        c.run("rm", "-rf", f"/run/systemd/system/{unit}.d", "/etc/servomexd/bad.toml")
        c.run("systemctl", "reset-failed", unit, check=False)
        c.run("systemctl", "daemon-reload")


def test_load_credential_brings_the_postgres_password(installed: Box) -> None:
    if installed.pg is None:
        pytest.skip("no PostgreSQL binaries on the host (initdb, pg_ctl) for the cluster")
    import asyncpg

    c, pg = installed.container, installed.pg
    unit = "servomexd@pg.service"
    c.run("install", "-d", "-m", "0700", "/etc/credstore")
    put(c, "/etc/credstore/servomexd-pg-password", pg.password, mode="0600", group="root")
    sim = Simulator(c, "pg-1")
    sink = "\n".join([
        "[sink]", 'type = "postgres"', f"flush_interval = {FLUSH}",
        "[sink.postgres]", f'host = "{PG_SOCKET}"', f"port = {pg.cluster.port}",
        f'user = "{PG_ROLE}"', f'database = "{PG_DATABASE}"',
    ])  # fmt: skip
    put(c, "/etc/servomexd/pg.toml", config([("pg-1", sim.link)], state="/var/lib/servomexd/pg",
                                            metrics_port=9725, sink=sink))  # fmt: skip
    try:
        service_started(c, unit)
        wait_until(lambda: pg.count("pg-1") >= 5, 60, "rows of pg-1 in PostgreSQL")
        # The role cannot get in without the password: the rows came through the credential.
        socket_dsn = (f"postgresql://{PG_ROLE}:wrong@/{PG_DATABASE}"
                      f"?host={pg.cluster.socket_dir}&port={pg.cluster.port}")  # fmt: skip
        with pytest.raises(asyncpg.InvalidPasswordError):
            run_async(lambda: asyncpg.connect(socket_dsn, timeout=10))
        pid = show(c, unit)["MainPID"]
        environ = c.run("cat", f"/proc/{pid}/environ").stdout.split("\0")
        assert f"CREDENTIALS_DIRECTORY=/run/credentials/{unit}" in environ
        everything = "\n".join([
            json.dumps(journal(c)), "\n".join(environ),
            c.run("systemctl", "show", unit).stdout,
            c.run("systemctl", "status", "--no-pager", "-n", "200", unit, check=False).stdout,
        ])  # fmt: skip
        assert pg.password not in everything
    finally:
        c.run("systemctl", "stop", unit, check=False)
        sim.stop()


def test_two_template_instances_run_side_by_side(installed: Box) -> None:
    c = installed.container
    sims = {name: Simulator(c, f"{name}-1") for name in ("a", "b")}
    try:
        for port, (name, sim) in enumerate(sims.items(), start=9731):
            put(c, f"/etc/servomexd/{name}.toml",
                config([(f"{name}-1", sim.link)], state=f"/var/lib/servomexd/{name}",
                       metrics_port=port))  # fmt: skip
            service_started(c, f"servomexd@{name}.service")
        states = {name: show(c, f"servomexd@{name}.service") for name in sims}
        assert {s["ActiveState"] for s in states.values()} == {"active"}, states
        assert states["a"]["MainPID"] != states["b"]["MainPID"]
        for name in sims:
            db = f"/var/lib/servomexd/{name}/samples.sqlite"
            wait_until(lambda: len(sqlite_rows(c, db)) > 0, 60, f"rows in {db}")  # noqa: B023
            assert {r[0] for r in sqlite_rows(c, db)} == {f"{name}-1"}
    finally:
        for name, sim in sims.items():
            c.run("systemctl", "stop", f"servomexd@{name}.service", check=False)
            sim.stop()


# --- stop and removal ----------------------------------------------------------------------


def test_stop_sends_stopping_exits_0_and_empties_the_spool(service: Running) -> None:
    c = service.box
    pid = show(c, UNIT)["MainPID"]
    c.run("systemd-analyze", "set-log-level", "debug")  # notifications are logged at debug
    try:
        mark = cursor(c)
        started = time.monotonic()
        c.run("systemctl", "stop", UNIT, timeout=60)
        seconds = time.monotonic() - started
    finally:
        c.run("systemd-analyze", "set-log-level", "info")
    state = show(c, UNIT)
    log = messages(journal(c, UNIT, after=mark))
    assert any(f"notification message from PID {pid} (STOPPING=1" in m for m in log), log
    assert any("code=exited, status=0/SUCCESS" in m for m in log), log
    assert (state["ActiveState"], state["Result"]) == ("inactive", "success"), state
    # Well inside TimeoutStopSec=30s: the daemon bounds its own shutdown (shutdown_timeout).
    assert seconds < 10, f"systemctl stop took {seconds:.1f} s"
    assert spool_batches(c, SPOOL) == 0
    service.sim.stop()


def test_uninstall_purge_removes_everything(installed: Box) -> None:
    c = installed.container
    c.run("sh", "-c", "systemctl stop 'analyser-sim-*'; rm -rf /run/analyser-sim")
    c.run("/src/deploy/install.sh", "--uninstall", "--purge", timeout=120)
    leftovers = c.run(
        "find", "/", "(", "-path", "/proc", "-o", "-path", "/sys", "-o", "-path", "/src", "-o",
        "-path", "/wheelhouse", "-o", "-path", PG_SOCKET, ")", "-prune", "-o",
        "-iname", "*servomex*", "-print", check=False,
    ).stdout.split()  # fmt: skip
    assert leftovers == []
    assert c.run("getent", "passwd", "servomexd", check=False).returncode == 2
    assert c.run("getent", "group", "servomexd", check=False).returncode == 2
    units = c.run("systemctl", "list-units", "--all", "--plain", "--no-legend", "servomexd*")
    assert units.stdout.strip() == ""
    for path in ("/opt/servomexd", "/etc/credstore/servomexd-pg-password", "/var/lib/servomexd",
                 "/etc/servomexd"):  # fmt: skip
        assert not c.path(path).exists(), path
