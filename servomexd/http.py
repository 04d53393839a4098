"""The daemon's HTTP endpoints: /metrics, /healthz and /readyz, on the daemon's event loop.

A deliberately tiny HTTP/1.1 responder on ``asyncio.start_server`` rather than
prometheus_client's threaded server or a web framework: it runs on the daemon's
own loop (so a 200 from /healthz proves the loop is responsive), adds no
dependency, and serves exactly three read-only paths. Every connection is
bounded: the request head must arrive within ``read_timeout`` seconds as a
whole (a client dripping one byte a second is cut off, not waited for), may be
at most ``max_request_bytes`` long, the response must be taken within
``write_timeout``; beyond ``max_connections`` open connections clients get 503,
beyond twice that they are reset without a read. Each
response closes the connection (``Connection: close``): scrapers reconnect
every interval anyway and it keeps the state machine trivial.

With a ``WebSecurity`` (servomexd.webconfig) it serves HTTPS, optionally asking for a
client certificate from a CA (mutual TLS: a client without one fails the handshake),
and requires basic auth on every path but the public ones (``/healthz`` by default).
The TLS handshake is bounded by ``read_timeout`` like the request head. A rejected
password is answered 401 and counted in ``servomexd_http_unauthorized_requests_total``.
A replaced certificate or key file is picked up for the next connection, no restart.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from servomexd import __version__
from servomexd.http_access import AuthGate, ServerCertificate
from servomexd.http_wire import (
    BadRequest,
    Request,
    Response,
    accepts_gzip,
    json_response,
    linger,
    read_request,
    send,
)
from servomexd.webconfig import WebSecurity, exposure_gaps

log = structlog.get_logger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9723

_ALLOWED_METHODS = ("GET", "HEAD")
_PATHS = ("/metrics", "/healthz", "/readyz")
_GZIP_MIN_BYTES = 1024


class Health(Protocol):
    """What /readyz asks; the daemon implements it."""

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """``(ready, details)``; details name what is wrong (JSON-serialisable)."""
        ...


class MetricsServer:
    """Serves GET/HEAD /metrics, /healthz and /readyz for one registry and health source."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        health: Health,
        *,
        read_timeout: float = 5.0,
        write_timeout: float = 10.0,
        max_request_bytes: int = 8192,
        max_connections: int = 32,
        clock: Callable[[], float] = time.monotonic,
        security: WebSecurity | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.registry = registry
        self.health = health
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.max_request_bytes = max_request_bytes
        self.max_connections = max_connections
        self._clock = clock
        self._started_at = clock()
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.security = security or WebSecurity()
        self._certificate = ServerCertificate(self.security)
        self._auth = AuthGate(self.security)
        self.unauthorized = self._auth.unauthorized

    @property
    def bound_port(self) -> int:
        """The port actually listened on (useful with ``port=0``)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("MetricsServer is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Bind and start serving; raises ``OSError`` when the address is taken."""
        if self._server is not None:
            raise RuntimeError("MetricsServer already started")
        self._started_at = self._clock()
        tls = self._certificate.load()  # ServomexConfigError when a file is bad
        self._server = await asyncio.start_server(
            self._on_connection,
            self.host,
            self.port,
            # readline() fails with ValueError beyond this, so one line can never
            # buffer more than the whole request may take.
            limit=self.max_request_bytes,
            reuse_address=True,
            ssl=tls,
            ssl_handshake_timeout=self.read_timeout if tls is not None else None,
        )
        self._auth.register(self.registry)
        # tests/e2e parse this event for the bound port (listen = "...:0"): keep its name.
        log.info(
            "metrics.listening",
            host=self.host,
            port=self.bound_port,
            tls=self.security.tls,
            client_auth=self.security.client_auth,
            basic_auth=bool(self.security.users),
        )
        missing = exposure_gaps(self.host, self.security)
        if missing:
            log.warning(
                "metrics.exposed",
                host=self.host,
                port=self.bound_port,
                missing=missing,
                hint="anyone who can reach this address can read the metrics; set "
                "[metrics] web_config (TLS and basic auth) or listen on 127.0.0.1",
            )

    async def stop(self) -> None:
        """Stop listening and cut off the connections still open."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self._auth.unregister(self.registry)
        # Aborting the transport ends each handler through its normal EOF path.
        for writer in list(self._connections.values()):
            writer.transport.abort()
        tasks = list(self._connections)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=1.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await server.wait_closed()

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- one connection -----------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None  # always inside the server's task
        self._connections[task] = writer
        # drain() then waits until the response has actually left the buffer, so the
        # write timeout below covers the whole response, not all but the last 64 KiB.
        writer.transport.set_write_buffer_limits(high=0)
        self._certificate.reload_if_changed()
        try:
            active = len(self._connections)
            if active > 2 * self.max_connections:
                writer.transport.abort()  # a flood: shed it without reading anything
                return
            await self._serve_one(reader, writer, overloaded=active > self.max_connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        except asyncio.CancelledError:
            if self._server is not None:
                raise
            # stop() gave up waiting for us; end quietly (asyncio logs a cancelled
            # connection handler as an error on Python 3.11).
        finally:
            del self._connections[task]
            writer.close()
            try:
                async with asyncio.timeout(self.write_timeout):
                    await writer.wait_closed()
            except (TimeoutError, ConnectionError, OSError):
                writer.transport.abort()

    async def _serve_one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, overloaded: bool
    ) -> None:
        try:
            async with asyncio.timeout(self.read_timeout):
                request = await read_request(reader, self.max_request_bytes)
        except TimeoutError:
            await self._refuse(reader, writer, 408, "request timeout")
            return
        except BadRequest as error:
            await self._refuse(reader, writer, error.status, error.message)
            return
        if overloaded:
            await self._send(writer, json_response(503, {"error": "too many connections"}))
            return
        refusal = await self._auth.refusal(request)
        if refusal is not None:
            await self._send(writer, refusal, head_only=request.method == "HEAD")
            return
        if request.path == "/metrics" and request.method in _ALLOWED_METHODS:
            # Rendering the exposition is CPU-bound (tens of ms for a few thousand
            # series on a slow box); in a thread the loop keeps reading the analysers
            # meanwhile (prometheus_client's collection is thread-safe).
            response = await asyncio.to_thread(self._route, request)
        else:
            response = self._route(request)
        await self._send(writer, response, head_only=request.method == "HEAD")

    async def _refuse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int, message: str
    ) -> None:
        """Answer an unreadable request, then linger so the client gets the answer."""
        await self._send(writer, json_response(status, {"error": message}))
        await linger(reader, writer)

    async def _send(
        self, writer: asyncio.StreamWriter, response: Response, head_only: bool = False
    ) -> None:
        await send(writer, response, write_timeout=self.write_timeout, head_only=head_only)

    def _route(self, request: Request) -> Response:
        if request.path not in _PATHS:
            return json_response(404, {"error": "not found", "paths": list(_PATHS)})
        if request.method not in _ALLOWED_METHODS:
            response = json_response(405, {"error": "method not allowed"})
            response.extra_headers += (("Allow", ", ".join(_ALLOWED_METHODS)),)
            return response
        try:
            if request.path == "/metrics":
                return self._metrics(request)
            if request.path == "/healthz":
                return json_response(
                    200,
                    {
                        "status": "ok",
                        "version": __version__,
                        "uptime_seconds": round(self._clock() - self._started_at, 3),
                    },
                )
            ready, details = self.health.readiness()
            payload: dict[str, object] = {"status": "ready" if ready else "not ready"}
            payload.update(details)
            return json_response(200 if ready else 503, payload)
        except Exception as error:
            # A broken collector or health check must answer 500, not kill the server.
            log.exception("http.handler_failed", path=request.path)
            return json_response(500, {"error": type(error).__name__})

    def _metrics(self, request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        body = encoder(self.registry)
        extra: tuple[tuple[str, str], ...] = (("Cache-Control", "no-store"),)
        if len(body) >= _GZIP_MIN_BYTES and accepts_gzip(request.headers):
            # Prometheus asks for gzip on every scrape; level 1 is plenty for text.
            body = gzip.compress(body, compresslevel=1)
            extra += (("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding"))
        return Response(200, body, content_type, extra)
