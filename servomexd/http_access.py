"""Who may talk to the metrics endpoint: its TLS context (reloaded when the files change)
and the basic-auth check with its 401 answer and counter.

Both come from one ``WebSecurity`` (servomexd.webconfig); ``servomexd.http`` asks them
once per connection (TLS) and once per request (auth) and knows nothing else of either.
"""

from __future__ import annotations

import contextlib
import ssl

import structlog
from prometheus_client import CollectorRegistry, Counter

from servomexd.errors import ServomexConfigError
from servomexd.http_wire import Request, Response, json_response
from servomexd.webconfig import REALM, BasicAuth, WebSecurity

log = structlog.get_logger(__name__)


class ServerCertificate:
    """The endpoint's TLS context; a rotated certificate or key serves the next
    connections without a restart."""

    def __init__(self, security: WebSecurity) -> None:
        self.security = security
        self.context: ssl.SSLContext | None = None
        self._stamp: tuple[tuple[int, int], ...] = ()

    def load(self) -> ssl.SSLContext | None:
        """Build the context (None for plain HTTP); ``ServomexConfigError`` when a file is bad."""
        self.context = self.security.ssl_context()
        self._stamp = self.security.file_stamp()
        return self.context

    def reload_if_changed(self) -> None:
        """Load a replaced pair into the live context (a connection that already completed
        its handshake keeps the old one). A half-written pair keeps the old one, logged."""
        if self.context is None:
            return
        stamp = self.security.file_stamp()
        if stamp == self._stamp:
            return
        try:
            self.security.load_certificate(self.context)
        except ServomexConfigError as exc:
            log.error("metrics.certificate_reload_failed", error=exc.message)
            return
        finally:
            self._stamp = stamp
        log.info("metrics.certificate_reloaded", cert_file=str(self.security.cert_file))


class AuthGate:
    """Basic auth on every path but the public ones; refusals are counted by reason."""

    def __init__(self, security: WebSecurity) -> None:
        self.security = security
        self._auth = BasicAuth(security.users) if security.users else None
        self.unauthorized = Counter(
            "servomexd_http_unauthorized_requests",
            "Requests refused with 401 by basic auth, by reason (missing or invalid).",
            ["reason"],
            registry=None,
        )
        for reason in ("missing", "invalid"):
            self.unauthorized.labels(reason)

    def register(self, registry: CollectorRegistry) -> None:
        """Expose the refusal counter (a restarted server finds it already registered)."""
        with contextlib.suppress(ValueError):
            registry.register(self.unauthorized)

    def unregister(self, registry: CollectorRegistry) -> None:
        """Withdraw the refusal counter; a no-op when it was never registered."""
        with contextlib.suppress(KeyError):
            registry.unregister(self.unauthorized)

    async def refusal(self, request: Request) -> Response | None:
        """The 401 to send, or None when the request may be served."""
        if self._auth is None or request.path in self.security.public_paths:
            return None
        verdict = await self._auth.check(request.headers.get("authorization"))
        if verdict == "ok":
            return None
        self.unauthorized.labels(verdict).inc()
        response = json_response(401, {"error": "authentication required"})
        response.extra_headers += (
            ("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'),
        )
        return response
