"""servomexd/daemon.py in-process: every component opened is closed, on a failed start
as on a normal stop, and the signal handlers that were there before come back.

The daemon as a subprocess (real analyser simulator, signals, PostgreSQL) is tested in
tests/e2e/.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest
from prometheus_client import CollectorRegistry

from servomexd.config import Settings
from servomexd.daemon import Daemon


def _settings(tmp_path: Path, spool: Path) -> Settings:
    return Settings(
        devices=[{"name": "a1", "port": str(tmp_path / "no-such-tty")}],
        sink={"type": "sqlite", "path": str(tmp_path / "out.sqlite")},
        spool={"path": str(spool)},
        metrics={"listen": "127.0.0.1:0"},
    )


def _ours(signum: int, frame: FrameType | None) -> None:
    raise AssertionError("the test's own handler must not run")


@pytest.fixture
def own_handlers() -> Iterator[None]:
    """Python handlers of our own, to prove the daemon puts them back."""
    old = {s: signal.signal(s, _ours) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


@pytest.mark.usefixtures("own_handlers")
async def test_failed_start_closes_what_was_opened(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    daemon = Daemon(_settings(tmp_path, blocker / "spool"), registry=CollectorRegistry())
    assert await daemon.serve() == 78  # the spool cannot be created under a file: a config error
    assert daemon.metrics_port is not None  # the HTTP server had started before...
    assert await _refused(daemon.metrics_port)  # ...and was stopped
    assert signal.getsignal(signal.SIGTERM) is _ours
    assert signal.getsignal(signal.SIGHUP) is _ours


@pytest.mark.usefixtures("own_handlers")
async def test_normal_stop_closes_everything_and_reports_health(tmp_path: Path) -> None:
    daemon = Daemon(_settings(tmp_path, tmp_path / "spool"), registry=CollectorRegistry())
    serving = asyncio.create_task(daemon.serve())
    async with asyncio.timeout(15):
        await daemon.ready.wait()
    ready, details = daemon.readiness()
    assert not ready
    assert details["problems"] == ["device a1 link down"]
    assert details["sink"] == {"type": "sqlite", "up": True, "error": None}
    assert daemon.status_line() == "devices up 0/1, samples written 0, backlog 0, sink up"
    assert signal.getsignal(signal.SIGTERM) is not _ours
    port = daemon.metrics_port
    assert port is not None and not await _refused(port)
    daemon.request_stop("test")
    async with asyncio.timeout(15):
        assert await serving == 0
    assert await _refused(port)
    assert daemon.writer is not None
    assert not daemon.writer.spool.is_open
    assert not daemon.writer.destination.is_open
    assert signal.getsignal(signal.SIGTERM) is _ours
    assert signal.getsignal(signal.SIGHUP) is _ours
