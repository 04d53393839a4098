"""The daemon as a subprocess against the simulator over a real pty, into real SQLite.

Every test compares the simulator's emit log (what went over the wire) with the rows
stored, frame by frame (see daemon_harness.compare).
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_harness import (
    PYTHON,
    ROOT,
    DaemonProc,
    Simulator,
    compare,
    missing_between,
    sqlite_rows,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.e2e

CHANNELS = 5


@pytest.fixture
def procs() -> Iterator[list[DaemonProc | Simulator]]:
    """Everything started by a test is stopped, whatever happens."""
    started: list[DaemonProc | Simulator] = []
    yield started
    for proc in reversed(started):
        if isinstance(proc, DaemonProc):
            proc.cleanup()
        else:
            proc.stop()


def device(sim: Simulator, name: str = "an-1", **extra: object) -> dict[str, object]:
    return {"name": name, "port": str(sim.link), "silence_timeout": 2.0, **extra}


def stored_count(db: Path) -> int:
    return len(sqlite_rows(db))


def test_steady_state_every_frame_once(tmp_path: Path, procs: list[object]) -> None:
    sim = Simulator(tmp_path, period=0.05)
    procs.append(sim)
    config = write_config(tmp_path, [device(sim)])
    daemon = DaemonProc(config)
    procs.append(daemon)
    daemon.wait_ready()
    db = tmp_path / "samples.sqlite"
    wait_for(lambda: stored_count(db) >= 40 * CHANNELS, 20, "40 frames stored")
    status, body = daemon.scrape("/readyz")
    assert status == 200, body
    assert json.loads(body)["devices"] == {"an-1": "up"}
    code, took = daemon.terminate()
    assert code == 0 and took < 10
    sim.stop()
    frames = sim.frames()
    result = compare(frames, sqlite_rows(db), "an-1")
    assert result.duplicates == {}
    assert result.error_rows == 0
    # contiguous: every frame between the first and the last stored one is there
    assert missing_between(result, frames, result.first, result.last) == []
    assert set(result.frame_rows.values()) == {CHANNELS}  # all five channels of each
    assert len(result.stored_indexes) >= 40
    assert daemon.events("device.link_up")
    assert not [line for line in daemon.text().splitlines() if line.startswith("<3>")]


def test_sigterm_flushes_buffer_and_exits_zero_fast(tmp_path: Path, procs: list[object]) -> None:
    sim = Simulator(tmp_path, period=0.05)
    procs.append(sim)
    # a long flush interval and a huge batch: everything is still in memory at SIGTERM
    config = write_config(
        tmp_path, [device(sim)], flush_interval=30.0, sink={"batch_size": 100_000}
    )
    daemon = DaemonProc(config)
    procs.append(daemon)
    daemon.wait_ready()
    wait_for(lambda: (daemon.metric("servomexd_frames_total", device="an-1") or 0) >= 30,
             20, "30 frames read")
    db = tmp_path / "samples.sqlite"
    assert stored_count(db) == 0  # nothing flushed yet
    received = daemon.metric("servomexd_frames_total", device="an-1") or 0
    code, took = daemon.terminate()
    assert code == 0
    assert took < 10
    result = compare(sim.frames(), sqlite_rows(db), "an-1")
    assert len(result.stored_indexes) >= received
    assert result.duplicates == {}
    assert missing_between(result, sim.frames(), result.first, result.last) == []
    assert daemon.events("daemon.stopped")


def test_sigkill_then_restart_loses_at_most_flush_interval(
    tmp_path: Path, procs: list[object]
) -> None:
    flush = 0.3
    sim = Simulator(tmp_path, period=0.05)
    procs.append(sim)
    config = write_config(tmp_path, [device(sim)], flush_interval=flush)
    db = tmp_path / "samples.sqlite"
    first = DaemonProc(config)
    procs.append(first)
    first.wait_ready()
    wait_for(lambda: stored_count(db) >= 30 * CHANNELS, 20, "30 frames stored")
    time.sleep(0.5)
    killed_at = time.time()
    first.kill()
    time.sleep(1.0)
    second = DaemonProc(config)
    procs.append(second)
    second.wait_ready()
    before = stored_count(db)
    wait_for(lambda: stored_count(db) >= before + 20 * CHANNELS, 20, "recording resumed")
    code, _ = second.terminate()
    assert code == 0
    sim.stop()
    frames = sim.frames()
    result = compare(frames, sqlite_rows(db), "an-1")
    assert result.duplicates == {}, "a frame was stored twice across the crash"
    # frames sent more than flush_interval (+ a margin for a loaded CI machine) before the
    # kill: all stored
    cutoff = killed_at - flush - 0.5
    old = [f["index"] for f in frames if f["sent_at"] < cutoff and f["index"] >= result.first]
    assert old and not set(old) - set(result.stored_indexes)
    assert set(result.frame_rows.values()) == {CHANNELS}


def test_unplug_replug_resumes_and_counts_reconnect(tmp_path: Path, procs: list[object]) -> None:
    sim = Simulator(
        tmp_path, period=0.05, args=["--unplug-after", "2.5", "--replug-after", "1.5"]
    )
    procs.append(sim)
    config = write_config(tmp_path, [device(sim, silence_timeout=1.0)])
    daemon = DaemonProc(config)
    procs.append(daemon)
    daemon.wait_ready()
    wait_for(lambda: any(e.get("event") == "replug" for e in sim.entries()), 15, "replug")
    wait_for(
        lambda: (daemon.metric("servomexd_reconnects_total", device="an-1") or 0) >= 1,
        20, "a counted reconnect",
    )
    replugged_at = next(e["at"] for e in sim.entries() if e.get("event") == "replug")
    db = tmp_path / "samples.sqlite"

    def recorded_after_replug() -> int:
        result = compare(sim.frames(), sqlite_rows(db), "an-1")
        late = {f["index"] for f in sim.frames() if f["sent_at"] > replugged_at + 0.5}
        return len(late & set(result.stored_indexes))

    wait_for(lambda: recorded_after_replug() >= 10, 15, "frames recorded after the replug")
    assert daemon.metric("servomexd_link_up", device="an-1") == 1
    code, _ = daemon.terminate()
    assert code == 0
    result = compare(sim.frames(), sqlite_rows(db), "an-1")
    assert result.duplicates == {}
    down = daemon.events("device.link_down")
    assert down and "retry_in_s=" in down[0] and "reason=" in down[0]


def test_noise_and_corrupt_frames_counted_and_recorded(
    tmp_path: Path, procs: list[object]
) -> None:
    sim = Simulator(
        tmp_path, period=0.05, args=["--corrupt-every", "5", "--noise-every", "7"]
    )
    procs.append(sim)
    config = write_config(tmp_path, [device(sim)])
    daemon = DaemonProc(config)
    procs.append(daemon)
    daemon.wait_ready()
    db = tmp_path / "samples.sqlite"
    wait_for(lambda: stored_count(db) >= 40 * CHANNELS, 20, "rows stored")
    checksum = daemon.metric("servomexd_frames_rejected_total", device="an-1", reason="checksum")
    assert checksum and checksum >= 3
    code, _ = daemon.terminate()
    assert code == 0
    sim.stop()
    frames = sim.frames()
    rows = sqlite_rows(db)
    result = compare(frames, rows, "an-1")
    assert result.duplicates == {}
    # every good frame between the first and last stored one is there, around the bad ones
    assert missing_between(result, frames, result.first, result.last) == []
    window = [f for f in frames if result.first <= f["index"] <= result.last]
    corrupt = sum(1 for f in window if f["corrupt"])
    noise = [e for e in sim.entries() if "noise" in e and not e.get("dropped")
             and result.first < e["before_index"] <= result.last]  # fmt: skip
    assert corrupt >= 5 and noise
    errors = [r for r in rows if r[5] is not None]
    # one error row per rejected line; none of them carries channel data
    assert len(errors) >= corrupt + len(noise)
    assert all(r[1] is None and r[2] is None for r in errors)
    assert any("checksum" in r[5].lower() for r in errors)
    assert not any(result.frame_rows.get(f["index"]) for f in window if f["corrupt"])


def test_bad_config_exits_78_naming_the_field(tmp_path: Path) -> None:
    import subprocess

    config = tmp_path / "bad.toml"
    config.write_text(
        '[[devices]]\nname = "a"\nport = "/dev/ttyX"\nbaudrate = 19201\n'
        '[sink]\nflush_intervall = 1.0\n'
    )
    proc = subprocess.run(
        [PYTHON, "-m", "servomexd", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=30, cwd=ROOT, check=False,
    )
    assert proc.returncode == 78
    assert "devices[0].baudrate" in proc.stderr
    assert "sink.flush_intervall" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_config_under_journald_is_logged_at_error_priority(tmp_path: Path) -> None:
    """Under journald an unprefixed stderr line is stored at info: the reason must be <3>."""
    import os
    import subprocess

    config = tmp_path / "bad.toml"
    config.write_text('[[devices]]\nname = "a"\nport = "/dev/ttyX"\nbogus = 1\n')
    env = dict(os.environ, JOURNAL_STREAM="8:12345")
    proc = subprocess.run(
        [PYTHON, "-m", "servomexd", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=30, cwd=ROOT, check=False, env=env,
    )
    assert proc.returncode == 78
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith("<3>servomexd: ") for line in lines), lines
    assert any("devices[0].bogus" in line for line in lines), lines


def test_missing_port_at_start_is_not_fatal(tmp_path: Path, procs: list[object]) -> None:
    config = write_config(
        tmp_path, [{"name": "absent", "port": str(tmp_path / "nope")}]
    )
    daemon = DaemonProc(config)
    procs.append(daemon)
    daemon.wait_ready()
    status, body = daemon.scrape("/readyz")
    assert status == 503 and "absent" in body
    assert daemon.metric("servomexd_link_up", device="absent") == 0
    wait_for(lambda: len(daemon.events("device.link_down")) >= 2, 10, "retries")
    code, took = daemon.terminate()
    assert code == 0 and took < 10


def test_sd_notify_ready_status_watchdog_stopping(tmp_path: Path, procs: list[object]) -> None:
    sim = Simulator(tmp_path, period=0.1)
    procs.append(sim)
    config = write_config(tmp_path, [device(sim)])
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    messages: list[str] = []

    def drain(until: float) -> None:
        while time.monotonic() < until:
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                continue

    try:
        daemon = DaemonProc(
            config, env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"}
        )
        procs.append(daemon)
        daemon.wait_ready()
        drain(time.monotonic() + 3.0)
        daemon.proc.send_signal(signal.SIGTERM)
        drain(time.monotonic() + 2.0)
        assert daemon.proc.wait(10) == 0
    finally:
        sock.close()
    joined = "\n".join(messages)
    assert any(m.startswith("READY=1") for m in messages), joined
    assert any("STATUS=" in m and "devices up" in m for m in messages), joined
    # WATCHDOG_USEC=1 s -> a ping every 0.5 s: about 6 in 3 s
    assert sum(1 for m in messages if m == "WATCHDOG=1") >= 4, joined
    assert any(m.startswith("STOPPING=1") for m in messages), joined
    ready_at = next(i for i, m in enumerate(messages) if m.startswith("READY=1"))
    assert all(not m.startswith("WATCHDOG") for m in messages[:ready_at])


WEDGED_OPEN = """
import sys, threading
import serial

def wedged(*args, **kwargs):
    threading.Event().wait()  # a wedged USB adapter: open() never returns

serial.Serial = wedged
from servomexd.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_exits_zero_while_a_device_open_hangs(tmp_path: Path, procs: list[object]) -> None:
    """A blocking open() cannot exist here for real, so pyserial's open is patched to
    block for ever in the daemon process; the executor thread it runs on must not keep
    the process from exiting."""
    config = write_config(
        tmp_path, [{"name": "wedged", "port": str(tmp_path / "tty-wedged"), "silence_timeout": 2.0}]
    )
    daemon = DaemonProc(config, launcher=[sys.executable, "-c", WEDGED_OPEN])
    procs.append(daemon)
    daemon.wait_ready()
    time.sleep(0.3)  # the open is under way
    code, took = daemon.terminate(within=20)
    assert code == 0, daemon.text()
    assert took < 10
    assert daemon.events("daemon.stopped")
    assert daemon.events("daemon.exit_with_stuck_threads")
