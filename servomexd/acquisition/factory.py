"""Builds the ``SessionFactory`` of one configured device: the one place that picks a mode.

continuous -> ``ContinuousSessionFactory`` on the device's line; modbus_rtu /
modbus_ascii -> ``build_modbus_factory``; auto -> ``AutoSessionFactory``, which probes
with Modbus sessions and may hand over to a continuous one. The Modbus modules are
imported lazily so a continuous-only daemon never loads pymodbus. ``buses`` is the
daemon's one ``ModbusBusRegistry``: devices on the same port share its serial
connection (RS485).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from servomexd.acquisition.base import SessionFactory
from servomexd.acquisition.settings import DeviceSettings

if TYPE_CHECKING:
    from servomexd.acquisition.modbus_bus import ModbusBusRegistry


def build_session_factory(
    device: DeviceSettings, buses: ModbusBusRegistry | None = None
) -> SessionFactory:
    if device.protocol == "continuous":
        from servomexd.acquisition.continuous import ContinuousSessionFactory

        return ContinuousSessionFactory.for_device(device)
    from servomexd.acquisition.modbus_bus import ModbusBusRegistry

    if buses is None:
        buses = ModbusBusRegistry()
    if device.protocol == "auto":
        from servomexd.acquisition.auto import AutoSessionFactory

        buses.declare(device)
        return AutoSessionFactory(device, buses)
    from servomexd.acquisition.modbus import build_modbus_factory

    return build_modbus_factory(device, buses)
