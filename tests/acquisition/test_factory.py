"""servomexd/acquisition/factory.py: the right SessionFactory per configured protocol."""

from __future__ import annotations

import pytest

from servomexd.acquisition.continuous import ContinuousSessionFactory
from servomexd.acquisition.factory import build_session_factory
from servomexd.config import DeviceConfig
from servomexd.errors import ServomexConnectionError


def test_continuous_device_gets_its_serial_settings() -> None:
    device = DeviceConfig(
        name="a", port="/dev/ttyX", baudrate=9600, parity="E", bytesize=7, stopbits=2,
        read_timeout=0.5,
    )
    factory = build_session_factory(device)
    assert isinstance(factory, ContinuousSessionFactory)
    settings = factory.settings
    assert (settings.port, settings.baudrate, settings.parity, settings.bytesize,
            settings.stopbits) == ("/dev/ttyX", 9600, "E", 7, 2)  # fmt: skip
    assert "9600" in factory.description


@pytest.mark.parametrize("protocol", ["modbus_rtu", "modbus_ascii", "auto"])
def test_modbus_devices_share_one_bus_registry(protocol: str) -> None:
    from servomexd.acquisition.modbus import ModbusBusRegistry

    buses = ModbusBusRegistry()
    device = DeviceConfig(name="m", port="/dev/ttyM", protocol=protocol, address=7)
    factory = build_session_factory(device, buses)
    assert not isinstance(factory, ContinuousSessionFactory)
    assert "/dev/ttyM" in factory.description


async def test_missing_port_raises_connection_error() -> None:
    factory = build_session_factory(DeviceConfig(name="a", port="/nonexistent/ttyQ"))
    with pytest.raises(ServomexConnectionError):
        await factory.open()


def test_auto_device_gets_the_auto_factory_and_declares_its_line() -> None:
    from servomexd.acquisition.auto import AutoSessionFactory
    from servomexd.acquisition.modbus import ModbusBusRegistry
    from servomexd.errors import ServomexConfigError

    buses = ModbusBusRegistry()
    device = DeviceConfig(name="m", port="/dev/ttyM", protocol="auto", address=7)
    assert isinstance(build_session_factory(device, buses), AutoSessionFactory)
    # The same address on the same line is refused while building, as configuration does.
    twin = DeviceConfig(name="n", port="/dev/ttyM", protocol="modbus_rtu", address=7)
    with pytest.raises(ServomexConfigError, match="distinct Modbus addresses"):
        build_session_factory(twin, buses)
