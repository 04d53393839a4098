"""TLS to PostgreSQL: libpq's ``sslmode`` and certificate files, and what a failure means.

The settings come from ``[sink.postgres]`` (``sslmode``, ``sslrootcert``, ``sslcert``,
``sslkey``) or from the DSN's query string, as libpq spells them. asyncpg reads the
query string itself only while ``ssl`` is a mode name; we build the ``SSLContext`` here
instead whenever a certificate is involved, so the files given as settings work for the
host form too and a failure can be told apart:

* ``disable``, ``allow``: asyncpg's own handling (no TLS, or TLS only on request);
* ``prefer`` without a client certificate: asyncpg's own (TLS if the server offers it,
  no verification, plain otherwise): the default, as in libpq;
* ``require``: TLS, no verification (the chain is verified if ``sslrootcert`` is given,
  as libpq does); ``verify-ca``: chain to ``sslrootcert``; ``verify-full``: the chain
  and the host name. ``prefer`` with a client certificate behaves like ``require``
  (a configured certificate means TLS is wanted).

A certificate that fails verification (wrong CA, wrong host name, expired), a client
certificate the server refuses and a file that cannot be loaded are operator-needed
faults (``ServomexSinkFault``), not transient errors: ``classify`` names the check.
The private key is only ever handed to OpenSSL by path; its bytes never pass through
this code, so no message can carry them.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from servomexd.errors import short_cause

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
DEFAULT_SSLMODE = "prefer"
CREDENTIAL_SSLKEY = "pg-sslkey"
"""A client key given as a systemd credential: ``$CREDENTIALS_DIRECTORY/pg-sslkey``."""
SYSTEM_ROOTS = "system"
"""``sslrootcert = "system"``: the operating system's trusted CAs (as libpq 16)."""
TLS_KEYS = ("sslmode", "sslrootcert", "sslcert", "sslkey")

# OpenSSL X509_V_ERR_* codes, grouped by the check an operator has to fix.
_EXPIRY_CODES = {9: "not yet valid", 10: "expired"}
_HOSTNAME_CODES = frozenset({62, 64})  # HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH
_CHAIN_CODES = frozenset({2, 18, 19, 20, 21, 24, 27, 28})
# TLS alerts a server sends when it refuses our client certificate.
_CLIENT_CERT_ALERTS = (
    "ALERT_UNKNOWN_CA",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_CERTIFICATE_REQUIRED",
    "ALERT_CERTIFICATE_EXPIRED",
    "ALERT_CERTIFICATE_UNKNOWN",
    "ALERT_CERTIFICATE_REVOKED",
    "ALERT_ACCESS_DENIED",
)
# PostgreSQL's own refusals of a client certificate (pg_hba "cert", clientcert=verify-*).
_CLIENT_CERT_SERVER_TEXTS = (
    "certificate authentication failed",
    "connection requires a valid client certificate",
)


class TlsSetupError(Exception):
    """A certificate or key file cannot be used; ``check`` names the setting."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check
        self.message = message


@dataclass(frozen=True)
class PgTls:
    """The effective TLS settings: fields and DSN query merged (they may not disagree)."""

    sslmode: str = DEFAULT_SSLMODE
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None

    @property
    def verifies(self) -> bool:
        """Whether the server's certificate chain is checked at all."""
        return self.sslmode in ("verify-ca", "verify-full") or (
            self.sslmode == "require" and self.sslrootcert is not None
        )

    def key_path(self) -> str | None:
        """``sslkey``, else the systemd credential ``pg-sslkey`` when a certificate is set.

        None with a certificate means the key is inside the certificate file.
        """
        if self.sslkey is not None or self.sslcert is None:
            return self.sslkey
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if creds:
            candidate = Path(creds) / CREDENTIAL_SSLKEY
            if candidate.is_file():
                return str(candidate)
        return None

    def files(self) -> list[tuple[str, str]]:
        """(setting, path) of every file these settings name (the key as resolved)."""
        named = [("sslrootcert", self.sslrootcert), ("sslcert", self.sslcert)]
        named.append(("sslkey", self.key_path()))
        return [(k, v) for k, v in named if v is not None and v != SYSTEM_ROOTS]


def dsn_tls(dsn: str) -> dict[str, str]:
    """The libpq TLS parameters a ``postgresql://`` DSN carries in its query string."""
    try:
        query = urlsplit(dsn).query
    except ValueError:
        return {}
    return {k: v for k, v in parse_qsl(query, keep_blank_values=True) if k in TLS_KEYS}


def merge_tls(fields: dict[str, str | None], dsn: str | None) -> PgTls:
    """Fields and DSN merged; ``ValueError`` naming the key when they disagree."""
    merged: dict[str, str] = {}
    from_dsn = dsn_tls(dsn) if dsn else {}
    for key in TLS_KEYS:
        field, query = fields.get(key), from_dsn.get(key)
        if field is not None and query is not None and field != query:
            raise ValueError(f"{key}: given both in the dsn and as a setting, differently")
        value = field if field is not None else query
        if value is not None:
            merged[key] = value
    mode = merged.get("sslmode", DEFAULT_SSLMODE)
    if mode not in SSLMODES:
        raise ValueError(f"sslmode: must be one of {', '.join(SSLMODES)}, got {mode!r}")
    return PgTls(
        sslmode=mode,
        sslrootcert=merged.get("sslrootcert"),
        sslcert=merged.get("sslcert"),
        sslkey=merged.get("sslkey"),
    )


def is_local_host(host: str | None) -> bool:
    """A unix socket, localhost or a loopback address: traffic never leaves the machine."""
    if not host or host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --- connecting -----------------------------------------------------------------------


def asyncpg_ssl(tls: PgTls) -> str | ssl.SSLContext:
    """The ``ssl`` argument for asyncpg; ``TlsSetupError`` when a file cannot be used."""
    if tls.sslmode in ("disable", "allow") or (
        tls.sslmode == "prefer" and tls.sslcert is None
    ):
        return tls.sslmode
    return build_context(tls)


def build_context(tls: PgTls) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = tls.sslmode == "verify-full"
    if tls.verifies:
        context.verify_mode = ssl.CERT_REQUIRED
        root = tls.sslrootcert or _default_root()
        if root == SYSTEM_ROOTS:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            _require_readable("sslrootcert", root)
            try:
                context.load_verify_locations(cafile=root)
            except ssl.SSLError as exc:
                raise TlsSetupError(
                    "sslrootcert",
                    f"sslrootcert {root}: not a PEM CA certificate ({short_cause(exc)})",
                ) from None
    else:
        context.verify_mode = ssl.CERT_NONE
    if tls.sslcert is not None:
        key = tls.key_path()
        _require_readable("sslcert", tls.sslcert)
        if key is not None:
            _require_readable("sslkey", key)
        try:
            context.load_cert_chain(tls.sslcert, keyfile=key, password=_no_passphrase)
        except (ssl.SSLError, OSError, TypeError) as exc:
            raise TlsSetupError(
                "sslkey",
                f"sslcert {tls.sslcert} / sslkey {key or '(in sslcert)'}: cannot load the "
                f"client certificate and key ({short_cause(exc)}); the key must be unencrypted PEM "
                "matching the certificate",
            ) from None
    return context


def _no_passphrase() -> str:
    # Called only for an encrypted key: fail instead of prompting on a terminal.
    raise TypeError("the key is encrypted (passphrases are not supported)")


def _default_root() -> str:
    """libpq's default CA file, ``~/.postgresql/root.crt``."""
    path = Path("~/.postgresql/root.crt").expanduser()
    if path.is_file():
        return str(path)
    raise TlsSetupError(
        "sslrootcert",
        "sslmode verify-ca/verify-full needs sslrootcert (the CA file that signed the "
        "server's certificate, or \"system\"); ~/.postgresql/root.crt does not exist",
    )


def _require_readable(setting: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise TlsSetupError(
            setting, f"{setting} {path}: cannot read ({exc.strerror or type(exc).__name__})"
        ) from None


# --- what a failure means -------------------------------------------------------------


def classify(exc: BaseException) -> tuple[str, str] | None:
    """``(check, explanation)`` when ``exc`` is a certificate problem, else None.

    ``check`` is one of ``"CA"``, ``"host name"``, ``"expiry"``, ``"certificate"``,
    ``"client certificate"`` or a setting (``"sslrootcert"``, ``"sslcert"``, ``"sslkey"``).
    """
    if isinstance(exc, TlsSetupError):
        return exc.check, exc.message
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        detail = exc.verify_message or short_cause(exc)
        if code in _EXPIRY_CODES:
            return "expiry", (
                f"the server's certificate (or its CA) is {_EXPIRY_CODES[code]} ({detail}); "
                "renew it on the server or check the clocks"
            )
        if code in _HOSTNAME_CODES:
            return "host name", (
                f"the server's certificate does not name the host connected to ({detail}); "
                "connect by a name in its subjectAltName, or reissue it"
            )
        if code in _CHAIN_CODES:
            return "CA", (
                f"the server's certificate is not signed by a CA in sslrootcert ({detail}); "
                "sslrootcert must hold the CA that issued it"
            )
        return "certificate", f"the server's certificate failed verification ({detail})"
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or "")
        if any(alert in reason for alert in _CLIENT_CERT_ALERTS):
            return "client certificate", (
                f"the server refused our client certificate ({reason}); check sslcert/sslkey "
                "and that the server's ssl_ca_file holds their CA"
            )
        return None
    text = str(exc)
    if any(marker in text for marker in _CLIENT_CERT_SERVER_TEXTS):
        return "client certificate", (
            f"the server refused the client certificate login ({text}); its CN must be the "
            "database user (or map it in pg_ident.conf)"
        )
    return None
