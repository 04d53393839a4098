"""Fixtures of the acquisition tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from servomexd.acquisition.modbus import ModbusBusRegistry


@pytest.fixture
async def buses() -> AsyncIterator[ModbusBusRegistry]:
    """The daemon's bus registry, every bus it opened closed after the test."""
    registry = ModbusBusRegistry()
    yield registry
    await registry.aclose()
