"""sqlite_store.SqliteStore used directly (in this thread, as the sink's worker would)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sinkdata import steady_samples

from servomexd.errors import (
    ServomexSinkCheckpointConflict,
    ServomexSinkDataError,
    ServomexSinkWriteError,
)
from servomexd.rows import Record
from servomexd.sinks.encoding import RowEncoder
from servomexd.sinks.sqlite_store import SqliteStore


def _store(path: Path) -> SqliteStore:
    return SqliteStore(
        str(path),
        "samples",
        create_table=True,
        journal_mode="WAL",
        synchronous="NORMAL",
        busy_timeout_ms=1000,
    )


def _rows(count: int) -> list[Record]:
    return RowEncoder().text_rows(steady_samples(count))


def _count(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM samples").fetchone()[0])


def test_rows_and_checkpoint_commit_together_and_a_held_write_is_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite"
    store = _store(path)
    store.connect()
    rows = _rows(10)
    store.write(rows, ("spool-a", 3, 1))
    assert store.read_checkpoint("spool-a") == 3
    with pytest.raises(ServomexSinkCheckpointConflict):
        store.write(rows, ("spool-a", 5, 3))
    assert _count(path) == len(rows)
    assert store.read_checkpoint("spool-a") == 3
    store.probe(rows)
    assert _count(path) == len(rows)
    store.close()


def test_a_replaced_file_fails_the_write_then_reopens(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = _store(path)
    store.connect()
    store.write(_rows(5), None)
    path.rename(tmp_path / "moved.sqlite")
    with pytest.raises(ServomexSinkWriteError, match="vanished or was replaced"):
        store.write(_rows(5), None)
    store.write(_rows(5), None)
    assert _count(path) == len(_rows(5))
    store.close()


def test_rows_the_table_refuses_are_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE samples (device TEXT NOT NULL, channel TEXT NOT NULL)")
    store = _store(path)
    store.connect()
    rows = [(*row[:1], None, *row[2:]) for row in _rows(1)]
    with pytest.raises(ServomexSinkDataError):
        store.write(rows, None)
    assert _count(path) == 0
    store.close()
