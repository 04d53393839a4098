"""servomexd.portcheck: ports compared by resolved path, and what check-config reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from servomexd.config import DeviceConfig
from servomexd.portcheck import port_findings, same_adapter_problems


def device(name: str, port: str | Path, **extra: Any) -> DeviceConfig:
    return DeviceConfig(name=name, port=str(port), **extra)


def test_two_continuous_devices_on_one_adapter(tmp_path: Path, pty_path: str) -> None:
    alias = tmp_path / "servomex-a"
    alias.symlink_to(pty_path)
    (problem,) = same_adapter_problems([device("a", alias), device("b", pty_path)])
    loc, shown, reason = problem
    assert (loc, shown) == ("devices", "")
    assert f"a (port = '{alias}') and b (port = '{pty_path}') name the same adapter" in reason
    assert "only Modbus devices" in reason


def test_modbus_on_one_adapter_is_one_bus(tmp_path: Path, pty_path: str) -> None:
    alias = tmp_path / "rs485"
    alias.symlink_to(pty_path)
    bus = {"protocol": "modbus_rtu"}
    assert same_adapter_problems(
        [device("a", alias, address=1, **bus), device("b", pty_path, address=2, **bus)]
    ) == []
    (clash,) = same_adapter_problems(
        [device("a", alias, address=1, **bus), device("b", pty_path, address=1, **bus)]
    )
    assert "need distinct Modbus addresses" in clash[2]
    (rates,) = same_adapter_problems(
        [device("a", alias, address=1, **bus),
         device("b", pty_path, address=2, baudrate=9600, **bus)]
    )  # fmt: skip
    assert "must share baudrate" in rates[2]


def test_distinct_or_missing_ports_and_urls_are_not_aliases(tmp_path: Path) -> None:
    devices = [
        device("a", tmp_path / "x"), device("b", tmp_path / "y"),
        device("c", "socket://127.0.0.1:4001"), device("d", "socket://127.0.0.1:4002"),
    ]  # fmt: skip
    assert same_adapter_problems(devices) == []


def test_findings(tmp_path: Path, pty_path: str) -> None:
    (tmp_path / "file").write_text("")
    findings = {
        f.device: f
        for f in port_findings([
            device("missing", tmp_path / "ttyUSB9"),
            device("file", tmp_path / "file"),
            device("dir", tmp_path),
            device("null", "/dev/null"),
            device("pty", pty_path),
            device("url", "rfc2217://10.0.0.5:2217"),
        ])
    }  # fmt: skip
    assert set(findings) == {"missing", "file", "dir", "null"}
    assert not findings["missing"].error and "plugged in later" in findings["missing"].text
    assert findings["file"].error and "regular file" in findings["file"].text
    assert findings["dir"].error and "directory" in findings["dir"].text
    assert findings["null"].error and "not a tty" in findings["null"].text
    assert findings["file"].line() == (
        f"error: device file: port {tmp_path / 'file'}: not a tty: it is a regular file, "
        "not a serial device"
    )
