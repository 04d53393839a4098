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

The parts: ``pg_pool.PgPool`` (the pool, the one kept connection, the guard against a
dead connection, error typing), ``pg_schema`` (the destination's columns and their
coercions), ``pg_write.PgWriter`` (the COPY/INSERT, rollups and checkpoint of one
write). This module runs them under one lock.

asyncio only (asyncpg is): under trio ``open()`` raises ``ServomexSinkDependencyError``
naming the backend, before any connection is tried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from servomexd.errors import ServomexSinkDependencyError, ServomexSinkError
from servomexd.model import Sample
from servomexd.rows import Record
from servomexd.sinks.base import BaseSink, Checkpoint, log, validate_checkpoint
from servomexd.sinks.encoding import RowEncoder
from servomexd.sinks.pg_fleet import FleetLayout
from servomexd.sinks.pg_pool import PgPool, missing_asyncpg
from servomexd.sinks.pg_schema import read_columns
from servomexd.sinks.pg_write import PgWriter
from servomexd.sinks.postgres_config import PostgresConfig
from servomexd.sinks.worker import current_backend, running_asyncio_loop


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
            raise missing_asyncpg() from exc

    def __init__(self, config: PostgresConfig) -> None:
        super().__init__()
        self.config = config
        self._link = PgPool(config)
        self._lock = asyncio.Lock()
        self._warned: set[str] = set()
        self._encoder = RowEncoder()
        self._fleet = FleetLayout(config)
        self._writer = PgWriter(config, self._fleet)

    @property
    def columns(self) -> tuple[str, ...]:
        columns = self._writer.columns
        return () if columns is None else columns.plan.columns

    @property
    def _pool(self) -> Any:
        """The asyncpg pool (None when closed)."""
        return self._link.pool

    def target(self) -> str:
        return self.config.target()

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
        link = self._link
        await link.create()
        config = self.config
        try:
            async with link.pool.acquire(timeout=config.command_timeout_s) as conn:
                self._writer.columns = await read_columns(
                    conn, config, self._fleet, self._warned
                )
        except ServomexSinkError:
            await link.terminate()
            raise
        except link.driver_errors() as exc:
            await link.terminate()
            link.fail("schema setup", exc)
        except BaseException:
            await link.terminate()
            raise
        log.debug(
            "sink.postgres.schema_ready", target=config.target(), columns=len(self.columns)
        )
        self._is_open = True

    async def _connection(self) -> Any:
        """The kept pool connection (see ``PgPool.connection``)."""
        return await self._link.connection()

    async def close(self) -> None:
        if not self._is_open:
            return
        self._is_open = False
        self._fleet.report_pending()
        async with self._lock:
            await self._link.drop()
        await self._link.close()

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
        source = records if isinstance(records, list) else list(records)
        rows = self._table_rows(source)
        link = self._link
        async with self._lock:
            try:
                conn = await link.connection()
                work = self._writer.write_on(conn, rows, source, checkpoint)
                await link.guarded(conn, work, len(rows))
            except BaseException as exc:
                # Start the next write on a clean connection, whatever state this one
                # is in (a cancelled COPY, a dead socket).
                await link.drop()
                if isinstance(exc, link.driver_errors()):
                    link.fail("write", exc)
                raise
            self._writer.checkpoint_ready = (
                self._writer.checkpoint_ready or checkpoint is not None
            )
            fleet = self._fleet
            fleet.note_write(source, None if checkpoint is None else checkpoint[0])
            if fleet.due():
                await self._housekeeping(conn)

    async def _housekeeping(self, conn: Any) -> None:
        """Partitions, retention, registry heartbeat: never fails the committed batch."""
        try:
            await self._fleet.after_write(conn)
        except self._link.driver_errors() as exc:
            await self._link.drop()
            log.warning(
                "sink.maintenance_failed",
                target=self.config.target(),
                error=self.config.scrub(f"{type(exc).__name__}: {exc}"),
            )

    async def run_maintenance(self) -> None:
        """Run partition upkeep and retention now (also runs on its own when due)."""
        self._require_open()
        link = self._link
        async with self._lock:
            try:
                conn = await link.connection()
                await self._fleet.maintain(conn)
            except BaseException as exc:
                await link.drop()
                if isinstance(exc, link.driver_errors()):
                    link.fail("maintenance", exc)
                raise

    def _table_rows(self, records: list[Record]) -> list[Record]:
        """Records as the table's columns want them, the site appended where it has one."""
        columns = self._writer.columns
        assert columns is not None
        rows = columns.plan.apply(records)
        if columns.site:
            site = columns.site
            rows = [row + site for row in rows]
        return rows

    async def probe_records(self, records: Sequence[Record]) -> None:
        """Insert ``records`` in a transaction that is always rolled back (isolating
        the rows the table refuses; nothing is ever committed here)."""
        self._require_open()
        rows = self._table_rows(records if isinstance(records, list) else list(records))
        link = self._link
        async with self._lock:
            try:
                conn = await link.connection()
                await self._writer.probe(conn, rows)
            except BaseException as exc:
                await link.drop()
                if isinstance(exc, link.driver_errors()):
                    link.fail("probe", exc)
                raise

    async def read_checkpoint(self, stream: str) -> int:
        self._require_open()
        link = self._link
        async with self._lock:
            try:
                conn = await link.connection()
                try:
                    seq = await self._writer.read_checkpoint(conn, stream)
                except link.asyncpg.UndefinedTableError:
                    return 0
            except BaseException as exc:
                await link.drop()
                if isinstance(exc, link.driver_errors()):
                    link.fail("checkpoint read", exc)
                raise
        return 0 if seq is None else int(seq)
