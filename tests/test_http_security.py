"""MetricsServer with TLS, mutual TLS and basic auth, over real sockets and real handshakes."""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
from cryptography import x509
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs
from test_http import FakeHealth, Reply, exchange, get
from tlscerts import CertificateAuthority

from servomexd.http import MetricsServer
from servomexd.metrics import Metrics
from servomexd.webconfig import WebSecurity

PASSWORD = "correct horse battery staple"


@dataclass
class Pki:
    ca: CertificateAuthority
    ca_file: Path
    cert: Path
    key: Path
    client_ca: CertificateAuthority
    client_ca_file: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority("metrics CA")
    cert, key = ca.issue("127.0.0.1", hosts=("127.0.0.1", "localhost")).write(directory, "srv")
    client_ca = CertificateAuthority("scrapers CA")
    client_cert, client_key = client_ca.issue("prometheus", client=True).write(directory, "cli")
    stranger = CertificateAuthority("stranger CA").issue("mallory", client=True)
    stranger_cert, stranger_key = stranger.write(directory, "stranger")
    return Pki(
        ca, ca.write(directory), cert, key, client_ca, client_ca.write(directory, "client-ca"),
        client_cert, client_key, stranger_cert, stranger_key,
    )


def users() -> dict[str, bytes]:
    return {"prometheus": bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4))}


def client_context(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def basic(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Authorization: Basic {token}\r\n"


async def tls_exchange(
    port: int, request: bytes, context: ssl.SSLContext, wait: float = 5.0
) -> Reply:
    return await exchange(port, request, wait, tls=context)


async def raw_answer(port: int, context: ssl.SSLContext) -> bytes:
    """What a TLS client gets back for GET /healthz; b"" when refused at the TLS layer."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    except (ssl.SSLError, ConnectionError):
        return b""
    try:
        writer.write(get("/healthz"))
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read()
    except (ssl.SSLError, ConnectionError):
        return b""
    finally:
        writer.close()


@pytest.fixture
def registry() -> CollectorRegistry:
    metrics = Metrics(CollectorRegistry())
    metrics.register_device("ana1")
    return metrics.registry


@pytest.fixture
async def secure(pki: Pki, registry: CollectorRegistry) -> AsyncIterator[MetricsServer]:
    security = WebSecurity(cert_file=pki.cert, key_file=pki.key, users=users())
    server = MetricsServer(
        "127.0.0.1", 0, registry, FakeHealth(), read_timeout=0.5, write_timeout=0.5,
        max_request_bytes=2048, security=security,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def unauthorized(server: MetricsServer, reason: str) -> float:
    value = server.registry.get_sample_value(
        "servomexd_http_unauthorized_requests_total", {"reason": reason}
    )
    assert value is not None
    return value


async def test_tls_with_basic_auth_serves_metrics(secure: MetricsServer, pki: Pki) -> None:
    reply = await tls_exchange(
        secure.bound_port, get("/metrics", headers=basic("prometheus", PASSWORD)),
        client_context(pki),
    )
    assert reply.status == 200
    names = {family.name for family in text_string_to_metric_families(reply.body.decode())}
    assert "servomexd_http_unauthorized_requests" in names
    assert "servomexd_frames" in names


async def test_wrong_password_is_401_and_counted(secure: MetricsServer, pki: Pki) -> None:
    context = client_context(pki)
    before = unauthorized(secure, "invalid")
    reply = await tls_exchange(
        secure.bound_port, get("/metrics", headers=basic("prometheus", "wrong")), context
    )
    assert reply.status == 401
    assert reply.headers["www-authenticate"] == 'Basic realm="servomexd", charset="UTF-8"'
    assert "servomexd_frames" not in reply.body.decode()
    unknown = await tls_exchange(
        secure.bound_port, get("/metrics", headers=basic("nobody", PASSWORD)), context
    )
    assert unknown.status == 401
    assert unauthorized(secure, "invalid") == before + 2
    missing = await tls_exchange(secure.bound_port, get("/readyz"), context)
    assert missing.status == 401
    assert unauthorized(secure, "missing") == 1


async def test_healthz_is_public_by_default(secure: MetricsServer, pki: Pki) -> None:
    reply = await tls_exchange(secure.bound_port, get("/healthz"), client_context(pki))
    assert reply.status == 200
    assert reply.json()["status"] == "ok"


async def test_healthz_can_require_auth(
    pki: Pki, registry: CollectorRegistry
) -> None:
    security = WebSecurity(users=users(), public_paths=frozenset())
    async with MetricsServer("127.0.0.1", 0, registry, FakeHealth(), security=security) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.bound_port)
        writer.write(get("/healthz"))
        reply = Reply(await reader.read())
        writer.close()
        assert reply.status == 401


async def test_plain_http_to_the_tls_port_gets_no_answer(secure: MetricsServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", secure.bound_port)
    writer.write(get("/healthz"))
    async with asyncio.timeout(5):
        raw = await reader.read()
    writer.close()
    assert b"HTTP/1.1" not in raw


async def test_silent_client_is_cut_off_at_the_handshake_deadline(
    secure: MetricsServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", secure.bound_port)
    started = time.monotonic()
    async with asyncio.timeout(5):
        raw = await reader.read()
    writer.close()
    assert raw == b""
    assert 0.4 < time.monotonic() - started < 3.0


async def test_dripping_and_oversized_requests_still_bounded_over_tls(
    secure: MetricsServer, pki: Pki
) -> None:
    context = client_context(pki)
    reader, writer = await asyncio.open_connection("127.0.0.1", secure.bound_port, ssl=context)
    writer.write(b"GET /metrics HTTP/1.1\r\n")
    started = time.monotonic()
    async with asyncio.timeout(5):
        reply = Reply(await reader.read())
    writer.close()
    assert reply.status == 408
    assert time.monotonic() - started < 3.0
    huge = get("/metrics", headers="X-Pad: " + "a" * 4000 + "\r\n")
    assert (await tls_exchange(secure.bound_port, huge, context)).status == 431


async def test_mutual_tls_refuses_clients_without_the_client_cas_certificate(
    pki: Pki, registry: CollectorRegistry
) -> None:
    security = WebSecurity(
        cert_file=pki.cert, key_file=pki.key, client_ca_file=pki.client_ca_file,
        client_auth="required",
    )
    async with MetricsServer("127.0.0.1", 0, registry, FakeHealth(), security=security) as srv:
        good = await tls_exchange(
            srv.bound_port, get("/metrics"),
            client_context(pki, pki.client_cert, pki.client_key),
        )
        assert good.status == 200
        for context in (client_context(pki), client_context(pki, pki.stranger_cert,
                                                            pki.stranger_key)):
            # TLS 1.3 lets the client finish its side first; the server's refusal then
            # ends the connection before any HTTP answer (an alert or a bare close).
            assert await raw_answer(srv.bound_port, context) == b""


async def test_rotated_certificate_is_served_to_the_next_connection(
    pki: Pki, registry: CollectorRegistry, tmp_path: Path
) -> None:
    cert, key = pki.ca.issue("127.0.0.1", hosts=("127.0.0.1",)).write(tmp_path, "live")
    security = WebSecurity(cert_file=cert, key_file=key)
    async with MetricsServer("127.0.0.1", 0, registry, FakeHealth(), security=security) as srv:

        async def served_serial() -> int:
            _, writer = await asyncio.open_connection(
                "127.0.0.1", srv.bound_port, ssl=client_context(pki)
            )
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True)
            writer.close()
            return x509.load_der_x509_certificate(der).serial_number

        first = await served_serial()
        renewed = pki.ca.issue("127.0.0.1", hosts=("127.0.0.1",))
        renewed.write(tmp_path, "live")
        expected = x509.load_pem_x509_certificate(renewed.cert_pem).serial_number
        with capture_logs() as logs:
            serials = [await served_serial() for _ in range(3)]
        assert first != expected
        assert serials[-1] == expected
        assert any(entry["event"] == "metrics.certificate_reloaded" for entry in logs)


async def test_a_broken_rotation_keeps_the_old_certificate(
    pki: Pki, registry: CollectorRegistry, tmp_path: Path
) -> None:
    cert, key = pki.ca.issue("127.0.0.1", hosts=("127.0.0.1",)).write(tmp_path, "live")
    security = WebSecurity(cert_file=cert, key_file=key)
    async with MetricsServer("127.0.0.1", 0, registry, FakeHealth(), security=security) as srv:
        # A new certificate whose key has not been written yet.
        cert.write_bytes(pki.ca.issue("127.0.0.1", hosts=("127.0.0.1",)).cert_pem)
        with capture_logs() as logs:
            for _ in range(2):
                reply = await tls_exchange(srv.bound_port, get("/healthz"), client_context(pki))
                assert reply.status == 200
        failed = [e for e in logs if e["event"] == "metrics.certificate_reload_failed"]
        assert len(failed) == 1
        assert "KEY_VALUES_MISMATCH" in failed[0]["error"]


async def test_startup_log_names_the_security() -> None:
    with capture_logs() as logs:
        async with MetricsServer("127.0.0.1", 0, CollectorRegistry(), FakeHealth()):
            pass
    listening = [e for e in logs if e["event"] == "metrics.listening"]
    assert listening[0]["tls"] is False and listening[0]["basic_auth"] is False
    assert not [e for e in logs if e["event"] == "metrics.exposed"]
