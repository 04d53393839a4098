"""Postgres stopped for several seconds mid-run, then restarted: zero loss, zero duplicates.

A private throwaway cluster (tests/pg.py PgCluster), never the shared server.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon_harness import DaemonProc, Simulator, compare, missing_between, wait_for, write_config
from pg import PgCluster, query_rows

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def pg_rows(dsn: str) -> list[tuple[Any, ...]]:
    return query_rows(
        dsn, "SELECT device, channel, value, monotonic_ns, received_at, error FROM samples"
    )


def test_postgres_outage_zero_loss_zero_duplicates(
    tmp_path: Path, cluster: PgCluster
) -> None:
    sim = Simulator(tmp_path, period=0.05)
    config = write_config(
        tmp_path,
        [{"name": "an-1", "port": str(sim.link), "silence_timeout": 2.0}],
        sink={"type": "postgres", "retry_max_delay": 1.0, "write_timeout": 5.0},
        postgres={"dsn": cluster.dsn, "create_table": True, "command_timeout_s": 3.0},
    )
    daemon = DaemonProc(config)
    try:
        daemon.wait_ready()
        wait_for(lambda: len(pg_rows(cluster.dsn)) >= 20 * 5, 30, "rows in Postgres")
        cluster.stop()
        stopped_at = time.monotonic()
        wait_for(lambda: daemon.metric("servomexd_sink_up", sink="postgres") == 0, 15,
                 "sink reported down")
        wait_for(lambda: (daemon.metric("servomexd_spool_pending_samples") or 0) > 50, 15,
                 "samples spooled during the outage")
        time.sleep(max(0.0, 4.0 - (time.monotonic() - stopped_at)))
        assert daemon.proc.poll() is None
        cluster.start()
        wait_for(lambda: daemon.metric("servomexd_sink_up", sink="postgres") == 1, 20,
                 "sink recovered")
        wait_for(lambda: daemon.metric("servomexd_spool_pending_samples") == 0, 20,
                 "backlog drained")
        time.sleep(0.5)
        code, took = daemon.terminate()
        assert code == 0 and took < 10
    finally:
        daemon.cleanup()
        sim.stop()
    frames = sim.frames()
    result = compare(frames, pg_rows(cluster.dsn), "an-1")
    assert result.duplicates == {}, "rows duplicated by a retry"
    assert missing_between(result, frames, result.first, result.last) == []
    assert set(result.frame_rows.values()) == {5}
    # the outage really happened mid-recording, and the daemon said so
    assert daemon.events("sink.down") and daemon.events("sink.recovered")
    assert "backlog_samples=" in daemon.events("sink.recovered")[0]
    assert len(result.stored_indexes) > 100
    # asyncpg's own retries during the outage are one structured line each, and the
    # kept connection it took back is never used after release
    assert "Traceback" not in daemon.text()
    assert "released back to the pool" not in daemon.text()
    assert all(line.startswith("<") for line in daemon.text().splitlines() if line)


def test_postgres_down_at_start_is_not_fatal(tmp_path: Path) -> None:
    """No server at all: the daemon starts, spools, reports it, and stops quickly."""
    from pg import free_port

    sim = Simulator(tmp_path, period=0.05)
    config = write_config(
        tmp_path,
        [{"name": "an-1", "port": str(sim.link), "silence_timeout": 2.0}],
        sink={"type": "postgres", "retry_max_delay": 1.0},
        postgres={"dsn": f"postgresql://servomexd:s3cret-pw@127.0.0.1:{free_port()}/plant"},
    )
    daemon = DaemonProc(config)
    try:
        daemon.wait_ready()
        wait_for(lambda: (daemon.metric("servomexd_spool_pending_samples") or 0) > 50, 15,
                 "samples spooled")
        import json

        status, body = daemon.scrape("/readyz")
        detail = json.loads(body)
        assert detail["sink"]["up"] is False and detail["spool"]["accepting"] is True
        assert status == 200  # the spool accepts the data while the sink is away
        assert daemon.metric("servomexd_sink_up", sink="postgres") == 0
        code, took = daemon.terminate()
        assert code == 0 and took < 10
    finally:
        daemon.cleanup()
        sim.stop()
    assert daemon.events("sink.down")
    assert "s3cret-pw" not in daemon.text()  # the password never reaches the journal
