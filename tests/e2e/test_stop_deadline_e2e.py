"""``servomexd run`` exits within its stop deadline even when a task never finishes.

A device task that loses its cancellation (a driver that swallows it, as
``asyncio.wait_for`` can on Python 3.11) kept the TaskGroup, and so the daemon, waiting
for ever after SIGTERM. Such a driver cannot be made to lose the race on demand, so the
daemon here runs with the one thing replaced: its device supervisor ignores
cancellation. Everything else is the real ``servomexd run``.
"""

from __future__ import annotations

from pathlib import Path

from daemon_harness import PYTHON, STUBBORN_RUN, DaemonProc, write_config


def test_a_task_that_ignores_the_stop_cannot_hold_the_daemon(tmp_path: Path) -> None:
    config = write_config(tmp_path, [{"name": "stuck", "port": str(tmp_path / "tty-none")}])
    daemon = DaemonProc(config, launcher=[PYTHON, "-c", STUBBORN_RUN])
    try:
        daemon.wait_ready(30)
        code, took = daemon.terminate(30)
    finally:
        daemon.cleanup()
    assert code == 70, daemon.text()[-2000:]
    assert 11.0 <= took < 20.0, took  # the 9 s budget + 3 s, well before systemd's 30 s
    assert daemon.events("daemon.stop_overrun"), daemon.text()[-2000:]
