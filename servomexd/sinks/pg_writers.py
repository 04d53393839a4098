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
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from servomexd.sinks.pg_ddl import qualified

log = structlog.get_logger("servomexd.sinks")

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


class WriterHeartbeat:
    """One sink's claim on its (site, device) pairs: the devices it has written, renewed
    every ``HEARTBEAT_S`` and at once when a new device appears.

    A registry the role may not use turns the check off for the run (logged once); any
    other failure is the connection's and goes to the caller.
    """

    def __init__(
        self, schema: str, site: str | None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.schema = schema
        self.site = site
        self._clock = clock
        self._next = 0.0
        self._devices: set[str] = set()
        self._registered: set[str] = set()
        self._stream = ""
        self._enabled = site is not None

    def note(self, devices: Iterable[str], stream: str | None) -> None:
        """Remember the devices of a committed batch and the stream that wrote it."""
        if stream:
            self._stream = stream
        if self._enabled:
            self._devices.update(devices)

    def due(self, now: float) -> bool:
        """Whether a heartbeat is owed: its interval passed or a device is unclaimed."""
        return self._enabled and (now >= self._next or not self._devices <= self._registered)

    async def beat(self, conn: Any) -> None:
        """Claim the devices seen so far and warn about every other live writer."""
        assert self.site is not None
        self._next = self._clock() + HEARTBEAT_S
        if not self._devices or not self._stream:
            return
        try:
            others = await register(conn, self.schema, self.site, self._devices, self._stream)
        except Exception as exc:
            if getattr(exc, "sqlstate", None) is None:
                raise  # connection trouble: the caller handles it
            self._enabled = False
            log.warning(
                "sink.writer_registry_unavailable",
                error=f"{type(exc).__name__}: {exc}",
                note="duplicate site+device detection is off for this run",
            )
            return
        self._registered |= self._devices
        for other in others:
            log.warning(
                "sink.duplicate_writer",
                site=other.site,
                device=other.device,
                other_host=other.host,
                other_pid=other.pid,
                seen_s_ago=round(other.age_s, 1),
                note="another daemon writes rows with the same site and device: they cannot "
                "be told apart; give each daemon its own [daemon] site or device names",
            )
