"""servomexd/spool_quarantine.py: rows move into the quarantine table in one transaction
with their batch's rewrite, within the table's byte budget, and back out on retry."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from servomexd.rows import Record
from servomexd.spool import _SCHEMA
from servomexd.spool_codec import decode_records, encode_records
from servomexd.spool_quarantine import QuarantineResult, QuarantineTable

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def record(i: int) -> Record:
    return (
        "dev", "I1", "transducer", "O2", 20.0 + i, "%", True, False, False, False, False,
        "continuous", 1000 + i, NOW + timedelta(seconds=i), None, None, None,
    )  # fmt: skip


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(tmp_path / "spool.sqlite", isolation_level=None)
    connection.executescript(_SCHEMA)
    yield connection
    connection.close()


def add_batch(conn: sqlite3.Connection, records: list[Record]) -> int:
    cursor = conn.execute(
        "INSERT INTO batches (created_at, samples, payload) VALUES (0, ?, ?)",
        (len(records), encode_records(records)),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def batch(conn: sqlite3.Connection, seq: int) -> list[Record] | None:
    row = conn.execute("SELECT payload FROM batches WHERE seq = ?", (seq,)).fetchone()
    return None if row is None else decode_records(row[0])


def table(conn: sqlite3.Connection) -> list[tuple[int, str, list[Record]]]:
    rows = conn.execute("SELECT seq, error, payload FROM quarantine ORDER BY id").fetchall()
    return [(seq, error, decode_records(payload)) for seq, error, payload in rows]


def test_move_rewrites_the_batch_and_fills_the_table(conn: sqlite3.Connection) -> None:
    records = [record(i) for i in range(4)]
    seq = add_batch(conn, records)
    quarantine = QuarantineTable(max_bytes=1 << 20)
    kept, result = quarantine.move(conn, seq, records, [1, 3], "value out of range")
    assert result == QuarantineResult(quarantined=2, overflowed=0, remaining=2)
    assert kept == [records[0], records[2]]
    assert batch(conn, seq) == kept
    assert table(conn) == [
        (seq, "value out of range", [records[1]]),
        (seq, "value out of range", [records[3]]),
    ]
    assert quarantine.samples == 2
    assert quarantine.bytes == sum(len(encode_records([records[i]])) for i in (1, 3))


def test_a_batch_left_empty_is_deleted(conn: sqlite3.Connection) -> None:
    records = [record(0)]
    seq = add_batch(conn, records)
    kept, result = QuarantineTable(max_bytes=1 << 20).move(conn, seq, records, [0], "bad")
    assert (kept, result.remaining) == ([], 0)
    assert batch(conn, seq) is None


def test_a_failed_rewrite_quarantines_nothing(conn: sqlite3.Connection) -> None:
    records = [record(i) for i in range(3)]
    seq = add_batch(conn, records)
    conn.execute(
        "CREATE TRIGGER refuse BEFORE UPDATE ON batches BEGIN SELECT RAISE(ABORT, 'no'); END"
    )
    quarantine = QuarantineTable(max_bytes=1 << 20)
    with pytest.raises(sqlite3.DatabaseError):
        quarantine.move(conn, seq, records, [1], "bad")
    assert table(conn) == []
    assert batch(conn, seq) == records
    assert (quarantine.samples, quarantine.bytes) == (0, 0)


def test_rows_past_the_byte_budget_are_counted_as_overflowed(conn: sqlite3.Connection) -> None:
    records = [record(i) for i in range(3)]
    seq = add_batch(conn, records)
    one = len(encode_records([records[0]]))
    quarantine = QuarantineTable(max_bytes=one + one // 2)  # room for one row, not two
    kept, result = quarantine.move(conn, seq, records, [0, 1], "bad")
    assert result == QuarantineResult(quarantined=1, overflowed=1, remaining=1)
    assert kept == [records[2]]
    assert [rows for _, _, rows in table(conn)] == [[records[0]]]


def test_requeue_moves_only_marked_rows_into_a_new_last_batch(conn: sqlite3.Connection) -> None:
    records = [record(i) for i in range(4)]
    seq = add_batch(conn, records)
    quarantine = QuarantineTable(max_bytes=1 << 20)
    quarantine.move(conn, seq, records, [0, 1, 2], "bad")
    assert quarantine.requeue(conn) is None  # nothing marked yet
    first_two = conn.execute("SELECT id FROM quarantine ORDER BY id LIMIT 2").fetchall()
    conn.executemany("UPDATE quarantine SET retry = 1 WHERE id = ?", first_two)
    requeued = quarantine.requeue(conn)
    assert requeued is not None
    assert requeued.seq > seq
    assert requeued.samples == 2
    assert batch(conn, requeued.seq) == [records[0], records[1]]
    assert [rows for _, _, rows in table(conn)] == [[records[2]]]
    assert quarantine.samples == 1
