"""What a serial line is, and which devices may share one: the rules, without the port.

Pure and free of pyserial, so configuration checks (``check-config``) and the Modbus
bus registry apply the same rules without opening or importing anything. A device
settings object (``config.DeviceConfig`` fits) is read structurally.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol, TypedDict

BAUDRATES: tuple[int, ...] = (
    300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400,
)  # fmt: skip
"""Standard rates accepted in configuration. The 4000 series speaks 2400-19200; a
rate outside the standard set is nearly always a typo (1920, 192000)."""

MODBUS_PROTOCOLS = frozenset({"modbus_rtu", "modbus_ascii", "modbus_tcp", "auto"})
"""The ``protocol`` values of devices that may share a line (RS485 multidrop, or one
Modbus TCP gateway: one connection, one request at a time)."""


class SerialLineSettings(Protocol):
    """The line settings of a configured device (read-only)."""

    @property
    def port(self) -> str: ...
    @property
    def baudrate(self) -> int: ...
    @property
    def bytesize(self) -> int: ...
    @property
    def parity(self) -> str: ...
    @property
    def stopbits(self) -> int: ...


class FramedLine(SerialLineSettings, Protocol):
    """Line settings and the protocol spoken on the line."""

    @property
    def protocol(self) -> str: ...


class LineUser(FramedLine, Protocol):
    """A configured device as the sharing rule sees it."""

    @property
    def name(self) -> str: ...
    @property
    def address(self) -> int: ...


class Line(TypedDict):
    """A device's line settings as keyword arguments (``SerialSettings(**line_of(d))``)."""

    port: str
    baudrate: int
    bytesize: int
    parity: str
    stopbits: int


def line_of(device: SerialLineSettings) -> Line:
    """The one mapping from a device's settings to the line it opens."""
    return Line(
        port=device.port,
        baudrate=device.baudrate,
        bytesize=device.bytesize,
        parity=device.parity,
        stopbits=device.stopbits,
    )


def port_key(port: str) -> str:
    """Which configured ports are the same line.

    The configured path, not its target: a replugged adapter behind a by-id link comes
    back as another ttyUSBn and must still be the same line. (Naming one adapter by two
    paths gives two lines; the second open then fails as busy.)
    """
    return os.path.normpath(port)


def describe_line(line: FramedLine) -> str:
    """Log-safe ``modbus_rtu 19200 8N1``."""
    return f"{line.protocol} {line.baudrate} {line.bytesize}{line.parity}{line.stopbits}"


def sharing_problem(devices: Sequence[LineUser]) -> str | None:
    """Why these devices, all configured on one port, cannot share it; ``None`` if they can.

    Only Modbus slaves share a line (RS485 multidrop), each at its own address, all at
    one baud rate and character format and one framing (an ``auto`` device adopts the
    framing in use). Devices on separate ports never conflict.
    """
    if len(devices) < 2:
        return None
    port = devices[0].port
    if not all(device.protocol in MODBUS_PROTOCOLS for device in devices):
        names = ", ".join(device.name for device in devices)
        return (
            f"port {port} is shared by {names}: only Modbus devices (RS485 multidrop) "
            "may share a port"
        )
    if len({device.address for device in devices}) != len(devices):
        return f"devices on port {port} need distinct Modbus addresses"
    formats = {
        tuple(value for key, value in line_of(device).items() if key != "port")
        for device in devices
    }
    if len(formats) != 1:
        return f"devices on port {port} must share baudrate, bytesize, parity and stopbits"
    if len({device.protocol for device in devices} - {"auto"}) > 1:
        return (
            f"devices on port {port} must share one protocol "
            "(modbus_rtu, modbus_ascii or modbus_tcp)"
        )
    return None


__all__ = [
    "BAUDRATES",
    "MODBUS_PROTOCOLS",
    "FramedLine",
    "Line",
    "LineUser",
    "SerialLineSettings",
    "describe_line",
    "line_of",
    "port_key",
    "sharing_problem",
]
