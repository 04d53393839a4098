"""PostgreSQL for the tests: find a server, or start a throwaway cluster.

Resolution order (``resolve_server``):

1. ``$SERVOMEXD_TEST_PG_DSN`` (a DSN whose user may create databases);
2. ``127.0.0.1:5432`` as user ``postgres`` with trust auth, if it answers;
3. a throwaway cluster (``initdb`` + ``pg_ctl``) in a temp dir on a free port.

``PgCluster`` is always a private throwaway cluster: outage tests stop and start
it freely and never touch a shared server. ``initdb`` refuses to run as root, so
when the tests run as root the cluster is created and run as the ``postgres``
OS user (or ``nobody``) via ``runuser``, with the temp dir handed over to it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")

ENV_DSN = "SERVOMEXD_TEST_PG_DSN"
ENV_REQUIRE = "SERVOMEXD_REQUIRE_PG"
_SHARED_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


class PgUnavailable(RuntimeError):
    """No PostgreSQL server can be used or started here."""


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a private loop in a worker thread.

    Fixtures use this so they never disturb the event loop pytest-asyncio gives
    the test itself.
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def runner() -> None:
        async def main() -> T:
            return await factory()

        try:
            result.append(asyncio.run(main()))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=runner, name="pg-fixture")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def find_pg_binary(name: str) -> str | None:
    """``name`` on PATH, else the newest ``/usr/lib/postgresql/*/bin/name``."""
    found = shutil.which(name)
    if found:
        return found

    def version(path: str) -> int:
        part = Path(path).parent.parent.name
        return int(part) if part.isdigit() else 0

    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=version, reverse=True)
    return candidates[0] if candidates else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _runas_user() -> str | None:
    """The OS user to run the cluster as: None when not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise PgUnavailable("running as root and neither 'postgres' nor 'nobody' exists")


def with_database(dsn: str, database: str) -> str:
    """``dsn`` pointing at another database."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


async def _can_connect(dsn: str, connect_timeout: float = 3.0) -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(dsn, timeout=connect_timeout)
    except Exception:  # refused, timed out, auth failed, bad DSN: all mean "not usable"
        return False
    await conn.close()
    return True


class PgCluster:
    """A private, throwaway PostgreSQL cluster: ``start()``, ``stop()``, ``dsn``.

    Listens on 127.0.0.1 on a free port (kept across restarts) with its unix socket
    inside its own temp dir; trust auth for user ``postgres``. Use as a context
    manager (or call ``cleanup()``) to stop it and delete its files. ``conf`` and ``hba``
    add postgresql.conf and pg_hba.conf lines (TLS tests: ``ssl = on`` with files placed
    by ``add_file`` beside the data directory, ``hostssl ... cert``).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        conf: Sequence[str] = (),
        hba: Sequence[str] = (),
    ) -> None:
        """``conf``: extra postgresql.conf lines (``ssl = on``...); ``hba``: pg_hba.conf
        lines put before the defaults (the first matching line wins)."""
        initdb = find_pg_binary("initdb")
        pg_ctl = find_pg_binary("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise PgUnavailable("initdb/pg_ctl not found on PATH or in /usr/lib/postgresql/*/bin")
        self._initdb = initdb
        self._pg_ctl = pg_ctl
        self._user = _runas_user()
        self.port = port if port is not None else free_port()
        self.base = Path(tempfile.mkdtemp(prefix="servomexd-pg-"))
        self.data_dir = self.base / "data"
        self.socket_dir = self.base / "sock"
        self.log_file = self.base / "postgres.log"
        self.socket_dir.mkdir()
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            for path in (self.base, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._conf = tuple(conf)
        self._hba = tuple(hba)
        self._initialised = False
        self.running = False
        # An interrupted test run must not leave a postmaster behind.
        atexit.register(self.cleanup)

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True, timeout: float = 120.0) -> None:
        cmd = list(args)
        if self._user is not None:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
            cwd=self.base,
        )
        if check and proc.returncode != 0:
            raise PgUnavailable(
                f"{' '.join(cmd)} failed ({proc.returncode}): "
                f"{proc.stdout.decode(errors='replace')[-2000:]}{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        try:
            return "\npostgres.log: " + self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def init(self) -> None:
        if self._initialised:
            return
        self._run(
            self._initdb,
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        if self._conf:
            with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
                conf.write("\n# added by tests/pg.py\n" + "\n".join(self._conf) + "\n")
        if self._hba:
            hba = self.data_dir / "pg_hba.conf"
            hba.write_text("\n".join(self._hba) + "\n" + hba.read_text(encoding="utf-8"))
        self._initialised = True

    @classmethod
    def with_tls(
        cls, cert_pem: bytes, key_pem: bytes, ca_pem: bytes, hba: Sequence[str]
    ) -> PgCluster:
        """A cluster serving TLS with this certificate and key, trusting client
        certificates from ``ca_pem``; ``hba`` says who must connect how."""
        cluster = cls(
            conf=["ssl = on", "ssl_cert_file = '../server.crt'",
                  "ssl_key_file = '../server.key'", "ssl_ca_file = '../ca.crt'"],
            hba=hba,
        )  # fmt: skip
        cluster.add_file("server.crt", cert_pem, 0o644)
        cluster.add_file("server.key", key_pem, 0o600)
        cluster.add_file("ca.crt", ca_pem, 0o644)
        return cluster

    def add_file(self, name: str, data: bytes, mode: int = 0o600) -> Path:
        """A file the server can read (a certificate, a key), owned by its OS user."""
        path = self.base / name
        path.touch(mode=mode)
        path.chmod(mode)
        path.write_bytes(data)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return path

    def start(self) -> None:
        """Start (initialising on first use) and wait until it accepts connections."""
        self.init()
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=50"
        )
        self._run(
            self._pg_ctl, "-D", str(self.data_dir), "-l", str(self.log_file),
            "-o", options, "-w", "-t", "60", "start",
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` disconnects clients and rolls back their transactions)."""
        if not self.running:
            return
        self._run(self._pg_ctl, "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def cleanup(self) -> None:
        """Stop the server (immediately) and delete its files; safe to call twice."""
        try:
            if self.running:
                self._run(
                    self._pg_ctl, "-D", str(self.data_dir), "-m", "immediate", "-w", "stop",
                    check=False,
                )
                self.running = False
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
            atexit.unregister(self.cleanup)

    def __enter__(self) -> PgCluster:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class PgServer:
    """The server the tests use: an admin DSN plus, for a throwaway cluster, its owner."""

    def __init__(self, admin_dsn: str, cluster: PgCluster | None = None) -> None:
        self.admin_dsn = admin_dsn
        self.cluster = cluster

    def create_database(self) -> tuple[str, str]:
        """A fresh, uniquely named database: returns (name, dsn)."""
        name = f"servomexd_test_{uuid.uuid4().hex[:16]}"
        self._admin_execute(f'CREATE DATABASE "{name}"')
        return name, with_database(self.admin_dsn, name)

    def drop_database(self, name: str) -> None:
        self._admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _admin_execute(self, sql: str) -> None:
        async def execute() -> None:
            import asyncpg

            conn = await asyncpg.connect(self.admin_dsn, timeout=10)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        run_async(execute)

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.cleanup()


def resolve_server() -> PgServer:
    """Find or start a server; raises ``PgUnavailable`` when none is possible."""
    env = os.environ.get(ENV_DSN)
    if env:
        if not run_async(lambda: _can_connect(env, connect_timeout=10)):
            raise PgUnavailable(f"${ENV_DSN} is set but the server does not answer")
        return PgServer(env)
    if run_async(lambda: _can_connect(_SHARED_DSN)):
        return PgServer(_SHARED_DSN)
    cluster = PgCluster()
    try:
        cluster.start()
    except BaseException:
        cluster.cleanup()
        raise
    return PgServer(cluster.dsn, cluster)


def query_rows(dsn: str, sql: str) -> list[tuple[object, ...]]:
    """The rows of ``sql``; none while the server is down or the table not yet created
    (for polling a daemon's progress)."""

    async def fetch() -> list[tuple[object, ...]]:
        import asyncpg

        try:
            conn = await asyncpg.connect(dsn, timeout=5)
        except (OSError, asyncpg.PostgresError):
            return []
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        except asyncpg.UndefinedTableError:
            return []
        finally:
            await conn.close()

    return run_async(fetch)


def pg_required() -> bool:
    return bool(os.environ.get(ENV_REQUIRE))


@contextlib.contextmanager
def fresh_database(server: PgServer) -> Iterator[str]:
    name, dsn = server.create_database()
    try:
        yield dsn
    finally:
        server.drop_database(name)
