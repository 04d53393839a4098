"""A permanent sink fault is not healthy: /readyz 503 with the reason and the fix, an
error line with the fix, servomexd_sink_fault{reason}; fixing the cause needs no
restart. A missing driver exits 78 naming the extra (issue 10 item 11)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon_harness import PYTHON, ROOT, DaemonProc, Simulator, wait_for, write_config
from pg import run_async

pytestmark = [pytest.mark.e2e]


def readyz(daemon: DaemonProc) -> tuple[int, dict[str, Any]]:
    status, body = daemon.scrape("/readyz")
    return status, json.loads(body)


@pytest.mark.postgres
def test_missing_privilege_then_granted_without_restart(tmp_path: Path, pg_dsn: str) -> None:
    import asyncpg

    role = "sx_" + pg_dsn.rsplit("_", 1)[-1][:12]

    async def admin(*sql: str) -> Any:
        conn = await asyncpg.connect(pg_dsn)
        try:
            result = None
            for statement in sql:
                result = await conn.fetchval(statement)
            return result
        finally:
            await conn.close()

    run_async(lambda: admin(
        f"DROP ROLE IF EXISTS {role}", f"CREATE ROLE {role} LOGIN",
        "CREATE TABLE samples (device text, channel text, value double precision, "
        "monotonic_ns bigint, received_at timestamptz)",
        f"GRANT SELECT ON samples TO {role}",
        "CREATE TABLE servomexd_checkpoints (stream text PRIMARY KEY, seq bigint NOT NULL, "
        "updated_at timestamptz NOT NULL DEFAULT now())",
        f"GRANT SELECT, INSERT, UPDATE ON servomexd_checkpoints TO {role}",
    ))  # fmt: skip
    sim = Simulator(tmp_path, period=0.05)
    config = write_config(
        tmp_path,
        [{"name": "an-1", "port": str(sim.link), "silence_timeout": 2.0}],
        sink={"type": "postgres", "retry_max_delay": 1.0},
        postgres={"dsn": pg_dsn.replace("postgres@", f"{role}@"), "create_table": False},
    )
    daemon = DaemonProc(config)
    try:
        daemon.wait_ready()
        wait_for(lambda: bool(daemon.events("sink.fault")), 15, "sink.fault")
        status, detail = readyz(daemon)
        assert status == 503
        fix = f"grant INSERT on public.samples to {role}"
        assert any(p.startswith("sink needs an operator: authorization: " + fix)
                   for p in detail["problems"]), detail  # fmt: skip
        assert detail["sink"]["fault"] == "authorization"
        assert daemon.metric("servomexd_sink_fault", sink="postgres", reason="authorization") == 1
        line = daemon.events("sink.fault")[0]
        assert line.startswith("<3>") and fix in line
        run_async(lambda: admin(f"GRANT INSERT ON samples TO {role}"))
        wait_for(lambda: readyz(daemon)[0] == 200, 15, "ready after the grant")
        assert daemon.metric("servomexd_sink_fault", sink="postgres", reason="authorization") == 0
        wait_for(lambda: run_async(lambda: admin("SELECT count(*) FROM samples")) > 0, 10,
                 "rows stored")  # fmt: skip
        code, _ = daemon.terminate()
        assert code == 0
    finally:
        daemon.cleanup()
        sim.stop()
        run_async(lambda: admin("DROP TABLE samples, servomexd_checkpoints",
                                f"DROP ROLE IF EXISTS {role}"))  # fmt: skip
    assert len(daemon.events("sink.fault")) == 1  # at most every 5 minutes


def test_read_only_sqlite_path_is_not_ready_with_the_fix(tmp_path: Path) -> None:
    sim = Simulator(tmp_path, period=0.05)
    config = write_config(
        tmp_path,
        [{"name": "an-1", "port": str(sim.link), "silence_timeout": 2.0}],
        sink={"type": "sqlite", "path": "/sys/servomexd-e2e/samples.sqlite",
              "retry_max_delay": 1.0},
    )  # fmt: skip
    daemon = DaemonProc(config)
    try:
        daemon.wait_ready()
        wait_for(lambda: readyz(daemon)[0] == 503, 10, "not ready")
        _, detail = readyz(daemon)
        assert detail["sink"]["fault"] == "read_only_path"
        assert "ReadWritePaths=" in detail["sink"]["fix"]
        assert daemon.metric("servomexd_sink_fault", sink="sqlite", reason="read_only_path") == 1
        wait_for(lambda: (daemon.metric("servomexd_spool_pending_samples") or 0) > 0, 10,
                 "still spooling")  # fmt: skip
        assert daemon.terminate()[0] == 0
    finally:
        daemon.cleanup()
        sim.stop()


def test_missing_driver_exits_78_naming_the_extra(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, [{"name": "an-1", "port": str(tmp_path / "tty")}],
        sink={"type": "postgres"}, postgres={"dsn": "postgresql://u@127.0.0.1:1/db"},
    )  # fmt: skip
    blocked = (
        "import sys; sys.modules['asyncpg'] = None; "
        "from servomexd.cli import main; sys.exit(main())"
    )
    proc = subprocess.run(
        [PYTHON, "-c", blocked, "run", "--config", str(config)],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 78, output
    assert "servomexd[postgres]" in output
    assert "Traceback" not in output
