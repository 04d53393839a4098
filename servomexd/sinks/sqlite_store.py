"""``SqliteStore``: the synchronous sqlite3 side of ``SqliteSink``.

Every method runs in the sink's one worker thread (``SinkWorker``): the connection is
made there and never leaves it. Schema setup, the one-transaction write with its
checkpoint upsert, the rolled-back probe, the file-identity check and the error typing
live here; ``sinks/sqlite.py`` is the async facade that hands calls to the thread.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from servomexd.errors import (
    READ_ONLY_PATH_FIX,
    ServomexSinkCheckpointConflict,
    ServomexSinkDataError,
    ServomexSinkFault,
    ServomexSinkSchemaError,
    ServomexSinkWriteError,
    SinkFailure,
)
from servomexd.rows import ROW_COLUMNS, Record
from servomexd.sinks.base import (
    CHECKPOINT_TABLE,
    Checkpoint,
    ColumnPlan,
    Converter,
    build_plan,
    checkpoint_first_seq,
)

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


class SqliteStore:
    """One sqlite3 connection and the statements the sink runs on it (worker thread only)."""

    def __init__(
        self,
        database: str,
        table: str,
        *,
        create_table: bool,
        journal_mode: str,
        synchronous: str,
        busy_timeout_ms: int,
    ) -> None:
        self._database = database
        self._path = Path(database) if database != ":memory:" else None
        self._table = table
        self._create_table = create_table
        self._journal_mode = journal_mode
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self.plan: ColumnPlan | None = None
        self._warned: set[str] = set()
        self._insert_sql = ""
        self._upsert_sql = (
            f'INSERT INTO "{CHECKPOINT_TABLE}" (stream, seq, updated_at) '  # noqa: S608 - constant
            "VALUES (?, ?, ?) "
            "ON CONFLICT(stream) DO UPDATE SET seq = excluded.seq, "
            "updated_at = excluded.updated_at "
            f'WHERE "{CHECKPOINT_TABLE}".seq < ? '
            "RETURNING seq"
        )

    def _context(self) -> dict[str, str]:
        return {"path": self._database, "table": self._table}

    def failure(self, action: str, exc: BaseException) -> ServomexSinkWriteError:
        """The typed error for a failed sqlite call (see ``classify_sqlite``)."""
        failure, fault, fix = classify_sqlite(exc, self._database, self._table)
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

    def connect(self) -> None:
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self._database,
            isolation_level=None,
            timeout=self._busy_timeout_ms / 1000,
            check_same_thread=True,
        )
        try:
            mode = conn.execute(f"PRAGMA journal_mode={self._journal_mode}").fetchone()[0]
            if self._path is not None and str(mode).upper() != self._journal_mode:
                raise ServomexSinkWriteError(
                    f"sqlite refused journal_mode={self._journal_mode} (got {mode})",
                    context=self._context(),
                )
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            self._setup_schema(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._identity = self._file_identity()

    def _file_identity(self) -> tuple[int, int] | None:
        if self._path is None:
            return None
        stat = os.stat(self._path)
        return (stat.st_dev, stat.st_ino)

    def _setup_schema(self, conn: sqlite3.Connection) -> None:
        table = self._table
        conn.execute("BEGIN IMMEDIATE")
        try:
            if self._create_table:
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
            if self._create_table and {name.casefold() for name, _ in target} >= {
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
        self.plan = plan

    def close(self) -> None:
        conn, self._conn = self._conn, None
        self._identity = None
        if conn is not None:
            conn.close()

    def _check_file(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is not None and self._path is not None:
            try:
                same = self._file_identity() == self._identity
            except OSError:
                same = False
            if not same:
                self.close()
                raise ServomexSinkWriteError(
                    "sqlite database file vanished or was replaced; reopening on the next write",
                    context=self._context(),
                )
        if conn is None:
            self.connect()
            conn = self._conn
            assert conn is not None
        return conn

    def write(self, rows: list[Record], checkpoint: Checkpoint | None) -> None:
        try:
            conn = self._check_file()
        except ServomexSinkWriteError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise self.failure("reopen", exc) from exc
        plan = self.plan
        assert plan is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self.failure("write", exc) from exc
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
                self.close()
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise self.failure("write", exc) from exc
            raise

    def probe(self, rows: list[Record]) -> None:
        """Insert ``rows`` in a transaction that is always rolled back."""
        try:
            conn = self._check_file()
            plan = self.plan
            assert plan is not None
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(self._insert_sql, plan.apply(rows))
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
        except (sqlite3.Error, OSError) as exc:
            raise self.failure("probe", exc) from exc

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

    def read_checkpoint(self, stream: str) -> int:
        conn = self._check_file()
        row = conn.execute(
            f'SELECT seq FROM "{CHECKPOINT_TABLE}" WHERE stream = ?',  # noqa: S608 - constant
            (stream,),
        ).fetchone()
        return 0 if row is None else int(row[0])


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
