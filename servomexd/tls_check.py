"""check-config's transport-security review: certificate files and exposed endpoints.

Problems (the daemon cannot work as configured: a file missing or unreadable, a key
that does not match its certificate) make check-config fail with EX_CONFIG; warnings
(sslmode weaker than verify-full to a remote database, a metrics endpoint reachable
from the network without TLS or authentication, a key others can read, a file the
service user cannot read) are printed and leave the exit status alone.

Run as root, it also checks that the unit's ``User=`` (``servomexd``) can read each
file, from the file and directory permission bits, because that is who reads them.
Key files are only ever opened by OpenSSL: their contents are never read or printed here.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path
from urllib.parse import urlsplit

from servomexd.config import Settings
from servomexd.errors import ServomexConfigError

SERVICE_USER = "servomexd"
"""The unit's ``User=`` (deploy/systemd/servomexd.service)."""


def security_findings(settings: Settings) -> tuple[list[str], list[str]]:
    """(problems, warnings) for the Postgres TLS files and the metrics endpoint."""
    problems: list[str] = []
    warnings: list[str] = []
    if settings.sink.type == "postgres":
        _postgres(settings, problems, warnings)
    if settings.metrics.enabled:
        _metrics(settings, problems, warnings)
    return problems, warnings


def _postgres(settings: Settings, problems: list[str], warnings: list[str]) -> None:
    from servomexd.sinks.postgres_tls import (
        CREDENTIAL_SSLKEY,
        TlsSetupError,
        build_context,
        is_local_host,
    )

    config = settings.sink.postgres.to_sink_config(password=None)
    tls = config.tls()
    where = "sink.postgres"
    before = len(problems)
    for setting, path in tls.files():
        _check_file(f"{where}.{setting}", Path(path), setting == "sslkey", problems, warnings)
    if tls.sslcert is not None and tls.key_path() is None:
        warnings.append(
            f"{where}.sslkey is not set: the key must be inside sslcert, or given as the "
            f"systemd credential {CREDENTIAL_SSLKEY} (LoadCredential={CREDENTIAL_SSLKEY}:...)"
        )
    if len(problems) == before and tls.sslmode not in ("disable", "allow"):
        try:
            build_context(tls)
        except TlsSetupError as exc:
            problems.append(f"{where}.{exc.check}: {exc.message}")
    host = urlsplit(config.dsn).hostname if config.dsn is not None else config.host
    if tls.sslmode != "verify-full" and not is_local_host(host):
        warnings.append(
            f"{where}.sslmode is {tls.sslmode!r} for the remote host {host}: the server's "
            "identity is not verified (a machine in the middle can read and alter the "
            "data); use sslmode = \"verify-full\" with sslrootcert"
        )


def _metrics(settings: Settings, problems: list[str], warnings: list[str]) -> None:
    from servomexd.webconfig import exposure_gaps, web_security

    metrics = settings.metrics
    try:
        security = web_security(metrics)
    except ServomexConfigError as exc:
        problems.append(f"metrics: {exc.message}")
        return
    before = len(problems)
    for name, path in security.files():
        _check_file(f"metrics {name}", path, name == "key_file", problems, warnings)
    if len(problems) == before:
        try:
            security.ssl_context()
        except ServomexConfigError as exc:
            problems.append(f"metrics: {exc.message}")
    gaps = exposure_gaps(metrics.host, security)
    if gaps:
        warnings.append(
            f"metrics.listen {metrics.listen} is reachable from the network without "
            f"{' or '.join(gaps)}; set metrics.web_config (TLS, basic auth) or listen on "
            "127.0.0.1"
        )


def _check_file(
    what: str, path: Path, is_key: bool, problems: list[str], warnings: list[str]
) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        problems.append(f"{what}: cannot read {path} ({exc.strerror or type(exc).__name__})")
        return
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        problems.append(f"{what}: {path} is not a regular file")
        return
    if is_key and mode & stat.S_IRWXO:
        warnings.append(
            f"{what}: {path} is readable by every user (mode {stat.S_IMODE(mode):04o}); "
            "make it 0600 or 0640 root:servomexd"
        )
    if os.geteuid() == 0 and not _service_user_can_read(path):
        warnings.append(
            f"{what}: the service user {SERVICE_USER!r} cannot read {path} "
            "(check its owner, group and mode, and the directories above it)"
        )


def _service_user_can_read(path: Path) -> bool:
    """From the permission bits; True when there is no such user (nothing to check)."""
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return True
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if SERVICE_USER in g.gr_mem}

    def allowed(target: Path, owner: int, group: int, other: int) -> bool:
        info = target.stat()
        if info.st_uid == user.pw_uid:
            return bool(info.st_mode & owner)
        if info.st_gid in groups:
            return bool(info.st_mode & group)
        return bool(info.st_mode & other)

    resolved = path.resolve()
    if not allowed(resolved, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH):
        return False
    return all(
        allowed(parent, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH) for parent in resolved.parents
    )
