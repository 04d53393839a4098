"""The settings model: TOML file + environment overrides + credentials, nothing else.

Sources, highest priority first:

1. environment variables ``SERVOMEXD_<SECTION>__<KEY>`` (for example
   ``SERVOMEXD_SINK__TYPE=postgres`` or ``SERVOMEXD_SINK__POSTGRES__DSN=...``); nested
   tables merge key by key with the file, so one variable overrides one key. The
   ``devices`` list can only be replaced as a whole (``SERVOMEXD_DEVICES='[{...}]'``, JSON);
   lists have no per-item override;
2. the TOML file: ``--config``, else ``$SERVOMEXD_CONFIG``, else
   ``/etc/servomexd/servomexd.toml``;
3. the defaults below.

We read the TOML ourselves (``tomllib``) instead of pydantic-settings'
``TomlConfigSettingsSource`` so a syntax error, a missing or an unreadable file gives
one clear line (EX_CONFIG) rather than a traceback, and hand the parsed table to the
model as init data; ``settings_customise_sources`` puts the environment above it.

Unknown keys are errors everywhere (``extra="forbid"``): a typo such as ``baud_rate``
must not silently fall back to a default on a plant.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from servomexd.errors import ServomexConfigError, ServomexValidationError
from servomexd.link.endpoint import is_network_port, parse_network_port
from servomexd.link.line import BAUDRATES, MODBUS_PROTOCOLS, port_key, sharing_problem
from servomexd.redaction import MASK, is_secret_name, mask_text, register_secret
from servomexd.sinks.registry import default_path

if TYPE_CHECKING:
    from servomexd.sinks.postgres_config import PostgresConfig

DEFAULT_CONFIG_PATH = "/etc/servomexd/servomexd.toml"
CONFIG_ENV = "SERVOMEXD_CONFIG"
CREDENTIAL_NAME = "pg-password"
EX_CONFIG = 78
"""sysexits.h EX_CONFIG: the unit file sets RestartPreventExitStatus=78."""

DEFAULT_METRICS_PORT = 9723
_DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")

Protocol = Literal["continuous", "modbus_rtu", "modbus_ascii", "modbus_tcp", "auto"]


def _sql_identifier(value: str) -> str:
    """The sinks' own identifier rule (imported here, not at the top: the sinks package
    must stay free to import this module)."""
    from servomexd.sinks.base import IDENTIFIER_RE

    return _matching(IDENTIFIER_RE, value, f"an SQL identifier: {IDENTIFIER_RE.pattern}")


def _matching(pattern: re.Pattern[str], value: str, rule: str) -> str:
    """``value`` if the whole of it matches ``pattern``; else "must be {rule}"."""
    # fullmatch, never "$": "$" also matches before a trailing "\n".
    if not pattern.fullmatch(value):
        raise ValueError(f"must be {rule}")
    return value


SqlIdentifier = Annotated[str, AfterValidator(_sql_identifier)]


def _label(pattern: re.Pattern[str], rule: str) -> AfterValidator:
    """The field rule that the whole value matches ``pattern``."""
    return AfterValidator(lambda value: _matching(pattern, value, rule))


# A device name becomes Sample.device and a Prometheus label value: keep it tame.
DeviceName = Annotated[
    str,
    _label(
        _DEVICE_NAME,
        "1-64 characters: letters, digits, '_', '.', ':' or '-', starting with a letter "
        "or digit",
    ),
]
_SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@ -]{0,127}")
SiteLabel = Annotated[
    str,
    _label(
        _SITE,
        "1-128 characters: letters, digits, space, '_', '.', ':', '/', '@' or '-', "
        "starting with a letter or digit",
    ),
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceConfig(_Section):
    """One analyser. The Modbus helper reads the Modbus keys by these names."""

    name: DeviceName
    port: str
    protocol: Protocol = "continuous"
    baudrate: int = 19200
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    silence_timeout: Annotated[float, Field(gt=0)] = 10.0
    read_timeout: Annotated[float, Field(gt=0)] = 1.0
    # --- Modbus (modbus_rtu, modbus_ascii, auto) ---
    address: Annotated[int, Field(ge=1, le=247)] = 1
    poll_interval: Annotated[float, Field(gt=0)] = 1.0
    inter_request_delay: Annotated[float, Field(ge=0)] = 0.05
    request_timeout: Annotated[float, Field(gt=0)] = 1.0
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    timeout_streak: Annotated[int, Field(ge=1)] = 3
    expected_frame_period: Annotated[float, Field(gt=0)] = 2.0
    # --- network ports (socket://, rfc2217://) ---
    connect_timeout: Annotated[float, Field(gt=0)] = 5.0
    # Modbus TCP requests in flight per gateway connection. Only 1: pymodbus serialises
    # its transactions, and gateways to RS485 cannot overlap requests anyway.
    max_in_flight: Annotated[int, Field(ge=1, le=1)] = 1


    @field_validator("baudrate")
    @classmethod
    def _standard_rate(cls, value: int) -> int:
        # A non-standard rate is nearly always a typo (1920, 192000).
        if value not in BAUDRATES:
            raise ValueError(f"must be one of {', '.join(map(str, BAUDRATES))}")
        return value

    @field_validator("port")
    @classmethod
    def _port_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty (use a /dev/serial/by-id/... path)")
        if is_network_port(value):
            return parse_network_port(value).url  # ValueError names what is wrong
        return value

    @field_validator("protocol")
    @classmethod
    def _transport_fits_protocol(cls, value: str, info: ValidationInfo) -> str:
        # ``port`` is declared (hence validated) before ``protocol``: it is in info.data.
        port = info.data.get("port")
        if not isinstance(port, str):
            return value  # port itself is invalid and reported on its own
        scheme = parse_network_port(port).scheme if is_network_port(port) else None
        if value == "modbus_tcp" and scheme != "socket":
            raise ValueError(
                f'modbus_tcp needs port = "socket://HOST:PORT" (the gateway), but port is {port!r}'
            )
        return value

    def warnings(self) -> list[str]:
        """Settings that are accepted but have no effect, for check-config and the log."""
        if not is_network_port(self.port) or parse_network_port(self.port).scheme != "socket":
            return []
        ignored = sorted({"baudrate", "bytesize", "parity", "stopbits"} & self.model_fields_set)
        if not ignored:
            return []
        return [
            f"{', '.join(ignored)} ignored on socket://: raw TCP cannot set the line, the "
            "device server's own serial settings apply (use rfc2217:// to set them from here)"
        ]

    @model_validator(mode="after")
    def _silence_outlasts_a_poll(self) -> DeviceConfig:
        # A Modbus link only proves itself alive once per poll: a silence_timeout at or
        # below poll_interval would cut every session before its second sweep.
        if self.protocol in ("modbus_rtu", "modbus_ascii") and (
            self.silence_timeout <= self.poll_interval
        ):
            raise ValueError(
                f"silence_timeout ({self.silence_timeout:g} s) must be longer than "
                f"poll_interval ({self.poll_interval:g} s), e.g. 10 x poll_interval"
            )
        return self

    @property
    def is_modbus(self) -> bool:
        return self.protocol in MODBUS_PROTOCOLS


class PostgresSettings(_Section):
    """Mirrors ``servomexd.sinks.PostgresConfig``; the password has three sources."""

    dsn: SecretStr | None = None
    host: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] = 5432
    user: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    database: str | None = None
    schema_: Annotated[SqlIdentifier, Field(alias="schema")] = "public"
    table: SqlIdentifier = "samples"
    pool_min_size: Annotated[int, Field(ge=0)] = 1
    pool_max_size: Annotated[int, Field(ge=1)] = 4
    statement_timeout_ms: Annotated[int, Field(ge=0)] = 30000
    command_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    create_table: bool = True
    use_copy: bool = True
    # TLS as libpq spells it (servomexd.sinks.postgres_tls); the DSN's query string may
    # carry the same keys instead. None: the DSN's value, else sslmode "prefer".
    sslmode: Literal["disable", "prefer", "require", "verify-ca", "verify-full"] | None = None
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None
    """Client key path; unset: the credential ``$CREDENTIALS_DIRECTORY/pg-sslkey``."""
    # --- fleet: partitions, retention, rollups (docs/operations.md) ---
    partition: Literal["day", "week", "month", "none"] = "month"
    retention: str | None = None
    rollups: list[str] = []
    rollup_retention: str | None = None
    _site: str | None = PrivateAttr(default=None)
    """Set from ``[daemon] site`` by ``Settings``: the sink is built from [sink] alone."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("sslrootcert", "sslcert", "sslkey")
    @classmethod
    def _tls_path(cls, value: str | None) -> str | None:
        return None if value is None else _file_path_not_pem(value)

    @model_validator(mode="after")
    def _one_target(self) -> PostgresSettings:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError("pool_min_size must be <= pool_max_size")
        if self.password is not None and self.password_file is not None:
            raise ValueError("give either password or password_file, not both")
        return self

    def to_sink_config(self, password: str | None) -> PostgresConfig:
        """The sink's ``PostgresConfig`` for these settings (it validates the DSN too)."""
        # Imported here: check-config need not load the sinks package otherwise.
        from servomexd.sinks.postgres_config import PostgresConfig

        # Every field but the secrets and the password's sources goes over by name
        # (TOML names: ``schema``), so a field added to both cannot be forgotten here.
        shared = self.model_dump(by_alias=True, exclude={"dsn", "password", "password_file"})
        dsn = None if self.dsn is None else self.dsn.get_secret_value()
        shared["rollups"] = tuple(shared["rollups"])
        return PostgresConfig(dsn=dsn, password=password, site=self._site, **shared)

    def resolve_password(self) -> str | None:
        """``password``, else ``password_file``, else ``$CREDENTIALS_DIRECTORY/pg-password``."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return _read_secret(self.password_file)
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if creds:
            candidate = Path(creds) / CREDENTIAL_NAME
            if candidate.is_file():
                try:
                    return _read_secret(candidate)
                except ServomexConfigError as exc:
                    raise ServomexConfigError(
                        f"systemd credential {CREDENTIAL_NAME}: {exc.message}"
                    ) from None
        return None


def _file_path_not_pem(value: str) -> str:
    """A certificate or key setting is a path: refuse pasted PEM (never echoed back)."""
    if "-----BEGIN" in value or "\n" in value:
        raise ValueError("must be the path of a PEM file, not its contents")
    return value


def _read_secret(path: Path) -> str:
    """The password in ``path``; the error names the file (a path is not a secret) and the
    OS reason, never the content. The caller (ConfigInvalid) names the setting, once."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ServomexConfigError(
            f"cannot read {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    except UnicodeDecodeError:
        raise ServomexConfigError(f"{path} is not UTF-8 text") from None
    password = text.rstrip("\r\n")
    if not password:
        raise ServomexConfigError(
            f"{path} is empty: write the password into it, or remove the setting"
        )
    return password


def password_source(settings: Settings) -> str:
    """Which password the PostgreSQL sink will use, said without its value (check-config)."""
    pg = settings.sink.postgres
    if settings.sink.type != "postgres":
        return "not used (the sink is not postgres)"
    if pg.password is not None:
        return "sink.postgres.password (in the configuration)"
    if pg.password_file is not None:
        return f"sink.postgres.password_file {pg.password_file}"
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / CREDENTIAL_NAME).is_file():
        return (
            f"systemd credential {CREDENTIAL_NAME} "
            f"($CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME} = {Path(creds) / CREDENTIAL_NAME})"
        )
    if pg.dsn is not None:
        from servomexd.sinks.postgres_config import dsn_password

        if dsn_password(pg.dsn.get_secret_value()):
            return "the password inside sink.postgres.dsn"
    return (
        "none configured (peer/trust authentication, ~/.pgpass or $PGPASSWORD); "
        f"under systemd put it in the {CREDENTIAL_NAME} credential"
    )


class ParquetSettings(_Section):
    roll_interval: Annotated[float, Field(gt=0)] = 3600.0
    compression: Literal["zstd", "snappy", "gzip", "brotli", "lz4", "none"] = "zstd"


SinkType = Literal["sqlite", "postgres", "csv", "jsonl", "parquet"]
_DATA_DIRECTORY = Path("/var/lib/servomexd")


class SinkSettings(_Section):
    type: SinkType = "sqlite"
    path: Path = Path("/var/lib/servomexd/samples.sqlite")
    table: SqlIdentifier = "samples"
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 5_000  # delivery.flusher
    flush_interval: Annotated[float, Field(gt=0, le=3600)] = 0.25  # delivery.flusher
    max_write_rows: Annotated[int, Field(ge=1, le=1_000_000)] = 20_000
    write_timeout: Annotated[float, Field(gt=0)] = 60.0
    retry_max_delay: Annotated[float, Field(gt=0)] = 30.0
    shutdown_timeout: Annotated[float, Field(ge=0, le=8)] = 4.0
    postgres: PostgresSettings = PostgresSettings()
    parquet: ParquetSettings = ParquetSettings()

    @model_validator(mode="before")
    @classmethod
    def _default_path_per_type(cls, data: Any) -> Any:
        # type = "csv" without a path writes samples-<time>.csv, not a ".sqlite" CSV.
        if isinstance(data, dict) and "path" not in data:
            path = default_path(str(data.get("type", "sqlite")), _DATA_DIRECTORY)
            if path is not None:
                data = {**data, "path": str(path)}
        return data

    @model_validator(mode="after")
    def _postgres_target(self) -> SinkSettings:
        if self.type == "postgres":
            pg = self.postgres
            if (pg.dsn is None) == (pg.host is None):
                raise ValueError(
                    "type = 'postgres' needs exactly one of sink.postgres.dsn or "
                    "sink.postgres.host"
                )
            _check_postgres_target(pg)
        return self


def _check_postgres_target(pg: PostgresSettings) -> None:
    """Reject here what ``PostgresConfig`` would reject when the sink opens.

    Otherwise a DSN the sink cannot parse (``host=... password=...`` or a bad port)
    passes check-config and crashes the running daemon. The sink's messages never
    contain the DSN or the password.
    """
    try:
        pg.to_sink_config(password=None)
    except ServomexValidationError as exc:
        field = exc.context.get("field", "dsn")
        reason = exc.message.split(": ", 1)[-1]
        raise ValueError(f"sink.postgres.{field}: {reason}") from None


class SpoolSettings(_Section):
    path: Path = Path("/var/lib/servomexd/spool")
    max_bytes: Annotated[int, Field(ge=1_048_576)] = 1_073_741_824
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    quarantine_max_bytes: Annotated[int, Field(ge=65_536)] = 67_108_864
    """Bound of the quarantine table (rows the sink refused); beyond it refused rows are
    dropped, counted and logged at error. Nothing in it is ever deleted automatically."""


METRICS_PATHS = ("/metrics", "/healthz", "/readyz")


class MetricsSettings(_Section):
    enabled: bool = True
    listen: str = f"127.0.0.1:{DEFAULT_METRICS_PORT}"
    # TLS and basic auth (servomexd.webconfig): an exporter-toolkit web-config.yml
    # (preferred), or the same inline; not both.
    web_config: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    """Mutual TLS: only clients with a certificate from this CA may connect."""
    basic_auth_users: dict[str, SecretStr] = Field(default_factory=dict)
    """user -> bcrypt hash."""
    public_paths: list[Literal["/metrics", "/healthz", "/readyz"]] = ["/healthz"]
    """Served without basic auth (the Docker HEALTHCHECK, systemd probes)."""

    @field_validator("web_config", "tls_cert", "tls_key", "client_ca")
    @classmethod
    def _tls_path(cls, value: Path | None) -> Path | None:
        return None if value is None else Path(_file_path_not_pem(str(value)))

    @model_validator(mode="after")
    def _one_security_source(self) -> MetricsSettings:
        inline = [
            name for name in ("tls_cert", "tls_key", "client_ca", "basic_auth_users")
            if getattr(self, name)
        ]
        if self.web_config is not None and inline:
            raise ValueError(
                f"give web_config or the inline {', '.join(inline)}, not both"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.client_ca is not None and self.tls_cert is None:
            raise ValueError("client_ca (mutual TLS) needs tls_cert and tls_key")
        return self

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        split_listen(value)
        return value

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


def split_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError with the reason."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError("must be host:port, e.g. 127.0.0.1:9723")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("port must be a number 0-65535")
    return host, int(port_text)


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    format: Literal["auto", "journald", "json", "console"] = "auto"

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class DaemonSettings(_Section):
    """Who this daemon is in a fleet."""

    site: SiteLabel = Field(default_factory=socket.gethostname)
    """Written to the ``site`` column (e.g. ``plant-a/line-2``); default: the host name."""



class Settings(BaseSettings):
    """The whole daemon configuration."""

    model_config = SettingsConfigDict(
        env_prefix="SERVOMEXD_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    devices: Annotated[list[DeviceConfig], Field(min_length=1)]
    daemon: DaemonSettings = DaemonSettings()
    sink: SinkSettings = SinkSettings()
    spool: SpoolSettings = SpoolSettings()
    metrics: MetricsSettings = MetricsSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's table arrives as init data; the environment must win over it.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _site_to_sink(self) -> Settings:
        # The sink builds its config from [sink] alone: hand it the daemon's site.
        self.sink.postgres._site = self.daemon.site
        return self

    @model_validator(mode="after")
    def _devices_consistent(self) -> Settings:
        names: set[str] = set()
        for device in self.devices:
            if device.name in names:
                raise ValueError(f"device name {device.name!r} is used twice")
            names.add(device.name)
        by_port: dict[str, list[DeviceConfig]] = {}
        for device in self.devices:
            by_port.setdefault(port_key(device.port), []).append(device)
        for shared in by_port.values():
            problem = sharing_problem(shared)
            if problem is not None:
                raise ValueError(problem)
        return self


# --- loading ---------------------------------------------------------------------------


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML table, or ``ServomexConfigError`` with one readable line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        hint = ""
        if str(path) == DEFAULT_CONFIG_PATH:
            hint = (
                f"; mount your configuration at {DEFAULT_CONFIG_PATH} (Docker: "
                "-v /etc/servomexd:/etc/servomexd:ro), install one there, or pass --config"
            )
        raise ServomexConfigError(f"{path}: configuration file not found{hint}") from None
    except IsADirectoryError:
        raise ServomexConfigError(f"{path}: is a directory, not a configuration file") from None
    except OSError as exc:
        raise ServomexConfigError(
            f"{path}: cannot read configuration: {exc.strerror or type(exc).__name__}"
        ) from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ServomexConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ServomexConfigError(f"{path}: TOML syntax error: {exc}") from None


class ConfigInvalid(ServomexConfigError):
    """Validation failed; ``problems`` lists (dotted path, shown value, reason).

    An empty shown value means the reason already says what was given. A problem whose
    setting came from an environment variable is blamed on that variable, not the file.
    """

    def __init__(
        self,
        path: Path,
        problems: list[tuple[str, str, str]],
        env_sources: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{path}: {len(problems)} invalid setting(s)")
        self.path = path
        self.problems = problems
        self.env_sources = dict(env_sources or {})

    def source_of(self, loc: str) -> str:
        """``$SERVOMEXD_...`` when an environment variable set ``loc``, else the file."""
        variable = env_variable_for(loc, self.env_sources)
        return f"environment variable {variable}" if variable else str(self.path)

    def lines(self) -> list[str]:
        return [
            f"{self.source_of(loc)}: {loc}: {reason}" + (f" (got {shown})" if shown else "")
            for loc, shown, reason in self.problems
        ]


ENV_PREFIX = "SERVOMEXD_"


def env_settings_sources() -> dict[str, str]:
    """Dotted setting path (lower case) -> the ``SERVOMEXD_...`` variable that sets it."""
    out: dict[str, str] = {}
    for name in os.environ:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper == CONFIG_ENV:
            continue
        out[upper[len(ENV_PREFIX) :].lower().replace("__", ".")] = name
    return out


def env_variable_for(loc: str, sources: dict[str, str]) -> str | None:
    """The variable behind ``loc`` (``devices[0].port`` comes from ``SERVOMEXD_DEVICES``)."""
    lowered = loc.lower()
    for key, variable in sources.items():
        if lowered == key or lowered.startswith((key + ".", key + "[")):
            return variable
    for key, variable in sources.items():
        if key.startswith(lowered + "."):
            return variable  # SERVOMEXD_DEVICES__0__PORT made ``devices`` a table
    return None


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read, merge and validate; raises ``ServomexConfigError`` (``ConfigInvalid``)."""
    resolved = config_path(path)
    table = read_toml(resolved)
    try:
        settings = Settings(**table)
    except ValidationError as exc:
        sources = env_settings_sources()
        raise ConfigInvalid(resolved, describe_errors(exc, sources), sources) from None
    _check_password_source(resolved, settings)
    from servomexd.portcheck import same_adapter_problems

    aliases = same_adapter_problems(settings.devices)
    if aliases:
        raise ConfigInvalid(resolved, aliases)
    _register_secrets(settings)
    return settings


def _register_secrets(settings: Settings) -> None:
    """Tell the log redactor the configured secrets, so no log line can carry them."""
    from servomexd.sinks.postgres_config import dsn_password

    pg = settings.sink.postgres
    if pg.password is not None:
        register_secret(pg.password.get_secret_value())
    if pg.dsn is not None:
        register_secret(dsn_password(pg.dsn.get_secret_value()))
    if settings.sink.type == "postgres":
        register_secret(pg.resolve_password())  # readable: _check_password_source ran


def _check_password_source(path: Path, settings: Settings) -> None:
    """A configured password_file that cannot be read is a config error, found at start."""
    if settings.sink.type != "postgres":
        return
    try:
        settings.sink.postgres.resolve_password()
    except ServomexConfigError as exc:
        pg = settings.sink.postgres
        loc = "sink.postgres.password_file" if pg.password_file is not None else (
            f"$CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME}"
        )
        # The path is shown in the reason; "(got ...)" would only repeat it.
        raise ConfigInvalid(path, [(loc, "", exc.message)]) from None


def _is_pem(value: Any) -> bool:
    """PEM text (a key pasted where a path belongs) is never echoed, whatever the key."""
    return isinstance(value, str) and "-----BEGIN" in value


def describe_errors(
    exc: ValidationError, env_sources: dict[str, str] | None = None
) -> list[tuple[str, str, str]]:
    problems: list[tuple[str, str, str]] = []
    for error in exc.errors(include_url=False):
        loc = _dotted(error.get("loc", ()))
        value = error.get("input")
        if is_secret_name(loc) or _is_pem(value) or (
            isinstance(value, dict) and any(is_secret_name(str(k)) for k in value)
        ):
            shown = f"'{MASK}'" if not isinstance(value, dict) else _short_repr(value)
        elif error.get("type") == "missing":
            shown = "nothing"
        else:
            shown = _short_repr(value)
        reason = str(error.get("msg", "invalid"))
        if reason.startswith("Value error, "):
            reason = reason[len("Value error, ") :]
        if error.get("type") == "extra_forbidden":
            reason = "unknown key (not a servomexd setting; check the spelling)"
        if loc == "devices" and error.get("type") == "list_type" and isinstance(value, dict):
            if env_variable_for(loc, env_sources or {}):
                reason += (
                    "; SERVOMEXD_DEVICES__<n>__<key> cannot override one device: replace the "
                    "whole list with SERVOMEXD_DEVICES='[{...}]' (JSON)"
                )
            else:
                reason = (
                    "each analyser is a [[devices]] table: write [[devices]] (double "
                    "brackets) above each analyser's keys, not [devices]"
                )
        problems.append((loc or "(top level)", shown, reason))
    return problems


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # The schema field is exposed under its TOML name.
            name = "schema" if part == "schema_" else part
            out += ("." if out else "") + name
    return out


def _short_repr(value: Any, limit: int = 80) -> str:
    if isinstance(value, dict):
        keys = ", ".join(sorted(str(k) for k in value))
        return f"a table with keys {keys}"[:limit] if keys else "an empty table"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- printing (check-config) -----------------------------------------------------------


def effective_config(settings: Settings) -> dict[str, Any]:
    """Plain data with every secret masked: safe to print or log."""
    data = settings.model_dump(mode="python", by_alias=True)
    pg = data["sink"]["postgres"]
    dsn = settings.sink.postgres.dsn
    pg["dsn"] = None if dsn is None else mask_text(dsn.get_secret_value())
    pg["password"] = None if settings.sink.postgres.password is None else MASK
    plain: dict[str, Any] = _plain(data)
    return plain


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, SecretStr):
        return MASK
    return value


def to_toml(data: dict[str, Any]) -> str:
    """A small TOML writer for the effective config (tables, arrays of tables, scalars)."""
    lines: list[str] = []

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        return json.dumps(str(value), ensure_ascii=False)

    def table(prefix: str, body: dict[str, Any], header: str | None) -> None:
        if header is not None:
            lines.append("")
            lines.append(header)
        nested: list[tuple[str, Any]] = []
        for key, value in body.items():
            if isinstance(value, dict) or (
                isinstance(value, list) and value and isinstance(value[0], dict)
            ):
                nested.append((key, value))
            elif value is None:
                lines.append(f"# {key} is not set")
            elif isinstance(value, list):
                lines.append(f"{key} = [{', '.join(scalar(v) for v in value)}]")
            else:
                lines.append(f"{key} = {scalar(value)}")
        for key, value in nested:
            name = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict):
                table(name, value, f"[{name}]")
            else:
                for item in value:
                    table(name, item, f"[[{name}]]")

    table("", data, None)
    return "\n".join(lines).lstrip("\n") + "\n"
