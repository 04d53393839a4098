"""Poison rows: isolated by probes, quarantined in the spool, the rest delivered in order,
exactly once; systemic errors never quarantine anything (deliverer step 7)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry
from rig import FlakyDestination, Rig, rec, stored, until
from structlog.testing import capture_logs

from servomexd.backoff import Backoff
from servomexd.config import PostgresSettings, SinkSettings
from servomexd.delivery import Writer
from servomexd.destination import Destination
from servomexd.errors import ServomexSinkDataError
from servomexd.metrics import Metrics
from servomexd.rows import Record
from servomexd.spool import Spool, decode_records

POISON = {17.0, 18.0, 555.0}


def valued(v: float, mono: int = 0) -> Record:
    """The rig's record with ``value`` = v (and ``monotonic_ns`` = mono)."""
    base = rec(mono)
    return (*base[:4], v, *base[5:])


def quarantined(spool_dir: Path) -> list[tuple[int, str, Record]]:
    conn = sqlite3.connect(spool_dir / "spool.sqlite")
    try:
        rows = conn.execute("SELECT seq, error, payload FROM quarantine ORDER BY id").fetchall()
    finally:
        conn.close()
    return [(seq, error, decode_records(payload)[0]) for seq, error, payload in rows]


def guarded_sqlite(db: Path) -> None:
    """The rig's table, refusing value >= 1000 by CHECK and 17/18 by a trigger."""
    conn = sqlite3.connect(db)
    conn.executescript(
        """
        CREATE TABLE samples (device TEXT, channel TEXT, kind TEXT, name TEXT,
            value REAL CHECK (value < 500), unit TEXT, ok TEXT, fault TEXT,
            maintenance TEXT, calibrating TEXT, warming_up TEXT, protocol TEXT,
            monotonic_ns INTEGER, received_at TEXT, requested_at TEXT, latency_s REAL,
            error TEXT);
        CREATE TRIGGER no_17_18 BEFORE INSERT ON samples
            WHEN NEW.value IN (17, 18) BEGIN SELECT RAISE(ABORT, 'value 17/18 refused'); END;
        """
    )
    conn.close()


async def test_sqlite_poison_rows_quarantined_rest_in_order_once(tmp_path: Path) -> None:
    async with Rig(tmp_path) as rig:
        guarded_sqlite(rig.db)
        values = [float(i) for i in range(60)] + [555.0] + [float(i) for i in range(60, 90)]
        for start in range(0, len(values), 10):
            rig.add([valued(v) for v in values[start:start + 10]])
            await asyncio.sleep(0.02)
        await until(
            lambda: rig.idle and rig.metric("servomexd_quarantined_samples_total") == 3, within=20
        )
        assert rig.metric("servomexd_quarantine_pending_samples") == 3
        assert rig.writer.health.up and rig.writer.health.fault is None
    good = [v for v in values if v not in POISON]
    assert stored(rig.db) == good  # every other row, once, in order
    kept = quarantined(tmp_path / "spool")
    assert sorted(r[2][4] for r in kept) == sorted(POISON)
    errors = {r[2][4]: r[1] for r in kept}
    assert "CHECK constraint failed" in errors[555.0]
    assert "value 17/18 refused" in errors[17.0]


async def test_a_refusal_of_every_row_is_a_fault_not_poison(tmp_path: Path) -> None:
    """A trigger refusing everything from the start: nothing quarantined, not ready."""
    async with Rig(tmp_path) as rig:
        conn = sqlite3.connect(rig.db)
        conn.executescript(
            "CREATE TABLE samples (device TEXT, value REAL CHECK (value < 0));"
        )
        conn.close()
        rig.add([rec(i + 1) for i in range(10)])
        await until(lambda: rig.writer.health.fault is not None, within=10)
        assert rig.writer.health.fault.reason == "rejects_every_row"
        assert rig.writer.snapshot().sink_fault is not None
        assert rig.metric("servomexd_sink_fault", sink="sqlite", reason="rejects_every_row") == 1
        assert quarantined(tmp_path / "spool") == []
        assert rig.spool.stats.samples == 10  # still spooled, retried slowly
        conn = sqlite3.connect(rig.db)  # the operator fixes the table: delivery resumes
        conn.executescript("DROP TABLE samples;")
        conn.close()
        await until(lambda: rig.idle, within=10)
        assert rig.writer.health.fault is None
        assert rig.metric("servomexd_sink_fault", sink="sqlite", reason="rejects_every_row") == 0
    assert stored(rig.db) == [float(i + 1) for i in range(10)]


async def test_systemic_error_never_quarantines(tmp_path: Path) -> None:
    """The table vanishes right after good writes: an operator fault (schema), not poison;
    the reopen recreates it and every row arrives, none quarantined."""
    async with Rig(tmp_path) as rig:
        rig.add([rec(i) for i in range(10)])
        await until(lambda: rig.idle)
        conn = sqlite3.connect(rig.db)
        conn.executescript("DROP TABLE samples;")
        conn.close()
        rig.add([rec(i) for i in range(10, 20)])
        await until(lambda: rig.idle and rig.writer.health.up, within=10)
        assert rig.metric("servomexd_sink_errors_total", sink="sqlite") >= 1
        assert rig.metric("servomexd_quarantined_samples_total") == 0
    assert stored(rig.db) == [float(i) for i in range(10, 20)]
    assert quarantined(tmp_path / "spool") == []


# --- PostgreSQL: a CHECK constraint and a trigger that raises -----------------------------


def pg_writer(tmp_path: Path, dsn: str) -> tuple[Writer, Spool, Metrics]:
    settings = SinkSettings(
        type="postgres", postgres=PostgresSettings(dsn=dsn, table="guarded", create_table=False)
    )
    spool = Spool(tmp_path / "spool")
    metrics = Metrics(CollectorRegistry())
    writer = Writer(
        spool, Destination(settings), metrics, batch_size=25, flush_interval=0.05,
        max_write_rows=200, backoff=Backoff(initial=0.02, cap=0.1, floor=0.0),
    )  # fmt: skip
    return writer, spool, metrics


async def test_postgres_check_and_trigger_poison(tmp_path: Path, pg_dsn: str) -> None:
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(
            "CREATE TABLE guarded (device text, channel text, value double precision "
            "CHECK (value < 500), monotonic_ns bigint, received_at timestamptz)"
        )
        await admin.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.value IN (17, 18) THEN RAISE EXCEPTION 'value % refused', NEW.value; "
            "END IF; RETURN NEW; END $$"
        )
        await admin.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON guarded FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
        writer, spool, metrics = pg_writer(tmp_path, pg_dsn)
        await spool.open()
        # Everything is in the spool before the sink is tried: large chunks, so the
        # isolation splits multi-batch writes and multi-row batches.
        values = [float(i) for i in range(300)] + [555.0] + [float(i) for i in range(300, 400)]
        for start in range(0, len(values), 25):
            await spool.append([valued(v, int(v)) for v in values[start:start + 25]])
        task = asyncio.create_task(writer.run())
        await until(lambda: spool.stats.batches == 0, within=30)
        writer.request_stop()
        await asyncio.wait_for(task, 10)
        await writer.aclose()
        rows = await admin.fetch("SELECT value FROM guarded ORDER BY monotonic_ns, value")
        stored_values = [r["value"] for r in rows]
        assert stored_values == [v for v in values if v not in POISON]
        assert await admin.fetchval(
            "SELECT count(*) - count(DISTINCT value) FROM guarded"
        ) == 0
        kept = quarantined(tmp_path / "spool")
        assert sorted(r[2][4] for r in kept) == sorted(POISON)
        assert any("CheckViolationError" in r[1] for r in kept)
        assert any("RaiseError" in r[1] and "refused" in r[1] for r in kept)
        assert metrics.registry.get_sample_value("servomexd_quarantined_samples_total") == 3
        await spool.close()
    finally:
        await admin.close()


async def test_postgres_missing_privilege_never_quarantines(tmp_path: Path, pg_dsn: str) -> None:
    admin = await asyncpg.connect(pg_dsn)
    role = f"q_{tmp_path.name[-12:].lower().replace('-', '_')}"
    try:
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(
            "CREATE TABLE guarded (device text, value double precision CHECK (value < 500))"
        )
        await admin.execute(f"GRANT SELECT ON guarded TO {role}")
        await admin.execute(
            "CREATE TABLE servomexd_checkpoints (stream text PRIMARY KEY, seq bigint NOT NULL, "
            "updated_at timestamptz NOT NULL DEFAULT now())"
        )
        await admin.execute(f"GRANT SELECT, INSERT, UPDATE ON servomexd_checkpoints TO {role}")
        dsn = pg_dsn.replace("postgres@", f"{role}@")
        writer, spool, _ = pg_writer(tmp_path, dsn)
        await spool.open()
        await spool.append([rec(i) for i in range(5)] + [valued(555.0)])
        task = asyncio.create_task(writer.run())
        await until(lambda: writer.health.fault is not None, within=15)
        fault = writer.health.fault
        assert fault.reason == "authorization"
        assert fault.fix is not None and f"grant INSERT on public.guarded to {role}" in fault.fix
        assert quarantined(tmp_path / "spool") == []
        await admin.execute(f"GRANT INSERT ON guarded TO {role}")  # fixed: no restart
        try:
            await until(lambda: spool.stats.batches == 0, within=15)
        except TimeoutError:
            raise AssertionError(writer.health.last_error) from None
        writer.request_stop()
        await asyncio.wait_for(task, 10)
        await writer.aclose()
        await spool.close()
        assert await admin.fetchval("SELECT count(*) FROM guarded") == 5
        assert [r[2][4] for r in quarantined(tmp_path / "spool")] == [555.0]
    finally:
        await admin.execute("DROP TABLE IF EXISTS guarded, servomexd_checkpoints")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


async def test_quarantine_overflow_is_counted_as_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", quarantine_max_bytes=1)  # nothing fits
    async with Rig(tmp_path, spool=spool) as rig:
        guarded_sqlite(rig.db)
        rig.add([valued(v) for v in (1.0, 555.0, 2.0)])
        await until(lambda: spool.dropped_samples > 0 and rig.idle, within=10)
        assert spool.dropped_samples == 1  # the daemon's on_drop counts it in the metric
        assert rig.metric("servomexd_quarantined_samples_total") == 0
    assert stored(rig.db) == [1.0, 2.0]
    assert quarantined(tmp_path / "spool") == []


async def test_a_wholly_poisoned_first_batch_is_quarantined_when_the_next_passes(
    tmp_path: Path,
) -> None:
    """Right after a start no write has succeeded yet: the batch first in line refuses
    every row, but the next one passes a probe, so the sink does take rows: poison."""
    guarded_sqlite(tmp_path / "out.sqlite")
    spool = Spool(tmp_path / "spool")
    await spool.open()
    await spool.append([valued(555.0 + i) for i in range(5)])  # every row refused
    await spool.append([valued(float(i)) for i in range(5)])
    await spool.close()
    async with Rig(tmp_path, spool=spool) as rig:
        await until(lambda: rig.idle and rig.metric("servomexd_quarantined_samples_total") == 5)
        assert rig.writer.health.fault is None
    assert stored(rig.db) == [float(i) for i in range(5)]
    assert sorted(r[2][4] for r in quarantined(tmp_path / "spool")) == [
        555.0 + i for i in range(5)
    ]


class OnceRefusedDestination(FlakyDestination):
    """The first write is refused for its data; then the cause is gone (a trigger was
    dropped while the daemon searched): every probe and the retry pass."""

    async def write_records(self, records: Sequence[Record], *, checkpoint: Any) -> None:
        if not self.writes:
            self.writes.append(len(records))
            raise ServomexSinkDataError("refused while the trigger was still there")
        await super().write_records(records, checkpoint=checkpoint)


async def test_a_refusal_that_no_probe_reproduces_is_retried_not_quarantined(
    tmp_path: Path,
) -> None:
    with capture_logs() as logs:
        async with Rig(tmp_path, make_dest=OnceRefusedDestination) as rig:
            rig.add([rec(i) for i in range(10)])
            await until(lambda: rig.idle and len(stored(rig.db)) == 10)
            assert rig.writer.health.fault is None and rig.writer.health.up
    assert stored(rig.db) == [float(i) for i in range(10)]
    assert quarantined(tmp_path / "spool") == []
    events = [e["event"] for e in logs]
    assert "sink.refusal_not_isolated" in events and "sink.down" not in events
