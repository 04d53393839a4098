"""``SqliteSink``: the embedded default store, one transaction per batch.

All sqlite3 calls run in one dedicated thread per sink (the connection never
leaves it). Each write is ``BEGIN IMMEDIATE``, one prepared ``executemany``, the
optional checkpoint upsert, ``COMMIT``; any failure rolls back and raises
``ServomexSinkWriteError``, so a failed batch leaves nothing behind.

Stored values follow ``sample_to_row``: booleans as "true"/"false" (so SQLite
never turns the column into INTEGER), timestamps as ISO-8601 UTC text. With
``create_table=True`` the table is::

    device TEXT, channel TEXT, kind TEXT, name TEXT, value REAL, unit TEXT,
    ok TEXT, fault TEXT, maintenance TEXT, calibrating TEXT, warming_up TEXT,
    protocol TEXT, monotonic_ns INTEGER, received_at TEXT, requested_at TEXT,
    latency_s REAL, error TEXT

plus an index on (received_at, device, channel), chosen by measurement (see
``sqlite_store._create_index`` and docs/performance.md#sqlite-index). An
existing table (created or not by us) is introspected with ``PRAGMA table_info``
and the schema policy of ``servomexd.sinks.base`` applies; a boolean written to
an INTEGER/REAL column is stored as 1/0.

The database file is checked before each write: if it vanished or was replaced
(the directory was deleted, a cleanup job ran), writing on would silently fill an
unlinked inode, so the write fails and the next one reopens the path.

The sqlite3 code itself is ``sqlite_store.SqliteStore``, run in the sink's worker
thread; this module is the event-loop facade.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from servomexd.errors import ServomexValidationError
from servomexd.model import Sample
from servomexd.rows import Record
from servomexd.sinks.base import (
    CHECKPOINT_TABLE,
    BaseSink,
    Checkpoint,
    validate_checkpoint,
    validate_identifier,
)
from servomexd.sinks.encoding import RowEncoder
from servomexd.sinks.sqlite_store import SqliteStore, classify_sqlite
from servomexd.sinks.worker import SinkWorker

__all__ = ["JOURNAL_MODES", "SYNCHRONOUS_MODES", "SqliteSink", "classify_sqlite"]

JOURNAL_MODES = frozenset({"DELETE", "TRUNCATE", "PERSIST", "MEMORY", "WAL", "OFF"})
SYNCHRONOUS_MODES = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})


class SqliteSink(BaseSink):
    kind = "sqlite"
    supports_checkpoint = True
    supports_probe = True
    file_suffix = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = "samples",
        create_table: bool = True,
        journal_mode: str = "WAL",
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = 5000,
    ) -> None:
        super().__init__()
        self.path = Path(path) if str(path) != ":memory:" else None
        self._database = str(path)
        self.table = validate_identifier(table, "table")
        if self.table.casefold() == CHECKPOINT_TABLE:
            raise ServomexValidationError(f"table name {table!r} is reserved")
        self.create_table = create_table
        self.journal_mode = journal_mode.upper()
        if self.journal_mode not in JOURNAL_MODES:
            raise ServomexValidationError(
                f"journal_mode must be one of {sorted(JOURNAL_MODES)}, got {journal_mode!r}"
            )
        self.synchronous = synchronous.upper()
        if self.synchronous not in SYNCHRONOUS_MODES:
            raise ServomexValidationError(
                f"synchronous must be one of {sorted(SYNCHRONOUS_MODES)}, got {synchronous!r}"
            )
        if isinstance(busy_timeout_ms, bool) or not isinstance(busy_timeout_ms, int) or (
            busy_timeout_ms < 0
        ):
            raise ServomexValidationError(
                f"busy_timeout_ms must be an int >= 0, got {busy_timeout_ms!r}"
            )
        self.busy_timeout_ms = busy_timeout_ms
        self._encoder = RowEncoder()
        self._worker = SinkWorker("servomexd-sqlite-sink")
        self._store = SqliteStore(
            self._database,
            self.table,
            create_table=create_table,
            journal_mode=self.journal_mode,
            synchronous=self.synchronous,
            busy_timeout_ms=busy_timeout_ms,
        )

    @property
    def columns(self) -> tuple[str, ...]:
        """The destination columns written (known once open)."""
        plan = self._store.plan
        return () if plan is None else plan.columns

    # --- event-loop side ----------------------------------------------------------------

    async def open(self) -> None:
        if self._is_open:
            return
        self._worker.start()
        try:
            await self._worker.run(self._store.connect)
        except (sqlite3.Error, OSError) as exc:
            self._worker.stop()
            raise self._store.failure("open", exc) from exc
        except BaseException:
            self._worker.stop()
            raise
        self._is_open = True

    async def write_many(self, samples: Sequence[Sample]) -> None:
        self._require_open()
        if not samples:
            return
        await self._worker.run(self._store.write, self._encoder.text_rows(samples), None)

    async def write_records(
        self, records: Sequence[Record], *, checkpoint: Checkpoint | None = None
    ) -> None:
        self._require_open()
        validate_checkpoint(checkpoint)
        if not records and checkpoint is None:
            return
        await self._worker.run(
            self._store.write, self._encoder.records_to_text(records), checkpoint
        )

    async def probe_records(self, records: Sequence[Record]) -> None:
        self._require_open()
        await self._worker.run(self._store.probe, self._encoder.records_to_text(records))

    async def read_checkpoint(self, stream: str) -> int:
        self._require_open()
        try:
            return await self._worker.run(self._store.read_checkpoint, stream)
        except (sqlite3.Error, OSError) as exc:
            raise self._store.failure("checkpoint read", exc) from exc

    async def close(self) -> None:
        if not self._is_open:
            return
        self._is_open = False
        try:
            await self._worker.run(self._store.close)
        finally:
            self._worker.stop()
