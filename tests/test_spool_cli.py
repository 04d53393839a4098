"""servomexd/spool_cli.py through the real CLI: status, export, retry and drop of the
quarantine, read-only where stated, and a clear refusal when the path is no spool."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from servomexd.rows import ROW_COLUMNS, Record
from servomexd.spool import SPOOL_FILENAME, Spool

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def rec(i: int) -> Record:
    return (
        "dev", "O2", "transducer", "O2", float(i), "%", True, False, False, False, False,
        "continuous", i, T0, None, None, None,
    )


def config(tmp_path: Path, spool_dir: Path) -> Path:
    path = tmp_path / "servomexd.toml"
    path.write_text(
        f'[[devices]]\nname = "a"\nport = "/dev/null"\n[spool]\npath = "{spool_dir}"\n'
    )
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "servomexd", "spool", *args],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip


def spool_with_quarantine(directory: Path) -> None:
    async def build() -> None:
        async with Spool(directory) as spool:
            seq = await spool.append([rec(i) for i in range(5)])
            await spool.append([rec(i) for i in range(5, 8)])
            await spool.quarantine(seq, [1, 3], "CheckViolationError: value < 3")

    asyncio.run(build())


def test_status_and_exports(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool_with_quarantine(spool_dir)
    conf = config(tmp_path, spool_dir)
    before = (spool_dir / SPOOL_FILENAME).read_bytes()

    status = cli("status", "--config", str(conf))
    assert status.returncode == 0, status.stderr
    fields = dict(line.split(": ", 1) for line in status.stdout.splitlines())
    assert fields["pending_batches"] == "2"
    assert fields["pending_samples"] == "6"
    assert fields["quarantined_samples"] == "2"
    assert fields["quarantine_marked_for_retry"] == "0"
    assert fields["path"] == str(spool_dir / SPOOL_FILENAME)

    pending = cli("--config", str(conf), "export", "--format", "jsonl")
    assert pending.returncode == 0, pending.stderr
    rows = [json.loads(line) for line in pending.stdout.splitlines()]
    assert [r["value"] for r in rows] == [0.0, 2.0, 4.0, 5.0, 6.0, 7.0]
    assert rows[0]["received_at"] == T0.isoformat() and rows[0]["seq"] == 1

    quarantined = cli("export", "--quarantine", "--format", "csv", "--config", str(conf))
    assert quarantined.returncode == 0, quarantined.stderr
    table = list(csv.DictReader(io.StringIO(quarantined.stdout)))
    assert [float(r["value"]) for r in table] == [1.0, 3.0]
    assert {r["sink_error"] for r in table} == {"CheckViolationError: value < 3"}
    assert list(table[0]) == ["id", "seq", "quarantined_at", "sink_error", *ROW_COLUMNS]
    assert (spool_dir / SPOOL_FILENAME).read_bytes() == before  # read-only
    assert sorted(p.name for p in spool_dir.iterdir()) == [SPOOL_FILENAME]  # no -wal/-shm


def test_retry_moves_rows_back_for_the_daemon_and_drop_needs_yes(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool_with_quarantine(spool_dir)
    conf = config(tmp_path, spool_dir)
    refused = cli("drop-quarantine", "--config", str(conf))
    assert refused.returncode == 2 and "--yes" in refused.stderr
    marked = cli("retry-quarantine", "--config", str(conf))
    assert marked.returncode == 0 and marked.stdout.startswith("2 quarantined samples marked")

    async def daemon_side() -> list[float]:
        async with Spool(spool_dir) as spool:  # what the daemon's deliverer runs
            assert spool.stats.quarantined == 2
            assert await spool.requeue_quarantine() == 2
            assert spool.stats.quarantined == 0
            return [r[4] for b in await spool.peek() for r in b.records]

    assert asyncio.run(daemon_side()) == [0.0, 2.0, 4.0, 5.0, 6.0, 7.0, 1.0, 3.0]
    dropped = cli("drop-quarantine", "--yes", "--config", str(conf))
    assert dropped.returncode == 0 and dropped.stdout.startswith("0 quarantined samples deleted")


def test_drop_quarantine(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool_with_quarantine(spool_dir)
    done = cli("drop-quarantine", "--yes", "--config", str(config(tmp_path, spool_dir)))
    assert done.returncode == 0 and done.stdout.startswith("2 quarantined samples deleted")
    conn = sqlite3.connect(spool_dir / SPOOL_FILENAME)
    assert conn.execute("SELECT count(*) FROM quarantine").fetchone() == (0,)
    assert conn.execute("SELECT sum(samples) FROM batches").fetchone() == (6,)
    conn.close()


def test_refuses_what_is_not_a_spool(tmp_path: Path) -> None:
    missing = cli("status", "--config", str(config(tmp_path, tmp_path / "nowhere")))
    assert missing.returncode == 1
    assert f"no spool at {tmp_path / 'nowhere' / SPOOL_FILENAME}" in missing.stderr
    assert not (tmp_path / "nowhere").exists()  # nothing created

    other = tmp_path / "other"
    other.mkdir()
    sqlite3.connect(other / SPOOL_FILENAME).executescript("CREATE TABLE samples (x);")
    foreign = cli("retry-quarantine", "--config", str(config(tmp_path, other)))
    assert foreign.returncode == 1 and "is not a servomexd spool" in foreign.stderr

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / SPOOL_FILENAME).write_bytes(b"this is not sqlite" * 100)
    garbage = cli("export", "--config", str(config(tmp_path, junk)))
    assert garbage.returncode == 1 and "is not a servomexd spool" in garbage.stderr
    assert "Traceback" not in missing.stderr + foreign.stderr + garbage.stderr
