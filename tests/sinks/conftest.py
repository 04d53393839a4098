"""The sink tests run under every AnyIO backend a sink supports (asyncio and trio).

A test marked ``@pytest.mark.anyio`` (or a module with ``pytestmark = pytest.mark.anyio``)
is run by AnyIO's pytest plugin once per ``anyio_backend`` below. The project runs
pytest-asyncio in auto mode, which claims every ``async def`` test at collection
and would run the trio variant on asyncio too; the hook below hands anyio-marked
tests back to AnyIO's plugin, so both plugins coexist. Unmarked async tests
(Postgres, asyncio-only) stay with pytest-asyncio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from typing import Any

import asyncpg
import pytest
from pytest_asyncio import is_async_test

BACKENDS = ("asyncio", "trio")


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test database, for looking at what a sink wrote."""
    connection = await asyncpg.connect(pg_dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _as_anyio_test(item: pytest.Function) -> pytest.Function:
    """A plain pytest item for a test pytest-asyncio converted (its asyncio mark dropped)."""
    plain = pytest.Function.from_parent(
        item.parent,
        name=item.name,
        callspec=getattr(item, "callspec", None),
        callobj=item.obj,
        fixtureinfo=item._fixtureinfo,
        keywords=item.keywords,
        originalname=item.originalname,
    )
    plain.own_markers = [mark for mark in item.own_markers if mark.name != "asyncio"]
    return plain


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> Generator[None, Any, None]:
    outcome = yield
    result = outcome.get_result()
    if not result:
        return
    items = result if isinstance(result, list) else [result]
    if not any(is_async_test(item) and item.get_closest_marker("anyio") for item in items):
        return
    outcome.force_result(
        [
            _as_anyio_test(item)
            if is_async_test(item) and item.get_closest_marker("anyio")
            else item
            for item in items
        ]
    )
