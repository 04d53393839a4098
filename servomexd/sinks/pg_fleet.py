"""The fleet side of the Postgres sink: table layout, partitions, retention, rollups, site.

Owned by one ``PostgresSink`` and driven by it: ``create_layout`` when it opens (with
``create_table``), ``write_rollups`` inside each batch's transaction, and ``after_write``
after each commit, which runs the periodic maintenance when it is due (keep partitions
ahead, drop expired ones, count DEFAULT rows, heartbeat the writers registry). Nothing
here runs on its own timer: a sink that writes nothing needs no new partitions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import TYPE_CHECKING, Any, cast

import structlog

from servomexd.errors import ServomexSinkSchemaError
from servomexd.rows import ROW_COLUMNS, Record
from servomexd.sinks import pg_partitions as parts
from servomexd.sinks import pg_rollups as rollups
from servomexd.sinks import pg_writers as writers
from servomexd.sinks.base import CHECKPOINT_TABLE
from servomexd.sinks.pg_create import RAW_KEY, create_missing, relation_exists
from servomexd.sinks.pg_ddl import locked_ddl
from servomexd.sinks.pg_stats import table_stats

if TYPE_CHECKING:
    from servomexd.sinks.postgres_config import PostgresConfig

log = structlog.get_logger("servomexd.sinks")

ROLLUP_UNIT: parts.Granularity = "month"
_RETRY_AFTER_FAILURE_S = 60.0
_NO_PRIVILEGE = "42501"
_RECEIVED = ROW_COLUMNS.index("received_at")
_devices_of = itemgetter(ROW_COLUMNS.index("device"))


_DEFAULT_REPORT_EVERY_S = 60.0
"""At most one ``sink.rows_to_default_partition`` warning per table this often."""


class _DefaultRowsReport:
    """Rows sent to the DEFAULT partition, warned about at most once a minute per table:
    a backlog from months ago drains in hundreds of writes, and one warning each would
    bury the journal. The first is reported at once; the rest are summed into the next
    report (on a later write, or at the next maintenance run at the latest)."""

    def __init__(self, table: str, clock: Any) -> None:
        self.table = table
        self._clock = clock
        self._due = 0.0
        self._reset()

    def _reset(self) -> None:
        self.rows = 0
        self.writes = 0
        self.oldest: datetime | None = None
        self.newest: datetime | None = None

    def add(self, moments: list[datetime]) -> None:
        self.rows += len(moments)
        self.writes += 1
        low, high = min(moments), max(moments)
        self.oldest = low if self.oldest is None else min(self.oldest, low)
        self.newest = high if self.newest is None else max(self.newest, high)
        if self._clock() >= self._due:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        log.warning(
            "sink.rows_to_default_partition",
            table=self.table,
            rows=self.rows,
            writes=self.writes,
            oldest=self.oldest.isoformat() if self.oldest else None,
            newest=self.newest.isoformat() if self.newest else None,
            note="no partition covers these rows (late batch, dropped by retention, or a "
            "clock jump): they are kept in the DEFAULT partition; reported at most every "
            f"{_DEFAULT_REPORT_EVERY_S:g} s",
        )
        self._reset()
        self._due = self._clock() + _DEFAULT_REPORT_EVERY_S


class FleetLayout:
    """Layout and maintenance of one raw table and its rollup tables."""

    def __init__(self, config: PostgresConfig, *, clock: Any = time.monotonic) -> None:
        self.config = config
        self.site = config.site
        self.unit: parts.Granularity | None = (
            None if config.partition == "none" else cast(parts.Granularity, config.partition)
        )
        self.retention = None if config.retention is None else parts.parse_duration(
            config.retention
        )
        self.rollup_retention = None if config.rollup_retention is None else (
            parts.parse_duration(config.rollup_retention)
        )
        self.specs = [rollups.parse_rollup(text) for text in config.rollups]
        self.rollup_statements = rollups.plan_statements(config.schema, config.table, self.specs)
        self.checkpointed_statements = rollups.plan_statements(
            config.schema, config.table, self.specs, CHECKPOINT_TABLE
        )
        self.stats = table_stats(f"{config.schema}.{config.table}")
        self._clock = clock
        self._partitioned = False
        self._covered: tuple[datetime, datetime] | None = None
        self._next_maintenance = 0.0
        self._writers = writers.WriterHeartbeat(config.schema, self.site, clock=clock)
        self._to_default = _DefaultRowsReport(f"{config.schema}.{config.table}", clock)

    @property
    def has_rollups(self) -> bool:
        return bool(self.specs)

    # --- open -----------------------------------------------------------------------------

    async def create_layout(self, conn: Any) -> None:
        """Create whatever is missing, one daemon at a time (four may start together)."""
        partitioned = self.unit is not None
        await locked_ddl(
            conn, lambda cx: create_missing(cx, self.config, self.specs, partitioned=partitioned)
        )

    async def check_layout(self, conn: Any) -> None:
        """At open: the rollup tables must exist; then the first maintenance run."""
        c = self.config
        for spec in self.specs:
            if not await relation_exists(conn, c.schema, spec.table(c.table)):
                raise ServomexSinkSchemaError(
                    f"rollup table {c.schema}.{spec.table(c.table)} does not exist; create "
                    "it (docs/operations.md) or set create_table",
                    context={"target": c.target()},
                )
        self._partitioned = await parts.is_partitioned(conn, c.schema, c.table)
        log.info(
            "sink.layout",
            table=f"{c.schema}.{c.table}",
            partitioned=self._partitioned,
            partition_upkeep=self.unit if self._partitioned else None,
            rollups=",".join(spec.label for spec in self.specs) or None,
            site=self.site,
        )
        await self.maintain(conn, raise_errors=False)

    # --- inside the batch's transaction ---------------------------------------------------

    async def write_rollups(
        self, conn: Any, records: Sequence[Record], timeout: float  # noqa: ASYNC109
    ) -> None:
        site = self.site or ""
        for statement in self.rollup_statements:
            groups = rollups.aggregate(records, statement.seconds)
            if groups:
                args = rollups.upsert_args(site, groups)
                await conn.execute(statement.sql, *args, timeout=timeout)

    async def write_rollups_and_checkpoint(
        self,
        conn: Any,
        records: Sequence[Record],
        checkpoint: tuple[str, int, int],
        timeout: float,  # noqa: ASYNC109 - per statement
    ) -> int | None:
        """Advance the checkpoint and merge the rollups in one round trip.

        Returns the stored seq, or None when the checkpoint refused the write (then no
        rollup was touched either; the caller raises the conflict and rolls back).
        """
        site = self.site or ""
        first, *rest = self.checkpointed_statements
        args = rollups.upsert_args(site, rollups.aggregate(records, first.seconds))
        stored: int | None = await conn.fetchval(first.sql, *args, *checkpoint, timeout=timeout)
        if stored is None:
            return None
        for statement in rest:
            groups = rollups.aggregate(records, statement.seconds)
            if groups:
                more = rollups.upsert_args(site, groups)
                await conn.execute(statement.sql, *more, timeout=timeout)
        return stored

    # --- after the commit -----------------------------------------------------------------

    def note_write(self, records: Sequence[Record], stream: str | None) -> None:
        """Cheap bookkeeping after a committed batch: devices seen, rows sent to DEFAULT."""
        self._writers.note(map(_devices_of, records), stream)
        covered = self._covered
        if covered is None or not records:
            return
        first, last = records[0][_RECEIVED], records[-1][_RECEIVED]
        low, high = covered
        try:
            if low <= first < high and low <= last < high:
                return  # batches are in arrival order: the usual case costs two comparisons
            outside = [r[_RECEIVED] for r in records if not low <= r[_RECEIVED] < high]
        except TypeError:  # a naive or missing timestamp from a library caller: not ours
            return
        if outside:
            self.stats.rows_to_default += len(outside)
            self._to_default.add(outside)

    def report_pending(self) -> None:
        """Log the rows sent to DEFAULT that no report has mentioned yet (at close)."""
        self._to_default.flush()

    def due(self) -> bool:
        now = self._clock()
        return now >= self._next_maintenance or self._writers.due(now)

    async def after_write(self, conn: Any) -> None:
        now = self._clock()
        if self._writers.due(now):
            await self._writers.beat(conn)
        if now >= self._next_maintenance:
            await self.maintain(conn, raise_errors=False)

    # --- maintenance ----------------------------------------------------------------------

    async def maintain(self, conn: Any, *, raise_errors: bool = True) -> None:
        """Keep partitions ahead, drop expired ones, count DEFAULT rows."""
        self._next_maintenance = self._clock() + self.config.maintenance_interval_s
        self._to_default.flush()
        try:
            await self._maintain(conn)
        except Exception as exc:
            state = getattr(exc, "sqlstate", None)
            if raise_errors or state is None:
                raise
            # Without the rights (a site's INSERT-only role) retrying soon cannot help.
            retry = (
                self.config.maintenance_interval_s if state == _NO_PRIVILEGE
                else _RETRY_AFTER_FAILURE_S
            )
            self._next_maintenance = self._clock() + retry
            self.stats.maintenance_failures += 1
            log.warning(
                "sink.partition_maintenance_failed",
                table=f"{self.config.schema}.{self.config.table}",
                error=f"{type(exc).__name__}: {exc}",
                retry_in_s=retry,
                hint=(
                    "this role may not create or drop partitions: set partition = \"none\" "
                    "and no retention on site daemons; the owner's daemon keeps partitions "
                    "(docs/operations.md)" if state == _NO_PRIVILEGE else None
                ),
            )

    async def _maintain(self, conn: Any) -> None:
        c = self.config
        now = datetime.now(UTC)
        targets = self._partitioned_targets()
        if not targets:
            return
        created: list[str] | None = await locked_ddl(conn, lambda cx: self._ahead(cx, now))
        for name in created or ():
            log.info("sink.partition_created", partition=f"{c.schema}.{name}")
        self.stats.partitions_created += len(created or ())
        if self.retention is not None or self.rollup_retention is not None:
            dropped = await locked_ddl(conn, lambda cx: self._expire(cx, now), wait=False)
            for table, item in dropped or ():
                self.stats.partitions_dropped += 1
                self.stats.rows_dropped_estimate += item.rows_estimate
                log.info(
                    "sink.partition_dropped",
                    partition=f"{c.schema}.{item.name}",
                    table=f"{c.schema}.{table}",
                    rows_estimate=item.rows_estimate,
                    before=item.upper.isoformat(),
                    reason="retention",
                )
        if self._partitioned:
            async with conn.transaction():
                await conn.execute("SET LOCAL TimeZone = 'UTC'")
                self._covered = parts.covered_range(
                    await parts.list_partitions(conn, c.schema, c.table)
                )
                default = await parts.default_rows(conn, c.schema, c.table)
            self.stats.default_rows = float("nan") if default is None else float(default)
            if default:
                log.warning(
                    "sink.default_partition_rows",
                    table=f"{c.schema}.{c.table}",
                    rows=default,
                    note="rows outside every partition's range sit in the DEFAULT partition; "
                    "they are kept, but retention never drops them (docs/operations.md)",
                )

    def _partitioned_targets(self) -> list[tuple[str, str, parts.Granularity]]:
        """(table, partition key, unit) of every table this sink keeps partitions for."""
        c = self.config
        out: list[tuple[str, str, parts.Granularity]] = []
        if self._partitioned and self.unit is not None:
            out.append((c.table, RAW_KEY, self.unit))
        if self.unit is not None:
            out += [(spec.table(c.table), rollups.ROLLUP_KEY, ROLLUP_UNIT) for spec in self.specs]
        return out

    async def _ahead(self, conn: Any, now: datetime) -> list[str]:
        created: list[str] = []
        for table, key, unit in self._partitioned_targets():
            if not await parts.is_partitioned(conn, self.config.schema, table):
                continue
            created += await parts.ensure_ahead(conn, self.config.schema, table, key, unit, now)
        return created

    async def _expire(self, conn: Any, now: datetime) -> list[tuple[str, parts.Dropped]]:
        c = self.config
        out: list[tuple[str, parts.Dropped]] = []
        jobs: list[tuple[str, Any]] = []
        if self.retention is not None and self._partitioned:
            jobs.append((c.table, self.retention))
        if self.rollup_retention is not None and self.unit is not None:
            jobs += [(spec.table(c.table), self.rollup_retention) for spec in self.specs]
        for table, keep in jobs:
            if not await parts.is_partitioned(conn, c.schema, table):
                continue
            for item in await parts.drop_expired(conn, c.schema, table, now - keep):
                out.append((table, item))
        return out
