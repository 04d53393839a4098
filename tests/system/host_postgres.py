"""A throwaway PostgreSQL cluster on the host whose Unix socket the container reaches.

The container has no network of its own, so its daemon reaches the cluster through the
socket directory bound into it. The role it logs in as must give a password there
(scram-sha-256): rows arriving prove the password came through the credential.
"""

from __future__ import annotations

from dataclasses import dataclass

from pg import PgCluster, run_async

PG_ROLE = "servomexd_cred"
PG_DATABASE = "servomexd_cred"


@dataclass
class HostPostgres:
    """A throwaway cluster on the host; its socket directory is bound into the container."""

    cluster: PgCluster
    password: str

    def setup(self) -> None:
        """Start it; a role that must give a password on the socket (scram), owning a database."""
        self.cluster.start()
        hba = self.cluster.data_dir / "pg_hba.conf"
        hba.write_text(f"local all {PG_ROLE} scram-sha-256\n" + hba.read_text())

        async def create() -> None:
            import asyncpg

            conn = await asyncpg.connect(self.cluster.dsn, timeout=10)
            try:
                await conn.execute(f"CREATE ROLE {PG_ROLE} LOGIN PASSWORD '{self.password}'")
                await conn.execute(f"CREATE DATABASE {PG_DATABASE} OWNER {PG_ROLE}")
                await conn.execute("SELECT pg_reload_conf()")
            finally:
                await conn.close()

        run_async(create)

    def count(self, device: str) -> int:
        async def query() -> int:
            import asyncpg

            dsn = self.cluster.dsn.rsplit("/", 1)[0] + f"/{PG_DATABASE}"
            conn = await asyncpg.connect(dsn, timeout=10)
            try:
                exists = await conn.fetchval("SELECT to_regclass('public.samples') IS NOT NULL")
                if not exists:
                    return 0
                return int(await conn.fetchval(
                    "SELECT count(*) FROM samples WHERE device = $1", device))  # fmt: skip
            finally:
                await conn.close()

        return run_async(query)
