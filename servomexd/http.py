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
import contextlib
import gzip
import json
import ssl
import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

import structlog
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import choose_encoder

from servomexd import __version__
from servomexd.errors import ServomexConfigError
from servomexd.webconfig import REALM, BasicAuth, WebSecurity, exposure_gaps

log = structlog.get_logger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9723

_ALLOWED_METHODS = ("GET", "HEAD")
_PATHS = ("/metrics", "/healthz", "/readyz")
_MAX_HEADERS = 64
_MAX_DISCARDED_BODY = 64 * 1024
"""A GET/HEAD/POST body up to this size is read and thrown away before answering, so
closing the socket does not reset the connection under the client's feet; larger bodies
get 413."""
_GZIP_MIN_BYTES = 1024
_LINGER_SECONDS = 0.5
_LINGER_MAX_BYTES = 1 << 20

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class Health(Protocol):
    """What /readyz asks; the daemon implements it."""

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """``(ready, details)``; details name what is wrong (JSON-serialisable)."""
        ...


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Request:
    __slots__ = ("headers", "method", "path")

    def __init__(self, method: str, path: str, headers: dict[str, str]) -> None:
        self.method = method
        self.path = path
        self.headers = headers


class _Response:
    __slots__ = ("body", "content_type", "extra_headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        extra_headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.extra_headers = extra_headers


def _json_response(status: int, payload: dict[str, object]) -> _Response:
    body = json.dumps(payload, default=str, sort_keys=True).encode() + b"\n"
    return _Response(status, body, "application/json", (("Cache-Control", "no-store"),))


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
        self._auth = BasicAuth(self.security.users) if self.security.users else None
        self._ssl: ssl.SSLContext | None = None
        self._tls_stamp: tuple[tuple[int, int], ...] = ()
        self.unauthorized = Counter(
            "servomexd_http_unauthorized_requests",
            "Requests refused with 401 by basic auth, by reason (missing or invalid).",
            ["reason"],
            registry=None,
        )
        for reason in ("missing", "invalid"):
            self.unauthorized.labels(reason)

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
        self._ssl = self.security.ssl_context()  # ServomexConfigError when a file is bad
        self._tls_stamp = self.security.file_stamp()
        self._server = await asyncio.start_server(
            self._on_connection,
            self.host,
            self.port,
            # readline() fails with ValueError beyond this, so one line can never
            # buffer more than the whole request may take.
            limit=self.max_request_bytes,
            reuse_address=True,
            ssl=self._ssl,
            ssl_handshake_timeout=self.read_timeout if self._ssl is not None else None,
        )
        with contextlib.suppress(ValueError):  # already registered: a restarted server
            self.registry.register(self.unauthorized)
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
        with contextlib.suppress(KeyError):
            self.registry.unregister(self.unauthorized)
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
        self._reload_certificate_if_changed()
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
                request = await self._read_request(reader)
        except TimeoutError:
            await self._refuse(reader, writer, 408, "request timeout")
            return
        except _BadRequest as error:
            await self._refuse(reader, writer, error.status, error.message)
            return
        if overloaded:
            await self._send(writer, _json_response(503, {"error": "too many connections"}))
            return
        if self._auth is not None and request.path not in self.security.public_paths:
            verdict = await self._auth.check(request.headers.get("authorization"))
            if verdict != "ok":
                self.unauthorized.labels(verdict).inc()
                response = _json_response(401, {"error": "authentication required"})
                response.extra_headers += (
                    ("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'),
                )
                await self._send(writer, response, head_only=request.method == "HEAD")
                return
        if request.path == "/metrics" and request.method in _ALLOWED_METHODS:
            # Rendering the exposition is CPU-bound (tens of ms for a few thousand
            # series on a slow box); in a thread the loop keeps reading the analysers
            # meanwhile (prometheus_client's collection is thread-safe).
            response = await asyncio.to_thread(self._route, request)
        else:
            response = self._route(request)
        await self._send(writer, response, head_only=request.method == "HEAD")

    def _reload_certificate_if_changed(self) -> None:
        """A rotated certificate or key serves the next connections (this one already
        completed its handshake). A half-written pair keeps the old one, logged."""
        if self._ssl is None:
            return
        stamp = self.security.file_stamp()
        if stamp == self._tls_stamp:
            return
        try:
            self.security.load_certificate(self._ssl)
        except ServomexConfigError as exc:
            log.error("metrics.certificate_reload_failed", error=exc.message)
            return
        finally:
            self._tls_stamp = stamp
        log.info("metrics.certificate_reloaded", cert_file=str(self.security.cert_file))

    async def _refuse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int, message: str
    ) -> None:
        """Answer an unreadable request, then discard what the client still sends for a
        moment: closing with unread input resets the connection and the client would
        lose the answer (the "lingering close" of RFC 9112 9.6)."""
        await self._send(writer, _json_response(status, {"error": message}))
        if writer.transport.is_closing():
            return
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(_LINGER_SECONDS):
                discarded = 0
                while discarded < _LINGER_MAX_BYTES:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    discarded += len(chunk)

    async def _read_request(self, reader: asyncio.StreamReader) -> _Request:
        """Parse the request line and headers, then drain a small body if one was sent."""
        total = 0

        async def line() -> bytes:
            nonlocal total
            try:
                raw = await reader.readline()
            except ValueError:  # longer than the stream limit
                raise _BadRequest(431, "request line or header too long") from None
            total += len(raw)
            if total > self.max_request_bytes:
                raise _BadRequest(431, "request head too large")
            if raw and not raw.endswith(b"\n"):
                raise asyncio.IncompleteReadError(raw, None)
            return raw

        request_line = await line()
        while request_line in (b"\r\n", b"\n"):  # RFC 9112 2.2: ignore leading empty lines
            request_line = await line()
        if not request_line:
            raise asyncio.IncompleteReadError(b"", None)
        try:
            method, target, version = request_line.decode("ascii").split()
        except (UnicodeDecodeError, ValueError):
            raise _BadRequest(400, "malformed request line") from None
        if not version.startswith("HTTP/1."):
            raise _BadRequest(505, "only HTTP/1.x is served")

        headers: dict[str, str] = {}
        while True:
            raw = await line()
            if raw in (b"\r\n", b"\n"):
                break
            if not raw:
                raise asyncio.IncompleteReadError(raw, None)
            if len(headers) >= _MAX_HEADERS:
                raise _BadRequest(431, "too many headers")
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest(400, "malformed header")
            headers[name.lower()] = value.strip()

        if "transfer-encoding" in headers:
            raise _BadRequest(413, "request bodies are not accepted")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise _BadRequest(400, "malformed Content-Length")
        length = int(length_text)
        if length > _MAX_DISCARDED_BODY:
            raise _BadRequest(413, "request body too large")
        if length:
            await reader.readexactly(length)

        path = urlsplit(target).path or "/"
        return _Request(method, path, headers)

    def _route(self, request: _Request) -> _Response:
        if request.path not in _PATHS:
            return _json_response(404, {"error": "not found", "paths": list(_PATHS)})
        if request.method not in _ALLOWED_METHODS:
            response = _json_response(405, {"error": "method not allowed"})
            response.extra_headers += (("Allow", ", ".join(_ALLOWED_METHODS)),)
            return response
        try:
            if request.path == "/metrics":
                return self._metrics(request)
            if request.path == "/healthz":
                return _json_response(
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
            return _json_response(200 if ready else 503, payload)
        except Exception as error:
            # A broken collector or health check must answer 500, not kill the server.
            log.exception("http.handler_failed", path=request.path)
            return _json_response(500, {"error": type(error).__name__})

    def _metrics(self, request: _Request) -> _Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        body = encoder(self.registry)
        extra: tuple[tuple[str, str], ...] = (("Cache-Control", "no-store"),)
        if len(body) >= _GZIP_MIN_BYTES and _accepts_gzip(request.headers):
            # Prometheus asks for gzip on every scrape; level 1 is plenty for text.
            body = gzip.compress(body, compresslevel=1)
            extra += (("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding"))
        return _Response(200, body, content_type, extra)

    async def _send(
        self, writer: asyncio.StreamWriter, response: _Response, head_only: bool = False
    ) -> None:
        reason = _REASONS.get(response.status, "Unknown")
        lines = [
            f"HTTP/1.1 {response.status} {reason}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            "Connection: close",
            "X-Content-Type-Options: nosniff",
            *(f"{name}: {value}" for name, value in response.extra_headers),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        writer.write(head if head_only else head + response.body)
        try:
            async with asyncio.timeout(self.write_timeout):
                await writer.drain()
        except TimeoutError:
            # A client that does not read its response is not allowed to pin the buffer.
            writer.transport.abort()


def _accepts_gzip(headers: dict[str, str]) -> bool:
    for item in headers.get("accept-encoding", "").split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False
