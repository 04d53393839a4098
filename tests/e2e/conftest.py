"""Fixtures of the end-to-end tests: ``cluster``, a private PostgreSQL cluster per test.

A test that stops and restarts the server (an outage) must never do it to the shared
one, so it gets a throwaway cluster of its own (tests/pg.py PgCluster).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pg import PgCluster, PgUnavailable, pg_required


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    """A started private cluster, removed after the test."""
    try:
        pg = PgCluster()
        pg.start()
    except (PgUnavailable, OSError) as exc:
        if pg_required():
            pytest.fail(f"PostgreSQL needed (SERVOMEXD_REQUIRE_PG): {exc}", pytrace=False)
        pytest.skip(f"no PostgreSQL cluster possible here: {exc}")
    try:
        yield pg
    finally:
        pg.cleanup()
