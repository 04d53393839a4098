"""The one wait the delivery loops need: until an event is set, or a timeout passes."""

from __future__ import annotations

import asyncio
import contextlib


async def wait_or_timeout(event: asyncio.Event, seconds: float) -> None:
    """Return when ``event`` is set or after ``seconds``, whichever comes first.

    Used for the flush timer (woken early by a full buffer), the idle deliverer (woken
    by a new spool batch) and every retry pause (woken by the stop request).
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
