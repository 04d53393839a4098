"""DDL that several daemons may run at once against one database, safely.

Two daemons racing ``CREATE TABLE IF NOT EXISTS`` can still fail on a catalog unique
index (``pg_type_typname_nsp_index``), and ``CREATE TABLE ... PARTITION OF`` waits for
an ACCESS EXCLUSIVE lock behind every in-flight COPY. So every servomexd DDL step runs
in one transaction that first takes a database-wide advisory lock (one daemon at a
time), with a short ``lock_timeout`` so a writer is never stalled for long, and is
retried with jitter when the lock cannot be had in time.

Identifiers cannot be bind parameters, so DDL text is built by the server itself with
``format()`` (``%I`` quotes identifiers, ``%L`` literals): values stay parameters all
the way, and the identifiers were validated by ``PostgresConfig`` as well.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

DDL_LOCK = "servomexd:ddl"
"""Advisory lock name (hashed with ``hashtextextended``) serialising servomexd DDL."""
LOCK_TIMEOUT = "2s"
"""How long a DDL statement may queue for a table lock before it gives up and retries:
a waiting ACCESS EXCLUSIVE request blocks the writers queued behind it, so keep it short."""
ADVISORY_WAIT = "20s"
_RETRY_STATES = frozenset({"55P03", "40P01", "40001", "23505", "42P07"})
"""lock_not_available, deadlock, serialization failure, and the duplicate-object errors
a DDL race can still raise when a non-servomexd session created the object meanwhile."""


def quote_ident(name: str) -> str:
    """Double-quote an identifier (already validated as ``[A-Za-z_][A-Za-z0-9_]*``)."""
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}"


async def run_formatted(conn: Any, template: str, *args: Any) -> str:
    """Have the server ``format(template, *args)`` and execute the result; returns it."""
    placeholders = ", ".join(f"${i}::text" for i in range(2, len(args) + 2))
    sql: str = await conn.fetchval(
        f"SELECT format($1::text{', ' if args else ''}{placeholders})",
        template,
        *(None if a is None else str(a) for a in args),
    )
    await conn.execute(sql)
    return sql


async def locked_ddl(
    conn: Any,
    work: Callable[[Any], Awaitable[T]],
    *,
    attempts: int = 6,
    wait: bool = True,
) -> T | None:
    """Run ``work(conn)`` in a transaction holding the servomexd DDL advisory lock.

    ``wait=False`` skips the work (returns None) when another daemon holds the lock:
    for jobs that only one daemon need do (retention). Lock timeouts, deadlocks and
    DDL races are retried with jitter; the last failure propagates.
    """
    for attempt in range(attempts):
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL TimeZone = 'UTC'")
                if wait:
                    # Queueing for the advisory lock blocks no writer: wait longer for it
                    # (another daemon may be creating a whole layout) than for table locks.
                    await conn.execute(f"SET LOCAL lock_timeout = '{ADVISORY_WAIT}'")
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", DDL_LOCK
                    )
                elif not await conn.fetchval(
                    "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))", DDL_LOCK
                ):
                    return None
                await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                return await work(conn)
        except Exception as exc:
            state = getattr(exc, "sqlstate", None)
            if state not in _RETRY_STATES or attempt == attempts - 1:
                raise
        await asyncio.sleep(random.uniform(0.1, 0.5) * (attempt + 1))
    return None  # pragma: no cover - the loop returns or raises
