"""servomexd.http_wire: one request head read within its limits, one response framed."""

from __future__ import annotations

import asyncio

import pytest

from servomexd.http_wire import (
    MAX_DISCARDED_BODY,
    MAX_HEADERS,
    BadRequest,
    accepts_gzip,
    read_request,
)


def reader_of(data: bytes, limit: int = 8192) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=limit)
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_request_line_headers_and_a_small_body() -> None:
    raw = b"\r\nGET /metrics?x=1 HTTP/1.1\r\nAccept: text/plain\r\nContent-Length: 3\r\n\r\nabc"
    reader = reader_of(raw)
    request = await read_request(reader, 8192)
    assert (request.method, request.path) == ("GET", "/metrics")
    assert request.headers == {"accept": "text/plain", "content-length": "3"}
    assert await reader.read() == b""  # the body was read and thrown away


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (b"GET /\r\n\r\n", 400, "malformed request line"),
        (b"GET / HTTP/2\r\n\r\n", 505, "only HTTP/1.x is served"),
        (b"GET / HTTP/1.1\r\n no-name: x\r\n\r\n", 400, "malformed header"),
        (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "malformed Content-Length"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 413,
         "request bodies are not accepted"),
        (f"POST / HTTP/1.1\r\nContent-Length: {MAX_DISCARDED_BODY + 1}\r\n\r\n".encode(), 413,
         "request body too large"),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
         + b"\r\n", 431, "too many headers"),
    ],
)  # fmt: skip
async def test_refusals_name_their_status(raw: bytes, status: int, message: str) -> None:
    with pytest.raises(BadRequest) as refused:
        await read_request(reader_of(raw), 8192)
    assert (refused.value.status, refused.value.message) == (status, message)


async def test_the_head_as_a_whole_is_bounded() -> None:
    raw = b"GET / HTTP/1.1\r\n" + b"x-pad: " + b"a" * 90 + b"\r\n" + b"\r\n"
    with pytest.raises(BadRequest) as refused:
        await read_request(reader_of(raw), 100)
    assert (refused.value.status, refused.value.message) == (431, "request head too large")


async def test_a_line_longer_than_the_stream_limit() -> None:
    raw = b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n\r\n"
    with pytest.raises(BadRequest) as refused:
        await read_request(reader_of(raw, limit=64), 8192)
    assert (refused.value.status, refused.value.message) == (
        431, "request line or header too long"
    )


async def test_a_head_cut_short_is_an_incomplete_read() -> None:
    with pytest.raises(asyncio.IncompleteReadError):
        await read_request(reader_of(b"GET / HTTP/1.1\r\nHost: x"), 8192)


@pytest.mark.parametrize(
    ("header", "accepted"),
    [("gzip", True), ("br, GZIP;q=0.5", True), ("gzip;q=0", False), ("gzip; q=0.000", False),
     ("deflate", False), ("", False)],
)  # fmt: skip
def test_accepts_gzip(header: str, accepted: bool) -> None:
    assert accepts_gzip({"accept-encoding": header} if header else {}) is accepted
