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
``_create_index`` and docs/performance.md#sqlite-index). An
existing table (created or not by us) is introspected with ``PRAGMA table_info``
and the schema policy of ``servomexd.sinks.base`` applies; a boolean written to
an INTEGER/REAL column is stored as 1/0.

The database file is checked before each write: if it vanished or was replaced
(the directory was deleted, a cleanup job ran), writing on would silently fill an
unlinked inode, so the write fails and the next one reopens the path.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from servomexd.errors import (
    READ_ONLY_PATH_FIX,
    ServomexSinkCheckpointConflict,
    ServomexSinkDataError,
    ServomexSinkFault,
    ServomexSinkSchemaError,
    ServomexSinkWriteError,
    ServomexValidationError,
    SinkFailure,
)
from servomexd.model import Sample
from servomexd.rows import ROW_COLUMNS, Record
from servomexd.sinks.base import (
    CHECKPOINT_TABLE,
    BaseSink,
    Checkpoint,
    ColumnPlan,
    Converter,
    build_plan,
    checkpoint_first_seq,
    validate_checkpoint,
    validate_identifier,
)
from servomexd.sinks.encoding import RowEncoder
from servomexd.sinks.worker import SinkWorker

JOURNAL_MODES = frozenset({"DELETE", "TRUNCATE", "PERSIST", "MEMORY", "WAL", "OFF"})
SYNCHRONOUS_MODES = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})

_SQLITE_TYPES = {
    "value": "REAL",
    "latency_s": "REAL",
    "monotonic_ns": "INTEGER",
}


_READ_ONLY_FIX = READ_ONLY_PATH_FIX


def classify_sqlite(
    exc: BaseException, database: str, table: str
) -> tuple[SinkFailure, str | None, str | None]:
    """(failure, fault reason, fix) for an error from sqlite3 or the file system.

    IntegrityError (CHECK, NOT NULL, UNIQUE, a trigger's ``RAISE(ABORT, ...)``) and
    DataError (a value too big) are the rows' fault. A read-only file or directory, a
    missing table or column, a file that is not a database need an operator. Lock
    contention, I/O errors and a full disk pass.
    """
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError):
        return SinkFailure.DATA, None, None
    if isinstance(exc, OSError):
        if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
            return SinkFailure.OPERATOR, "read_only_path", _READ_ONLY_FIX
        return SinkFailure.TRANSIENT, None, None
    text = str(exc).lower()
    if "readonly" in text or "read-only" in text or "unable to open database" in text:
        return SinkFailure.OPERATOR, "read_only_path", _READ_ONLY_FIX
    if "no such table" in text or "no such column" in text or "has no column" in text:
        return SinkFailure.OPERATOR, "schema_mismatch", (
            f"create table {table} in {database} with the servomexd columns, or set "
            "[sink] create_table = true"
        )
    if "not a database" in text or "malformed" in text:
        return SinkFailure.OPERATOR, "other", (
            f"{database} is not a usable SQLite database: move it aside (servomexd "
            "creates a new one)"
        )
    return SinkFailure.TRANSIENT, None, None  # locked, busy, disk I/O error, disk full


def _type_class(declared: str) -> str:
    """SQLite affinity as the spec maps it: INT -> int; REAL/FLOA/DOUB -> float; else str."""
    upper = declared.upper()
    if "INT" in upper:
        return "int"
    if "REAL" in upper or "FLOA" in upper or "DOUB" in upper:
        return "float"
    return "str"


def _text_bool_to_int(value: str) -> int:
    return 1 if value == "true" else 0


def _converter(column: str, source: str, declared: str) -> Converter | None:
    # Rows arrive in text form; only a boolean headed for a numeric column changes.
    if source == "bool" and _type_class(declared) != "str":
        return _text_bool_to_int
    return None


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
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._plan: ColumnPlan | None = None
        self._warned: set[str] = set()
        self._insert_sql = ""
        self._encoder = RowEncoder()
        self._worker = SinkWorker("servomexd-sqlite-sink")
        self._upsert_sql = (
            f'INSERT INTO "{CHECKPOINT_TABLE}" (stream, seq, updated_at) '  # noqa: S608 - constant
            "VALUES (?, ?, ?) "
            "ON CONFLICT(stream) DO UPDATE SET seq = excluded.seq, "
            "updated_at = excluded.updated_at "
            f'WHERE "{CHECKPOINT_TABLE}".seq < ? '
            "RETURNING seq"
        )

    @property
    def columns(self) -> tuple[str, ...]:
        """The destination columns written (known once open)."""
        return () if self._plan is None else self._plan.columns

    def _context(self) -> dict[str, str]:
        return {"path": self._database, "table": self.table}

    def _error(self, action: str, exc: BaseException) -> ServomexSinkWriteError:
        """The typed error for a failed sqlite call (see ``classify_sqlite``)."""
        failure, fault, fix = classify_sqlite(exc, self._database, self.table)
        cls = {
            SinkFailure.OPERATOR: ServomexSinkFault,
            SinkFailure.DATA: ServomexSinkDataError,
        }.get(failure, ServomexSinkWriteError)
        return cls(
            f"sqlite {action} failed: {exc}",
            context=self._context(),
            failure=failure,
            fault=fault,
            fix=fix,
        )

    # --- worker-thread side -------------------------------------------------------------

    def _connect_sync(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self._database,
            isolation_level=None,
            timeout=self.busy_timeout_ms / 1000,
            check_same_thread=True,
        )
        try:
            mode = conn.execute(f"PRAGMA journal_mode={self.journal_mode}").fetchone()[0]
            if self.path is not None and str(mode).upper() != self.journal_mode:
                raise ServomexSinkWriteError(
                    f"sqlite refused journal_mode={self.journal_mode} (got {mode})",
                    context=self._context(),
                )
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
            self._setup_schema_sync(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._identity = self._file_identity()

    def _file_identity(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        stat = os.stat(self.path)
        return (stat.st_dev, stat.st_ino)

    def _setup_schema_sync(self, conn: sqlite3.Connection) -> None:
        table = self.table
        conn.execute("BEGIN IMMEDIATE")
        try:
            if self.create_table:
                columns = ", ".join(
                    f'"{name}" {_SQLITE_TYPES.get(name, "TEXT")}' for name in ROW_COLUMNS
                )
                conn.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({columns})')
            conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{CHECKPOINT_TABLE}" '
                "(stream TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated_at TEXT NOT NULL)"
            )
            info = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
            if not info:
                raise ServomexSinkSchemaError(
                    f"sqlite table {table!r} does not exist (create_table is off)",
                    context=self._context(),
                )
            target = [(str(row[1]), str(row[2] or "")) for row in info]
            plan = build_plan(
                f"sqlite:{table}", target, _converter, casefold=True, warned=self._warned
            )
            if self.create_table and {name.casefold() for name, _ in target} >= {
                "device", "channel", "received_at"
            }:
                _create_index(conn, table)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        placeholders = ", ".join("?" for _ in plan.columns)
        names = ", ".join(f'"{name}"' for name in plan.columns)
        self._insert_sql = f'INSERT INTO "{table}" ({names}) VALUES ({placeholders})'  # noqa: S608 - validated
        self._plan = plan

    def _close_conn_sync(self) -> None:
        conn, self._conn = self._conn, None
        self._identity = None
        if conn is not None:
            conn.close()

    def _check_file_sync(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is not None and self.path is not None:
            try:
                same = self._file_identity() == self._identity
            except OSError:
                same = False
            if not same:
                self._close_conn_sync()
                raise ServomexSinkWriteError(
                    "sqlite database file vanished or was replaced; reopening on the next write",
                    context=self._context(),
                )
        if conn is None:
            self._connect_sync()
            conn = self._conn
            assert conn is not None
        return conn

    def _write_sync(self, rows: list[Record], checkpoint: Checkpoint | None) -> None:
        try:
            conn = self._check_file_sync()
        except ServomexSinkWriteError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise self._error("reopen", exc) from exc
        plan = self._plan
        assert plan is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._error("write", exc) from exc
        try:
            if checkpoint is not None:
                # First, under the write lock: refuse a write the sink already holds.
                stored = conn.execute(
                    self._upsert_sql,
                    (
                        checkpoint[0],
                        checkpoint[1],
                        datetime.now(UTC).isoformat(),
                        checkpoint_first_seq(checkpoint),
                    ),
                ).fetchall()
                if not stored:
                    raise self._conflict(conn, checkpoint)
            conn.executemany(self._insert_sql, plan.apply(rows))
            conn.execute("COMMIT")
        except BaseException as exc:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                # The connection is unusable; start afresh on the next write.
                self._close_conn_sync()
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise self._error("write", exc) from exc
            raise

    def _probe_sync(self, rows: list[Record]) -> None:
        """Insert ``rows`` in a transaction that is always rolled back."""
        try:
            conn = self._check_file_sync()
            plan = self._plan
            assert plan is not None
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(self._insert_sql, plan.apply(rows))
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        except (sqlite3.Error, OSError) as exc:
            raise self._error("probe", exc) from exc

    def _conflict(
        self, conn: sqlite3.Connection, checkpoint: Checkpoint
    ) -> ServomexSinkCheckpointConflict:
        row = conn.execute(
            f'SELECT seq FROM "{CHECKPOINT_TABLE}" WHERE stream = ?',  # noqa: S608 - constant
            (checkpoint[0],),
        ).fetchone()
        return ServomexSinkCheckpointConflict(
            "sqlite already holds this write: its checkpoint is past the write's first batch",
            context={
                **self._context(),
                "stored_seq": None if row is None else row[0],
                "first_seq": checkpoint_first_seq(checkpoint),
            },
        )

    def _read_checkpoint_sync(self, stream: str) -> int:
        conn = self._check_file_sync()
        row = conn.execute(
            f'SELECT seq FROM "{CHECKPOINT_TABLE}" WHERE stream = ?',  # noqa: S608 - constant
            (stream,),
        ).fetchone()
        return 0 if row is None else int(row[0])

    # --- event-loop side ----------------------------------------------------------------

    async def open(self) -> None:
        if self._is_open:
            return
        self._worker.start()
        try:
            await self._worker.run(self._connect_sync)
        except (sqlite3.Error, OSError) as exc:
            self._worker.stop()
            raise self._error("open", exc) from exc
        except BaseException:
            self._worker.stop()
            raise
        self._is_open = True

    async def write_many(self, samples: Sequence[Sample]) -> None:
        self._require_open()
        if not samples:
            return
        await self._worker.run(self._write_sync, self._encoder.text_rows(samples), None)

    async def write_records(
        self, records: Sequence[Record], *, checkpoint: Checkpoint | None = None
    ) -> None:
        self._require_open()
        validate_checkpoint(checkpoint)
        if not records and checkpoint is None:
            return
        await self._worker.run(
            self._write_sync, self._encoder.records_to_text(records), checkpoint
        )

    async def probe_records(self, records: Sequence[Record]) -> None:
        self._require_open()
        await self._worker.run(self._probe_sync, self._encoder.records_to_text(records))

    async def read_checkpoint(self, stream: str) -> int:
        self._require_open()
        try:
            return await self._worker.run(self._read_checkpoint_sync, stream)
        except (sqlite3.Error, OSError) as exc:
            raise self._error("checkpoint read", exc) from exc

    async def close(self) -> None:
        if not self._is_open:
            return
        self._is_open = False
        try:
            await self._worker.run(self._close_conn_sync)
        finally:
            self._worker.stop()


def _create_index(conn: sqlite3.Connection, table: str) -> None:
    """The one index the sink creates: (received_at, device, channel).

    Measured with bench/bench_sqlite_index.py (docs/performance.md#sqlite-index): time
    leads, so inserts append at the right edge of the b-tree (2.5-3x the insert rate of
    the former (device, channel, received_at), whose interleaved inserts from many
    analysers land all over it), "latest rows" queries (README, docs/operations.md)
    take 0.1 ms instead of a full scan, and the dashboards' time windows are range
    scans that filter device and channel inside the index. Only a long window on ONE
    channel is slower than with the device-first index; a site that mostly asks that
    can add its own index. A table that already has the former index keeps it (building
    an index on a large table would stall the start) and gets no second one.
    """
    former = f"{table[:40]}_device_time_idx"
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (former,)
    ).fetchone()
    if exists:
        return
    conn.execute(
        f'CREATE INDEX IF NOT EXISTS "{table[:40]}_time_idx" '
        f'ON "{table}" ("received_at", "device", "channel")'
    )
