"""TLS and basic authentication for the metrics endpoint, as Prometheus exporters do it.

The preferred form is the exporter-toolkit ``web-config.yml`` that node_exporter and
friends read (``[metrics] web_config``), so operators reuse what they know::

    tls_server_config:
      cert_file: servomexd.crt          # relative paths: to the web-config file's folder
      key_file: servomexd.key
      client_ca_file: scrapers-ca.crt   # optional: mutual TLS
      client_auth_type: RequireAndVerifyClientCert
      min_version: TLS12
    basic_auth_users:
      prometheus: $2y$10$...            # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':')

The same can be given inline in ``[metrics]`` (``tls_cert``, ``tls_key``, ``client_ca``,
``basic_auth_users``). Python's ``ssl`` always verifies a client certificate it asks
for, so ``RequestClientCert`` and ``RequireAnyClientCert`` (ask but do not verify) are
refused rather than silently made stricter; cipher and curve lists use Go's names and
are refused too (OpenSSL's defaults apply).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import os
import secrets
import ssl
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import bcrypt

from servomexd.errors import ServomexConfigError, short_cause

if TYPE_CHECKING:
    from servomexd.config import MetricsSettings

ClientAuth = Literal["none", "optional", "required"]

_CLIENT_AUTH: dict[str, ClientAuth] = {
    "": "none",
    "NoClientCert": "none",
    "VerifyClientCertIfGiven": "optional",
    "RequireAndVerifyClientCert": "required",
}
_UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_TLS_KEYS = frozenset(
    {"cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version", "max_version"}
)
_UNSUPPORTED_TLS_KEYS = frozenset(
    {"cipher_suites", "curve_preferences", "prefer_server_cipher_suites",
     "client_allowed_sans", "cert", "key"}
)
_TOP_KEYS = frozenset({"tls_server_config", "basic_auth_users", "http_server_config"})
_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
_AUTH_CACHE_SIZE = 64
_CONCURRENT_CHECKS = 2
REALM = "servomexd"


@dataclass(frozen=True)
class WebSecurity:
    """What the metrics endpoint enforces. Empty (the default): plain HTTP, no auth."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None
    client_auth: ClientAuth = "none"
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)
    """user -> bcrypt hash."""
    public_paths: frozenset[str] = frozenset({"/healthz"})
    """Paths served without basic auth (local probes)."""
    source: str = "[metrics]"

    @property
    def tls(self) -> bool:
        return self.cert_file is not None

    @property
    def authenticates(self) -> bool:
        """Whether a client must prove who it is (a password or a verified certificate)."""
        return bool(self.users) or self.client_auth == "required"

    def files(self) -> list[tuple[str, Path]]:
        named = [("cert_file", self.cert_file), ("key_file", self.key_file),
                 ("client_ca_file", self.client_ca_file)]
        return [(name, path) for name, path in named if path is not None]

    def ssl_context(self) -> ssl.SSLContext | None:
        """A server context, or None without TLS; ``ServomexConfigError`` if a file is bad."""
        if self.cert_file is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = self.min_version
        if self.max_version is not None:
            context.maximum_version = self.max_version
        self.load_certificate(context)
        if self.client_ca_file is not None:
            try:
                context.load_verify_locations(cafile=str(self.client_ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ServomexConfigError(
                    f"{self.source}: client CA {self.client_ca_file}: {short_cause(exc)}"
                ) from None
        context.verify_mode = {
            "none": ssl.CERT_NONE,
            "optional": ssl.CERT_OPTIONAL,
            "required": ssl.CERT_REQUIRED,
        }[self.client_auth]
        return context

    def load_certificate(self, context: ssl.SSLContext) -> None:
        """(Re)load the certificate and key into ``context`` (new handshakes use them).

        Tried on a scratch context first: a failed load into the live one could leave
        it holding a new certificate with the old key.
        """
        assert self.cert_file is not None and self.key_file is not None
        for target in (ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), context):
            self._load_pair(target)

    def _load_pair(self, context: ssl.SSLContext) -> None:
        assert self.cert_file is not None and self.key_file is not None
        try:
            context.load_cert_chain(
                str(self.cert_file), str(self.key_file), password=_no_passphrase
            )
        except (OSError, ssl.SSLError, TypeError) as exc:
            raise ServomexConfigError(
                f"{self.source}: certificate {self.cert_file} / key {self.key_file}: "
                f"{short_cause(exc)} (the key must be unencrypted PEM matching the certificate)"
            ) from None

    def file_stamp(self) -> tuple[tuple[int, int], ...]:
        """Change marker of the certificate and key files (mtime, size)."""
        stamp = []
        for path in (self.cert_file, self.key_file):
            try:
                info = os.stat(path) if path is not None else None
            except OSError:
                info = None
            stamp.append((info.st_mtime_ns, info.st_size) if info else (0, 0))
        return tuple(stamp)


def _no_passphrase() -> str:
    raise TypeError("the key is encrypted (passphrases are not supported)")


def exposure_gaps(host: str, security: WebSecurity) -> list[str]:
    """What an endpoint listening on ``host`` lacks ("TLS", "authentication"); nothing
    for a loopback address, which only this machine can reach."""
    if _is_loopback(host):
        return []
    gaps = [] if security.tls else ["TLS"]
    return gaps if security.authenticates else [*gaps, "authentication"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or "" (all interfaces)


# --- reading the settings ---------------------------------------------------------------


def web_security(settings: MetricsSettings) -> WebSecurity:
    """The metrics endpoint's security from ``[metrics]``: the web-config file, or inline."""
    public = frozenset(settings.public_paths)
    if settings.web_config is not None:
        return load_web_config(settings.web_config, public_paths=public)
    users = {
        name: _check_hash(f"[metrics] basic_auth_users.{name}", value.get_secret_value())
        for name, value in settings.basic_auth_users.items()
    }
    return WebSecurity(
        cert_file=settings.tls_cert,
        key_file=settings.tls_key,
        client_ca_file=settings.client_ca,
        client_auth="required" if settings.client_ca is not None else "none",
        users=users,
        public_paths=public,
        source="[metrics]",
    )


def load_web_config(path: Path, *, public_paths: frozenset[str] = frozenset({"/healthz"})) -> (
    WebSecurity
):
    """Parse an exporter-toolkit web-config file; ``ServomexConfigError`` with the reason."""
    where = f"web_config {path}"
    data = _read_yaml(path, where)
    _no_unknown(where, data, _TOP_KEYS, frozenset())
    tls = data.get("tls_server_config") or {}
    if not isinstance(tls, dict):
        raise ServomexConfigError(f"{where}: tls_server_config must be a mapping")
    _no_unknown(f"{where}: tls_server_config", tls, _TLS_KEYS, _UNSUPPORTED_TLS_KEYS)
    http = data.get("http_server_config") or {}
    if not isinstance(http, dict) or set(http) - {"http2"}:
        raise ServomexConfigError(
            f"{where}: http_server_config: only http2 is accepted (servomexd serves HTTP/1.1)"
        )
    users_data = data.get("basic_auth_users") or {}
    if not isinstance(users_data, dict):
        raise ServomexConfigError(f"{where}: basic_auth_users must map user names to hashes")
    users = {
        str(name): _check_hash(f"{where}: basic_auth_users.{name}", value)
        for name, value in users_data.items()
    }
    cert = _tls_file(where, path.parent, tls, "cert_file")
    key = _tls_file(where, path.parent, tls, "key_file")
    client_ca = _tls_file(where, path.parent, tls, "client_ca_file")
    client_auth = _client_auth(where, tls, cert, key, client_ca)
    return WebSecurity(
        cert_file=cert,
        key_file=key,
        client_ca_file=client_ca,
        client_auth=client_auth,
        min_version=_version(where, tls.get("min_version")) or ssl.TLSVersion.TLSv1_2,
        max_version=_version(where, tls.get("max_version")),
        users=users,
        public_paths=public_paths,
        source=where,
    )


def _read_yaml(path: Path, where: str) -> dict[Any, Any]:
    """The file as a mapping (an empty file is an empty one)."""
    import yaml  # only when a web config is used

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ServomexConfigError(f"{where}: cannot read ({short_cause(exc)})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ServomexConfigError(f"{where}: not valid YAML{line}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ServomexConfigError(f"{where}: must be a mapping (tls_server_config, ...)")
    return data


def _tls_file(where: str, base: Path, tls: Mapping[Any, Any], key: str) -> Path | None:
    """A PEM file named in tls_server_config; relative paths are to the web-config's folder."""
    value = tls.get(key)
    if value in (None, ""):
        return None
    if "-----BEGIN" in str(value) or "\n" in str(value):
        raise ServomexConfigError(
            f"{where}: tls_server_config.{key} must be the path of a PEM file, not "
            "its contents"
        )
    candidate = Path(str(value))
    return candidate if candidate.is_absolute() else base / candidate


def _client_auth(
    where: str,
    tls: Mapping[Any, Any],
    cert: Path | None,
    key: Path | None,
    client_ca: Path | None,
) -> ClientAuth:
    """The client-certificate policy, refusing combinations that cannot be served."""
    auth_type = str(tls.get("client_auth_type") or "")
    if auth_type in _UNVERIFIED_CLIENT_AUTH:
        raise ServomexConfigError(
            f"{where}: client_auth_type {auth_type} is not supported (Python's ssl verifies "
            "every client certificate it asks for); use VerifyClientCertIfGiven or "
            "RequireAndVerifyClientCert"
        )
    if auth_type not in _CLIENT_AUTH:
        raise ServomexConfigError(
            f"{where}: client_auth_type must be one of {', '.join(k for k in _CLIENT_AUTH if k)}"
        )
    client_auth = _CLIENT_AUTH[auth_type]
    if tls and (cert is None) != (key is None):
        raise ServomexConfigError(f"{where}: tls_server_config needs both cert_file and key_file")
    if cert is None and (client_ca is not None or client_auth != "none"):
        raise ServomexConfigError(f"{where}: client certificates need cert_file and key_file")
    if client_ca is not None and client_auth == "none":
        raise ServomexConfigError(
            f"{where}: client_ca_file is set without a client_auth_type "
            "(RequireAndVerifyClientCert for mutual TLS)"
        )
    if client_auth != "none" and client_ca is None:
        raise ServomexConfigError(f"{where}: client_auth_type {auth_type} needs client_ca_file")
    return client_auth


def _no_unknown(
    where: str, data: Mapping[Any, Any], known: frozenset[str], unsupported: frozenset[str]
) -> None:
    for key in data:
        if key in unsupported:
            raise ServomexConfigError(f"{where}: {key} is not supported by servomexd")
        if key not in known:
            raise ServomexConfigError(f"{where}: unknown key {key!r}")


def _version(where: str, value: Any) -> ssl.TLSVersion | None:
    if value in (None, ""):
        return None
    if value not in _TLS_VERSIONS:
        raise ServomexConfigError(
            f"{where}: TLS version must be one of {', '.join(_TLS_VERSIONS)}, got {value!r}"
        )
    return _TLS_VERSIONS[value]


def _check_hash(where: str, value: Any) -> bytes:
    text = str(value) if value is not None else ""
    if not (text.startswith(_BCRYPT_PREFIXES) and len(text) == 60):
        # Never echo the value: a plain-text password put here by mistake is a secret.
        raise ServomexConfigError(
            f"{where}: must be a bcrypt hash ($2y$..., 60 characters), e.g. from "
            "htpasswd -nBC 10 USER"
        )
    return text.encode("ascii")


# --- checking a request -----------------------------------------------------------------


class BasicAuth:
    """Checks ``Authorization: Basic`` against bcrypt hashes, off the event loop.

    bcrypt costs tens of milliseconds by design; a scraper sends the same credentials
    every interval, so successful checks are remembered (keyed by an HMAC of the
    credentials under a per-process random key, never the password itself).
    """

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self._users = dict(users)
        self._key = secrets.token_bytes(32)
        self._ok: OrderedDict[bytes, None] = OrderedDict()
        # Unknown users still cost one bcrypt check: no timing hint about who exists.
        self._dummy = bcrypt.hashpw(b"servomexd-unknown-user", bcrypt.gensalt(rounds=10))
        # A password-guessing flood may occupy at most this many worker threads (the
        # default executor also renders /metrics).
        self._checks = asyncio.Semaphore(_CONCURRENT_CHECKS)

    async def check(self, header: str | None) -> Literal["ok", "missing", "invalid"]:
        """``ok``, ``missing`` (no or malformed header) or ``invalid`` (wrong user/password)."""
        credentials = _parse_basic(header)
        if credentials is None:
            return "missing"
        user, password = credentials
        digest = hmac.new(self._key, user + b"\0" + password, hashlib.sha256).digest()
        if digest in self._ok:
            self._ok.move_to_end(digest)
            return "ok"
        stored = self._users.get(user.decode("utf-8", "replace"))
        try:
            async with self._checks:
                good = await asyncio.to_thread(bcrypt.checkpw, password, stored or self._dummy)
        except ValueError:  # bcrypt refuses passwords over 72 bytes
            good = False
        if not (good and stored is not None):
            return "invalid"
        self._ok[digest] = None
        if len(self._ok) > _AUTH_CACHE_SIZE:
            self._ok.popitem(last=False)
        return "ok"


def _parse_basic(header: str | None) -> tuple[bytes, bytes] | None:
    import base64
    import binascii

    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return user, password
