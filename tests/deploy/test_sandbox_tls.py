"""TLS inside the unit's sandbox: the daemon logs in to PostgreSQL with a client certificate
(verify-full, key as a credential) and serves its metrics over HTTPS with basic auth
(bcrypt), under the same system-call filter and W+X ban as tests/deploy/test_sandbox.py."""

from __future__ import annotations

import asyncio
import base64
import http.client
import re
import ssl
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import bcrypt
import pytest
from pg import PgCluster, PgUnavailable, pg_required
from test_sandbox import _free_port, _wait_for, record_in_sandbox, sandbox_dir
from tlscerts import CertificateAuthority

__all__ = ["sandbox_dir"]  # the fixture, imported for use here

PASSWORD = "sandboxed-scrape"


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[tuple[PgCluster, CertificateAuthority]]:
    ca = CertificateAuthority()
    pair = ca.issue("127.0.0.1", hosts=("127.0.0.1",))
    try:
        cluster = PgCluster.with_tls(
            pair.cert_pem, pair.key_pem, ca.cert_pem, hba=["hostssl all fleet 127.0.0.1/32 cert"]
        )
        with cluster:
            asyncio.run(_sql(cluster, "CREATE ROLE fleet LOGIN",
                             "CREATE SCHEMA fleet AUTHORIZATION fleet"))
            yield cluster, ca
    except PgUnavailable as exc:
        if pg_required():
            pytest.fail(f"cannot start a PgCluster: {exc}", pytrace=False)
        pytest.skip(str(exc))


async def _sql(cluster: PgCluster, *statements: str) -> int:
    conn = await asyncpg.connect(cluster.dsn + "?sslmode=disable", timeout=10)
    try:
        result = 0
        for statement in statements:
            result = await conn.fetchval(statement) or 0
        return int(result)
    finally:
        await conn.close()


def _https_get(port: int, path: str, ca_file: Path) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(ca_file))
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=context)
    token = base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
    try:
        conn.request("GET", path, headers={"Authorization": f"Basic {token}"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_tls_everywhere_inside_the_sandbox(
    sandbox_dir: Path, tls_cluster: tuple[PgCluster, CertificateAuthority]
) -> None:
    cluster, ca = tls_cluster
    work = sandbox_dir / "tls"
    work.mkdir()
    ca_file = ca.write(work)
    client_cert, client_key = ca.issue("fleet", client=True).write(work, "client")
    creds = work / "credentials"
    creds.mkdir()
    client_key.rename(creds / "pg-sslkey")
    ca.issue("127.0.0.1", hosts=("127.0.0.1",)).write(work, "metrics")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    (work / "web-config.yml").write_text(
        "tls_server_config:\n  cert_file: metrics.crt\n  key_file: metrics.key\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    link, port = work / "analyser", _free_port()
    config = work / "servomexd.toml"
    config.write_text(
        f'[[devices]]\nname = "sandboxed"\nport = "{link}"\n\n'
        '[sink]\ntype = "postgres"\nflush_interval = 0.2\n\n[sink.postgres]\n'
        f'host = "127.0.0.1"\nport = {cluster.port}\nuser = "fleet"\ndatabase = "postgres"\n'
        f'schema = "fleet"\nsslmode = "verify-full"\nsslrootcert = "{ca_file}"\n'
        f'sslcert = "{client_cert}"\n\n'
        f'[spool]\npath = "{work}/spool"\n\n'
        f'[metrics]\nlisten = "127.0.0.1:{port}"\nweb_config = "{work}/web-config.yml"\n'
    )

    def written() -> float:
        status, body = _https_get(port, "/metrics", ca_file)
        assert status == 200
        found = re.findall(r"^servomexd_samples_written_total\{[^}]*\} (\S+)$", body, re.M)
        return sum(float(v) for v in found)

    def recorded() -> None:
        _wait_for(lambda: _https_get(port, "/readyz", ca_file)[0] == 200, 30, "/readyz 200")
        _wait_for(lambda: written() >= 50, 30, "samples written over TLS")

    env = {"PATH": "/usr/bin:/bin", "CREDENTIALS_DIRECTORY": str(creds)}
    record_in_sandbox(sandbox_dir, config, link, recorded, env)
    stored = asyncio.run(_sql(cluster, "SELECT count(*) FROM fleet.samples"))
    assert stored >= 50
