"""Shared fixtures. PostgreSQL: ``pg_server`` (session) and ``pg_dsn`` (a fresh database).

Postgres tests are skipped only when no server can be found or started AND
``$SERVOMEXD_REQUIRE_PG`` is unset; CI sets it, so there they fail loudly instead.

Hypothesis: with ``$CI`` set the "ci" profile runs derandomized (the examples follow
from the test itself), so a red CI run is reproduced by running the test again;
elsewhere the default random search keeps looking for new failures.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pg import PgServer, PgUnavailable, fresh_database, pg_required, resolve_server

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev")
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The PostgreSQL server for this test session (see tests/pg.py for the resolution)."""
    try:
        server = resolve_server()
    except (PgUnavailable, ImportError, OSError) as exc:
        message = f"no PostgreSQL server available: {type(exc).__name__}: {exc}"
        if pg_required():
            pytest.fail(f"{message} (SERVOMEXD_REQUIRE_PG is set)", pytrace=False)
        pytest.skip(message)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """DSN of a fresh, uniquely named database, dropped after the test."""
    with fresh_database(pg_server) as dsn:
        yield dsn


@pytest.fixture
def pty_path() -> Iterator[str]:
    """The path of a real pseudo-terminal's slave end: a tty that exists, held open."""
    master, slave = os.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(slave)
        os.close(master)
