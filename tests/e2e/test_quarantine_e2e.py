"""Poison rows with a running daemon: a trigger refuses some rows; they are quarantined
while everything else is stored; the operator sees them with ``servomexd spool``,
fixes the table, and ``retry-quarantine`` delivers them without a restart."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_harness import (
    PYTHON,
    ROOT,
    DaemonProc,
    Simulator,
    compare,
    sqlite_rows,
    wait_for,
    write_config,
)

from servomexd.rows import ROW_COLUMNS

pytestmark = [pytest.mark.e2e]
CHANNELS = 5


def spool_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "servomexd", "spool", *args, "--config", str(config)],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip


def test_poison_rows_quarantined_then_retried_while_running(tmp_path: Path) -> None:
    db = tmp_path / "samples.sqlite"
    conn = sqlite3.connect(db)
    columns = ", ".join(f'"{c}"' for c in ROW_COLUMNS)
    conn.executescript(
        f"CREATE TABLE samples ({columns});"
        "CREATE TRIGGER poison BEFORE INSERT ON samples "
        "WHEN NEW.channel = 'E1' AND NEW.monotonic_ns % 4 = 0 "
        "BEGIN SELECT RAISE(ABORT, 'E1 refused by the plant''s trigger'); END;"
    )
    conn.close()
    sim = Simulator(tmp_path, period=0.05)
    config = write_config(tmp_path, [{"name": "an-1", "port": str(sim.link),
                                      "silence_timeout": 2.0}],
                          sink={"retry_max_delay": 2.0})  # fmt: skip
    daemon = DaemonProc(config)
    try:
        daemon.wait_ready()
        wait_for(lambda: (daemon.metric("servomexd_quarantine_pending_samples") or 0) >= 5, 30,
                 "rows quarantined")  # fmt: skip
        status = spool_cli(config, "status")
        assert status.returncode == 0, status.stderr
        fields = dict(line.split(": ", 1) for line in status.stdout.splitlines())
        assert int(fields["quarantined_samples"]) >= 5
        exported = spool_cli(config, "export", "--quarantine", "--format", "jsonl")
        rows = [json.loads(line) for line in exported.stdout.splitlines()]
        assert rows and {r["channel"] for r in rows} == {"E1"}
        assert all("refused by the plant's trigger" in r["sink_error"] for r in rows)
        assert daemon.events("spool.quarantined")
        # the plant fixes its trigger; the rows go back while the daemon runs
        sqlite3.connect(db).executescript("DROP TRIGGER poison;")
        retried = spool_cli(config, "retry-quarantine")
        assert retried.returncode == 0, retried.stderr
        wait_for(lambda: daemon.metric("servomexd_quarantine_pending_samples") == 0, 20,
                 "quarantine requeued")  # fmt: skip
        wait_for(lambda: bool(daemon.events("spool.quarantine_requeued")), 5, "requeue event")
        status, _ = daemon.scrape("/readyz")
        assert status == 200
        code, _ = daemon.terminate()
        assert code == 0
    finally:
        daemon.cleanup()
        sim.stop()
    result = compare(sim.frames(), sqlite_rows(db), "an-1")
    assert result.duplicates == {}
    assert set(result.frame_rows.values()) == {CHANNELS}  # every frame whole in the end
    assert spool_cli(config, "status").stdout.count("quarantined_samples: 0") == 1
