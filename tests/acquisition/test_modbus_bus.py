"""ModbusBusRegistry: one adapter is one bus, whatever the path it is named by."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from servomexd.acquisition.modbus_bus import BusSettings, ModbusBusRegistry
from servomexd.model import ProtocolKind


@dataclass(frozen=True)
class Slave:
    """A configured Modbus device as the registry's sharing rule sees it."""

    name: str
    port: str
    address: int
    protocol: str = "modbus_rtu"
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1


def test_two_spellings_of_one_adapter_share_the_bus(tmp_path: Path, pty_path: str) -> None:
    alias = tmp_path / "servomex-rs485"
    alias.symlink_to(pty_path)
    registry = ModbusBusRegistry()
    registry.declare(Slave("a", str(alias), 1))
    registry.declare(Slave("b", pty_path, 2))
    first = registry.bus(BusSettings(str(alias), ProtocolKind.MODBUS_RTU))
    second = registry.bus(BusSettings(pty_path, ProtocolKind.MODBUS_RTU))
    assert first is second
    assert first.settings.port == str(alias)  # the first spelling: stable across a replug


def test_different_adapters_stay_apart(tmp_path: Path) -> None:
    registry = ModbusBusRegistry()
    a = registry.bus(BusSettings(str(tmp_path / "x"), ProtocolKind.MODBUS_RTU))
    b = registry.bus(BusSettings(str(tmp_path / "y"), ProtocolKind.MODBUS_RTU))
    assert a is not b
