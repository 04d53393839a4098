"""servomexd/acquisition/base.py: a stop request a driver dropped is still honoured."""

from __future__ import annotations

import asyncio

import pytest

from servomexd.acquisition.base import raise_if_stop_requested


async def test_a_dropped_cancellation_is_raised_again() -> None:
    reached = asyncio.Event()
    after: list[str] = []

    async def driver_call() -> None:
        # What asyncio.wait_for does on 3.11 when the reply and the cancel coincide.
        try:
            reached.set()
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass

    async def poll() -> None:
        await driver_call()
        raise_if_stop_requested()
        after.append("polled on")

    task = asyncio.create_task(poll())
    await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert after == []


async def test_no_stop_request_no_exception() -> None:
    raise_if_stop_requested()  # nothing asked this task to stop
