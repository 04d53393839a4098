"""Builds the ``SessionFactory`` of one configured device.

continuous -> ``ContinuousSessionFactory`` on the device's serial settings;
modbus_rtu / modbus_ascii / auto -> ``build_modbus_factory(device, buses)``, imported
lazily so a continuous-only daemon never loads pymodbus. ``buses`` is the daemon's one
``ModbusBusRegistry``: devices on the same port share its serial connection (RS485).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from servomexd.acquisition.base import SessionFactory
from servomexd.config import DeviceConfig

if TYPE_CHECKING:
    from servomexd.acquisition.modbus import ModbusBusRegistry


def build_session_factory(
    device: DeviceConfig, buses: ModbusBusRegistry | None = None
) -> SessionFactory:
    if device.protocol == "continuous":
        from servomexd.acquisition.continuous import ContinuousSessionFactory
        from servomexd.link.serial import SerialSettings

        settings = SerialSettings(
            port=device.port,
            baudrate=device.baudrate,
            bytesize=device.bytesize,
            parity=device.parity,
            stopbits=device.stopbits,
        )
        return ContinuousSessionFactory(
            settings, read_timeout=device.read_timeout, connect_timeout=device.connect_timeout
        )
    from servomexd.acquisition.modbus import ModbusBusRegistry, build_modbus_factory

    if buses is None:
        buses = ModbusBusRegistry()
    return build_modbus_factory(device, buses)
