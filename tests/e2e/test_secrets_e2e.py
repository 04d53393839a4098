"""The Postgres password never leaves the process: not in logs, metrics, /readyz or errors.

Real daemon subprocesses with each password source (inside the DSN, ``password``,
``password_file``, ``$CREDENTIALS_DIRECTORY/pg-password``) against a port where no
server listens, so asyncpg's connect failure goes through the sink, the writer, the
logger (every format: journald, json, console tracebacks) and the metrics. The test
greps everything the daemon printed or served for the secret values.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon_harness import (
    PYTHON,
    ROOT,
    DaemonProc,
    Simulator,
    check_config,
    wait_for,
    write_config,
)
from pg import free_port

pytestmark = [pytest.mark.e2e]

PW_DSN = "DsnPw-7f3a9c"
PW_QUERY = "QueryPw-51be02"
PW_INLINE = "InlinePw-c0ffee"
PW_FILE = "FilePw-9d8e7f"
PW_CRED = "CredPw-a1b2c3"
SECRETS = (PW_DSN, PW_QUERY, PW_INLINE, PW_FILE, PW_CRED)


def _leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def _run_and_collect(
    tmp_path: Path, postgres: dict[str, Any], log_format: str, env: dict[str, str] | None = None
) -> str:
    """Run the daemon until the sink outage is logged and samples spool; all it showed."""
    sim = Simulator(tmp_path, period=0.05)
    config = write_config(
        tmp_path,
        [{"name": "pg-secret", "port": str(sim.link), "silence_timeout": 3.0}],
        sink={"type": "postgres", "retry_max_delay": 0.5},
        postgres={"command_timeout_s": 1.0, **postgres},
    )
    config.write_text(config.read_text().replace('format = "journald"', f'format = "{log_format}"'))
    daemon = DaemonProc(config, env=env)
    try:
        wait_for(lambda: "sink.down" in daemon.text() or daemon.proc.poll() is not None, 20,
                 "the sink outage to be logged")
        assert daemon.proc.poll() is None, daemon.text()
        # Several retries, each a fresh asyncpg connect failure, with samples spooled.
        port = _metrics_port(daemon)
        wait_for(lambda: _metric(port, "servomexd_sink_errors_total") >= 3
                 and _metric(port, "servomexd_spool_pending_samples") > 0, 20,
                 "sink retries with samples spooled", step=0.2)
        served = [_get(port, "/metrics"), _get(port, "/readyz"), _get(port, "/healthz")]
        code, _ = daemon.terminate()
        assert code == 0, daemon.text()
    finally:
        daemon.cleanup()
        sim.stop()
    text = daemon.text()
    # The outage is reported with its cause (connection refused), only without secrets.
    assert "refused" in text.lower() or "connect" in text.lower(), text
    return text + "\n".join(served)


def _metrics_port(daemon: DaemonProc) -> int:
    import re

    wait_for(lambda: re.search(r"metrics\.listening", daemon.text()) is not None, 10,
             "metrics listening")
    line = next(line for line in daemon.text().splitlines() if "metrics.listening" in line)
    match = re.search(r'port\W+(\d+)', line)
    assert match, line
    return int(match.group(1))


def _metric(port: int, name: str) -> float:
    for line in _get(port, "/metrics").splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rpartition(" ")[2])
    return 0.0


def _get(port: int, path: str) -> str:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            body: str = response.read().decode()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
    return f"--- {path}\n{body}"


@pytest.mark.parametrize("log_format", ["journald", "json", "console"])
def test_dsn_password_and_credential_never_shown(tmp_path: Path, log_format: str) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "pg-password").write_text(PW_CRED + "\n")
    dsn = f"postgresql://svc:{PW_DSN}@127.0.0.1:{free_port()}/plant?password={PW_QUERY}"
    text = _run_and_collect(
        tmp_path, {"dsn": dsn}, log_format, env={"CREDENTIALS_DIRECTORY": str(creds)}
    )
    assert "pg-secret" in text  # the device label is in the metrics: we grepped real output
    assert _leaks(text) == [], text


@pytest.mark.parametrize(
    "source", ["password", "password_file"],
)
def test_host_password_never_shown(tmp_path: Path, source: str) -> None:
    postgres: dict[str, Any] = {"host": "127.0.0.1", "port": free_port(), "user": "svc",
                                "database": "plant"}  # fmt: skip
    if source == "password":
        postgres["password"] = PW_INLINE
    else:
        secret_file = tmp_path / "pg.pw"
        secret_file.write_text(PW_FILE + "\n")
        postgres["password_file"] = str(secret_file)
    text = _run_and_collect(tmp_path, postgres, "console")
    assert _leaks(text) == [], text


@pytest.mark.parametrize(
    ("postgres", "bad_field"),
    [
        # A bad field next to the secrets: the error names the field, never a secret.
        ({"dsn": f"postgresql://svc:{PW_DSN}@db/plant", "password": PW_INLINE,
          "pool_min_size": "many"}, "sink.postgres.pool_min_size"),
        ({"dsn": f"postgresql://svc:{PW_DSN}@db:notaport/plant"}, "sink.postgres.dsn"),
        ({"dsn": f"host=db user=svc password={PW_DSN} dbname=plant"}, "sink.postgres.dsn"),
        ({"dsn": f"postgresql://svc:{PW_DSN}@db/plant", "user": "other"}, "sink.postgres.dsn"),
        ({"host": "db", "password": PW_INLINE, "password_file": "/nonexistent"},
         "sink.postgres"),
        ({"host": "db", "password": PW_INLINE, "port": 0}, "sink.postgres.port"),
    ],
)
def test_check_config_rejects_without_showing_secrets(
    tmp_path: Path, postgres: dict[str, Any], bad_field: str
) -> None:
    config = write_config(tmp_path, [{"name": "a", "port": "/dev/ttyX"}],
                          sink={"type": "postgres"}, postgres=postgres)  # fmt: skip
    result = check_config(config)
    assert result.returncode == 78, result
    assert bad_field in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert _leaks(result.stdout + result.stderr) == [], result.stderr


def test_check_config_prints_masked(tmp_path: Path) -> None:
    dsn = f"postgresql://svc:{PW_DSN}@db/plant?sslmode=require&password={PW_QUERY}"
    config = write_config(tmp_path, [{"name": "a", "port": "/dev/ttyX"}],
                          sink={"type": "postgres"}, postgres={"dsn": dsn})  # fmt: skip
    result = check_config(config)
    assert result.returncode == 0, result.stderr
    assert "postgresql://svc:***@db/plant?sslmode=require&password=***" in result.stdout
    assert _leaks(result.stdout + result.stderr) == []


def test_unparseable_dsn_is_a_config_error_not_a_crash(tmp_path: Path) -> None:
    """Before: check-config accepted ``host=... password=...``; the daemon then crashed (70)
    with a traceback when the sink opened."""
    config = write_config(
        tmp_path, [{"name": "a", "port": str(tmp_path / "nodev")}], sink={"type": "postgres"},
        postgres={"dsn": f"host=127.0.0.1 port={free_port()} password={PW_DSN} dbname=x"},
    )
    result = subprocess.run(
        [PYTHON, "-m", "servomexd", "run", "--config", str(config)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 78, output
    assert "sink.postgres.dsn" in output and "Traceback" not in output
    assert _leaks(output) == []


def _non_loopback_ipv4() -> str | None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: picks the outbound address
            address: str = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_metrics_default_listen_is_localhost_only(tmp_path: Path) -> None:
    """No [metrics] table: the daemon serves 127.0.0.1:9723 and nothing on other addresses."""
    import socket

    from servomexd.config import DEFAULT_METRICS_PORT

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", DEFAULT_METRICS_PORT)) == 0:
            pytest.skip(f"port {DEFAULT_METRICS_PORT} is in use here (a running servomexd?)")
    config = write_config(tmp_path, [{"name": "a", "port": str(tmp_path / "nodev")}])
    text = config.read_text().replace('[metrics]\nlisten = "127.0.0.1:0"\n', "")
    assert "[metrics]" not in text
    config.write_text(text)
    daemon = DaemonProc(config)
    try:
        daemon.wait_ready()
        listening = next(line for line in daemon.text().splitlines() if "metrics.listening" in line)
        assert "host=127.0.0.1" in listening and f"port={DEFAULT_METRICS_PORT}" in listening
        assert "servomexd_build_info" in _get(DEFAULT_METRICS_PORT, "/metrics")
        other = _non_loopback_ipv4()
        if other is not None:
            with socket.socket() as probe:
                probe.settimeout(2)
                assert probe.connect_ex((other, DEFAULT_METRICS_PORT)) != 0
        code, _ = daemon.terminate()
        assert code == 0
    finally:
        daemon.cleanup()
