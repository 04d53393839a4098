"""MetricsServer over real sockets: routes, status codes, bodies, and hostile clients."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from servomexd.http import MetricsServer
from servomexd.metrics import Metrics
from servomexd.model import (
    AnalyserStatus,
    ChannelId,
    ChannelStatus,
    Frame,
    ProtocolKind,
    Reading,
    Unit,
)


class FakeHealth:
    """The daemon's health object reduced to what /readyz reads."""

    def __init__(self) -> None:
        self.ready = True
        self.details: dict[str, object] = {}
        self.fail = False

    def readiness(self) -> tuple[bool, dict[str, object]]:
        if self.fail:
            raise RuntimeError("health source broken")
        return self.ready, self.details


def make_frame(value: float = 20.9) -> Frame:
    now = datetime.now(UTC)
    reading = Reading(
        ChannelId.I1,
        ChannelId.I1.kind,
        "O2",
        value,
        Unit.PERCENT,
        ChannelStatus(),
        ProtocolKind.CONTINUOUS,
        now,
        time.monotonic_ns(),
    )
    return Frame((reading,), AnalyserStatus(), ProtocolKind.CONTINUOUS, now, time.monotonic_ns())


@pytest.fixture
def health() -> FakeHealth:
    return FakeHealth()


@pytest.fixture
def metrics() -> Metrics:
    m = Metrics(CollectorRegistry())
    m.register_device("ana1")
    m.observe_frame("ana1", make_frame())
    return m


@pytest.fixture
async def server(metrics: Metrics, health: FakeHealth) -> AsyncIterator[MetricsServer]:
    srv = MetricsServer(
        "127.0.0.1", 0, metrics.registry, health, read_timeout=0.5, write_timeout=0.5,
        max_request_bytes=2048, max_connections=4,
    )
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


class Reply:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1"
        self.status = int(status)
        self.headers = {
            name.lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }

    def json(self) -> dict[str, object]:
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data


async def exchange(
    port: int, request: bytes, wait: float = 5.0, tls: ssl.SSLContext | None = None
) -> Reply:
    """Send raw bytes (over TLS with a context), read until the server closes, parse the reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(wait):
            raw = await reader.read()
    finally:
        writer.close()
    return Reply(raw)


def get(path: str, method: str = "GET", headers: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n".encode()


async def test_metrics_text_format(server: MetricsServer) -> None:
    reply = await exchange(server.bound_port, get("/metrics"))
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain")
    assert reply.headers["connection"] == "close"
    assert int(reply.headers["content-length"]) == len(reply.body)
    families = {f.name: f for f in text_string_to_metric_families(reply.body.decode())}
    assert families["servomexd_frames"].samples[0].value == 1
    reading = families["servomexd_reading"].samples[0]
    assert reading.labels == {"device": "ana1", "channel": "I1", "name": "O2", "unit": "%"}
    assert reading.value == pytest.approx(20.9)
    assert "process_resident_memory_bytes" in families


async def test_metrics_openmetrics_when_asked(server: MetricsServer) -> None:
    reply = await exchange(
        server.bound_port,
        get("/metrics", headers="Accept: application/openmetrics-text; version=1.0.0\r\n"),
    )
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("application/openmetrics-text")
    assert reply.body.endswith(b"# EOF\n")


async def test_metrics_gzip_when_accepted(server: MetricsServer) -> None:
    reply = await exchange(server.bound_port, get("/metrics", headers="Accept-Encoding: gzip\r\n"))
    assert reply.status == 200
    assert reply.headers["content-encoding"] == "gzip"
    assert b"servomexd_build_info" in gzip.decompress(reply.body)


async def test_head_has_headers_but_no_body(metrics: Metrics, health: FakeHealth) -> None:
    # A clock that stands still: /healthz's uptime (3 decimals) would otherwise change the
    # body's length between the GET and the HEAD (0.009 -> 0.01).
    server = MetricsServer("127.0.0.1", 0, metrics.registry, health, clock=lambda: 100.0)
    await server.start()
    try:
        full = await exchange(server.bound_port, get("/healthz"))
        head = await exchange(server.bound_port, get("/healthz", method="HEAD"))
    finally:
        await server.stop()
    assert head.status == 200
    assert head.body == b""
    assert int(head.headers["content-length"]) == len(full.body)


async def test_healthz_reports_uptime(server: MetricsServer) -> None:
    reply = await exchange(server.bound_port, get("/healthz"))
    assert reply.status == 200
    body = reply.json()
    assert body["status"] == "ok"
    assert isinstance(body["uptime_seconds"], float)
    assert body["uptime_seconds"] >= 0


async def test_readyz_follows_health(server: MetricsServer, health: FakeHealth) -> None:
    health.details = {"devices": {"ana1": "up"}}
    ok = await exchange(server.bound_port, get("/readyz"))
    assert ok.status == 200
    assert ok.json() == {"status": "ready", "devices": {"ana1": "up"}}

    health.ready = False
    health.details = {"devices_down": ["ana1"], "sink": "down, spooling"}
    bad = await exchange(server.bound_port, get("/readyz"))
    assert bad.status == 503
    assert bad.json() == {"status": "not ready", "devices_down": ["ana1"],
                          "sink": "down, spooling"}


async def test_broken_health_source_answers_500_and_server_survives(
    server: MetricsServer, health: FakeHealth
) -> None:
    health.fail = True
    reply = await exchange(server.bound_port, get("/readyz"))
    assert reply.status == 500
    assert reply.json() == {"error": "RuntimeError"}
    assert (await exchange(server.bound_port, get("/healthz"))).status == 200


@pytest.mark.parametrize("path", ["/", "/metrics/", "/favicon.ico", "/../etc/passwd", "/Metrics"])
async def test_unknown_paths_404(server: MetricsServer, path: str) -> None:
    reply = await exchange(server.bound_port, get(path))
    assert reply.status == 404


async def test_query_string_is_ignored(server: MetricsServer) -> None:
    assert (await exchange(server.bound_port, get("/healthz?verbose=1"))).status == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
async def test_other_methods_405(server: MetricsServer, method: str) -> None:
    reply = await exchange(server.bound_port, get("/metrics", method=method))
    assert reply.status == 405
    assert reply.headers["allow"] == "GET, HEAD"


async def test_post_body_is_drained_before_answering(server: MetricsServer) -> None:
    body = b"x" * 1000
    request = (
        b"POST /readyz HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + body
    )
    assert (await exchange(server.bound_port, request)).status == 405


async def test_huge_body_refused(server: MetricsServer) -> None:
    request = b"POST /readyz HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n"
    assert (await exchange(server.bound_port, request)).status == 413


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /metrics\r\n\r\n", 400),
        (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 413),
    ],
)
async def test_malformed_requests(server: MetricsServer, request_bytes: bytes, status: int) -> None:
    assert (await exchange(server.bound_port, request_bytes)).status == status


async def test_oversized_header_line(server: MetricsServer) -> None:
    request = get("/metrics", headers="X-Big: " + "a" * 10_000 + "\r\n")
    reply = await exchange(server.bound_port, request)
    assert reply.status == 431
    assert (await exchange(server.bound_port, get("/healthz"))).status == 200


async def test_oversized_head_of_many_small_headers(server: MetricsServer) -> None:
    headers = "".join(f"X-H{i}: {'b' * 40}\r\n" for i in range(60))  # ~3 KiB > 2 KiB limit
    reply = await exchange(server.bound_port, get("/metrics", headers=headers))
    assert reply.status == 431


async def test_too_many_headers(metrics: Metrics, health: FakeHealth) -> None:
    async with MetricsServer("127.0.0.1", 0, metrics.registry, health) as srv:
        headers = "".join(f"X-{i}: v\r\n" for i in range(100))
        reply = await exchange(srv.bound_port, get("/metrics", headers=headers))
    assert reply.status == 431


async def test_silent_client_times_out_without_holding_the_loop(server: MetricsServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
    writer.write(b"GET /metrics HTTP/1.1\r\n")  # and never finish the head
    await writer.drain()
    started = time.monotonic()
    # Meanwhile other clients are served at once.
    assert (await exchange(server.bound_port, get("/healthz"), wait=0.4)).status == 200
    async with asyncio.timeout(10):
        raw = await reader.read()
    elapsed = time.monotonic() - started
    writer.close()
    assert Reply(raw).status == 408
    assert 0.3 < elapsed < 4.0  # the 0.5 s deadline, with room for a loaded CI box


async def test_dripping_client_is_cut_off_at_the_total_deadline(server: MetricsServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
    request = get("/metrics", headers="X-Slow: " + "z" * 200 + "\r\n")

    async def drip() -> None:
        # One byte every 20 ms: each read is quick, the whole head would take ~5 s.
        for byte in request:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.02)

    dripper = asyncio.create_task(drip())
    started = time.monotonic()
    async with asyncio.timeout(5):
        raw = await reader.read()
    elapsed = time.monotonic() - started
    dripper.cancel()
    await asyncio.gather(dripper, return_exceptions=True)
    writer.close()
    assert Reply(raw).status == 408
    assert elapsed < 3.0  # the 0.5 s deadline, not the drip's pace (> 4 s)


async def test_client_that_does_not_read_is_aborted(health: FakeHealth) -> None:
    class Huge:
        def collect(self) -> Iterator[Metric]:
            family = GaugeMetricFamily("huge", "a very large exposition", labels=["k"])
            blob = "v" * 10_000
            for i in range(3000):  # ~30 MB: far beyond the kernel's socket buffers
                family.add_metric([f"{i}{blob}"], i)
            yield family

    registry = CollectorRegistry()
    registry.register(Huge())
    async with MetricsServer(
        "127.0.0.1", 0, registry, health, write_timeout=0.5
    ) as srv:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", srv.bound_port))
        await asyncio.get_running_loop().sock_sendall(sock, get("/metrics"))
        await asyncio.sleep(2.0)  # not reading; the server must give up on us
        # The server is still responsive to others.
        assert (await exchange(srv.bound_port, get("/healthz"), wait=1)).status == 200
        received = 0
        sock.setblocking(True)
        sock.settimeout(2)
        try:
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        finally:
            sock.close()
        assert received < 30_000_000


async def test_connection_limit(server: MetricsServer) -> None:
    idle = [await asyncio.open_connection("127.0.0.1", server.bound_port) for _ in range(4)]
    await asyncio.sleep(0.05)
    try:
        reply = await exchange(server.bound_port, get("/healthz"), wait=2)
        assert reply.status == 503
    finally:
        for _, writer in idle:
            writer.close()
    await asyncio.sleep(0.1)
    assert (await exchange(server.bound_port, get("/healthz"))).status == 200


async def test_standard_client(server: MetricsServer) -> None:
    """urllib, a real HTTP client, agrees with our framing."""
    base = f"http://127.0.0.1:{server.bound_port}"

    def fetch(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(base + path, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    status, body = await asyncio.to_thread(fetch, "/metrics")
    assert status == 200
    assert b"servomexd_link_up{device=\"ana1\"} 0.0" in body
    status, _ = await asyncio.to_thread(fetch, "/nope")
    assert status == 404


async def test_stop_closes_open_connections_and_frees_the_port(
    metrics: Metrics, health: FakeHealth
) -> None:
    srv = MetricsServer("127.0.0.1", 0, metrics.registry, health, read_timeout=30)
    await srv.start()
    port = srv.bound_port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /met")
    await writer.drain()
    await asyncio.sleep(0.05)
    async with asyncio.timeout(2):
        await srv.stop()
        assert await reader.read() == b""
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    again = MetricsServer("127.0.0.1", port, metrics.registry, health)
    await again.start()
    await again.stop()


async def test_bound_port_before_start(metrics: Metrics, health: FakeHealth) -> None:
    with pytest.raises(RuntimeError):
        _ = MetricsServer("127.0.0.1", 0, metrics.registry, health).bound_port


async def test_port_in_use_raises(server: MetricsServer, metrics: Metrics,
                                  health: FakeHealth) -> None:
    other = MetricsServer("127.0.0.1", server.bound_port, metrics.registry, health)
    with pytest.raises(OSError):
        await other.start()
