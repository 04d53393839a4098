"""SinkWorker: one thread, calls in order, cancellation that never splits a call;
the same under asyncio and trio."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from servomexd.sinks.worker import SinkWorker, current_backend, running_asyncio_loop

pytestmark = pytest.mark.anyio  # every async test runs under asyncio and trio

WAIT = 10.0  # upper bound on any thread wait, so a broken worker fails instead of hanging


async def test_runs_under_the_requested_backend(anyio_backend: str) -> None:
    assert current_backend() == anyio_backend
    assert (running_asyncio_loop() is not None) == (anyio_backend == "asyncio")


async def test_calls_run_in_order_on_one_thread_with_args_and_kwargs() -> None:
    worker = SinkWorker("test-worker")
    worker.start()
    seen: list[tuple[int, str]] = []

    def record(tag: str, *, suffix: str = "") -> str:
        seen.append((threading.get_ident(), tag + suffix))
        return tag + suffix

    try:
        results = [await worker.run(record, str(i), suffix="!") for i in range(5)]
        assert results == [f"{i}!" for i in range(5)]
        assert [tag for _, tag in seen] == results
        assert len({ident for ident, _ in seen}) == 1
        assert seen[0][0] != threading.get_ident()  # not the event loop's thread
    finally:
        worker.stop()


async def test_errors_come_back_as_they_are() -> None:
    worker = SinkWorker("test-worker")
    worker.start()

    def fail() -> None:
        raise ValueError("bad row")

    try:
        with pytest.raises(ValueError, match="bad row"):
            await worker.run(fail)
    finally:
        worker.stop()


async def test_not_started_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        await SinkWorker("idle").run(time.monotonic)


async def test_cancelled_caller_returns_at_once_and_the_call_finishes_first() -> None:
    worker = SinkWorker("test-worker")
    worker.start()
    started, release = threading.Event(), threading.Event()
    order: list[str] = []

    def slow() -> None:
        started.set()
        release.wait(WAIT)
        order.append("slow finished")

    try:
        begin = time.monotonic()
        with anyio.move_on_after(0.2) as scope:
            await worker.run(slow)
        assert scope.cancelled_caught
        assert time.monotonic() - begin < 2.0, "the caller waited for the thread"
        assert started.is_set() and order == []  # still running in the sink's thread
        release.set()
        # The next call starts only when the abandoned one is done (a transaction is
        # never interleaved with the next).
        await worker.run(order.append, "next")
        assert order == ["slow finished", "next"]
    finally:
        release.set()
        worker.stop()


async def test_a_queued_call_of_a_cancelled_caller_never_runs() -> None:
    worker = SinkWorker("test-worker")
    worker.start()
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def block() -> None:
        started.set()
        release.wait(WAIT)

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(worker.run, block)
            while not started.is_set():  # noqa: ASYNC110 - waits on another thread
                await anyio.sleep(0.01)
            with anyio.move_on_after(0.1):
                await worker.run(ran.append, "dropped")  # queued behind block()
            release.set()
        await worker.run(ran.append, "kept")
        assert ran == ["kept"]
    finally:
        release.set()
        worker.stop()
