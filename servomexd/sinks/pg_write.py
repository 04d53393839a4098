"""``PgWriter``: the statements one Postgres sink write runs, with its checkpoint guard.

A batch without a checkpoint (and no rollups) is one binary COPY, atomic on its own.
Otherwise one transaction holds the rows (COPY or INSERT), the rollups and the
``servomexd_checkpoints`` upsert, which refuses a write the table already holds
(``advance_checkpoint``): the exactly-once step. The caller owns the connection, its
lock, and what happens after a failure.
"""

from __future__ import annotations

from typing import Any

from servomexd.errors import ServomexSinkCheckpointConflict
from servomexd.rows import Record
from servomexd.sinks.base import CHECKPOINT_TABLE, Checkpoint, checkpoint_first_seq
from servomexd.sinks.pg_fleet import FleetLayout
from servomexd.sinks.pg_schema import PgColumns
from servomexd.sinks.postgres_config import PostgresConfig


class _RolledBack(Exception):
    """Ends a probe's transaction: asyncpg rolls back on any exception."""


class PgWriter:
    """Rows, rollups and the checkpoint of one write, on a connection it is handed."""

    def __init__(self, config: PostgresConfig, fleet: FleetLayout) -> None:
        self.config = config
        self._fleet = fleet
        self.columns: PgColumns | None = None  # set when the sink opens
        self.checkpoint_ready = False
        self._checkpoints = f'"{config.schema}"."{CHECKPOINT_TABLE}"'
        self._upsert_sql = (
            f"INSERT INTO {self._checkpoints} (stream, seq, updated_at) "  # noqa: S608 - identifiers validated
            "VALUES ($1, $2, now()) "
            "ON CONFLICT (stream) DO UPDATE SET seq = EXCLUDED.seq, updated_at = now() "
            f"WHERE {self._checkpoints}.seq < $3 "
            "RETURNING seq"
        )

    async def write_on(
        self,
        conn: Any,
        rows: list[Record],
        records: list[Record],
        checkpoint: Checkpoint | None,
    ) -> None:
        """Write ``rows`` (planned from ``records``) and move ``checkpoint``: all or nothing."""
        config = self.config
        timeout = config.command_timeout_s
        rolled = self._fleet.has_rollups
        if checkpoint is None and config.use_copy and not rolled:
            # COPY is atomic on its own: no BEGIN/COMMIT round trips.
            await self._copy(conn, rows, timeout)
            return
        async with conn.transaction():
            if rows:
                await self._insert(conn, rows, timeout)
            # Rollups in the same transaction as the rows and the checkpoint: exactly once.
            if checkpoint is not None:
                await self._advance_checkpoint(
                    conn, checkpoint, timeout, records if rolled and records else None
                )
            elif rolled and records:
                await self._fleet.write_rollups(conn, records, timeout)

    async def probe(self, conn: Any, rows: list[Record]) -> None:
        """Insert ``rows`` in a transaction that is always rolled back."""
        try:
            async with conn.transaction():
                await self._insert(conn, rows, self.config.command_timeout_s)
                raise _RolledBack
        except _RolledBack:
            return

    async def _insert(self, conn: Any, rows: list[Record], limit: float) -> None:
        if self.config.use_copy:
            await self._copy(conn, rows, limit)
        else:
            assert self.columns is not None
            await conn.executemany(self.columns.insert_sql, rows, timeout=limit)

    async def _copy(self, conn: Any, rows: list[Record], limit: float) -> None:
        columns = self.columns
        assert columns is not None
        await conn.copy_records_to_table(
            self.config.table,
            records=rows,
            columns=columns.copy_columns,
            schema_name=self.config.schema,
            timeout=limit,
        )

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
        if not self.checkpoint_ready:
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

    async def read_checkpoint(self, conn: Any, stream: str) -> Any:
        """The stored seq of ``stream`` (None if it has none); raises if there is no table."""
        return await conn.fetchval(
            f"SELECT seq FROM {self._checkpoints} WHERE stream = $1",  # noqa: S608 - validated
            stream,
        )
