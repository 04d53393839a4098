"""File sinks in the daemon never destroy earlier data: CSV gets a new timestamped file per
start and per SIGHUP; Parquet rolls so closed files are readable; JSONL appends."""

from __future__ import annotations

import csv
import json
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_harness import DaemonProc, Simulator, wait_for, write_config

pytestmark = pytest.mark.e2e


def e1_values_csv(paths: list[Path]) -> list[float]:
    out = []
    for path in paths:
        with path.open(newline="") as handle:
            out += [float(r["value"]) for r in csv.DictReader(handle) if r["channel"] == "E1"]
    return out


def _newest(base: Path) -> Path:
    """The newest of the sink's timestamped files (the names sort by time)."""
    return max(base.parent.glob(f"{base.stem}-*{base.suffix}"))


def test_csv_new_file_per_start_and_sighup(tmp_path: Path) -> None:
    sim = Simulator(tmp_path, period=0.05)
    base = tmp_path / "out" / "samples.csv"
    config = write_config(
        tmp_path, [{"name": "an-1", "port": str(sim.link)}], sink={"type": "csv", "path": base}
    )
    try:
        first = DaemonProc(config)
        first.wait_ready()
        wait_for(lambda: len(list(base.parent.glob("samples-*.csv"))) == 1, 10, "first CSV")
        time.sleep(1.2)  # the timestamp in the name has one-second resolution
        first.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len(list(base.parent.glob("samples-*.csv"))) == 2, 10, "CSV after HUP")
        wait_for(lambda: bool(first.events("sink.reopened")), 5, "reopen logged")
        # rows in the new file before stopping: frames read in the last instant may still
        # wait for the shared wake-up tick when the stop comes, and are not accepted then
        wait_for(lambda: _newest(base).stat().st_size > 0, 10, "rows in the new CSV")
        assert first.terminate()[0] == 0
        second = DaemonProc(config)
        second.wait_ready()
        wait_for(lambda: len(list(base.parent.glob("samples-*.csv"))) == 3, 10, "CSV per start")
        time.sleep(0.8)
        wait_for(lambda: _newest(base).stat().st_size > 0, 10, "rows in the third CSV")
        assert second.terminate()[0] == 0
    finally:
        sim.stop()
    files = sorted(base.parent.glob("samples-*.csv"))
    assert len(files) == 3 and not base.exists()
    for path in files:
        assert path.read_text().startswith("device,channel,kind")  # each has its header
    values = e1_values_csv(files)
    assert len(values) == len(set(values))  # nothing written twice across the files
    assert all(e1_values_csv([f]) for f in files)


def test_parquet_rolls_and_every_closed_file_is_readable(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    sim = Simulator(tmp_path, period=0.05)
    base = tmp_path / "pq" / "samples.parquet"
    config = write_config(
        tmp_path, [{"name": "an-1", "port": str(sim.link)}],
        sink={"type": "parquet", "path": base}, parquet={"roll_interval": 1.0},
    )
    try:
        daemon = DaemonProc(config)
        daemon.wait_ready()
        wait_for(lambda: len(list(base.parent.glob("samples-*.parquet"))) >= 3, 20, "rolls")
        # every file but the newest is closed: readable while the daemon keeps running
        files = sorted(base.parent.glob("samples-*.parquet"))
        for path in files[:-1]:
            table = pq.read_table(path)
            assert table.num_rows > 0 and "value" in table.column_names
        assert daemon.events("sink.rolled")
        assert daemon.terminate()[0] == 0
    finally:
        sim.stop()
    files = sorted(base.parent.glob("samples-*.parquet"))
    total = [pq.read_table(p) for p in files]  # after a clean stop the last one is closed too
    e1 = [v for t in total for v, c in zip(t.column("value").to_pylist(),
                                           t.column("channel").to_pylist(), strict=True)
          if c == "E1"]  # fmt: skip
    assert len(e1) == len(set(e1)) > 20


def test_jsonl_appends_across_restarts(tmp_path: Path) -> None:
    sim = Simulator(tmp_path, period=0.05)
    path = tmp_path / "samples.jsonl"
    config = write_config(
        tmp_path, [{"name": "an-1", "port": str(sim.link)}], sink={"type": "jsonl", "path": path}
    )
    try:
        counts = []
        for _ in range(2):
            daemon = DaemonProc(config)
            daemon.wait_ready()
            before = len(path.read_text().splitlines()) if path.exists() else 0
            wait_for(lambda b=before: path.exists()
                     and len(path.read_text().splitlines()) >= b + 50, 10, "rows")
            assert daemon.terminate()[0] == 0
            counts.append(len(path.read_text().splitlines()))
    finally:
        sim.stop()
    assert counts[1] > counts[0] > 0
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(r["device"] == "an-1" for r in rows)
