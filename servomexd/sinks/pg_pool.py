"""``PgPool``: the Postgres sink's asyncpg pool and the one connection it keeps.

The sink writes on a single pool connection acquired once and kept between writes
(``connection``), given back on any failure so the next write starts clean (``drop``).
Large COPYs race the connection's termination (``guarded``), and every driver error
is typed here (``fail``), with secrets scrubbed, by ``postgres_errors.classify``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Coroutine
from typing import Any, NoReturn

from servomexd.errors import (
    ServomexSinkDataError,
    ServomexSinkDependencyError,
    ServomexSinkFault,
    ServomexSinkWriteError,
    SinkFailure,
)
from servomexd.sinks.postgres_config import PostgresConfig
from servomexd.sinks.postgres_errors import PgTarget, route_driver_logs
from servomexd.sinks.postgres_errors import classify as classify_failure
from servomexd.sinks.postgres_tls import TlsSetupError, asyncpg_ssl, classify

# Below asyncpg's 512 KiB COPY buffer (rows are ~150-250 bytes) a COPY never waits
# on flow control, so it cannot hang on a dead connection (see PgPool.guarded).
_GUARD_MIN_ROWS = 1000


async def _reap(task: asyncio.Future[None]) -> None:
    """Cancel ``task``, wait for it, and consume its outcome (no "never retrieved")."""
    task.cancel()
    await asyncio.wait((task,))
    if not task.cancelled():
        task.exception()


async def _no_session_reset(connection: Any) -> None:
    """Pool release hook: skip asyncpg's RESET ALL round trip.

    We never change session state (settings are connection parameters), and an
    open transaction is still rolled back by the pool itself. Saves one round
    trip per batch.
    """


def missing_asyncpg() -> ServomexSinkDependencyError:
    return ServomexSinkDependencyError(
        "the Postgres sink needs asyncpg: pip install 'servomexd[postgres]'",
        context={"extra": "servomexd[postgres]"},
        fix="install the postgres extra: pip install 'servomexd[postgres]'",
    )


class PgPool:
    """The pool, the kept connection, and the typing of what the driver raises."""

    def __init__(self, config: PostgresConfig) -> None:
        self.config = config
        self.asyncpg: Any = None
        self.pool: Any = None
        self._conn: Any = None  # held between writes: see connection()

    # --- errors -------------------------------------------------------------------------

    def error(self, action: str, exc: BaseException) -> ServomexSinkWriteError:
        """The typed sink error for ``exc`` raised during ``action``."""
        config = self.config
        tls_fault = classify(exc)
        if tls_fault is not None:
            check, explanation = tls_fault
            return ServomexSinkFault(
                f"postgres {action} failed: TLS check {check!r} failed: "
                f"{config.scrub(explanation)}",
                context={"target": config.target(), "check": check},
                fault="tls",
                fix="fix the certificate named by the check, or [sink.postgres] sslrootcert, "
                "sslcert, sslkey or sslmode",
            )
        where = PgTarget.of(config)
        decided = classify_failure(exc, self.asyncpg, where)
        text = config.scrub(f"{type(exc).__name__}: {exc}")
        cls = {
            SinkFailure.OPERATOR: ServomexSinkFault,
            SinkFailure.DATA: ServomexSinkDataError,
        }.get(decided.failure, ServomexSinkWriteError)
        return cls(
            f"postgres {action} failed: {text}",
            context={"target": config.target()},
            failure=decided.failure,
            fault=decided.fault,
            fix=decided.fix,
        )

    def fail(self, action: str, exc: BaseException) -> NoReturn:
        """Raise the typed error, chaining the driver's only if it holds no secret."""
        error = self.error(action, exc)
        if self.config.scrub(str(exc)) != str(exc):
            raise error from None  # the driver's text held a secret: do not chain it
        raise error from exc

    def driver_errors(self) -> tuple[type[BaseException], ...]:
        asyncpg = self.asyncpg
        return (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,  # 'cannot switch to state N': not an InterfaceError
            OSError,
            TimeoutError,
        )

    # --- the pool -----------------------------------------------------------------------

    async def create(self) -> None:
        """Import asyncpg and create the pool (connections bounded by the timeouts)."""
        try:
            import asyncpg
        except ImportError as exc:
            raise missing_asyncpg() from exc
        self.asyncpg = asyncpg
        route_driver_logs()
        connect = self._connect_options()
        if "reset" in inspect.signature(asyncpg.create_pool).parameters:  # asyncpg >= 0.30
            connect["reset"] = _no_session_reset
        try:
            self.pool = await asyncpg.create_pool(**connect)
        except (*self.driver_errors(), ValueError) as exc:  # type: ignore[misc]  # mypy cannot see a starred tuple of classes
            self.fail("connect", exc)

    def _connect_options(self) -> dict[str, Any]:
        config = self.config
        connect: dict[str, Any] = {
            "min_size": config.pool_min_size,
            "max_size": config.pool_max_size,
            "command_timeout": config.command_timeout_s,
            "timeout": config.command_timeout_s,  # connect timeout: bounded too
            "server_settings": {
                "application_name": "servomexd",
                "statement_timeout": str(config.statement_timeout_ms),
            },
        }
        try:
            # Given explicitly, so it wins over the DSN's sslmode (merged into tls()).
            connect["ssl"] = asyncpg_ssl(config.tls())
        except TlsSetupError as exc:
            self.fail("TLS setup", exc)
        if config.dsn is not None:
            connect["dsn"] = config.dsn
            if config.password is not None:
                connect["password"] = config.password
        else:
            connect.update(
                host=config.host,
                port=config.port,
                user=config.user,
                password=config.password,
                database=config.database,
            )
        return connect

    async def terminate(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.terminate()

    async def close(self) -> None:
        """Close the pool (terminate it if that fails); ``drop`` the kept connection first."""
        pool, self.pool = self.pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=self.config.command_timeout_s)
        except self.driver_errors():
            pool.terminate()

    # --- the kept connection ------------------------------------------------------------

    async def connection(self) -> Any:
        """The pool connection this sink writes on, acquired once and kept.

        Acquiring and releasing per batch cost about 80 us (a task for the acquire
        timeout, the release bookkeeping): a third of a 64-row COPY. Connecting is
        bounded by the pool's connect timeout (``command_timeout_s``).
        """
        conn = self._conn
        if conn is not None and self._usable(conn):
            return conn
        await self.drop()
        self._conn = await self.pool.acquire()
        return self._conn

    def _usable(self, conn: Any) -> bool:
        """The kept connection is still ours and open.

        When the server drops a connection we hold (a restart, a crash), asyncpg cleans
        it up and hands its holder back to the pool by itself, detaching our proxy:
        every call on the proxy then raises ``InterfaceError: connection has been
        released back to the pool``. Such a proxy is as gone as a closed one.
        """
        try:
            return not conn.is_closed()
        except self.asyncpg.InterfaceError:
            return False

    async def drop(self) -> None:
        """Give the connection back (the pool rolls back, or discards a dead one)."""
        conn, self._conn = self._conn, None
        if conn is not None and self.pool is not None:
            try:
                # A proxy the pool already took back is a no-op here.
                await self.pool.release(conn, timeout=self.config.command_timeout_s)
            except (Exception, asyncio.CancelledError):
                with contextlib.suppress(Exception):  # detached meanwhile: nothing to end
                    conn.terminate()

    async def guarded(self, conn: Any, work: Coroutine[Any, Any, None], rows: int) -> None:
        """Run ``work``, failing at once if the server drops the connection.

        asyncpg's COPY waits for the socket to drain (flow control) without a
        timeout once it has 512 KiB to send; when the connection dies during that
        wait (server shutdown mid-COPY, measured) it waits forever. Large batches
        therefore race the write against the connection's termination. Smaller
        ones never reach that wait and skip the extra task.
        """
        if rows < _GUARD_MIN_ROWS:
            await work
            return
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[None] = loop.create_future()

        def on_lost(_conn: Any) -> None:
            if not lost.done():
                lost.set_result(None)

        conn.add_termination_listener(on_lost)
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait((task, lost), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await _reap(task)
            raise
        finally:
            lost.cancel()
            with contextlib.suppress(Exception):  # a dead connection is detached already
                conn.remove_termination_listener(on_lost)
        if not task.done():
            await _reap(task)
            raise self.asyncpg.ConnectionDoesNotExistError(
                "connection lost in the middle of a write"
            )
        task.result()
