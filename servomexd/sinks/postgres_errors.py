"""Every asyncpg/PostgreSQL failure mapped, deliberately, to what delivery does about it.

The decision is the ``SinkFailure`` of ``servomexd.errors``: TRANSIENT (back off and
retry), OPERATOR (not ready, the fix in the log, retried slowly) or DATA (the rows are
refused: isolate and quarantine). PostgreSQL errors are decided by their SQLSTATE
class (the first two characters), with a few single codes overriding their class;
asyncpg's own client-side errors by their Python class. Nothing falls through
unclassified: an unknown SQLSTATE class is transient and says so in the table.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import structlog

from servomexd.errors import SinkFailure
from servomexd.redaction import mask_text

if TYPE_CHECKING:
    from servomexd.sinks.postgres_config import PostgresConfig

log = structlog.get_logger("servomexd.sinks")

_T, _O, _D = SinkFailure.TRANSIENT, SinkFailure.OPERATOR, SinkFailure.DATA

_BY_CLASS: dict[str, tuple[SinkFailure, str | None]] = {
    "08": (_T, None),  # connection exception: refused, reset, lost
    "09": (_D, None),  # triggered action exception
    "0A": (_O, "schema_mismatch"),  # feature not supported (a column type, a COPY form)
    "0L": (_O, "authorization"),  # invalid grantor
    "0P": (_O, "authorization"),  # invalid role specification
    "22": (_D, None),  # data exception: out of range, bad text, string too long
    "23": (_D, None),  # integrity constraint violation: CHECK, NOT NULL, UNIQUE, FK
    "25": (_T, None),  # invalid transaction state (25006 overridden below)
    "28": (_O, "authentication"),  # invalid authorization specification / password
    "2B": (_D, None),  # dependent privilege descriptors still exist (from a trigger)
    "2F": (_D, None),  # SQL routine exception (a trigger function)
    "38": (_D, None),  # external routine exception (a trigger function)
    "39": (_D, None),  # external routine invocation exception
    "3B": (_T, None),  # savepoint exception
    "3D": (_O, "missing_database"),  # invalid catalog name
    "3F": (_O, "missing_schema"),  # invalid schema name
    "40": (_T, None),  # transaction rollback: serialization failure, deadlock
    "42": (_O, "schema_mismatch"),  # syntax error or access rule (42501 overridden)
    "44": (_D, None),  # WITH CHECK OPTION violation (a view's condition)
    "53": (_T, None),  # insufficient resources: disk full, out of memory, connections
    "54": (_D, None),  # program limit exceeded: a row too big
    "55": (_O, "other"),  # object not in prerequisite state (55P03/55006 overridden)
    "57": (_T, None),  # operator intervention: shutdown, restart, statement timeout
    "58": (_T, None),  # system error: I/O error on the server
    "F0": (_O, "other"),  # configuration file error on the server
    "HV": (_O, "other"),  # foreign data wrapper error (a foreign table as destination)
    "P0": (_D, None),  # PL/pgSQL: RAISE EXCEPTION in a trigger, ASSERT
    "XX": (_T, None),  # internal error: retried; persistent ones show in sink.down
}
_BY_CODE: dict[str, tuple[SinkFailure, str | None]] = {
    "25006": (_O, "read_only_database"),  # read-only transaction: connected to a standby
    "42501": (_O, "authorization"),  # insufficient privilege
    "55P03": (_T, None),  # lock not available
    "55006": (_T, None),  # object in use
}


@dataclass(frozen=True)
class Classified:
    failure: SinkFailure
    fault: str | None
    fix: str | None


def classify(exc: BaseException, asyncpg: Any, where: PgTarget) -> Classified:
    """The classification of one error raised by asyncpg (or the socket under it)."""
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", None) or "")
        failure, fault = _BY_CODE.get(state) or _BY_CLASS.get(state[:2], (_T, None))
        return Classified(failure, fault, None if fault is None else where.fix(fault, exc))
    if isinstance(exc, ssl.SSLCertVerificationError | ssl.SSLError):
        return Classified(_O, "tls", where.fix("tls", exc))
    if isinstance(exc, asyncpg.ClientConfigurationError | ValueError):
        # A connection option the driver refuses (sslmode, a DSN parameter).
        return Classified(_O, "other", "fix the [sink.postgres] connection settings")
    if isinstance(exc, asyncpg.UnsupportedServerFeatureError):
        return Classified(_O, "other", "use a PostgreSQL server version asyncpg supports")
    if isinstance(exc, asyncpg.UnsupportedClientFeatureError):
        return Classified(_O, "other", "upgrade asyncpg (pip install -U 'servomexd[postgres]')")
    # The rest are about one connection's state, not the data nor the setup:
    # InterfaceError (connection closed, another operation in progress), and
    # InternalClientError and its subclasses (ProtocolError, 'cannot switch to state N;
    # another operation (M) is in progress' after a cancelled operation,
    # OutdatedSchemaCacheError after a DDL, TargetServerAttributeNotMatched during a
    # failover); OSError (refused, reset, unreachable, DNS) and TimeoutError. The sink
    # drops the connection and the next attempt starts on a fresh one.
    return Classified(_T, None, None)


@dataclass(frozen=True)
class PgTarget:
    """Names for the fix sentences (never the password)."""

    user: str | None
    database: str | None
    schema: str
    table: str

    @classmethod
    def of(cls, config: PostgresConfig) -> PgTarget:
        user, database = config.user, config.database
        if config.dsn is not None:
            parts = urlsplit(config.dsn)
            user = user or (unquote(parts.username) if parts.username else None)
            database = database or (unquote(parts.path.lstrip("/")) or None)
        return cls(user, database, config.schema, config.table)

    def fix(self, fault: str, exc: BaseException) -> str:
        user = self.user or "the configured user"
        qualified = f"{self.schema}.{self.table}"
        match fault:
            case "authentication":
                return (
                    f"check the password and user {user!r} ([sink.postgres] password_file or "
                    "the systemd credential) and the server's pg_hba.conf entry for this host"
                )
            case "authorization":
                return (
                    f"grant INSERT on {qualified} to {user} (and USAGE on schema "
                    f"{self.schema}; CREATE on it once, for the servomexd_checkpoints table, "
                    f"or create that table and grant INSERT, UPDATE, SELECT on it)"
                )
            case "missing_database":
                return (
                    f"create the database {self.database!r} (createdb -O {user} "
                    f"{self.database}) or fix [sink.postgres] database"
                )
            case "missing_schema":
                return f"create schema {self.schema} (or fix [sink.postgres] schema)"
            case "read_only_database":
                return "point [sink.postgres] at the primary server, not a read-only standby"
            case "tls":
                return "fix the server certificate or [sink.postgres] sslrootcert / sslmode"
            case _:
                return (
                    f"create or alter table {qualified} to match the servomexd columns, or "
                    f"set [sink.postgres] create_table = true ({type(exc).__name__})"
                )


class _DriverLogRoute(logging.Filter):
    """asyncpg logs some failures itself (``Failed to restore the pool connection floor;
    retrying`` with a traceback, on every retry during an outage). Turn each into one
    structlog line naming the cause, and keep the multi-line original out of the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        cause = None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        event = "sink.driver_warning" if record.levelno < logging.ERROR else "sink.driver_error"
        emit = log.warning if record.levelno < logging.ERROR else log.error
        emit(
            event,
            driver=record.name,
            message=mask_text(record.getMessage()),
            cause=None if cause is None else mask_text(cause),
        )
        return False


_ROUTE = _DriverLogRoute()
_DRIVER_LOGGERS = ("asyncpg", "asyncpg.pool", "asyncpg.connection", "asyncpg.cluster")


def route_driver_logs() -> None:
    """Install the route on asyncpg's loggers (idempotent). A logger's filter sees only
    its own records, not its children's, so each module's logger gets it."""
    for name in _DRIVER_LOGGERS:
        logger = logging.getLogger(name)
        if _ROUTE not in logger.filters:
            logger.addFilter(_ROUTE)
