"""The two statements the spool's writers share: a write transaction and a batch insert.

``Spool.append`` and the quarantine table (moving rows in, requeueing them) each change
``batches`` together with something else in one ``BEGIN IMMEDIATE`` transaction; this
module is that transaction and the ``INSERT`` of a new batch, written once.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; on any exception a ``ROLLBACK`` (which may
    itself fail on a broken connection: the original error is the one raised)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def insert_batch(
    conn: sqlite3.Connection, created_at: float, samples: int, payload: bytes
) -> int | None:
    """Append one batch row; its ``seq`` (the rowid), None if SQLite gave none."""
    cursor = conn.execute(
        "INSERT INTO batches (created_at, samples, payload) VALUES (?, ?, ?)",
        (created_at, samples, payload),
    )
    return cursor.lastrowid


__all__ = ["immediate", "insert_batch"]
