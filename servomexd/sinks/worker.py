"""One dedicated thread per sink for blocking drivers (sqlite3, file I/O, pyarrow).

A single thread keeps calls in submission order and lets a sqlite3 connection
stay in the thread that created it; the event loop never blocks on disk.

Backend-neutral (AnyIO): under asyncio (and uvloop) a call is handed to the
thread with ``loop.run_in_executor``, the cheapest way there; under any other
AnyIO backend (trio) the caller waits for it through ``anyio.to_thread``. Either
way a cancelled caller returns at once, a call not yet started is dropped, and a
call already running finishes (a transaction commits or rolls back as a whole)
before the next one starts.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import anyio
import anyio.to_thread

P = ParamSpec("P")
T = TypeVar("T")


def current_backend() -> str:
    """The async library running the caller: "asyncio" or "trio"."""
    try:
        import sniffio
    except ImportError:  # trio needs sniffio: without it, asyncio is the only backend
        return "asyncio"
    return sniffio.current_async_library()


def running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio (or uvloop) loop, or None when the caller runs under trio."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    # Trio can run as a guest of an asyncio loop; only then is the full check needed
    # (it costs ~1.5 us, get_running_loop ~0.3 us).
    if "trio" in sys.modules and current_backend() != "asyncio":
        return None
    return loop


class SinkWorker:
    def __init__(self, name: str) -> None:
        self._name = name
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)

    async def run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``func`` in the sink's thread. Cancelling the caller does not stop a call
        already running (a transaction finishes or rolls back as a whole)."""
        executor = self._executor
        if executor is None:
            raise RuntimeError(f"{self._name}: worker not started")
        loop = running_asyncio_loop()
        if loop is not None:
            if kwargs:
                return await loop.run_in_executor(executor, lambda: func(*args, **kwargs))
            return await loop.run_in_executor(executor, func, *args)
        future = executor.submit(func, *args, **kwargs)
        try:
            # A helper thread blocks on the result, so the caller can be cancelled
            # (abandoned) while the sink's own thread keeps the call order.
            return await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            future.cancel()  # dropped if not started yet, as asyncio does
            raise

    def stop(self) -> None:
        """Let the thread exit once queued calls are done (does not block the loop)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)
