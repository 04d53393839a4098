"""The contract between a device supervisor and the protocol-specific sessions.

A *session* is one live connection to one analyser. The supervisor opens it
through a ``SessionFactory``, iterates its events until the link fails, closes
it, backs off and opens a new one. Continuous and Modbus sessions both produce
the same events, so supervision, metrics and storage never look at the protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from servomexd.errors import ServomexTransportError
from servomexd.model import AcquisitionEvent, ProtocolKind


def raise_if_stop_requested() -> None:
    """Raise ``CancelledError`` if this task was asked to stop and the request got lost.

    On Python 3.11 ``asyncio.wait_for`` (pymodbus waits for every reply with it) returns
    the reply and drops a cancellation that lands as the reply arrives; the request
    stays visible in ``Task.cancelling()``. Without this check a daemon told to stop
    went on polling, then reconnecting, until it was killed.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class DeviceSession(Protocol):
    """One open link to one analyser.

    ``events()`` yields frames and rejections until the link fails, then raises a
    ``ServomexTransportError`` (connection lost, EOF, timeout streak). A session
    bounds its own reads; the supervisor additionally bounds every wait for the
    next event by the device's ``silence_timeout``.
    """

    @property
    def protocol(self) -> ProtocolKind: ...

    def events(self) -> AsyncIterator[AcquisitionEvent]: ...

    async def aclose(self) -> None:
        """Release the port at once (the file descriptor must not linger)."""
        ...


class SessionFactory(Protocol):
    """Opens sessions for one configured device."""

    @property
    def description(self) -> str:
        """Log-safe description of the target, e.g. ``/dev/ttyUSB0 @19200 8N1``."""
        ...

    async def open(self) -> DeviceSession:
        """Open the link; raise ``ServomexConnectionError`` when it cannot be opened."""
        ...


def is_link_failure(error: BaseException) -> bool:
    """True for errors after which the session must be closed and reopened."""
    return isinstance(error, ServomexTransportError | OSError)


__all__ = ["DeviceSession", "SessionFactory", "is_link_failure"]
