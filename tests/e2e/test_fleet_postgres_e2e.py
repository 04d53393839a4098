"""A fleet of daemons into one PostgreSQL: concurrent layout creation, exactly-once, rollups.

Four ``servomexd run`` subprocesses (each with its own simulator, spool and site) write
one partitioned table with rollups on a private throwaway cluster (tests/pg.py
PgCluster), never the shared server.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon_harness import DaemonProc, Simulator, compare, missing_between, wait_for, write_config
from pg import PgCluster, query_rows, run_async
from pg_rollup_check import rollup_mismatches

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

FLEET = 4
_SERIOUS = re.compile(r"^<[0-4]>", re.MULTILINE)  # syslog priority: emerg..warning


def fleet_config(tmp: Path, index: int, sim: Simulator, dsn: str) -> Path:
    home = tmp / f"host-{index}"
    home.mkdir(exist_ok=True)
    path = write_config(
        home,
        [{"name": f"an-{index}", "port": str(sim.link), "silence_timeout": 2.0}],
        sink={"type": "postgres", "retry_max_delay": 1.0, "write_timeout": 5.0},
        postgres={"dsn": dsn, "create_table": True, "partition": "day",
                  "command_timeout_s": 3.0},
    )  # fmt: skip
    with path.open("a") as out:  # write_config knows no [daemon] table or lists
        out.write(f'[daemon]\nsite = "plant-{index}/line"\n')
    text = path.read_text().replace(
        'partition = "day"', 'partition = "day"\nrollups = ["1m", "1h"]'
    )
    path.write_text(text)
    return path


def raw_rows(dsn: str) -> list[tuple[Any, ...]]:
    return query_rows(
        dsn, "SELECT device, channel, value, monotonic_ns, received_at, error FROM samples"
    )


def mismatches(dsn: str, table: str, seconds: int) -> tuple[int, list[dict[str, Any]]]:
    async def check() -> tuple[int, list[dict[str, Any]]]:
        import asyncpg

        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            return await rollup_mismatches(conn, "samples", table, seconds)
        finally:
            await conn.close()

    return run_async(check)


def serious_lines(daemon: DaemonProc) -> list[str]:
    return [line for line in daemon.text().splitlines() if _SERIOUS.match(line)]


def start_fleet(tmp: Path, dsn: str) -> tuple[list[Simulator], list[Path], list[DaemonProc]]:
    sims = [Simulator(tmp, f"s{i}", period=0.1) for i in range(FLEET)]
    configs = [fleet_config(tmp, i, sim, dsn) for i, sim in enumerate(sims)]
    daemons = [DaemonProc(config) for config in configs]  # started together, no waiting
    return sims, configs, daemons


def terminate_all(daemons: list[DaemonProc]) -> None:
    for daemon in daemons:
        code, _ = daemon.terminate()
        assert code == 0


def stop_fleet(sims: list[Simulator], daemons: list[DaemonProc]) -> None:
    for daemon in daemons:
        daemon.cleanup()
    for sim in sims:
        sim.stop()


def test_four_daemons_create_one_partitioned_layout_at_once(
    tmp_path: Path, cluster: PgCluster
) -> None:
    sims, _configs, daemons = start_fleet(tmp_path, cluster.dsn)
    try:
        for daemon in daemons:
            daemon.wait_ready(40)
        devices = "SELECT DISTINCT device FROM samples"
        wait_for(lambda: len(query_rows(cluster.dsn, devices)) == FLEET, 30,
                 "rows from every daemon")
        terminate_all(daemons)
    finally:
        stop_fleet(sims, daemons)
    for daemon in daemons:
        assert serious_lines(daemon) == [], daemon.text()
    assert query_rows(cluster.dsn, "SELECT partstrat::text FROM pg_partitioned_table "
                      "WHERE partrelid = 'samples'::regclass") == [("r",)]
    children = query_rows(cluster.dsn, "SELECT count(*) FROM pg_inherits "
                          "WHERE inhparent = 'samples'::regclass")
    assert children == [(4,)]  # today, two days ahead, DEFAULT


def test_fleet_survives_a_restart_and_a_sigkill_exactly_once(
    tmp_path: Path, cluster: PgCluster
) -> None:
    sims, configs, daemons = start_fleet(tmp_path, cluster.dsn)
    try:
        for daemon in daemons:
            daemon.wait_ready(40)
        wait_for(lambda: len(raw_rows(cluster.dsn)) >= FLEET * 20 * 5, 40, "rows from the fleet")
        cluster.stop()
        for daemon in daemons:
            wait_for(lambda d=daemon: (d.metric("servomexd_spool_pending_samples") or 0) > 30,
                     20, "samples spooled during the outage")
        # daemon 0 loses its process with a spooled backlog: its analyser stops first so
        # that every frame it sent is in the spool (the memory buffer flushes in 0.3 s)
        sims[0].stop()
        time.sleep(1.5)
        daemons[0].proc.send_signal(signal.SIGKILL)
        daemons[0].proc.wait(10)
        cluster.start()
        daemons[0] = DaemonProc(configs[0])
        daemons[0].wait_ready(40)
        for daemon in daemons:
            wait_for(lambda d=daemon: d.metric("servomexd_spool_pending_samples") == 0, 40,
                     "backlog drained")
        time.sleep(1.0)
        terminate_all(daemons)
    finally:
        stop_fleet(sims, daemons)
    rows = raw_rows(cluster.dsn)
    for index, sim in enumerate(sims):
        frames = sim.frames()
        result = compare(frames, rows, f"an-{index}")
        assert result.duplicates == {}, f"an-{index}: rows stored twice"
        # frames sent before the daemon opened the port are not its to store; daemon 0
        # (killed with a backlog) must hold every frame up to its analyser's last
        last = result.last if index else max(f["index"] for f in frames)
        assert missing_between(result, frames, result.first, last) == [], f"an-{index}"
        assert set(result.frame_rows.values()) == {5}
    sites = query_rows(cluster.dsn, "SELECT DISTINCT site, device FROM samples ORDER BY device")
    assert sites == [(f"plant-{i}/line", f"an-{i}") for i in range(FLEET)]
    for table, seconds in (("samples_1m", 60), ("samples_1h", 3600)):
        total, bad = mismatches(cluster.dsn, table, seconds)
        assert bad == [] and total > 0, table
