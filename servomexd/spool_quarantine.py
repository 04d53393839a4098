"""The spool's quarantine table: records the sink refused alone, out of delivery.

``delivery/isolation.py`` decides which rows are poison; this table keeps them, in the
spool file, until an operator decides: ``servomexd spool retry-quarantine`` marks them
and the daemon moves them back into delivery (``requeue``), ``drop-quarantine`` deletes
them. Moving rows in rewrites their batch in the same transaction, so a crash leaves
each record either in its batch or in the table, never in both or neither. The table
is bounded by ``quarantine_max_bytes``: refused rows beyond it are counted as lost.

Thread-confined like the rest of the spool's store: every call runs on its thread,
on its connection.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import NamedTuple

from servomexd.rows import Record
from servomexd.spool_codec import decode_records, encode_records
from servomexd.spool_sql import immediate, insert_batch

QUARANTINE_DOC = """The quarantine table holds one row per refused record: the batch ``seq`` it came
from, when (epoch seconds), the sink's error text, the record (the batch payload format,
one record) and ``retry`` (set by ``servomexd spool retry-quarantine``: the daemon moves
such rows back into a new batch for delivery). Nothing deletes a quarantined row except
``servomexd spool drop-quarantine --yes``."""


class QuarantineResult(NamedTuple):
    quarantined: int
    """Rows moved into the quarantine table."""
    overflowed: int
    """Rows refused by the sink but lost: the quarantine was at ``quarantine_max_bytes``."""
    remaining: int
    """Rows left in the batch for delivery."""


class Requeued(NamedTuple):
    """The batch ``requeue`` appended."""

    seq: int
    created_at: float
    samples: int
    nbytes: int


class QuarantineTable:
    """Moves rows between a batch and the quarantine table; counts what it holds."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.samples = 0
        self.bytes = 0

    def count(self, conn: sqlite3.Connection) -> None:
        count, nbytes = conn.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM quarantine"
        ).fetchone()
        self.samples, self.bytes = int(count), int(nbytes)

    def move(
        self,
        conn: sqlite3.Connection,
        seq: int,
        records: list[Record],
        bad: Sequence[int],
        error: str,
    ) -> tuple[list[Record], QuarantineResult]:
        """Move ``records[i]`` for ``i`` in ``bad`` from batch ``seq`` to the table, in one
        transaction with the rewrite of the batch (an emptied batch is deleted). Returns
        the records left in the batch."""
        doomed = set(bad)
        kept = [r for i, r in enumerate(records) if i not in doomed]
        refused = [r for i, r in enumerate(records) if i in doomed]
        now = time.time()
        rows: list[tuple[int, float, str, bytes]] = []
        room = self.max_bytes - self.bytes
        overflowed = 0
        for record in refused:
            payload = encode_records([record])
            if len(payload) > room:
                overflowed += 1
                continue
            room -= len(payload)
            rows.append((seq, now, error, payload))
        with immediate(conn):
            conn.executemany(
                "INSERT INTO quarantine (seq, quarantined_at, error, payload) VALUES (?, ?, ?, ?)",
                rows,
            )
            if kept:
                conn.execute(
                    "UPDATE batches SET samples = ?, payload = ? WHERE seq = ?",
                    (len(kept), encode_records(kept), seq),
                )
            else:
                conn.execute("DELETE FROM batches WHERE seq = ?", (seq,))
        self.count(conn)
        return kept, QuarantineResult(len(rows), overflowed, len(kept))

    def requeue(self, conn: sqlite3.Connection) -> Requeued | None:
        """Move the rows marked for retry into a new batch at the end of the spool (one
        transaction); None when none is marked."""
        marked = conn.execute(
            "SELECT id, payload FROM quarantine WHERE retry = 1 ORDER BY id"
        ).fetchall()
        if not marked:
            self.count(conn)  # drop-quarantine may have emptied it
            return None
        records = [record for _, payload in marked for record in decode_records(payload)]
        payload = encode_records(records)
        created_at = time.time()
        with immediate(conn):
            conn.execute("DELETE FROM quarantine WHERE retry = 1 AND id <= ?", (marked[-1][0],))
            rowid = insert_batch(conn, created_at, len(records), payload)
        self.count(conn)
        return Requeued(rowid or 0, created_at, len(records), len(payload))
