"""Who writes which (site, device): a small registry that spots two daemons doing the same.

Two daemons configured with the same site and device name write without clashing (each
spool has its own checkpoint stream) but their rows cannot be told apart. Each sink
records, per (site, device) it writes, its checkpoint stream, host and pid with a
heartbeat; finding a *different* stream there with a recent heartbeat means another
daemon writes the same (site, device), which is logged as a warning. A daemon restarted
with its spool keeps its stream, so a restart is not mistaken for a second writer.

The registry is advisory: a role without rights on it only loses the warning.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from servomexd.sinks.pg_ddl import qualified

WRITERS_TABLE = "servomexd_writers"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 3 * HEARTBEAT_S
"""A registry row older than this belongs to a daemon that stopped (or moved on)."""


@dataclass(frozen=True)
class OtherWriter:
    site: str
    device: str
    host: str
    pid: int
    age_s: float


def create_sql(schema: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified(schema, WRITERS_TABLE)} ("
        "site text NOT NULL, device text NOT NULL, stream text NOT NULL, host text NOT NULL, "
        "pid integer NOT NULL, seen_at timestamptz NOT NULL DEFAULT now(), "
        "PRIMARY KEY (site, device))"
    )


async def register(
    conn: Any, schema: str, site: str, devices: Iterable[str], stream: str
) -> list[OtherWriter]:
    """Claim (site, device) for ``stream``; returns the other live writers found there.

    One statement whatever the number of devices (it runs on the write path once a
    minute): ``prev`` reads the rows as they were before ``up`` claims them, since every
    part of a statement sees the same snapshot.
    """
    table = qualified(schema, WRITERS_TABLE)
    rows = await conn.fetch(
        f"WITH prev AS (SELECT device, stream, host, pid, "  # noqa: S608 - quoted identifier
        f"extract(epoch FROM now() - seen_at) AS age FROM {table} "
        "WHERE site = $1 AND device = ANY($2::text[])), "
        f"up AS (INSERT INTO {table} (site, device, stream, host, pid) "
        "SELECT $1, d, $3, $4, $5 FROM unnest($2::text[]) AS d ORDER BY d "
        "ON CONFLICT (site, device) DO UPDATE SET stream = EXCLUDED.stream, "
        "host = EXCLUDED.host, pid = EXCLUDED.pid, seen_at = now()) "
        "SELECT device, host, pid, age FROM prev WHERE stream <> $3 AND age < $6 "
        "ORDER BY device",
        site, sorted(devices), stream, socket.gethostname(), os.getpid(), STALE_AFTER_S,
    )  # fmt: skip
    return [
        OtherWriter(site, row["device"], row["host"], int(row["pid"]), float(row["age"]))
        for row in rows
    ]
