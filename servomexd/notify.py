"""sd_notify for ``Type=notify``: READY, a STATUS line, WATCHDOG pings, STOPPING.

``sdnotify`` sends the datagrams; it does not read ``WATCHDOG_USEC``/``WATCHDOG_PID``,
so we do: a ping every ``WATCHDOG_USEC / 2`` and only when ``WATCHDOG_PID`` is unset
or names this process. A ping is sent only while the event loop runs this task AND the
daemon says it is alive (every device supervisor task and the writer still running).
An unplugged analyser is handled inside its supervisor, which keeps running, so the
pings go on; a wedged loop or a dead supervisor stops them and systemd restarts us.
Everything is a no-op without ``$NOTIFY_SOCKET``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger("servomexd.notify")


class Notifier:
    """``environ`` (default ``os.environ``) decides whether to notify and the watchdog
    period; the datagram socket itself is the one sdnotify opens from ``$NOTIFY_SOCKET``."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self._notifier = None
        if self.enabled:
            import sdnotify

            self._notifier = sdnotify.SystemdNotifier()
        self.watchdog_interval = _watchdog_interval(env)
        self.sent: list[str] = []
        """Last messages sent (bounded), for tests and debugging."""

    def _send(self, message: str) -> None:
        if self._notifier is None:
            return
        self._notifier.notify(message)
        self.sent.append(message)
        del self.sent[:-20]

    def ready(self, status: str | None = None) -> None:
        self._send("READY=1" if status is None else f"READY=1\nSTATUS={_one_line(status)}")

    def status(self, text: str) -> None:
        self._send(f"STATUS={_one_line(text)}")

    def reloading(self, status: str | None = None) -> None:
        """A reload begins (``READY=1`` ends it); MONOTONIC_USEC as Type=notify-reload
        wants it."""
        message = f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}"
        self._send(message if status is None else f"{message}\nSTATUS={_one_line(status)}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> None:
        self._send("STOPPING=1" if status is None else f"STOPPING=1\nSTATUS={_one_line(status)}")

    async def run(
        self,
        status: Callable[[], str],
        alive: Callable[[], bool],
        *,
        status_interval: float = 5.0,
    ) -> None:
        """Ping the watchdog and refresh STATUS until cancelled."""
        if not self.enabled:
            return
        loop = asyncio.get_running_loop()
        tick = status_interval
        if self.watchdog_interval is not None:
            tick = min(tick, self.watchdog_interval)
        next_status = loop.time()
        warned = False
        while True:
            now = loop.time()
            if self.watchdog_interval is not None:
                if alive():
                    self.watchdog()
                    warned = False
                elif not warned:
                    log.critical(
                        "notify.watchdog_withheld",
                        reason="a device supervisor or the writer has stopped",
                    )
                    warned = True
            if now >= next_status:
                self.status(status())
                next_status = now + status_interval
            await asyncio.sleep(tick)


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC")
    if not usec or not env.get("NOTIFY_SOCKET"):
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 2 / 1_000_000


def _one_line(text: str) -> str:
    return " ".join(text.split())
