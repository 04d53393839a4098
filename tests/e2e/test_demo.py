"""`servomexd demo` (the README's first command) records a simulated analyser into SQLite."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_demo_records_and_explains(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "servomexd", "demo", "--dir", str(demo), "--duration", "3",
         "--period", "0.2", "--metrics-listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "recording" in out and "samples written" in out
    assert f"{demo / 'samples.sqlite'}" in out and "SELECT" in out
    conn = sqlite3.connect(demo / "samples.sqlite")
    rows = conn.execute(
        "SELECT count(*), count(DISTINCT channel), min(name) FROM samples WHERE error IS NULL"
    ).fetchone()
    conn.close()
    assert rows[0] >= 5 * 5  # at least five frames of five channels in 3 s at 0.2 s
    assert rows[1] == 5
    # the configuration it wrote is a valid one
    check = subprocess.run(
        [sys.executable, "-m", "servomexd", "check-config", "--config",
         str(demo / "servomexd.toml")],
        capture_output=True, text=True, check=False,
    )
    assert check.returncode == 0, check.stderr
    assert not (demo / "analyser").exists()  # the simulator removed its link on stop
