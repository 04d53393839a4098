"""The device settings acquisition reads, as structural protocols.

Acquisition never imports ``config``: a session factory is given any object with
these read-only attributes (``config.DeviceConfig`` fits, and so does a small
dataclass in a test or a bench).
"""

from __future__ import annotations

from typing import Protocol

from servomexd.link.line import LineUser, SerialLineSettings


class ContinuousDeviceSettings(SerialLineSettings, Protocol):
    """What a continuous-mode session reads: the line, the read and connect bounds."""

    @property
    def read_timeout(self) -> float: ...
    @property
    def connect_timeout(self) -> float: ...


class ModbusDeviceSettings(LineUser, Protocol):
    """What a Modbus session reads: the line, the slave address and the poll timing."""

    @property
    def poll_interval(self) -> float: ...
    @property
    def inter_request_delay(self) -> float: ...
    @property
    def request_timeout(self) -> float: ...
    @property
    def retries(self) -> int: ...
    @property
    def timeout_streak(self) -> int: ...
    @property
    def expected_frame_period(self) -> float: ...


class DeviceSettings(ContinuousDeviceSettings, ModbusDeviceSettings, Protocol):
    """Everything a session factory may read (AUTO may end in either mode)."""


__all__ = ["ContinuousDeviceSettings", "DeviceSettings", "ModbusDeviceSettings"]
