"""What check-config (and start-up) can tell about the configured serial ports.

Two jobs, both on paths only (no driver is loaded, no port is configured):

* ``same_adapter_problems``: ports are compared by their resolved path, so one adapter
  named twice (``/dev/serial/by-id/...`` and ``/dev/ttyUSB0``) is caught before the two
  names fight at run time. Two continuous analysers cannot share an adapter; Modbus
  devices may (one RS485 bus) and then share one bus whatever the spelling, so their
  addresses and line settings must agree as if they were spelled alike.
* ``port_findings``: a missing port is a warning (a USB adapter may be plugged in later);
  a path that can never be a serial port is an error; a port the current user cannot
  open is reported with the group to join.

Ports given as URLs (``socket://``, ``rfc2217://``) are not paths and are skipped.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from servomexd.link.diagnose import diagnose, probe_open
from servomexd.link.endpoint import is_network_port
from servomexd.link.line import MODBUS_PROTOCOLS, LineUser, sharing_problem

__all__ = ["PortFinding", "port_findings", "same_adapter_problems"]


def _resolved(port: str) -> str:
    return os.path.realpath(port)


def same_adapter_problems(devices: Sequence[LineUser]) -> list[tuple[str, str, str]]:
    """ConfigInvalid problems for devices naming one adapter by different paths."""
    groups: dict[str, list[LineUser]] = {}
    for device in devices:
        if not is_network_port(device.port):
            groups.setdefault(_resolved(device.port), []).append(device)
    problems: list[tuple[str, str, str]] = []
    for real, shared in groups.items():
        if len({os.path.normpath(d.port) for d in shared}) < 2:
            continue  # one spelling: the model's own shared-port rules apply
        names = " and ".join(f"{d.name} (port = {d.port!r})" for d in shared)
        if not all(d.protocol in MODBUS_PROTOCOLS for d in shared):
            problems.append((
                "devices",
                "",
                f"{names} name the same adapter {real}: only Modbus devices (RS485 "
                "multidrop) may share one; give each continuous analyser its own adapter",
            ))
            continue
        problem = sharing_problem(shared)
        if problem is not None:
            problems.append(("devices", "", f"{names} are one bus ({real}): {problem}"))
    return problems


@dataclass(frozen=True, slots=True)
class PortFinding:
    """``error`` when the port can never work, else a warning."""

    device: str
    port: str
    error: bool
    text: str

    def line(self) -> str:
        level = "error" if self.error else "warning"
        return f"{level}: device {self.device}: port {self.port}: {self.text}"


def port_findings(devices: Sequence[LineUser]) -> list[PortFinding]:
    """Each configured port as the current user sees it (run check-config as the service
    user, ``sudo -u servomexd``, to check what the daemon will see)."""
    findings: list[PortFinding] = []
    seen: set[str] = set()
    for device in devices:
        port = device.port
        if is_network_port(port) or port in seen:
            continue
        seen.add(port)
        try:
            st = os.stat(port)
        except FileNotFoundError:
            findings.append(PortFinding(
                device.name, port, False,
                f"{diagnose(port)}; fine if the adapter is plugged in later: the daemon "
                "retries until it appears",
            ))
            continue
        except OSError as exc:
            findings.append(PortFinding(device.name, port, False, str(diagnose(port, exc))))
            continue
        if not stat.S_ISCHR(st.st_mode):
            findings.append(PortFinding(device.name, port, True, str(diagnose(port))))
            continue
        problem = probe_open(port)
        if problem is not None:
            diagnosis = diagnose(port, problem)
            # A non-tty character device (/dev/null) never works; the rest may be fixed.
            findings.append(PortFinding(
                device.name, port, diagnosis.kind == "not_a_tty", str(diagnosis)
            ))
    return findings
