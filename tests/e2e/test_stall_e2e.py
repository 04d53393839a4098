"""A daemon frozen longer than silence_timeout (SIGSTOP, a VM pause) reads what waited
in the port when it resumes: every frame written during the freeze is stored."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_harness import (
    DaemonProc,
    Simulator,
    compare,
    missing_between,
    sqlite_rows,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.e2e]


def test_sigstop_longer_than_silence_timeout_loses_no_frame(tmp_path: Path) -> None:
    sim = Simulator(tmp_path, period=0.1)
    config = write_config(
        tmp_path, [{"name": "an-1", "port": str(sim.link), "silence_timeout": 1.0}]
    )
    daemon = DaemonProc(config)
    db = tmp_path / "samples.sqlite"
    try:
        daemon.wait_ready()
        wait_for(lambda: len(compare(sim.frames(), sqlite_rows(db), "an-1").stored_indexes) >= 10,
                 20, "10 frames stored")  # fmt: skip
        os.kill(daemon.proc.pid, signal.SIGSTOP)
        before = max(f["index"] for f in sim.frames())
        time.sleep(3.0)  # three silence timeouts
        during = max(f["index"] for f in sim.frames())
        os.kill(daemon.proc.pid, signal.SIGCONT)
        assert during - before >= 20, "the simulator kept writing during the freeze"
        wait_for(
            lambda: max(compare(sim.frames(), sqlite_rows(db), "an-1").stored_indexes,
                        default=0) >= during + 5,
            20, "frames after the freeze stored",
        )  # fmt: skip
        code, _ = daemon.terminate()
        assert code == 0
    finally:
        daemon.cleanup()
        sim.stop()
    frames = sim.frames()
    result = compare(frames, sqlite_rows(db), "an-1")
    assert result.duplicates == {}
    assert missing_between(result, frames, before, during + 5) == []
    assert not [line for line in daemon.events("device.link_down") if "silence" in line]
