"""Parsing socket:// and rfc2217:// ports."""

from __future__ import annotations

import pytest

from servomexd.link.endpoint import NetworkEndpoint, is_network_port, parse_network_port


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("socket://10.20.0.15:4001", NetworkEndpoint("socket", "10.20.0.15", 4001)),
        (
            "rfc2217://ds-3.plant.example:4002",
            NetworkEndpoint("rfc2217", "ds-3.plant.example", 4002),
        ),
        ("SOCKET://host:1", NetworkEndpoint("socket", "host", 1)),
        ("socket://[fe80::1]:502", NetworkEndpoint("socket", "fe80::1", 502)),
        ("rfc2217://[::1]:65535", NetworkEndpoint("rfc2217", "::1", 65535)),
    ],
)
def test_good_urls(text: str, expected: NetworkEndpoint) -> None:
    assert is_network_port(text)
    assert parse_network_port(text) == expected


def test_ipv6_url_keeps_its_brackets() -> None:
    assert parse_network_port("socket://[::1]:4001").url == "socket://[::1]:4001"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("tcp://10.0.0.1:4001", "unsupported scheme 'tcp'"),
        ("socket://10.0.0.1", "missing :PORT"),
        ("socket://:4001", "missing host"),
        ("socket://10.0.0.1:0", "1-65535"),
        ("socket://10.0.0.1:65536", "1-65535"),
        ("socket://10.0.0.1:http", "1-65535"),
        ("socket://::1:4001", "IPv6 literal must be in brackets"),
        ("socket://[10.0.0.1]:4001", "not an IPv6 address"),
        ("socket://[::1]4001", "[ADDRESS]:PORT"),
        ("socket://host_name:4001", "not a valid host name"),
        ("socket://host:4001/path", "no path"),
        ("rfc2217://host:4001?logging=debug", "no path, options"),
    ],
)
def test_bad_urls_say_why(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("[", r"\[").replace("]", r"\]")):
        parse_network_port(text)


def test_device_paths_are_not_urls() -> None:
    assert not is_network_port("/dev/serial/by-id/usb-FTDI-if00-port0")
    assert not is_network_port("COM3")
