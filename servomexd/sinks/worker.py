"""One dedicated thread per sink for blocking drivers (sqlite3, file I/O, pyarrow).

A single thread keeps calls in submission order and lets a sqlite3 connection
stay in the thread that created it; the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


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
        if self._executor is None:
            raise RuntimeError(f"{self._name}: worker not started")
        loop = asyncio.get_running_loop()
        if kwargs:
            return await loop.run_in_executor(self._executor, lambda: func(*args, **kwargs))
        return await loop.run_in_executor(self._executor, func, *args)

    def stop(self) -> None:
        """Let the thread exit once queued calls are done (does not block the loop)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)
