"""servomexd/notify.py: WATCHDOG_USEC/WATCHDOG_PID handling and liveness gating, on a real
unix datagram socket (the daemon-level test is in tests/e2e)."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from servomexd.notify import Notifier


def test_noop_without_notify_socket() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled and notifier.watchdog_interval is None
    notifier.ready()
    notifier.watchdog()
    assert notifier.sent == []


def test_watchdog_interval_is_half_and_pid_checked() -> None:
    base = {"NOTIFY_SOCKET": "/nonexistent"}
    assert Notifier({**base, "WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    mine = {**base, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(mine).watchdog_interval == 1.0
    other = {**base, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}
    assert Notifier(other).watchdog_interval is None
    assert Notifier({**base, "WATCHDOG_USEC": "junk"}).watchdog_interval is None


async def test_pings_only_while_alive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    alive = [True]
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))  # sdnotify reads it from os.environ
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = Notifier()
    task = asyncio.create_task(
        notifier.run(lambda: "devices up 1/1", lambda: alive[0], status_interval=0.2)
    )
    try:
        await asyncio.sleep(0.35)
        alive[0] = False
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
    got: list[str] = []
    while True:
        try:
            got.append(sock.recv(1024).decode())
        except BlockingIOError:
            break
    sock.close()
    pings = [i for i, m in enumerate(got) if m == "WATCHDOG=1"]
    assert len(pings) >= 4  # every 50 ms while alive
    assert "STATUS=devices up 1/1" in got
    # after alive() turned False no ping follows the last status refreshes
    assert len(pings) <= 9
