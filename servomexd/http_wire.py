"""HTTP/1.1 on the wire for the metrics endpoint: read one bounded request head, write one response.

Kept apart from ``servomexd.http`` (which decides *what* to answer) so that the
parsing rules (size limits, header count, the body that is read and thrown away)
and the response framing can be read, and changed, in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEADERS = 64
MAX_DISCARDED_BODY = 64 * 1024
"""A GET/HEAD/POST body up to this size is read and thrown away before answering, so
closing the socket does not reset the connection under the client's feet; larger bodies
get 413."""
LINGER_SECONDS = 0.5
LINGER_MAX_BYTES = 1 << 20

REASONS = {
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


class BadRequest(Exception):
    """A request head that cannot be served; ``status`` is the answer it gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Request:
    """The parts of a request the endpoint looks at."""

    method: str
    path: str
    headers: dict[str, str]


@dataclass(slots=True)
class Response:
    """One complete response; the body is always sent with its Content-Length."""

    status: int
    body: bytes
    content_type: str = "application/json"
    extra_headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, payload: dict[str, object]) -> Response:
    """A JSON answer that no cache keeps (health and errors change from one call to the next)."""
    body = json.dumps(payload, default=str, sort_keys=True).encode() + b"\n"
    return Response(status, body, "application/json", (("Cache-Control", "no-store"),))


class _HeadReader:
    """Reads lines of one request head, counting them against the head's size limit."""

    def __init__(self, reader: asyncio.StreamReader, max_bytes: int) -> None:
        self._reader = reader
        self._max_bytes = max_bytes
        self._total = 0

    async def line(self) -> bytes:
        try:
            raw = await self._reader.readline()
        except ValueError:  # longer than the stream limit
            raise BadRequest(431, "request line or header too long") from None
        self._total += len(raw)
        if self._total > self._max_bytes:
            raise BadRequest(431, "request head too large")
        if raw and not raw.endswith(b"\n"):
            raise asyncio.IncompleteReadError(raw, None)
        return raw


async def read_request(reader: asyncio.StreamReader, max_bytes: int) -> Request:
    """Parse the request line and headers, then drain a small body if one was sent."""
    head = _HeadReader(reader, max_bytes)
    request_line = await head.line()
    while request_line in (b"\r\n", b"\n"):  # RFC 9112 2.2: ignore leading empty lines
        request_line = await head.line()
    if not request_line:
        raise asyncio.IncompleteReadError(b"", None)
    try:
        method, target, version = request_line.decode("ascii").split()
    except (UnicodeDecodeError, ValueError):
        raise BadRequest(400, "malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise BadRequest(505, "only HTTP/1.x is served")
    headers = await _read_headers(head)
    await _discard_body(reader, headers)
    path = urlsplit(target).path or "/"
    return Request(method, path, headers)


async def _read_headers(head: _HeadReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    while True:
        raw = await head.line()
        if raw in (b"\r\n", b"\n"):
            return headers
        if not raw:
            raise asyncio.IncompleteReadError(raw, None)
        if len(headers) >= MAX_HEADERS:
            raise BadRequest(431, "too many headers")
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "malformed header")
        headers[name.lower()] = value.strip()


async def _discard_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
    if "transfer-encoding" in headers:
        raise BadRequest(413, "request bodies are not accepted")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise BadRequest(400, "malformed Content-Length")
    length = int(length_text)
    if length > MAX_DISCARDED_BODY:
        raise BadRequest(413, "request body too large")
    if length:
        await reader.readexactly(length)


async def send(
    writer: asyncio.StreamWriter,
    response: Response,
    *,
    write_timeout: float,
    head_only: bool = False,
) -> None:
    """Write the response; a client that does not take it within the timeout is cut off."""
    reason = REASONS.get(response.status, "Unknown")
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
        async with asyncio.timeout(write_timeout):
            await writer.drain()
    except TimeoutError:
        # A client that does not read its response is not allowed to pin the buffer.
        writer.transport.abort()


async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Discard what the client still sends for a moment after an early answer: closing
    with unread input resets the connection and the client would lose the answer (the
    "lingering close" of RFC 9112 9.6)."""
    if writer.transport.is_closing():
        return
    with contextlib.suppress(Exception):
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(LINGER_SECONDS):
            discarded = 0
            while discarded < LINGER_MAX_BYTES:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                discarded += len(chunk)


def accepts_gzip(headers: dict[str, str]) -> bool:
    """Whether Accept-Encoding allows gzip (a ``q=0`` refuses it)."""
    for item in headers.get("accept-encoding", "").split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False
