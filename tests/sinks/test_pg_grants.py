"""The fleet's least-privilege layout (docs/operations.md): a site role that may only add rows.

The owner creates the layout (a daemon with create_table); a site's daemon then logs in
with INSERT rights (plus what the checkpoint, the rollups and the writers registry
need) and no DDL: its sink must work and must not try to create anything.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from fleetdata import records_at
from structlog.testing import capture_logs

from servomexd.sinks import PostgresConfig, PostgresSink

# The grants as docs/operations.md gives them (role and site filled in).
GRANTS = """
CREATE ROLE {role} LOGIN;
GRANT USAGE ON SCHEMA public TO {role};
GRANT INSERT ON samples TO {role};
GRANT SELECT, INSERT, UPDATE ON samples_1m, samples_1h TO {role};
GRANT SELECT, INSERT, UPDATE ON servomexd_checkpoints, servomexd_writers TO {role};
"""


def as_user(dsn: str, user: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, ""))


async def test_insert_only_site_role_writes_rows_rollups_and_checkpoints(pg_dsn: str) -> None:
    owner = PostgresConfig(dsn=pg_dsn, create_table=True, partition="day",
                           rollups=("1m", "1h"), site="central")  # fmt: skip
    async with PostgresSink(owner):
        pass
    role = f"site_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(GRANTS.format(role=role))
        rows = records_at(datetime.now(UTC), 3)
        with capture_logs() as logs:
            # create_table = true (the daemon's default) finds everything there: no DDL
            for seq, create in enumerate((False, True), start=1):
                site = PostgresConfig(
                    dsn=as_user(pg_dsn, role), create_table=create, partition="none",
                    rollups=("1m", "1h"), site="plant-a",
                )  # fmt: skip
                async with PostgresSink(site) as sink:
                    await sink.write_records(rows, checkpoint=("spool-a", seq))
                    assert await sink.read_checkpoint("spool-a") == seq
        rows = rows + rows
        assert [e for e in logs if e["log_level"] in ("warning", "error")] == []
        assert await conn.fetchval("SELECT count(*) FROM samples WHERE site = 'plant-a'") == len(
            rows
        )
        assert await conn.fetchval("SELECT sum(samples) FROM samples_1h WHERE site = 'plant-a'") \
            == len(rows)
        role_conn = await asyncpg.connect(as_user(pg_dsn, role))
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await role_conn.execute("DELETE FROM samples")
        finally:
            await role_conn.close()
    finally:
        await conn.execute(f"DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}")
        await conn.close()
