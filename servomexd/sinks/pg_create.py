"""The tables a Postgres sink creates when they are missing (``create_table = true``).

Each object is looked up before it is created: ``CREATE ... IF NOT EXISTS`` needs
CREATE rights even when the object exists, which a site's role may not have. The
caller runs this under ``pg_ddl.locked_ddl`` (one daemon at a time).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from servomexd.rows import ROW_COLUMNS
from servomexd.sinks import pg_partitions as parts
from servomexd.sinks import pg_rollups as rollups
from servomexd.sinks import pg_writers as writers
from servomexd.sinks.base import CHECKPOINT_TABLE
from servomexd.sinks.pg_ddl import run_formatted

if TYPE_CHECKING:
    from servomexd.sinks.postgres_config import PostgresConfig

RAW_KEY = "received_at"
"""The raw table's partition key."""

_CREATE_TYPES = {
    "value": "double precision",
    "latency_s": "double precision",
    "monotonic_ns": "bigint",
    "ok": "boolean",
    "fault": "boolean",
    "maintenance": "boolean",
    "calibrating": "boolean",
    "warming_up": "boolean",
    "received_at": "timestamptz",
    "requested_at": "timestamptz",
}


async def relation_exists(conn: Any, schema: str, name: str) -> bool:
    """Whether a table or index of that name exists in the schema."""
    return bool(await conn.fetchval(
        "SELECT 1 FROM pg_class r JOIN pg_namespace n ON n.oid = r.relnamespace "
        "WHERE n.nspname = $1 AND r.relname = $2",
        schema, name,
    ))  # fmt: skip


async def create_missing(
    conn: Any,
    config: PostgresConfig,
    specs: Sequence[rollups.RollupSpec],
    *,
    partitioned: bool,
) -> None:
    """Schema, raw table and its index, checkpoint table, writers registry (with a site),
    rollup tables and the DEFAULT partition: whichever of them is missing."""
    c = config
    if not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", c.schema):
        await run_formatted(conn, "CREATE SCHEMA IF NOT EXISTS %I", c.schema)
    if not await relation_exists(conn, c.schema, c.table):
        columns = [f'"{name}" {_CREATE_TYPES.get(name, "text")}' for name in ROW_COLUMNS]
        if c.site is not None:
            columns.insert(0, '"site" text')
        tail = f" PARTITION BY RANGE ({RAW_KEY})" if partitioned else ""
        await run_formatted(
            conn, f"CREATE TABLE IF NOT EXISTS %I.%I ({', '.join(columns)}){tail}",
            c.schema, c.table,
        )  # fmt: skip
    index = f"{c.table[:40]}_device_time_idx"
    if not await relation_exists(conn, c.schema, index):
        await run_formatted(
            conn,
            "CREATE INDEX IF NOT EXISTS %I ON %I.%I (device, channel, received_at)",
            index, c.schema, c.table,
        )  # fmt: skip
    if not await relation_exists(conn, c.schema, CHECKPOINT_TABLE):
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{c.schema}"."{CHECKPOINT_TABLE}" ('
            "stream text PRIMARY KEY, seq bigint NOT NULL, "
            "updated_at timestamptz NOT NULL DEFAULT now())"
        )
    if c.site is not None and not await relation_exists(conn, c.schema, writers.WRITERS_TABLE):
        await conn.execute(writers.create_sql(c.schema))
    for spec in specs:
        if not await relation_exists(conn, c.schema, spec.table(c.table)):
            await rollups.create_rollup_table(
                conn, c.schema, spec.table(c.table), partitioned=partitioned
            )
    if await parts.is_partitioned(conn, c.schema, c.table) and not await relation_exists(
        conn, c.schema, parts.default_name(c.table)
    ):
        await parts.ensure_default(conn, c.schema, c.table)
