"""The Postgres sink's view of its table: which columns it writes and how each value goes in.

Read once when the sink opens (``read_columns``), from ``information_schema.columns``:
each servomexd value is coerced, once per column, to the type the destination column
really has (``_converter``); a ``site`` column takes the configured site. A table
with no visible column is explained (``why_no_columns``): missing, in a missing
schema, or not granted to this user.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from servomexd.errors import ServomexSinkError, ServomexSinkFault, ServomexSinkSchemaError
from servomexd.sinks.base import ColumnPlan, Converter, build_plan
from servomexd.sinks.pg_fleet import FleetLayout
from servomexd.sinks.postgres_config import PostgresConfig
from servomexd.sinks.postgres_errors import PgTarget

_TEXT_TYPES = frozenset({"text", "character varying", "character", "name", "citext", "bpchar"})
_FLOAT_TYPES = frozenset({"double precision", "real"})
_INT_TYPES = frozenset({"bigint", "integer", "smallint"})


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


@dataclass(frozen=True, slots=True)
class PgColumns:
    """What a write sends: the plan, the site appended to each row, the statements' columns."""

    plan: ColumnPlan
    site: tuple[str, ...]  # appended to each row when the table has "site"
    copy_columns: tuple[str, ...]
    insert_sql: str


async def read_columns(
    conn: Any, config: PostgresConfig, fleet: FleetLayout, warned: set[str]
) -> PgColumns:
    """Create the layout (with ``create_table``), then plan the writes for the table as it is."""
    if config.create_table:
        await fleet.create_layout(conn)
    rows = await conn.fetch(
        "SELECT column_name, data_type, udt_name FROM information_schema.columns "
        "WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
        config.schema,
        config.table,
    )
    if not rows:
        raise await why_no_columns(conn, config)
    target = [
        (row["column_name"], row["udt_name"] if row["data_type"] == "USER-DEFINED"
         else row["data_type"])
        for row in rows
    ]
    site_type = dict(target).get("site")
    site: tuple[str, ...] = ()
    if config.site is not None and site_type is not None:
        if site_type not in _TEXT_TYPES:
            raise ServomexSinkSchemaError(
                f"column 'site' has type {site_type}; it must be text to hold the site",
                context={"column": "site", "type": site_type},
            )
        target = [item for item in target if item[0] != "site"]
        site = (config.site,)
    plan = build_plan(
        f"postgres:{config.schema}.{config.table}", target, _converter, warned=warned
    )
    copy_columns = plan.columns + (("site",) if site else ())
    names = ", ".join(f'"{name}"' for name in copy_columns)
    values = ", ".join(f"${index}" for index in range(1, len(copy_columns) + 1))
    qualified = f'"{config.schema}"."{config.table}"'
    insert_sql = f"INSERT INTO {qualified} ({names}) VALUES ({values})"  # noqa: S608 - identifiers validated
    await fleet.check_layout(conn)
    return PgColumns(plan, site, copy_columns, insert_sql)


async def why_no_columns(conn: Any, config: PostgresConfig) -> ServomexSinkError:
    """No visible column: the table is missing, or exists but this user may not use
    it (information_schema only shows what the user holds a privilege on)."""
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
