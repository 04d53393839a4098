"""``PostgresConfig``: where and how the Postgres sink connects, safe to print.

The password (a field, or inside the DSN) never appears in ``repr``/``str``,
``target()`` or any error raised here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from urllib.parse import SplitResult, unquote, urlsplit

from servomexd.errors import ServomexValidationError
from servomexd.redaction import MASK, mask_text
from servomexd.sinks.base import CHECKPOINT_TABLE, validate_identifier
from servomexd.sinks.pg_partitions import PARTITION_SETTINGS, parse_duration
from servomexd.sinks.pg_rollups import parse_rollup
from servomexd.sinks.postgres_tls import TLS_KEYS, PgTls, merge_tls

_SCHEMES = ("postgres", "postgresql")


def _split(dsn: str) -> SplitResult | None:
    try:
        parts = urlsplit(dsn)
        parts.port  # noqa: B018 (validates the port; raises ValueError)
    except ValueError:
        return None
    if parts.scheme not in _SCHEMES:
        return None
    return parts


def dsn_password(dsn: str) -> str | None:
    parts = _split(dsn)
    if parts is None:
        return None
    if parts.password:
        return unquote(parts.password)
    for item in parts.query.split("&"):
        key, _, value = item.partition("=")
        if key.lower() == "password" and value:
            return unquote(value)
    return None


@dataclass(frozen=True, repr=False)
class PostgresConfig:
    """Connection and table settings of ``PostgresSink``.

    Give ``dsn`` (``postgresql://user@host:port/db``; a separate ``password`` may
    complete it) or ``host`` (with ``port``, ``user``, ``password``, ``database``),
    not both.
    """

    dsn: str | None = None
    host: str | None = None
    port: int = 5432
    user: str | None = None
    password: str | None = None
    database: str | None = None
    schema: str = "public"
    table: str = "samples"
    pool_min_size: int = 1
    pool_max_size: int = 4
    statement_timeout_ms: int = 30000
    command_timeout_s: float = 10.0
    create_table: bool = False
    use_copy: bool = True
    sslmode: str | None = None
    """libpq's sslmode (see ``postgres_tls``); None: the DSN's, else ``prefer``."""
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None
    """Path of the client key; None: the credential ``pg-sslkey``, else inside sslcert."""
    # --- fleet (docs/operations.md) ---
    site: str | None = None
    """Written to a ``site`` column when the table has one (created with one when set)."""
    partition: str = "none"
    """day, week, month or none: the layout of a table this sink creates."""
    retention: str | None = None
    rollups: tuple[str, ...] = ()
    rollup_retention: str | None = None
    maintenance_interval_s: float = 3600.0

    def __post_init__(self) -> None:
        def bad(field: str, reason: str) -> ServomexValidationError:
            return ServomexValidationError(
                f"invalid PostgresConfig.{field}: {reason}", context={"field": field}
            )

        if (self.dsn is None) == (self.host is None):
            raise bad("dsn", "give exactly one of dsn or host")
        if self.dsn is not None:
            if not isinstance(self.dsn, str) or _split(self.dsn) is None:
                raise bad("dsn", "expected postgresql://[user[:password]@]host[:port]/database")
            if self.user is not None or self.database is not None:
                raise bad("dsn", "with a dsn, put user and database in the dsn")
        elif not isinstance(self.host, str) or not self.host.strip():
            raise bad("host", "must be a non-empty string")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not (
            1 <= self.port <= 65535
        ):
            raise bad("port", f"must be 1-65535, got {self.port!r}")
        validate_identifier(self.schema, "schema")
        validate_identifier(self.table, "table")
        if self.table.casefold() == CHECKPOINT_TABLE:
            raise bad("table", f"{CHECKPOINT_TABLE!r} is reserved")
        for name in ("pool_min_size", "pool_max_size", "statement_timeout_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(name, f"must be an int >= 0, got {value!r}")
        if self.pool_max_size < 1:
            raise bad("pool_max_size", f"must be >= 1, got {self.pool_max_size}")
        if self.pool_min_size > self.pool_max_size:
            raise bad(
                "pool_min_size",
                f"{self.pool_min_size} is larger than pool_max_size {self.pool_max_size}",
            )
        timeout = self.command_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
            math.isfinite(timeout) and timeout > 0
        ):
            raise bad("command_timeout_s", f"must be a number > 0, got {timeout!r}")
        try:
            self.tls()
        except ValueError as exc:
            key = str(exc).split(":", 1)[0]
            raise bad(key if key in TLS_KEYS else "sslmode", str(exc).split(": ", 1)[-1]) from None
        self._check_fleet(bad)

    def _check_fleet(self, bad: Callable[[str, str], ServomexValidationError]) -> None:
        if self.site is not None and (
            not isinstance(self.site, str) or not self.site.strip() or len(self.site) > 128
        ):
            raise bad("site", "must be a non-empty string of at most 128 characters")
        if self.partition not in PARTITION_SETTINGS:
            raise bad("partition", f"must be one of {', '.join(PARTITION_SETTINGS)}")
        for name in ("retention", "rollup_retention"):
            value = getattr(self, name)
            if value is not None:
                try:
                    parse_duration(value)
                except ValueError as exc:
                    raise bad(name, str(exc)) from None
        if not isinstance(self.rollups, tuple):
            raise bad("rollups", "must be a tuple of intervals such as ('1m', '1h')")
        for text in self.rollups:
            try:
                spec = parse_rollup(text)
            except ValueError as exc:
                raise bad("rollups", str(exc)) from None
            if len(spec.table(self.table)) > 63:
                raise bad("rollups", f"table name {spec.table(self.table)!r} is over 63 characters")
        if len(set(self.rollups)) != len(self.rollups):
            raise bad("rollups", "an interval is listed twice")
        interval = self.maintenance_interval_s
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not (
            math.isfinite(interval) and interval > 0
        ):
            raise bad("maintenance_interval_s", f"must be a number > 0, got {interval!r}")

    def tls(self) -> PgTls:
        """The effective TLS settings (these fields merged with the DSN's query string)."""
        fields = {key: getattr(self, key) for key in TLS_KEYS}
        return merge_tls(fields, self.dsn)

    # --- log-safe forms -----------------------------------------------------------------

    def target(self) -> str:
        """``host:port/db.schema.table`` for logs and errors; ``?`` where unknown."""
        host: str | None
        port: int | None
        database: str | None
        if self.dsn is not None:
            parts = _split(self.dsn)
            host = parts.hostname if parts else None
            port = (parts.port or 5432) if parts else None
            path = parts.path.lstrip("/") if parts else ""
            database = unquote(path) if path else None
        else:
            host, port, database = self.host, self.port, self.database
        return (
            f"{host or '?'}:{port if port is not None else '?'}/"
            f"{database or '?'}.{self.schema}.{self.table}"
        )

    def secrets(self) -> tuple[str, ...]:
        """Strings that must never be shown: the password(s) and the raw DSN."""
        found = [self.password, self.dsn, dsn_password(self.dsn) if self.dsn else None]
        return tuple(secret for secret in found if secret)

    def scrub(self, text: str) -> str:
        """``text`` with this config's secrets, and any secret-shaped value, masked
        (for driver error messages)."""
        return mask_text(text, self.secrets())

    def __repr__(self) -> str:
        shown = []
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "password" and value is not None:
                shown.append(f"password='{MASK}'")
            elif field.name == "dsn" and value is not None:
                shown.append(f"dsn={mask_text(value, [dsn_password(value)])!r}")
            else:
                shown.append(f"{field.name}={value!r}")
        return f"PostgresConfig({', '.join(shown)})"

    __str__ = __repr__
