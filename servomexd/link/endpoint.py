"""Where a device's bytes come from: a local serial path or a network URL.

``port`` in the configuration is either a device path (``/dev/serial/by-id/...``)
or one of pyserial's URL forms for a serial device server:

* ``socket://HOST:PORT``: raw TCP to a device server in "TCP server" mode (the bytes
  of the serial line, nothing else; the server's own serial settings apply);
* ``rfc2217://HOST:PORT``: Telnet with RFC 2217, so baud rate, parity and stop bits
  are set from here.

Pure and synchronous (check-config uses it without loading any driver). The host is
kept as written, never resolved here: it is resolved at every connect, so a device
server that moved to another address (a new DHCP lease) is followed.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["NETWORK_SCHEMES", "NetworkEndpoint", "is_network_port", "parse_network_port"]

Scheme = Literal["socket", "rfc2217"]
NETWORK_SCHEMES: tuple[Scheme, ...] = ("socket", "rfc2217")

_HOSTNAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*\.?")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True, slots=True)
class NetworkEndpoint:
    """A parsed ``socket://`` or ``rfc2217://`` port. ``host`` has no brackets."""

    scheme: Scheme
    host: str
    port: int

    @property
    def url(self) -> str:
        """The canonical URL (IPv6 literals in brackets), as pyserial expects it."""
        return f"{self.scheme}://{self.netloc}"

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return self.url


def is_network_port(port: str) -> bool:
    """True when ``port`` is written as a URL (``scheme://...``), valid or not."""
    return _SCHEME.match(port.strip()) is not None


def parse_network_port(port: str) -> NetworkEndpoint:
    """Parse ``socket://HOST:PORT`` / ``rfc2217://HOST:PORT``; ``ValueError`` says why not.

    Options after ``?`` (pyserial's ``?logging=debug`` and the like) are refused: they
    would change the link's behaviour behind the configuration's back.
    """
    text = port.strip()
    match = _SCHEME.match(text)
    if match is None:
        raise ValueError("not a URL: expected socket://HOST:PORT or rfc2217://HOST:PORT")
    scheme = match.group(1).lower()
    if scheme not in NETWORK_SCHEMES:
        raise ValueError(
            f"unsupported scheme {scheme!r}: use socket://HOST:PORT (raw TCP) or "
            "rfc2217://HOST:PORT (RFC 2217)"
        )
    rest = text[match.end() :]
    if any(mark in rest for mark in "?#/@"):
        raise ValueError("must be exactly SCHEME://HOST:PORT (no path, options or user)")
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket or not after.startswith(":"):
            raise ValueError("an IPv6 literal must be written [ADDRESS]:PORT")
        port_text = after[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon:
            raise ValueError("missing :PORT (device servers have no default port)")
        if ":" in host:
            raise ValueError("an IPv6 literal must be in brackets: [ADDRESS]:PORT")
        if not host:
            raise ValueError("missing host")
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{host!r} is not a valid host name or IPv4 address")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"TCP port {port_text!r} must be a number 1-65535")
    return NetworkEndpoint("socket" if scheme == "socket" else "rfc2217", host, int(port_text))
