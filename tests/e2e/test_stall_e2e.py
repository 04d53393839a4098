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


def test_a_replugged_adapter_that_worked_is_reopened_within_seconds(tmp_path: Path) -> None:
    """Unplugged for 12 s after a few seconds of valid frames: the retries stay within a
    second (the link had delivered), so the replug is picked up at once, not after the
    8-16 s an escalated backoff would wait."""
    sim = Simulator(tmp_path, period=0.05, args=["--unplug-after", "4", "--replug-after", "12"])
    config = write_config(
        tmp_path, [{"name": "an-1", "port": str(sim.link), "silence_timeout": 2.0}]
    )
    daemon = DaemonProc(config)
    try:
        daemon.wait_ready()
        wait_for(lambda: any(e.get("event") == "replug" for e in sim.entries()), 30, "replug")
        replugged_at = next(e["at"] for e in sim.entries() if e.get("event") == "replug")
        wait_for(lambda: len(daemon.events("device.link_up")) >= 2, 10, "link up again")
        assert daemon.terminate()[0] == 0
    finally:
        daemon.cleanup()
        sim.stop()
    from datetime import datetime

    second_up = daemon.events("device.link_up")[1]
    stamp = next(p.split("=", 1)[1] for p in second_up.split() if p.startswith("timestamp="))
    delay = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() - replugged_at
    assert 0 <= delay < 2.5, f"reopened {delay:.1f} s after the replug"
