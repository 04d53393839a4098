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
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from servomexd.errors import ServomexConfigError, ServomexValidationError

if TYPE_CHECKING:
    from servomexd.sinks.postgres_config import PostgresConfig

DEFAULT_CONFIG_PATH = "/etc/servomexd/servomexd.toml"
CONFIG_ENV = "SERVOMEXD_CONFIG"
CREDENTIAL_NAME = "pg-password"
EX_CONFIG = 78
"""sysexits.h EX_CONFIG: the unit file sets RestartPreventExitStatus=78."""

DEFAULT_METRICS_PORT = 9723
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")  # always fullmatch: "$" allows "\n"
_DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")

STANDARD_BAUDRATES: tuple[int, ...] = (
    300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400,
)  # fmt: skip
"""Mirrors ``servomexd.link.serial.BAUDRATES`` (kept here so check-config does not import
the serial driver; a test keeps the two equal)."""

Protocol = Literal["continuous", "modbus_rtu", "modbus_ascii", "auto"]
MODBUS_PROTOCOLS = frozenset({"modbus_rtu", "modbus_ascii", "auto"})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceConfig(_Section):
    """One analyser. The Modbus helper reads the Modbus keys by these names."""

    name: str
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

    @field_validator("name")
    @classmethod
    def _name_is_a_label(cls, value: str) -> str:
        # The name becomes Sample.device and a Prometheus label value: keep it tame.
        if not _DEVICE_NAME.fullmatch(value):
            raise ValueError(
                "must be 1-64 characters: letters, digits, '_', '.', ':' or '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("baudrate")
    @classmethod
    def _standard_rate(cls, value: int) -> int:
        # A non-standard rate is nearly always a typo (1920, 192000).
        if value not in STANDARD_BAUDRATES:
            raise ValueError(f"must be one of {', '.join(map(str, STANDARD_BAUDRATES))}")
        return value

    @field_validator("port")
    @classmethod
    def _port_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty (use a /dev/serial/by-id/... path)")
        return value

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

    def serial_key(self) -> tuple[int, int, str, int]:
        return (self.baudrate, self.bytesize, self.parity, self.stopbits)


class PostgresSettings(_Section):
    """Mirrors ``servomexd.sinks.PostgresConfig``; the password has three sources."""

    dsn: SecretStr | None = None
    host: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] = 5432
    user: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    database: str | None = None
    schema_: Annotated[str, Field(alias="schema")] = "public"
    table: str = "samples"
    pool_min_size: Annotated[int, Field(ge=0)] = 1
    pool_max_size: Annotated[int, Field(ge=1)] = 4
    statement_timeout_ms: Annotated[int, Field(ge=0)] = 30000
    command_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    create_table: bool = True
    use_copy: bool = True
    # --- fleet: partitions, retention, rollups (docs/operations.md) ---
    partition: Literal["day", "week", "month", "none"] = "month"
    retention: str | None = None
    rollups: list[str] = []
    rollup_retention: str | None = None
    _site: str | None = PrivateAttr(default=None)
    """Set from ``[daemon] site`` by ``Settings``: the sink is built from [sink] alone."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("schema_", "table")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.fullmatch(value):
            raise ValueError("must be an SQL identifier: [A-Za-z_][A-Za-z0-9_]{0,62}")
        return value

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

        return PostgresConfig(
            dsn=None if self.dsn is None else self.dsn.get_secret_value(),
            host=self.host,
            port=self.port,
            user=self.user,
            password=password,
            database=self.database,
            schema=self.schema_,
            table=self.table,
            pool_min_size=self.pool_min_size,
            pool_max_size=self.pool_max_size,
            statement_timeout_ms=self.statement_timeout_ms,
            command_timeout_s=self.command_timeout_s,
            create_table=self.create_table,
            use_copy=self.use_copy,
            site=self._site,
            partition=self.partition,
            retention=self.retention,
            rollups=tuple(self.rollups),
            rollup_retention=self.rollup_retention,
        )

    def resolve_password(self) -> str | None:
        """``password``, else ``password_file``, else ``$CREDENTIALS_DIRECTORY/pg-password``."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return _read_secret(self.password_file, "sink.postgres.password_file")
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if creds:
            candidate = Path(creds) / CREDENTIAL_NAME
            if candidate.is_file():
                return _read_secret(candidate, f"$CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME}")
        return None


def _read_secret(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        # Name the file and the OS reason only: never the content.
        raise ServomexConfigError(
            f"{what}: cannot read {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    return text.rstrip("\r\n")


class ParquetSettings(_Section):
    roll_interval: Annotated[float, Field(gt=0)] = 3600.0
    compression: Literal["zstd", "snappy", "gzip", "brotli", "lz4", "none"] = "zstd"


SinkType = Literal["sqlite", "postgres", "csv", "jsonl", "parquet"]
_SINK_SUFFIXES = {"sqlite": "sqlite", "csv": "csv", "jsonl": "jsonl", "parquet": "parquet"}


class SinkSettings(_Section):
    type: SinkType = "sqlite"
    path: Path = Path("/var/lib/servomexd/samples.sqlite")
    table: str = "samples"
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 64
    flush_interval: Annotated[float, Field(gt=0, le=3600)] = 1.0
    max_write_rows: Annotated[int, Field(ge=1, le=1_000_000)] = 20_000
    write_timeout: Annotated[float, Field(gt=0)] = 60.0
    retry_max_delay: Annotated[float, Field(gt=0)] = 30.0
    shutdown_timeout: Annotated[float, Field(ge=0, le=8)] = 4.0
    postgres: PostgresSettings = PostgresSettings()
    parquet: ParquetSettings = ParquetSettings()

    @field_validator("table")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.fullmatch(value):
            raise ValueError("must be an SQL identifier: [A-Za-z_][A-Za-z0-9_]{0,62}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_path_per_type(cls, data: Any) -> Any:
        # type = "csv" without a path writes samples-<time>.csv, not a ".sqlite" CSV.
        if isinstance(data, dict) and "path" not in data:
            suffix = _SINK_SUFFIXES.get(str(data.get("type", "sqlite")))
            if suffix is not None:
                data = {**data, "path": f"/var/lib/servomexd/samples.{suffix}"}
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


class MetricsSettings(_Section):
    enabled: bool = True
    listen: str = f"127.0.0.1:{DEFAULT_METRICS_PORT}"

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


_SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@ -]{0,127}")


class DaemonSettings(_Section):
    """Who this daemon is in a fleet."""

    site: str = Field(default_factory=socket.gethostname)
    """Written to the ``site`` column (e.g. ``plant-a/line-2``); default: the host name."""

    @field_validator("site")
    @classmethod
    def _site_is_a_label(cls, value: str) -> str:
        if not _SITE.fullmatch(value):
            raise ValueError(
                "must be 1-128 characters: letters, digits, space, '_', '.', ':', '/', '@' "
                "or '-', starting with a letter or digit"
            )
        return value


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
            by_port.setdefault(device.port, []).append(device)
        for port, shared in by_port.items():
            if len(shared) < 2:
                continue
            if not all(d.is_modbus for d in shared):
                raise ValueError(
                    f"port {port} is shared by {', '.join(d.name for d in shared)}: only "
                    "Modbus devices (RS485 multidrop) may share a port"
                )
            addresses = [d.address for d in shared]
            if len(set(addresses)) != len(addresses):
                raise ValueError(f"devices on port {port} need distinct Modbus addresses")
            if len({d.serial_key() for d in shared}) != 1:
                raise ValueError(
                    f"devices on port {port} must share baudrate, bytesize, parity and stopbits"
                )
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
        raise ServomexConfigError(f"{path}: configuration file not found") from None
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
    """Validation failed; ``problems`` lists (dotted path, shown value, reason)."""

    def __init__(self, path: Path, problems: list[tuple[str, str, str]]) -> None:
        super().__init__(f"{path}: {len(problems)} invalid setting(s)")
        self.path = path
        self.problems = problems

    def lines(self) -> list[str]:
        return [
            f"{self.path}: {loc}: {reason} (got {shown})" for loc, shown, reason in self.problems
        ]


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read, merge and validate; raises ``ServomexConfigError`` (``ConfigInvalid``)."""
    resolved = config_path(path)
    table = read_toml(resolved)
    try:
        settings = Settings(**table)
    except ValidationError as exc:
        raise ConfigInvalid(resolved, describe_errors(exc)) from None
    _check_password_source(resolved, settings)
    _register_secrets(settings)
    return settings


def _register_secrets(settings: Settings) -> None:
    """Tell the log redactor the configured secrets, so no log line can carry them."""
    from servomexd.logs import register_secret
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
        raise ConfigInvalid(
            path, [("sink.postgres.password_file", "'***'", exc.message)]
        ) from None


_SECRET_WORDS = ("password", "passwd", "secret", "token", "dsn")


def _is_secret_loc(loc: str) -> bool:
    lowered = loc.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def describe_errors(exc: ValidationError) -> list[tuple[str, str, str]]:
    problems: list[tuple[str, str, str]] = []
    for error in exc.errors(include_url=False):
        loc = _dotted(error.get("loc", ()))
        value = error.get("input")
        if _is_secret_loc(loc) or (
            isinstance(value, dict) and any(_is_secret_loc(str(k)) for k in value)
        ):
            shown = "'***'" if not isinstance(value, dict) else "{...}"
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
            reason += (
                "; SERVOMEXD_DEVICES__<n>__<key> cannot override one device: replace the "
                "whole list with SERVOMEXD_DEVICES='[{...}]' (JSON)"
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
        return "{...}"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- printing (check-config) -----------------------------------------------------------


MASK = "********"


def mask_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``MASK`` (user and host kept for debugging)."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":" + MASK
        netloc = f"{userinfo}@{hostinfo}"
    query = re.sub(r"(?i)(password=)[^&]*", r"\1" + MASK, parts.query)
    masked = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    # key=value DSNs (libpq style): "host=... password=..."
    return re.sub(r"(?i)(password\s*=\s*)('[^']*'|\S+)", r"\1" + MASK, masked)


def effective_config(settings: Settings) -> dict[str, Any]:
    """Plain data with every secret masked: safe to print or log."""
    data = settings.model_dump(mode="python", by_alias=True)
    pg = data["sink"]["postgres"]
    dsn = settings.sink.postgres.dsn
    pg["dsn"] = None if dsn is None else mask_dsn(dsn.get_secret_value())
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


def check_config(path: str | os.PathLike[str] | None) -> int:
    """``servomexd check-config``: print the effective config (masked) or every problem."""
    try:
        settings = load_settings(path)
    except ConfigInvalid as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EX_CONFIG
    except ServomexConfigError as exc:
        print(f"servomexd: {exc.message}", file=sys.stderr)
        return EX_CONFIG
    print(f"# effective configuration from {config_path(path)} (secrets masked)")
    sys.stdout.write(to_toml(effective_config(settings)))
    return 0
