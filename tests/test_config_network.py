"""check-config for network ports: URL validation, modbus_tcp, the socket:// baud warning."""

from __future__ import annotations

from pathlib import Path

import pytest

from servomexd.check import check_config
from servomexd.config import EX_CONFIG, ConfigInvalid, load_settings


def write(tmp_path: Path, devices: str) -> Path:
    path = tmp_path / "servomexd.toml"
    path.write_text(devices)
    return path


def device(port: str, extra: str = "") -> str:
    return f'[[devices]]\nname = "a"\nport = "{port}"\n{extra}'


@pytest.mark.parametrize(
    ("port", "canonical"),
    [
        ("socket://10.20.0.15:4001", "socket://10.20.0.15:4001"),
        ("rfc2217://ds-4.plant:4002", "rfc2217://ds-4.plant:4002"),
        ("socket://[fd00::15]:4001", "socket://[fd00::15]:4001"),
        ("SOCKET://host:4001", "socket://host:4001"),
    ],
)
def test_good_urls(tmp_path: Path, port: str, canonical: str) -> None:
    settings = load_settings(write(tmp_path, device(port)))
    assert settings.devices[0].port == canonical
    assert settings.devices[0].connect_timeout == 5.0


@pytest.mark.parametrize(
    ("port", "reason"),
    [
        ("tcp://10.0.0.1:4001", "unsupported scheme 'tcp'"),
        ("socket://10.0.0.1", "missing :PORT"),
        ("socket://10.0.0.1:70000", "1-65535"),
        ("socket://:4001", "missing host"),
        ("socket://fd00::15:4001", "in brackets"),
        ("rfc2217://bad_host:4001", "not a valid host name"),
    ],
)
def test_bad_urls_name_the_field_and_the_reason(
    tmp_path: Path, port: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, device(port))
    with pytest.raises(ConfigInvalid) as info:
        load_settings(path)
    assert any(p[0] == "devices[0].port" and reason in p[2] for p in info.value.problems)
    assert check_config(str(path)) == EX_CONFIG
    assert "devices[0].port" in capsys.readouterr().err


def test_modbus_tcp_with_a_device_path_exits_78_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, device("/dev/ttyUSB0", 'protocol = "modbus_tcp"\n'))
    assert check_config(str(path)) == EX_CONFIG
    err = capsys.readouterr().err
    assert "devices[0].protocol" in err and "socket://HOST:PORT" in err and "/dev/ttyUSB0" in err


def test_modbus_tcp_needs_socket_not_rfc2217(tmp_path: Path) -> None:
    with pytest.raises(ConfigInvalid) as info:
        load_settings(write(tmp_path, device("rfc2217://h:1", 'protocol = "modbus_tcp"\n')))
    assert any(p[0] == "devices[0].protocol" for p in info.value.problems)


def test_modbus_tcp_on_a_gateway(tmp_path: Path) -> None:
    text = device("socket://10.20.0.18:502", 'protocol = "modbus_tcp"\naddress = 31\n')
    text += device("socket://10.20.0.18:502", 'protocol = "modbus_tcp"\naddress = 32\n').replace(
        '"a"', '"b"'
    )
    settings = load_settings(write(tmp_path, text))
    assert [d.address for d in settings.devices] == [31, 32]
    assert all(d.max_in_flight == 1 for d in settings.devices)


def test_more_than_one_request_in_flight_is_refused(tmp_path: Path) -> None:
    extra = 'protocol = "modbus_tcp"\nmax_in_flight = 2\n'
    with pytest.raises(ConfigInvalid) as info:
        load_settings(write(tmp_path, device("socket://gw:502", extra)))
    assert any(p[0] == "devices[0].max_in_flight" for p in info.value.problems)


def test_a_baud_rate_on_socket_is_a_warning_and_on_rfc2217_is_fine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check_config(str(write(tmp_path, device("socket://h:4001", "baudrate = 9600\n")))) == 0
    err = capsys.readouterr().err
    assert "warning: devices[0] (a): baudrate ignored on socket://" in err
    assert check_config(str(write(tmp_path, device("rfc2217://h:4001", "baudrate = 9600\n")))) == 0
    assert "warning" not in capsys.readouterr().err
    assert check_config(str(write(tmp_path, device("socket://h:4001")))) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("protocol", ["modbus_rtu", "modbus_ascii", "auto"])
def test_modbus_and_auto_over_rfc2217_are_accepted(tmp_path: Path, protocol: str) -> None:
    text = device("rfc2217://h:4001", f'protocol = "{protocol}"\nbaudrate = 9600\n')
    assert load_settings(write(tmp_path, text)).devices[0].protocol == protocol


def test_rtu_devices_on_one_device_server_share_a_bus(tmp_path: Path) -> None:
    text = device("socket://ds:4001", 'protocol = "modbus_rtu"\naddress = 1\n')
    text += device("socket://ds:4001", 'protocol = "modbus_rtu"\naddress = 1\n').replace(
        '"a"', '"b"'
    )
    with pytest.raises(ConfigInvalid, match="invalid") as info:
        load_settings(write(tmp_path, text))
    assert "distinct Modbus addresses" in info.value.lines()[0]
