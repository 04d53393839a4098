"""``PostgresSink``: pooled asyncpg, one binary COPY per batch.

Values are sent as native types and coerced, once per column, to the type the
destination column really has (``information_schema.columns``): a deployment
table with timestamptz, boolean, double precision and bigint columns takes the
rows as they are; text columns get the ``sample_to_row`` text ("true"/"false",
ISO-8601). With ``create_table=True`` the table is created as::

    device text, channel text, kind text, name text, value double precision,
    unit text, ok boolean, fault boolean, maintenance boolean, calibrating boolean,
    warming_up boolean, protocol text, monotonic_ns bigint,
    received_at timestamptz, requested_at timestamptz, latency_s double precision,
    error text

with an index on (device, channel, received_at), so Grafana can query a time
range per channel directly; with ``site`` set, a leading ``site text`` column (filled in
on every row of any table that has one); with ``partition`` day/week/month, range
partitions on ``received_at`` and a DEFAULT partition. Partitions, retention, exact
rollups (updated in the batch's transaction) and the writers registry are
``pg_fleet.FleetLayout``'s job; this module calls it at open, in each write's
transaction and after each commit. ``write_records(..., checkpoint=(stream, seq))``
commits the rows and the ``servomexd_checkpoints`` row in one transaction.

Failures raise ``ServomexSinkWriteError`` with the driver error chained, typed by
``postgres_errors.classify``: a transient failure (connection lost, server
restarting, timeout, disk full) stays a ``ServomexSinkWriteError``, one only an
operator can fix (authentication, privilege, missing database or schema) is a
``ServomexSinkFault`` carrying the fix, and rows the table refuses (a CHECK, a value
out of range, a trigger that raises) a ``ServomexSinkDataError``. After a server
restart the pool reconnects on the next write.

asyncio only (asyncpg is): under trio ``open()`` raises ``ServomexSinkDependencyError``
naming the backend, before any connection is tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import inspect
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

from servomexd.errors import (
    ServomexSinkCheckpointConflict,
    ServomexSinkDataError,
    ServomexSinkDependencyError,
    ServomexSinkError,
    ServomexSinkFault,
    ServomexSinkSchemaError,
    ServomexSinkWriteError,
    SinkFailure,
)
from servomexd.model import Sample
from servomexd.rows import Record
from servomexd.sinks.base import (
    CHECKPOINT_TABLE,
    BaseSink,
    Checkpoint,
    ColumnPlan,
    Converter,
    build_plan,
    checkpoint_first_seq,
    log,
    validate_checkpoint,
)
from servomexd.sinks.encoding import RowEncoder
from servomexd.sinks.pg_fleet import FleetLayout
from servomexd.sinks.postgres_config import PostgresConfig
from servomexd.sinks.postgres_errors import PgTarget, route_driver_logs
from servomexd.sinks.postgres_errors import classify as classify_failure
from servomexd.sinks.postgres_tls import TlsSetupError, asyncpg_ssl, classify
from servomexd.sinks.worker import current_backend, running_asyncio_loop

_TEXT_TYPES = frozenset({"text", "character varying", "character", "name", "citext", "bpchar"})
_FLOAT_TYPES = frozenset({"double precision", "real"})
_INT_TYPES = frozenset({"bigint", "integer", "smallint"})
# Below asyncpg's 512 KiB COPY buffer (rows are ~150-250 bytes) a COPY never waits
# on flow control, so it cannot hang on a dead connection (see _guarded).
_GUARD_MIN_ROWS = 1000


def _text_bool(value: bool) -> str:
    return "true" if value else "false"


def _iso(value: datetime) -> str:
    return value.isoformat()


def _naive_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def _decimal(value: float | int) -> decimal.Decimal:
    return decimal.Decimal(repr(value)) if isinstance(value, float) else decimal.Decimal(value)


def _converter(column: str, source: str, pg_type: str) -> Converter | None:
    """How a native value of kind ``source`` goes into a column of ``pg_type``."""
    compatible: dict[str, dict[str, Converter | None]] = {
        "str": {"text": None},
        "float": {"text": repr, "float": None, "numeric": _decimal},
        "int": {"text": str, "int": None, "float": float, "numeric": _decimal},
        "bool": {"text": _text_bool, "boolean": None, "int": int, "float": float},
        "datetime": {"text": _iso, "timestamptz": None, "timestamp": _naive_utc},
    }
    if pg_type in _TEXT_TYPES:
        family = "text"
    elif pg_type in _FLOAT_TYPES:
        family = "float"
    elif pg_type in _INT_TYPES:
        family = "int"
    elif pg_type in ("numeric", "decimal"):
        family = "numeric"
    elif pg_type == "boolean":
        family = "boolean"
    elif pg_type == "timestamp with time zone":
        family = "timestamptz"
    elif pg_type == "timestamp without time zone":
        family = "timestamp"
    else:
        family = pg_type
    options = compatible[source]
    if family not in options:
        raise ServomexSinkSchemaError(
            f"column {column!r} has type {pg_type}, which cannot hold servomexd's {source} "
            f"values (use one of: {', '.join(sorted(options))})",
            context={"column": column, "type": pg_type},
        )
    return options[family]


async def _reap(task: asyncio.Future[None]) -> None:
    """Cancel ``task``, wait for it, and consume its outcome (no "never retrieved")."""
    task.cancel()
    await asyncio.wait((task,))
    if not task.cancelled():
        task.exception()


async def _no_session_reset(connection: Any) -> None:
    """Pool release hook: skip asyncpg's RESET ALL round trip.

    We never change session state (settings are connection parameters), and an
    open transaction is still rolled back by the pool itself. Saves one round
    trip per batch.
    """


def _missing_asyncpg() -> ServomexSinkDependencyError:
    return ServomexSinkDependencyError(
        "the Postgres sink needs asyncpg: pip install 'servomexd[postgres]'",
        context={"extra": "servomexd[postgres]"},
        fix="install the postgres extra: pip install 'servomexd[postgres]'",
    )


class _RolledBack(Exception):
    """Ends a probe's transaction: asyncpg rolls back on any exception."""


class PostgresSink(BaseSink):
    kind = "postgres"
    supports_checkpoint = True
    supports_probe = True
    needs_credentials = True

    @classmethod
    def check_dependencies(cls) -> None:
        try:
            import asyncpg  # noqa: F401
        except ImportError as exc:
            raise _missing_asyncpg() from exc

    def __init__(self, config: PostgresConfig) -> None:
        super().__init__()
        self.config = config
        self._asyncpg: Any = None
        self._pool: Any = None
        self._conn: Any = None  # held between writes: see _connection()
        self._lock = asyncio.Lock()
        self._plan: ColumnPlan | None = None
        self._warned: set[str] = set()
        self._encoder = RowEncoder()
        self._checkpoint_ready = False
        schema, table = config.schema, config.table
        self._qualified = f'"{schema}"."{table}"'
        self._checkpoints = f'"{schema}"."{CHECKPOINT_TABLE}"'
        self._insert_sql = ""
        self._fleet = FleetLayout(config)
        self._copy_columns: tuple[str, ...] = ()
        self._site: tuple[str, ...] = ()  # appended to each row when the table has "site"
        self._upsert_sql = (
            f"INSERT INTO {self._checkpoints} (stream, seq, updated_at) "  # noqa: S608 - identifiers validated
            "VALUES ($1, $2, now()) "
            "ON CONFLICT (stream) DO UPDATE SET seq = EXCLUDED.seq, updated_at = now() "
            f"WHERE {self._checkpoints}.seq < $3 "
            "RETURNING seq"
        )

    @property
    def columns(self) -> tuple[str, ...]:
        return () if self._plan is None else self._plan.columns

    def target(self) -> str:
        return self.config.target()

    # --- errors -------------------------------------------------------------------------

    def _write_error(self, action: str, exc: BaseException) -> ServomexSinkWriteError:
        config = self.config
        tls_fault = classify(exc)
        if tls_fault is not None:
            check, explanation = tls_fault
            return ServomexSinkFault(
                f"postgres {action} failed: TLS check {check!r} failed: "
                f"{config.scrub(explanation)}",
                context={"target": config.target(), "check": check},
                fault="tls",
                fix="fix the certificate named by the check, or [sink.postgres] sslrootcert, "
                "sslcert, sslkey or sslmode",
            )
        where = PgTarget.of(config)
        decided = classify_failure(exc, self._asyncpg, where)
        text = config.scrub(f"{type(exc).__name__}: {exc}")
        cls = {
            SinkFailure.OPERATOR: ServomexSinkFault,
            SinkFailure.DATA: ServomexSinkDataError,
        }.get(decided.failure, ServomexSinkWriteError)
        return cls(
            f"postgres {action} failed: {text}",
            context={"target": config.target()},
            failure=decided.failure,
            fault=decided.fault,
            fix=decided.fix,
        )

    def _raise(self, action: str, exc: BaseException) -> NoReturn:
        error = self._write_error(action, exc)
        if self.config.scrub(str(exc)) != str(exc):
            raise error from None  # the driver's text held a secret: do not chain it
        raise error from exc

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        asyncpg = self._asyncpg
        return (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,  # 'cannot switch to state N': not an InterfaceError
            OSError,
            TimeoutError,
        )

    # --- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        if self._is_open:
            return
        if running_asyncio_loop() is None:
            backend = current_backend()
            raise ServomexSinkDependencyError(
                f"the Postgres sink runs on asyncio only (asyncpg is asyncio-only), not "
                f"under {backend}: run it under asyncio or use another sink",
                context={"backend": backend, "requires": "asyncio"},
            )
        try:
            import asyncpg
        except ImportError as exc:
            raise _missing_asyncpg() from exc
        self._asyncpg = asyncpg
        route_driver_logs()
        config = self.config
        connect: dict[str, Any] = {
            "min_size": config.pool_min_size,
            "max_size": config.pool_max_size,
            "command_timeout": config.command_timeout_s,
            "timeout": config.command_timeout_s,  # connect timeout: bounded too
            "server_settings": {
                "application_name": "servomexd",
                "statement_timeout": str(config.statement_timeout_ms),
            },
        }
        try:
            # Given explicitly, so it wins over the DSN's sslmode (merged into tls()).
            connect["ssl"] = asyncpg_ssl(config.tls())
        except TlsSetupError as exc:
            self._raise("TLS setup", exc)
        if "reset" in inspect.signature(asyncpg.create_pool).parameters:  # asyncpg >= 0.30
            connect["reset"] = _no_session_reset
        if config.dsn is not None:
            connect["dsn"] = config.dsn
            if config.password is not None:
                connect["password"] = config.password
        else:
            connect.update(
                host=config.host,
                port=config.port,
                user=config.user,
                password=config.password,
                database=config.database,
            )
        try:
            self._pool = await asyncpg.create_pool(**connect)
        except (*self._driver_errors(), ValueError) as exc:  # type: ignore[misc]  # mypy cannot see a starred tuple of classes
            self._raise("connect", exc)
        try:
            async with self._pool.acquire(timeout=config.command_timeout_s) as conn:
                await self._lock_schema(conn)
        except ServomexSinkError:
            await self._terminate_pool()
            raise
        except self._driver_errors() as exc:
            await self._terminate_pool()
            self._raise("schema setup", exc)
        except BaseException:
            await self._terminate_pool()
            raise
        log.debug(
            "sink.postgres.schema_ready", target=config.target(), columns=len(self.columns)
        )
        self._is_open = True

    async def _lock_schema(self, conn: Any) -> None:
        config = self.config
        if config.create_table:
            await self._fleet.create_layout(conn)
        rows = await conn.fetch(
            "SELECT column_name, data_type, udt_name FROM information_schema.columns "
            "WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            config.schema,
            config.table,
        )
        if not rows:
            raise await self._why_no_columns(conn)
        target = [
            (row["column_name"], row["udt_name"] if row["data_type"] == "USER-DEFINED"
             else row["data_type"])
            for row in rows
        ]
        site_type = dict(target).get("site")
        if config.site is not None and site_type is not None:
            if site_type not in _TEXT_TYPES:
                raise ServomexSinkSchemaError(
                    f"column 'site' has type {site_type}; it must be text to hold the site",
                    context={"column": "site", "type": site_type},
                )
            target = [item for item in target if item[0] != "site"]
            self._site = (config.site,)
        else:
            self._site = ()
        plan = build_plan(
            f"postgres:{config.schema}.{config.table}", target, _converter, warned=self._warned
        )
        self._copy_columns = plan.columns + (("site",) if self._site else ())
        names = ", ".join(f'"{name}"' for name in self._copy_columns)
        values = ", ".join(f"${index}" for index in range(1, len(self._copy_columns) + 1))
        self._insert_sql = f"INSERT INTO {self._qualified} ({names}) VALUES ({values})"  # noqa: S608 - identifiers validated
        self._plan = plan
        await self._fleet.check_layout(conn)

    async def _why_no_columns(self, conn: Any) -> ServomexSinkError:
        """No visible column: the table is missing, or exists but this user may not use
        it (information_schema only shows what the user holds a privilege on)."""
        config = self.config
        where = PgTarget.of(config)
        schema_exists = await conn.fetchval(
            "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1", config.schema
        )
        table_exists = await conn.fetchval(
            "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
            config.schema,
            config.table,
        )
        context = {"target": config.target()}
        if table_exists:
            return ServomexSinkFault(
                f"postgres table {config.schema}.{config.table} exists but user "
                f"{where.user or '(configured)'} has no privilege on it",
                context=context,
                fault="authorization",
                fix=where.fix("authorization", LookupError()),
            )
        if not schema_exists:
            return ServomexSinkFault(
                f"postgres schema {config.schema} does not exist",
                context=context,
                fault="missing_schema",
                fix=where.fix("missing_schema", LookupError()),
            )
        return ServomexSinkSchemaError(
            f"postgres table {config.schema}.{config.table} does not exist "
            "(or is not visible to this user); create it or set create_table",
            context=context,
            fix=where.fix("schema_mismatch", LookupError()),
        )

    async def _terminate_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()

    async def _connection(self) -> Any:
        """The pool connection this sink writes on, acquired once and kept.

        Acquiring and releasing per batch cost about 80 us (a task for the acquire
        timeout, the release bookkeeping): a third of a 64-row COPY. Connecting is
        bounded by the pool's connect timeout (``command_timeout_s``).
        """
        conn = self._conn
        if conn is not None and self._usable(conn):
            return conn
        await self._drop_connection()
        self._conn = await self._pool.acquire()
        return self._conn

    def _usable(self, conn: Any) -> bool:
        """The kept connection is still ours and open.

        When the server drops a connection we hold (a restart, a crash), asyncpg cleans
        it up and hands its holder back to the pool by itself, detaching our proxy:
        every call on the proxy then raises ``InterfaceError: connection has been
        released back to the pool``. Such a proxy is as gone as a closed one.
        """
        try:
            return not conn.is_closed()
        except self._asyncpg.InterfaceError:
            return False

    async def _drop_connection(self) -> None:
        """Give the connection back (the pool rolls back, or discards a dead one)."""
        conn, self._conn = self._conn, None
        if conn is not None and self._pool is not None:
            try:
                # A proxy the pool already took back is a no-op here.
                await self._pool.release(conn, timeout=self.config.command_timeout_s)
            except (Exception, asyncio.CancelledError):
                with contextlib.suppress(Exception):  # detached meanwhile: nothing to end
                    conn.terminate()

    async def close(self) -> None:
        if not self._is_open:
            return
        self._is_open = False
        async with self._lock:
            await self._drop_connection()
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=self.config.command_timeout_s)
        except self._driver_errors():
            pool.terminate()

    # --- writing ------------------------------------------------------------------------

    async def write_many(self, samples: Sequence[Sample]) -> None:
        self._require_open()
        if not samples:
            return
        await self._write(self._encoder.native_records(samples), None)

    async def write_records(
        self, records: Sequence[Record], *, checkpoint: Checkpoint | None = None
    ) -> None:
        self._require_open()
        validate_checkpoint(checkpoint)
        if not records and checkpoint is None:
            return
        await self._write(records, checkpoint)

    async def _write(self, records: Sequence[Record], checkpoint: Checkpoint | None) -> None:
        plan = self._plan
        assert plan is not None
        source = records if isinstance(records, list) else list(records)
        rows = plan.apply(source)
        if self._site:
            site = self._site
            rows = [row + site for row in rows]
        async with self._lock:
            try:
                conn = await self._connection()
                work = self._write_on(conn, rows, source, checkpoint)
                await self._guarded(conn, work, len(rows))
            except BaseException as exc:
                # Start the next write on a clean connection, whatever state this one
                # is in (a cancelled COPY, a dead socket).
                await self._drop_connection()
                if isinstance(exc, self._driver_errors()):
                    self._raise("write", exc)
                raise
            self._checkpoint_ready = self._checkpoint_ready or checkpoint is not None
            fleet = self._fleet
            fleet.note_write(source, None if checkpoint is None else checkpoint[0])
            if fleet.due():
                await self._housekeeping(conn)

    async def _housekeeping(self, conn: Any) -> None:
        """Partitions, retention, registry heartbeat: never fails the committed batch."""
        try:
            await self._fleet.after_write(conn)
        except self._driver_errors() as exc:
            await self._drop_connection()
            log.warning(
                "sink.maintenance_failed",
                target=self.config.target(),
                error=self.config.scrub(f"{type(exc).__name__}: {exc}"),
            )

    async def run_maintenance(self) -> None:
        """Run partition upkeep and retention now (also runs on its own when due)."""
        self._require_open()
        async with self._lock:
            try:
                conn = await self._connection()
                await self._fleet.maintain(conn)
            except BaseException as exc:
                await self._drop_connection()
                if isinstance(exc, self._driver_errors()):
                    self._raise("maintenance", exc)
                raise

    async def _write_on(
        self,
        conn: Any,
        rows: list[Record],
        records: list[Record],
        checkpoint: Checkpoint | None,
    ) -> None:
        config = self.config
        timeout = config.command_timeout_s
        rolled = self._fleet.has_rollups
        if checkpoint is None and config.use_copy and not rolled:
            # COPY is atomic on its own: no BEGIN/COMMIT round trips.
            await self._copy(conn, rows, timeout)
            return
        async with conn.transaction():
            if rows:
                if config.use_copy:
                    await self._copy(conn, rows, timeout)
                else:
                    await conn.executemany(self._insert_sql, rows, timeout=timeout)
            # Rollups in the same transaction as the rows and the checkpoint: exactly once.
            if checkpoint is not None:
                await self._advance_checkpoint(
                    conn, checkpoint, timeout, records if rolled and records else None
                )
            elif rolled and records:
                await self._fleet.write_rollups(conn, records, timeout)

    async def probe_records(self, records: Sequence[Record]) -> None:
        """Insert ``records`` in a transaction that is always rolled back (isolating
        the rows the table refuses; nothing is ever committed here)."""
        self._require_open()
        plan = self._plan
        assert plan is not None
        rows = plan.apply(records if isinstance(records, list) else list(records))
        timeout = self.config.command_timeout_s
        async with self._lock:
            try:
                conn = await self._connection()
                try:
                    async with conn.transaction():
                        if self.config.use_copy:
                            await self._copy(conn, rows, timeout)
                        else:
                            await conn.executemany(self._insert_sql, rows, timeout=timeout)
                        raise _RolledBack
                except _RolledBack:
                    return
            except BaseException as exc:
                await self._drop_connection()
                if isinstance(exc, self._driver_errors()):
                    self._raise("probe", exc)
                raise

    async def _advance_checkpoint(
        self,
        conn: Any,
        checkpoint: Checkpoint,
        timeout: float,  # noqa: ASYNC109 - per statement
        rollup_records: list[Record] | None = None,
    ) -> None:
        """Move the checkpoint forward in the write's transaction, or refuse the write.

        The upsert only updates when the stored seq is below the write's first batch. It
        takes the row lock: if an earlier attempt of this write is still committing on
        another connection, it waits for that COMMIT, then (READ COMMITTED re-checks ON
        CONFLICT against the new row) finds the batches already there and updates
        nothing. The conflict then rolls the whole write back. It runs after the COPY
        because taking the lock first cost about 10 % of the backlog drain rate. With
        ``rollup_records`` the same statement merges the rollups when the checkpoint moved
        (``FleetLayout.write_rollups_and_checkpoint``): one round trip for both.
        """
        if not self._checkpoint_ready:
            await self._create_checkpoint_table(conn)
        first = checkpoint_first_seq(checkpoint)
        if rollup_records is not None:
            stored = await self._fleet.write_rollups_and_checkpoint(
                conn, rollup_records, (checkpoint[0], checkpoint[1], first), timeout
            )
        else:
            stored = await conn.fetchval(
                self._upsert_sql, checkpoint[0], checkpoint[1], first, timeout=timeout
            )
        if stored is None:
            current = await conn.fetchval(
                f"SELECT seq FROM {self._checkpoints} WHERE stream = $1",  # noqa: S608 - validated
                checkpoint[0],
                timeout=timeout,
            )
            raise ServomexSinkCheckpointConflict(
                "postgres already holds this write: its checkpoint is past the write's first "
                "batch",
                context={"target": self.config.target(), "stored_seq": current, "first_seq": first},
            )

    async def _guarded(self, conn: Any, work: Coroutine[Any, Any, None], rows: int) -> None:
        """Run ``work``, failing at once if the server drops the connection.

        asyncpg's COPY waits for the socket to drain (flow control) without a
        timeout once it has 512 KiB to send; when the connection dies during that
        wait (server shutdown mid-COPY, measured) it waits forever. Large batches
        therefore race the write against the connection's termination. Smaller
        ones never reach that wait and skip the extra task.
        """
        if rows < _GUARD_MIN_ROWS:
            await work
            return
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[None] = loop.create_future()

        def on_lost(_conn: Any) -> None:
            if not lost.done():
                lost.set_result(None)

        conn.add_termination_listener(on_lost)
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait((task, lost), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await _reap(task)
            raise
        finally:
            lost.cancel()
            with contextlib.suppress(Exception):  # a dead connection is detached already
                conn.remove_termination_listener(on_lost)
        if not task.done():
            await _reap(task)
            raise self._asyncpg.ConnectionDoesNotExistError(
                "connection lost in the middle of a write"
            )
        task.result()

    async def _copy(self, conn: Any, rows: list[Record], limit: float) -> None:
        plan = self._plan
        assert plan is not None
        await conn.copy_records_to_table(
            self.config.table,
            records=rows,
            columns=self._copy_columns,
            schema_name=self.config.schema,
            timeout=limit,
        )

    async def _create_checkpoint_table(self, conn: Any) -> None:
        # Look first: CREATE ... IF NOT EXISTS needs CREATE on the schema even when the
        # table exists, which a fleet's INSERT-only site role does not have.
        if await conn.fetchval(
            "SELECT to_regclass($1) IS NOT NULL", f"{self._checkpoints}"
        ):
            return
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self._checkpoints} ("
            "stream text PRIMARY KEY, seq bigint NOT NULL, "
            "updated_at timestamptz NOT NULL DEFAULT now())"
        )

    async def read_checkpoint(self, stream: str) -> int:
        self._require_open()
        asyncpg = self._asyncpg
        async with self._lock:
            try:
                conn = await self._connection()
                try:
                    seq = await conn.fetchval(
                        f"SELECT seq FROM {self._checkpoints} WHERE stream = $1",  # noqa: S608 - validated
                        stream,
                    )
                except asyncpg.UndefinedTableError:
                    return 0
            except BaseException as exc:
                await self._drop_connection()
                if isinstance(exc, self._driver_errors()):
                    self._raise("checkpoint read", exc)
                raise
        return 0 if seq is None else int(seq)
