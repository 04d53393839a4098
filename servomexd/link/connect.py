"""Open the right link for a configured ``port``: a serial path, ``socket://`` or ``rfc2217://``.

The one place that looks at the form of ``port``; everything above it reads bytes
through ``ByteLink`` and does not care where they come from.
"""

from __future__ import annotations

from servomexd.link.endpoint import is_network_port, parse_network_port
from servomexd.link.serial import SerialLink, SerialSettings
from servomexd.link.stream import ByteLink
from servomexd.link.tcp import CONNECT_TIMEOUT

__all__ = ["describe_port", "open_link"]


async def open_link(
    settings: SerialSettings, *, connect_timeout: float = CONNECT_TIMEOUT
) -> ByteLink:
    """Open ``settings.port``; ``ServomexConnectionError`` (with the cause) when it fails.

    On ``socket://`` the line settings are the device server's own and are not sent;
    on ``rfc2217://`` they are negotiated with it.
    """
    if not is_network_port(settings.port):
        return await SerialLink.open(settings)
    endpoint = parse_network_port(settings.port)
    if endpoint.scheme == "socket":
        from servomexd.link.tcp import TcpLink

        return await TcpLink.open(endpoint, connect_timeout=connect_timeout)
    from servomexd.link.rfc2217 import Rfc2217Link

    return await Rfc2217Link.open(
        endpoint, settings.serial_kwargs(), connect_timeout=connect_timeout
    )


def describe_port(settings: SerialSettings) -> str:
    """Log-safe target: ``/dev/ttyUSB0 @19200 8N1``, ``socket://host:4001`` (the device
    server's settings rule) or ``rfc2217://host:4002 @9600 8N1`` (settings sent)."""
    if not is_network_port(settings.port):
        return settings.describe()
    endpoint = parse_network_port(settings.port)
    if endpoint.scheme == "socket":
        return endpoint.url
    return f"{endpoint.url} @{settings.baudrate} {settings.framing}"
