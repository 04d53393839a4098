"""The Postgres test fixtures themselves: a throwaway cluster stops and starts for real."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from pg import PgCluster, PgUnavailable, free_port, pg_required


async def _select_one(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        value: int = await conn.fetchval("SELECT 1")
        return value
    finally:
        await conn.close()


@pytest.fixture
def cluster() -> PgCluster:
    try:
        return PgCluster()
    except PgUnavailable as exc:
        if pg_required():
            pytest.fail(f"cannot create a PgCluster: {exc}", pytrace=False)
        pytest.skip(str(exc))


async def test_pg_cluster_stop_and_start(cluster: PgCluster) -> None:
    with cluster:
        assert cluster.running
        assert await _select_one(cluster.dsn) == 1
        port = cluster.port

        await asyncio.to_thread(cluster.stop)
        assert not cluster.running
        with pytest.raises((OSError, asyncpg.PostgresError, asyncio.TimeoutError)):
            await _select_one(cluster.dsn)

        await asyncio.to_thread(cluster.start)
        assert cluster.port == port
        assert await _select_one(cluster.dsn) == 1
    assert not cluster.base.exists()


async def test_pg_dsn_is_a_fresh_database(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn, timeout=5)
    try:
        name = await conn.fetchval("SELECT current_database()")
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
    finally:
        await conn.close()
    assert name.startswith("servomexd_test_")
    assert tables == 0


@pytest.mark.parametrize(("require", "outcome"), [("", "1 skipped"), ("1", "1 error")])
def test_unreachable_server_skips_or_fails_loudly(require: str, outcome: str) -> None:
    """$SERVOMEXD_TEST_PG_DSN set but dead: skip locally, an error when CI requires Postgres."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["SERVOMEXD_TEST_PG_DSN"] = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    env["SERVOMEXD_REQUIRE_PG"] = require
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            f"{Path(__file__).resolve()}::test_pg_dsn_is_a_fresh_database",
        ],
        cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert outcome in result.stdout, result.stdout + result.stderr
    if require:
        assert "SERVOMEXD_REQUIRE_PG is set" in result.stdout
