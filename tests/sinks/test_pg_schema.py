"""pg_schema: the destination's columns and their coercions, against a real PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import asyncpg
import pytest

from servomexd.errors import ServomexSinkFault, ServomexSinkSchemaError
from servomexd.rows import ROW_COLUMNS
from servomexd.sinks import PostgresConfig
from servomexd.sinks.pg_fleet import FleetLayout
from servomexd.sinks.pg_schema import _converter, read_columns

pytestmark = pytest.mark.postgres


def test_converter_coerces_to_the_column_type() -> None:
    assert _converter("ok", "bool", "boolean") is None
    text_bool = _converter("ok", "bool", "text")
    assert text_bool is not None and (text_bool(True), text_bool(False)) == ("true", "false")
    naive = _converter("received_at", "datetime", "timestamp without time zone")
    assert naive is not None
    local = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert naive(local) == datetime(2026, 1, 2, 1, 4, 5)
    numeric = _converter("value", "float", "numeric")
    assert numeric is not None and str(numeric(0.1)) == "0.1"


def test_converter_refuses_a_type_that_cannot_hold_the_values() -> None:
    with pytest.raises(ServomexSinkSchemaError, match="'value' has type jsonb"):
        _converter("value", "float", "jsonb")


async def test_created_table_plans_every_row_column(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    config = PostgresConfig(dsn=pg_dsn, create_table=True)
    columns = await read_columns(conn, config, FleetLayout(config), set())
    assert columns.plan.columns == ROW_COLUMNS
    assert columns.site == ()
    assert columns.copy_columns == ROW_COLUMNS
    assert columns.insert_sql.startswith('INSERT INTO "public"."samples" ("device", ')
    assert columns.insert_sql.endswith(f"${len(ROW_COLUMNS)})")


async def test_site_column_is_appended_last(pg_dsn: str, conn: asyncpg.Connection) -> None:
    await conn.execute(
        "CREATE TABLE samples (site text, device text, value double precision, "
        "received_at timestamptz)"
    )
    config = PostgresConfig(dsn=pg_dsn, site="north")
    columns = await read_columns(conn, config, FleetLayout(config), set())
    assert columns.site == ("north",)
    assert columns.copy_columns == (*columns.plan.columns, "site")
    assert "site" not in columns.plan.columns


async def test_site_column_must_be_text(pg_dsn: str, conn: asyncpg.Connection) -> None:
    await conn.execute("CREATE TABLE samples (site integer, device text)")
    config = PostgresConfig(dsn=pg_dsn, site="north")
    with pytest.raises(ServomexSinkSchemaError, match="'site' has type integer"):
        await read_columns(conn, config, FleetLayout(config), set())


async def test_missing_schema_is_an_operator_fault(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    config = PostgresConfig(dsn=pg_dsn, schema="nowhere")
    with pytest.raises(ServomexSinkFault) as raised:
        await read_columns(conn, config, FleetLayout(config), set())
    assert raised.value.fault == "missing_schema"


async def test_missing_table_is_a_schema_error(pg_dsn: str, conn: asyncpg.Connection) -> None:
    config = PostgresConfig(dsn=pg_dsn)
    with pytest.raises(ServomexSinkSchemaError, match="samples does not exist"):
        await read_columns(conn, config, FleetLayout(config), set())
    assert await conn.fetchval("SELECT 1") == 1  # nothing left half-done on the connection
