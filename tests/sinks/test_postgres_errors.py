"""servomexd/sinks/postgres_errors.py: every asyncpg failure typed; real server faults
(wrong password, missing database, schema, privilege) carry the operator's fix."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from pg import PgCluster, PgUnavailable, with_database
from sinkdata import steady_samples
from structlog.testing import capture_logs

from servomexd.errors import (
    SINK_FAULT_REASONS,
    ServomexSinkDataError,
    ServomexSinkFault,
    ServomexSinkWriteError,
    SinkFailure,
)
from servomexd.rows import sample_to_record
from servomexd.sinks.postgres import PostgresSink
from servomexd.sinks.postgres_config import PostgresConfig
from servomexd.sinks.postgres_errors import _BY_CLASS, _BY_CODE, PgTarget, classify

WHERE = PgTarget("servomexd", "plant", "plant", "samples")


def by_state(state: str) -> asyncpg.PostgresError:
    cls = asyncpg.PostgresError.get_message_class_for_sqlstate(state)
    return cls(f"sqlstate {state}")


@pytest.mark.parametrize(
    ("state", "failure", "fault"),
    [
        ("28P01", SinkFailure.OPERATOR, "authentication"),
        ("28000", SinkFailure.OPERATOR, "authentication"),
        ("3D000", SinkFailure.OPERATOR, "missing_database"),
        ("3F000", SinkFailure.OPERATOR, "missing_schema"),
        ("42501", SinkFailure.OPERATOR, "authorization"),
        ("42P01", SinkFailure.OPERATOR, "schema_mismatch"),
        ("42703", SinkFailure.OPERATOR, "schema_mismatch"),
        ("25006", SinkFailure.OPERATOR, "read_only_database"),
        ("23514", SinkFailure.DATA, None),  # CHECK
        ("23502", SinkFailure.DATA, None),  # NOT NULL
        ("22003", SinkFailure.DATA, None),  # numeric value out of range
        ("P0001", SinkFailure.DATA, None),  # RAISE EXCEPTION in a trigger
        ("08006", SinkFailure.TRANSIENT, None),
        ("57P01", SinkFailure.TRANSIENT, None),  # admin shutdown
        ("57P03", SinkFailure.TRANSIENT, None),  # cannot connect now (starting up)
        ("53100", SinkFailure.TRANSIENT, None),  # disk full
        ("53300", SinkFailure.TRANSIENT, None),  # too many connections
        ("40P01", SinkFailure.TRANSIENT, None),  # deadlock
        ("55P03", SinkFailure.TRANSIENT, None),  # lock not available
    ],
)
def test_sqlstates(state: str, failure: SinkFailure, fault: str | None) -> None:
    decided = classify(by_state(state), asyncpg, WHERE)
    assert (decided.failure, decided.fault) == (failure, fault)
    assert (decided.fix is not None) == (fault is not None)


def test_every_fault_label_is_bounded_and_every_class_decided() -> None:
    labels = {fault for _, fault in (*_BY_CLASS.values(), *_BY_CODE.values()) if fault}
    assert labels <= SINK_FAULT_REASONS
    assert all(len(code) == 2 for code in _BY_CLASS)


def test_fix_sentences_name_what_to_do() -> None:
    assert classify(by_state("42501"), asyncpg, WHERE).fix is not None
    assert "grant INSERT on plant.samples to servomexd" in str(
        classify(by_state("42501"), asyncpg, WHERE).fix
    )
    assert "createdb -O servomexd plant" in str(classify(by_state("3D000"), asyncpg, WHERE).fix)
    assert "pg_hba.conf" in str(classify(by_state("28P01"), asyncpg, WHERE).fix)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"
        ),
        asyncpg.exceptions.ProtocolError("unexpected message"),
        asyncpg.exceptions.OutdatedSchemaCacheError("cached statement plan is invalid"),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        asyncpg.InterfaceError("connection is closed"),
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError(),
    ],
)
def test_client_side_connection_state_is_transient(exc: BaseException) -> None:
    assert classify(exc, asyncpg, WHERE).failure is SinkFailure.TRANSIENT


def test_client_configuration_needs_an_operator() -> None:
    decided = classify(asyncpg.ClientConfigurationError("bad sslmode"), asyncpg, WHERE)
    assert (decided.failure, decided.fault) == (SinkFailure.OPERATOR, "other")


def test_dsn_names_user_and_database() -> None:
    config = PostgresConfig(dsn="postgresql://alice@db.example:5432/plantdb", schema="s", table="t")
    target = PgTarget.of(config)
    assert (target.user, target.database) == ("alice", "plantdb")


# --- against a real server ------------------------------------------------------------------


async def test_missing_database(pg_dsn: str) -> None:
    dsn = with_database(pg_dsn, "servomexd_no_such_db")
    with pytest.raises(ServomexSinkFault) as caught:
        await PostgresSink(PostgresConfig(dsn=dsn, create_table=True)).open()
    assert caught.value.fault == "missing_database"
    assert caught.value.retryable is False
    assert "createdb" in str(caught.value.fix) and "servomexd_no_such_db" in str(caught.value.fix)


async def test_missing_schema_and_missing_privilege(pg_dsn: str) -> None:
    admin = await asyncpg.connect(pg_dsn)
    role = "servomexd_t_" + pg_dsn.rsplit("_", 1)[-1][:12]
    try:
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        dsn = pg_dsn.replace("postgres@", f"{role}@")
        with pytest.raises(ServomexSinkFault) as caught:
            await PostgresSink(PostgresConfig(dsn=dsn, schema="plant", table="samples")).open()
        assert caught.value.fault == "missing_schema"
        await admin.execute("CREATE SCHEMA plant")
        await admin.execute("CREATE TABLE plant.samples (device text, value double precision)")
        with pytest.raises(ServomexSinkFault) as caught:
            await PostgresSink(PostgresConfig(dsn=dsn, schema="plant", table="samples")).open()
        assert caught.value.fault == "authorization"
        assert f"grant INSERT on plant.samples to {role}" in str(caught.value.fix)
    finally:
        await admin.execute("DROP SCHEMA IF EXISTS plant CASCADE")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


async def test_check_violation_is_data_and_probe_commits_nothing(pg_dsn: str) -> None:
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(
            "CREATE TABLE g (device text, value double precision CHECK (value < 50))"
        )
        records = [sample_to_record(s) for s in steady_samples(3)]
        async with PostgresSink(PostgresConfig(dsn=pg_dsn, table="g")) as sink:
            await sink.probe_records(records[:1])  # passes, rolled back
            bad = [(*records[0][:4], 99.0, *records[0][5:])]
            with pytest.raises(ServomexSinkDataError):
                await sink.probe_records(bad)
            with pytest.raises(ServomexSinkDataError):
                await sink.write_records(bad, checkpoint=("s", 1))
            await sink.write_records(records[:1], checkpoint=("s", 1))
        assert await admin.fetchval("SELECT count(*) FROM g") == 1
    finally:
        await admin.close()


async def test_kept_connection_killed_by_the_server_is_replaced(pg_dsn: str) -> None:
    """The server ends the connection the sink keeps between writes: asyncpg hands it
    back to the pool itself; the next write must use a new one, not the detached proxy
    (``InterfaceError: connection has been released back to the pool``), and the retry
    after the failure stays exactly-once."""
    admin = await asyncpg.connect(pg_dsn)
    records = [sample_to_record(s) for s in steady_samples(9)]
    try:
        async with PostgresSink(PostgresConfig(dsn=pg_dsn, create_table=True)) as sink:
            await sink.write_records(records[:3], checkpoint=("s", 1))
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'servomexd'"
            )
            await asyncio.sleep(0.2)  # the termination reaches the client
            try:
                await sink.write_records(records[3:6], checkpoint=("s", 2))
            except ServomexSinkWriteError as exc:
                assert exc.failure is SinkFailure.TRANSIENT
                assert "released back to the pool" not in str(exc)
                if await sink.read_checkpoint("s") < 2:
                    await sink.write_records(records[3:6], checkpoint=("s", 2))
            await sink.write_records(records[6:], checkpoint=("s", 3))
            assert await sink.read_checkpoint("s") == 3
        assert await admin.fetchval("SELECT count(*) FROM samples") == 9
    finally:
        await admin.close()


def test_driver_log_lines_become_one_structlog_line() -> None:
    from servomexd.sinks.postgres_errors import route_driver_logs

    route_driver_logs()
    try:
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
    except ConnectionRefusedError:
        with capture_logs() as logs:
            logging.getLogger("asyncpg.pool").warning(
                "Failed to restore the pool connection floor; retrying", exc_info=True
            )
    assert logs == [
        {
            "event": "sink.driver_warning",
            "log_level": "warning",
            "driver": "asyncpg.pool",
            "message": "Failed to restore the pool connection floor; retrying",
            "cause": "ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 5432)",
        }
    ]


# --- wrong password: a private cluster with password authentication --------------------------


@pytest.fixture(scope="module")
def scram_cluster() -> Iterator[PgCluster]:
    try:
        cluster = PgCluster()
        cluster.init()
    except PgUnavailable as exc:
        pytest.skip(f"no PostgreSQL binaries: {exc}")
    hba = Path(cluster.data_dir) / "pg_hba.conf"
    hba.write_text(
        "host all servomexd 127.0.0.1/32 scram-sha-256\n" + hba.read_text()
    )
    with cluster:
        async def role() -> None:
            conn = await asyncpg.connect(cluster.dsn)
            await conn.execute("CREATE ROLE servomexd LOGIN PASSWORD 'right-secret'")
            await conn.execute("GRANT ALL ON SCHEMA public TO servomexd")
            await conn.close()

        asyncio.run(role())
        yield cluster


async def test_wrong_password(scram_cluster: PgCluster) -> None:
    config = PostgresConfig(
        host="127.0.0.1", port=scram_cluster.port, user="servomexd",
        password="wrong-secret", database="postgres", create_table=True,
    )  # fmt: skip
    with pytest.raises(ServomexSinkFault) as caught:
        await PostgresSink(config).open()
    assert caught.value.fault == "authentication"
    assert "pg_hba.conf" in str(caught.value.fix)
    assert "wrong-secret" not in str(caught.value) + str(caught.value.fix)
    right = PostgresConfig(
        host="127.0.0.1", port=scram_cluster.port, user="servomexd",
        password="right-secret", database="postgres", create_table=True,
    )  # fmt: skip
    async with PostgresSink(right) as sink:
        await sink.write_records([sample_to_record(s) for s in steady_samples(2)])
