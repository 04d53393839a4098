"""``servomexd check-config``: the configuration as the daemon would load it, reviewed.

Three reviews beyond loading (which already refuses every invalid setting): settings
that cannot apply (``DeviceConfig.warnings``), transport security (``tls_check``) and,
unless skipped, the serial ports themselves (``portcheck``). Then the effective
configuration is printed with every secret masked.
"""

from __future__ import annotations

import os
import sys

from servomexd.config import (
    EX_CONFIG,
    ConfigInvalid,
    config_path,
    effective_config,
    load_settings,
    password_source,
    to_toml,
)
from servomexd.errors import ServomexConfigError
from servomexd.portcheck import port_findings
from servomexd.tls_check import security_findings

__all__ = ["check_config"]


def check_config(path: str | os.PathLike[str] | None, *, port_check: bool = True) -> int:
    """``servomexd check-config``: print the effective config (masked) or every problem.

    With ``port_check`` the serial ports are looked at too (``--no-port-check`` skips it
    when building an image, where the adapters are absent): a port that can never work is
    an error (exit 78), one that may yet appear or be fixed is a warning (exit 0).
    """
    try:
        settings = load_settings(path)
    except ConfigInvalid as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EX_CONFIG
    except ServomexConfigError as exc:
        print(f"servomexd: {exc.message}", file=sys.stderr)
        return EX_CONFIG
    problems, warnings = security_findings(settings)
    for warning in warnings:
        print(f"servomexd: warning: {warning}", file=sys.stderr)
    if problems:
        for problem in problems:
            print(f"{config_path(path)}: {problem}", file=sys.stderr)
        return EX_CONFIG
    code = 0
    if port_check:
        for finding in port_findings(settings.devices):
            print(f"servomexd: {finding.line()}", file=sys.stderr)
            if finding.error:
                code = EX_CONFIG
    for index, device in enumerate(settings.devices):
        for warning in device.warnings():
            print(f"warning: devices[{index}] ({device.name}): {warning}", file=sys.stderr)
    print(f"# effective configuration from {config_path(path)} (secrets masked)")
    if settings.sink.type == "postgres":
        print(f"# PostgreSQL password source: {password_source(settings)}")
    sys.stdout.write(to_toml(effective_config(settings)))
    return code
