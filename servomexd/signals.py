"""Signals for the daemon's lifetime only, as uvicorn's ``capture_signals`` does it.

Handlers run on the event loop (``loop.add_signal_handler``), so they may touch asyncio
objects; they should only set flags. On exit the handlers that were there before are
put back, so an embedding program (the demo, a test) gets its own behaviour again.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

_Previous = Callable[[int, Any], Any] | int | None


@contextlib.contextmanager
def capture_signals(
    loop: asyncio.AbstractEventLoop, handlers: Mapping[int, Callable[[], None]]
) -> Iterator[None]:
    """Route each signal to its handler on ``loop`` while the block runs."""
    previous: dict[int, _Previous] = {}
    for signum, handler in handlers.items():
        before = signal.getsignal(signum)
        try:
            loop.add_signal_handler(signum, handler)
        except (NotImplementedError, RuntimeError, ValueError):
            continue  # not the main thread, or a platform without it: keep the default
        previous[signum] = before
    try:
        yield
    finally:
        for signum, before in previous.items():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)
                signal.signal(signum, signal.SIG_DFL if before is None else before)


class StopDeadline:
    """The last resort once a stop was requested: ``on_overrun`` runs on a timer thread
    if the process is still here ``seconds`` later.

    A task that loses its cancellation (a driver that swallows it) keeps the event
    loop's TaskGroup waiting for ever; the loop itself may be fine, so the deadline
    must not depend on it. ``servomexd run`` logs and exits from ``on_overrun``.
    """

    def __init__(self, seconds: float, on_overrun: Callable[[], None]) -> None:
        self._timer = threading.Timer(seconds, on_overrun)
        self._timer.daemon = True
        self._timer.name = "servomexd-stop-deadline"

    def start(self) -> None:
        """Start counting (once; later calls do nothing)."""
        if not self._timer.is_alive() and not self._timer.finished.is_set():
            self._timer.start()

    def cancel(self) -> None:
        """The process is exiting by itself: never run ``on_overrun``."""
        self._timer.cancel()
