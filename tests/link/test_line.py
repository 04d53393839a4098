"""servomexd/link/line.py: the line a device opens and which devices may share one."""

from __future__ import annotations

from typing import Any

import pytest

from servomexd.config import DeviceConfig
from servomexd.link.line import line_of, port_key, sharing_problem


def dev(name: str, **overrides: Any) -> DeviceConfig:
    settings: dict[str, Any] = {"name": name, "port": "/dev/rs485", "protocol": "modbus_rtu"}
    settings.update(overrides)
    return DeviceConfig(**settings)


def test_line_of_is_the_device_line() -> None:
    device = dev("a", baudrate=9600, bytesize=7, parity="E", stopbits=2)
    assert line_of(device) == {
        "port": "/dev/rs485", "baudrate": 9600, "bytesize": 7, "parity": "E", "stopbits": 2
    }


def test_port_key_counts_spellings_of_one_path_as_one_port() -> None:
    assert port_key("/dev/serial/by-id/../by-id/x") == port_key("/dev/serial/by-id/x")
    assert port_key("/dev/ttyUSB0") != port_key("/dev/ttyUSB1")


@pytest.mark.parametrize(
    ("second", "problem"),
    [
        ({"address": 2}, None),
        ({"address": 2, "protocol": "auto"}, None),
        ({"address": 2, "protocol": "continuous"}, "only Modbus devices"),
        ({"address": 1}, "distinct Modbus addresses"),
        ({"address": 2, "baudrate": 9600}, "must share baudrate"),
        ({"address": 2, "parity": "E"}, "must share baudrate"),
        ({"address": 2, "protocol": "modbus_ascii"}, "share one protocol"),
    ],
)
def test_sharing_problem(second: dict[str, Any], problem: str | None) -> None:
    found = sharing_problem([dev("a", address=1), dev("b", **second)])
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found and "/dev/rs485" in found


def test_one_device_never_conflicts() -> None:
    assert sharing_problem([dev("a", protocol="continuous")]) is None
