"""``servomexd run`` against a PostgreSQL that requires TLS: a certificate fault is reported
on /readyz and in the log, retried slowly, and healed by fixing the file (no restart);
a client-certificate login whose key is a systemd credential stores rows and never
shows the key."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from daemon_harness import DaemonProc, Simulator, wait_for, write_config
from pg import PgCluster, PgUnavailable, pg_required
from tlscerts import CertificateAuthority

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@dataclass
class Server:
    cluster: PgCluster
    ca: CertificateAuthority


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    ca = CertificateAuthority()
    pair = ca.issue("127.0.0.1", hosts=("127.0.0.1",))
    try:
        cluster = PgCluster.with_tls(
            pair.cert_pem, pair.key_pem, ca.cert_pem,
            hba=["hostssl all fleet 127.0.0.1/32 cert",
                 "hostssl all postgres 127.0.0.1/32 trust",
                 "host all postgres 127.0.0.1/32 reject"],
        )  # fmt: skip
        with cluster:
            asyncio.run(_setup(cluster))
            yield Server(cluster, ca)
    except PgUnavailable as exc:
        if pg_required():
            pytest.fail(f"cannot start a PgCluster: {exc}", pytrace=False)
        pytest.skip(str(exc))


async def _setup(cluster: PgCluster) -> None:
    # Local socket: the TCP lines above require TLS.
    conn = await asyncpg.connect(host=str(cluster.socket_dir), port=cluster.port,
                                 user="postgres", database="postgres")
    try:
        await conn.execute("CREATE ROLE fleet LOGIN")
        await conn.execute("CREATE SCHEMA fleet AUTHORIZATION fleet")
    finally:
        await conn.close()


def rows(cluster: PgCluster, table: str) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(host=str(cluster.socket_dir), port=cluster.port,
                                     user="postgres", database="postgres")
        try:
            value: int = await conn.fetchval(f"SELECT count(*) FROM {table}")
            return value
        except asyncpg.UndefinedTableError:
            return 0
        finally:
            await conn.close()

    return asyncio.run(count())


def readyz(daemon: DaemonProc) -> tuple[int, dict[str, object]]:
    status, body = daemon.scrape("/readyz")
    return status, json.loads(body)


def test_wrong_ca_is_not_ready_with_the_reason_and_heals_when_fixed(
    server: Server, tmp_path: Path
) -> None:
    root = tmp_path / "pg-ca.crt"
    root.write_bytes(CertificateAuthority("not the server's CA").cert_pem)
    sim = Simulator(tmp_path, period=0.05)
    config = write_config(
        tmp_path,
        [{"name": "an-1", "port": str(sim.link), "silence_timeout": 2.0}],
        sink={"type": "postgres", "retry_max_delay": 1.0},
        postgres={"host": "127.0.0.1", "port": server.cluster.port, "user": "postgres",
                  "database": "postgres", "table": "wrong_ca", "sslmode": "verify-full",
                  "sslrootcert": str(root)},
    )
    daemon = DaemonProc(config)
    try:
        daemon.wait_ready()

        def not_ready_for_the_ca() -> bool:
            status, detail = readyz(daemon)
            problems = detail.get("problems", [])
            assert isinstance(problems, list)
            return status == 503 and any(
                "sink needs an operator" in p and "TLS check 'CA' failed" in p for p in problems
            )

        wait_for(not_ready_for_the_ca, 20, "/readyz naming the CA check")
        faults = daemon.events("sink.fault")
        assert len(faults) == 1, "one error line per fault, not one per retry"
        assert "check=CA" in faults[0]
        # Still retried (so a fix needs no restart), but only every retry_max_delay (1 s).
        before = daemon.metric("servomexd_sink_errors_total", sink="postgres") or 0
        time.sleep(3.2)
        after = daemon.metric("servomexd_sink_errors_total", sink="postgres") or 0
        assert 2 <= after - before <= 4

        root.write_bytes(server.ca.cert_pem)  # the operator installs the right CA
        wait_for(lambda: readyz(daemon)[0] == 200, 20, "ready after the CA was fixed")
        wait_for(lambda: rows(server.cluster, "public.wrong_ca") > 0, 20, "rows stored")
        assert daemon.events("sink.recovered")
        code, _ = daemon.terminate()
        assert code == 0
    finally:
        daemon.cleanup()
        sim.stop()


def test_client_certificate_with_the_key_as_a_credential(
    server: Server, tmp_path: Path
) -> None:
    pair = server.ca.issue("fleet", client=True)
    cert, key = pair.write(tmp_path, "client")
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "pg-sslkey").write_bytes(key.read_bytes())
    key.unlink()  # only the credential holds it
    root = server.ca.write(tmp_path, "pg-ca")
    sim = Simulator(tmp_path, period=0.05)
    config = write_config(
        tmp_path,
        [{"name": "an-1", "port": str(sim.link), "silence_timeout": 2.0}],
        sink={"type": "postgres", "retry_max_delay": 1.0},
        postgres={"host": "127.0.0.1", "port": server.cluster.port, "user": "fleet",
                  "database": "postgres", "schema": "fleet", "table": "by_cert",
                  "sslmode": "verify-full", "sslrootcert": str(root), "sslcert": str(cert)},
    )
    daemon = DaemonProc(config, env={"CREDENTIALS_DIRECTORY": str(creds)})
    try:
        daemon.wait_ready()
        wait_for(lambda: rows(server.cluster, "fleet.by_cert") > 0, 20, "rows stored by cert")
        status, detail = readyz(daemon)
        assert status == 200, detail
        code, _ = daemon.terminate()
        assert code == 0
    finally:
        daemon.cleanup()
        sim.stop()
    body = [line for line in pair.key_pem.decode().splitlines() if "-----" not in line]
    assert not any(line in daemon.text() for line in body)
