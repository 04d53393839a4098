"""servomexd/signals.py: handlers for the daemon's lifetime, the previous ones restored."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from types import FrameType

from servomexd.signals import StopDeadline, capture_signals


async def test_signals_reach_the_handler_and_previous_handlers_come_back() -> None:
    seen: list[str] = []
    outer: list[int] = []

    def previous(signum: int, frame: FrameType | None) -> None:
        outer.append(signum)

    old = signal.signal(signal.SIGHUP, previous)
    try:
        loop = asyncio.get_running_loop()
        got = asyncio.Event()

        def on_hup() -> None:
            seen.append("hup")
            got.set()

        with capture_signals(loop, {signal.SIGHUP: on_hup}):
            assert signal.getsignal(signal.SIGHUP) is not previous
            os.kill(os.getpid(), signal.SIGHUP)
            async with asyncio.timeout(5):
                await got.wait()
        assert seen == ["hup"]
        assert outer == []
        assert signal.getsignal(signal.SIGHUP) is previous
        os.kill(os.getpid(), signal.SIGHUP)  # the restored Python handler runs again
        async with asyncio.timeout(5):
            while not outer:  # noqa: ASYNC110 - the handler runs between bytecodes
                await asyncio.sleep(0.01)
        assert outer == [signal.SIGHUP]
    finally:
        signal.signal(signal.SIGHUP, old)


async def test_default_handler_restored_when_none_was_set_from_python() -> None:
    old = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        with capture_signals(asyncio.get_running_loop(), {signal.SIGUSR1: lambda: None}):
            assert signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_outside_the_main_thread_the_block_still_runs() -> None:
    """add_signal_handler refuses off the main thread; the daemon must still start."""
    ran: list[bool] = []

    async def body() -> None:
        with capture_signals(asyncio.get_running_loop(), {signal.SIGHUP: lambda: None}):
            ran.append(True)

    import threading

    thread = threading.Thread(target=lambda: asyncio.run(body()))
    thread.start()
    thread.join(10)
    assert ran == [True]


def test_stop_deadline_runs_its_action_once_the_time_is_up() -> None:
    fired = threading.Event()
    deadline = StopDeadline(0.2, fired.set)
    began = time.monotonic()
    deadline.start()
    deadline.start()  # a second stop request: still one timer
    assert fired.wait(2.0)
    assert time.monotonic() - began >= 0.19


def test_a_cancelled_stop_deadline_never_runs_its_action() -> None:
    fired = threading.Event()
    deadline = StopDeadline(0.1, fired.set)
    deadline.start()
    deadline.cancel()
    assert not fired.wait(0.4)
    never_started = StopDeadline(0.1, fired.set)
    never_started.cancel()  # the process exited without a stop request
    assert not fired.wait(0.2)
