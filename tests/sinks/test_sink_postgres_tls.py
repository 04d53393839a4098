"""PostgresSink over TLS to a throwaway cluster with ``ssl = on`` and certificates made here.

One cluster serves a certificate for 127.0.0.1 signed by the test CA, and accepts the
role ``certuser`` only with a client certificate (pg_hba ``cert``). The expired-server
case swaps the server's certificate and reloads the configuration.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from pg import PgCluster, PgUnavailable, pg_required
from sinkdata import steady_samples
from structlog.testing import capture_logs
from tlscerts import CertificateAuthority, Issued

from servomexd.errors import ServomexSinkFault, ServomexSinkWriteError
from servomexd.sinks import PostgresConfig, PostgresSink

pytestmark = pytest.mark.postgres

CERT_USER = "certuser"


@dataclass
class TlsPg:
    cluster: PgCluster
    files: Path
    ca: CertificateAuthority
    ca_file: Path
    other_ca_file: Path
    server: Issued
    client_cert: Path
    client_key: Path

    @property
    def port(self) -> int:
        return self.cluster.port

    def config(self, **kwargs: object) -> PostgresConfig:
        values: dict[str, object] = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": "postgres",
            "database": "postgres",
            "create_table": True,
            "command_timeout_s": 5.0,
            "pool_min_size": 1,
        }
        values.update(kwargs)
        return PostgresConfig(**values)  # type: ignore[arg-type]


def _reload(cluster: PgCluster) -> None:
    async def reload() -> None:
        conn = await asyncpg.connect(cluster.dsn + "?sslmode=disable", timeout=5)
        try:
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()

    asyncio.run(reload())


@pytest.fixture(scope="module")
def tls_pg() -> Iterator[TlsPg]:
    ca = CertificateAuthority()
    server = ca.issue("127.0.0.1", hosts=("127.0.0.1",))
    client = ca.issue(CERT_USER, client=True)
    try:
        cluster = PgCluster.with_tls(
            server.cert_pem,
            server.key_pem,
            ca.cert_pem,
            hba=[
                f"hostssl all {CERT_USER} 127.0.0.1/32 cert",
                f"host all {CERT_USER} 127.0.0.1/32 reject",
            ],
        )
    except PgUnavailable as exc:
        if pg_required():
            pytest.fail(f"cannot start a PgCluster: {exc}", pytrace=False)
        pytest.skip(str(exc))
    with tempfile.TemporaryDirectory(prefix="servomexd-tls-") as tmp:
        files = Path(tmp)
        try:
            with cluster:
                asyncio.run(_create_cert_user(cluster))
                client_cert, client_key = client.write(files, "client")
                yield TlsPg(
                    cluster=cluster,
                    files=files,
                    ca=ca,
                    ca_file=ca.write(files),
                    other_ca_file=CertificateAuthority("another CA").write(files, "other-ca"),
                    server=server,
                    client_cert=client_cert,
                    client_key=client_key,
                )
        except PgUnavailable as exc:
            if pg_required():
                pytest.fail(f"cannot start a PgCluster: {exc}", pytrace=False)
            pytest.skip(str(exc))


async def _create_cert_user(cluster: PgCluster) -> None:
    conn = await asyncpg.connect(cluster.dsn + "?sslmode=disable", timeout=10)
    try:
        await conn.execute(f"CREATE ROLE {CERT_USER} LOGIN")
        await conn.execute(f"CREATE SCHEMA {CERT_USER} AUTHORIZATION {CERT_USER}")
    finally:
        await conn.close()


async def _ssl_in_use(sink: PostgresSink) -> bool:
    conn = await sink._connection()
    used: bool = await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    return used


async def test_verify_full_connects_and_writes_over_tls(tls_pg: TlsPg) -> None:
    config = tls_pg.config(sslmode="verify-full", sslrootcert=str(tls_pg.ca_file), table="vf")
    async with PostgresSink(config) as sink:
        await sink.write_many(steady_samples(5))
        assert await _ssl_in_use(sink)


async def test_sslmode_in_the_dsn_query_string_keeps_working(tls_pg: TlsPg) -> None:
    dsn = (
        f"postgresql://postgres@127.0.0.1:{tls_pg.port}/postgres"
        f"?sslmode=verify-full&sslrootcert={tls_pg.ca_file}"
    )
    async with PostgresSink(PostgresConfig(dsn=dsn, table="dsn_tls", create_table=True)) as sink:
        await sink.write_many(steady_samples(3))
        assert await _ssl_in_use(sink)
    wrong = dsn.replace(str(tls_pg.ca_file), str(tls_pg.other_ca_file))
    with pytest.raises(ServomexSinkFault) as caught:
        await PostgresSink(PostgresConfig(dsn=wrong, table="dsn_tls")).open()
    assert caught.value.context["check"] == "CA"


async def test_disable_does_not_use_tls(tls_pg: TlsPg) -> None:
    async with PostgresSink(tls_pg.config(sslmode="disable", table="plain")) as sink:
        assert not await _ssl_in_use(sink)


async def test_wrong_ca_is_an_operator_fault_naming_the_ca_check(tls_pg: TlsPg) -> None:
    config = tls_pg.config(sslmode="verify-ca", sslrootcert=str(tls_pg.other_ca_file))
    with pytest.raises(ServomexSinkFault) as caught:
        await PostgresSink(config).open()
    error = caught.value
    assert error.context == {"target": config.target(), "check": "CA"}
    assert error.fault == "tls" and error.retryable is False
    assert "TLS check 'CA' failed" in error.message
    assert "not signed by a CA in sslrootcert" in error.message


async def test_wrong_host_name_fails_only_under_verify_full(tls_pg: TlsPg) -> None:
    # The server's certificate names 127.0.0.1 only; "localhost" reaches the same server.
    root = str(tls_pg.ca_file)
    with pytest.raises(ServomexSinkFault) as caught:
        await PostgresSink(
            tls_pg.config(host="localhost", sslmode="verify-full", sslrootcert=root)
        ).open()
    assert caught.value.context["check"] == "host name"
    assert "does not name the host connected to" in caught.value.message
    # verify-ca checks the chain, not the name: the same connection succeeds.
    config = tls_pg.config(host="localhost", sslmode="verify-ca", sslrootcert=root, table="vca")
    async with PostgresSink(config) as sink:
        assert await _ssl_in_use(sink)


async def test_expired_server_certificate_fails_with_its_own_message(tls_pg: TlsPg) -> None:
    expired = tls_pg.ca.issue("127.0.0.1", hosts=("127.0.0.1",), expired=True)
    cluster = tls_pg.cluster
    cluster.add_file("server.crt", expired.cert_pem, 0o644)
    cluster.add_file("server.key", expired.key_pem, 0o600)
    await asyncio.to_thread(_reload, cluster)
    config = tls_pg.config(sslmode="verify-full", sslrootcert=str(tls_pg.ca_file))
    try:
        error: ServomexSinkFault | None = None
        for _ in range(50):  # the postmaster reloads asynchronously
            try:
                await PostgresSink(config).open()
            except ServomexSinkFault as exc:
                error = exc
                break
            await asyncio.sleep(0.1)
        assert error is not None, "the expired certificate was accepted"
        assert error.context["check"] == "expiry"
        assert "certificate (or its CA) is expired" in error.message
    finally:
        cluster.add_file("server.crt", tls_pg.server.cert_pem, 0o644)
        cluster.add_file("server.key", tls_pg.server.key_pem, 0o600)
        await asyncio.to_thread(_reload, cluster)
    # Fixing the cause needs no new sink: the same config connects again.
    for _ in range(50):
        try:
            async with PostgresSink(config) as sink:
                assert await _ssl_in_use(sink)
            break
        except ServomexSinkFault:
            await asyncio.sleep(0.1)
    else:
        pytest.fail("the renewed certificate was not accepted")


async def test_client_certificate_login(tls_pg: TlsPg) -> None:
    config = tls_pg.config(
        user=CERT_USER,
        schema=CERT_USER,
        table="by_cert",
        sslmode="verify-full",
        sslrootcert=str(tls_pg.ca_file),
        sslcert=str(tls_pg.client_cert),
        sslkey=str(tls_pg.client_key),
    )
    async with PostgresSink(config) as sink:
        await sink.write_many(steady_samples(4))
        conn = await sink._connection()
        assert await conn.fetchval("SELECT current_user") == CERT_USER
        assert await conn.fetchval("SELECT count(*) FROM certuser.by_cert") == 4


async def test_client_key_from_the_systemd_credential(
    tls_pg: TlsPg, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "pg-sslkey").write_bytes(tls_pg.client_key.read_bytes())
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    config = tls_pg.config(
        user=CERT_USER, schema=CERT_USER, table="by_cred", sslmode="require",
        sslcert=str(tls_pg.client_cert),
    )
    async with PostgresSink(config) as sink:
        conn = await sink._connection()
        assert await conn.fetchval("SELECT current_user") == CERT_USER


async def test_certificate_login_without_a_client_certificate_is_refused(tls_pg: TlsPg) -> None:
    config = tls_pg.config(
        user=CERT_USER, schema=CERT_USER, sslmode="verify-full", sslrootcert=str(tls_pg.ca_file)
    )
    with pytest.raises(ServomexSinkFault) as caught:
        await PostgresSink(config).open()
    assert caught.value.context["check"] == "client certificate"


async def test_mismatched_key_is_a_fault_and_its_contents_never_leak(
    tls_pg: TlsPg, tmp_path: Path
) -> None:
    stranger = tls_pg.ca.issue("someone-else", client=True)
    _, wrong_key = stranger.write(tmp_path, "wrong")
    config = tls_pg.config(
        user=CERT_USER, sslmode="verify-full", sslrootcert=str(tls_pg.ca_file),
        sslcert=str(tls_pg.client_cert), sslkey=str(wrong_key),
    )
    with capture_logs() as logs, pytest.raises(ServomexSinkFault) as caught:
        await PostgresSink(config).open()
    error = caught.value
    assert error.context["check"] == "sslkey"
    assert str(wrong_key) in error.message
    shown = str(error) + repr(config) + repr(logs)
    for key in (stranger.key_pem, tls_pg.client_key.read_bytes()):
        body = [line for line in key.decode().splitlines() if "-----" not in line]
        assert body and not any(line in shown for line in body)


async def test_missing_root_certificate_names_the_setting(tls_pg: TlsPg) -> None:
    missing = tls_pg.files / "absent.crt"
    config = tls_pg.config(sslmode="verify-full", sslrootcert=str(missing))
    with pytest.raises(ServomexSinkFault) as caught:
        await PostgresSink(config).open()
    assert caught.value.context["check"] == "sslrootcert"
    assert f"sslrootcert {missing}: cannot read (No such file or directory)" in str(caught.value)


async def test_plain_outage_stays_a_transient_error(tls_pg: TlsPg) -> None:
    port = tls_pg.port + 1 if tls_pg.port < 65535 else tls_pg.port - 1
    config = tls_pg.config(port=port, sslmode="verify-full", sslrootcert=str(tls_pg.ca_file))
    with pytest.raises(ServomexSinkWriteError) as caught:
        await PostgresSink(config).open()
    assert not isinstance(caught.value, ServomexSinkFault)
    assert caught.value.retryable is True


def test_config_rejects_a_dsn_and_setting_that_disagree() -> None:
    with pytest.raises(ValueError, match="sslmode: given both in the dsn and as a setting"):
        PostgresConfig(dsn="postgresql://u@db/x?sslmode=require", sslmode="verify-full")
    agreed = PostgresConfig(dsn="postgresql://u@db/x?sslmode=require", sslmode="require")
    assert agreed.tls().sslmode == "require"
    assert PostgresConfig(host="db").tls().sslmode == "prefer"
