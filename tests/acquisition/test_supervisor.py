"""servomexd/acquisition/supervisor.py with an in-test SessionFactory (the e2e tests use
the real simulator over a pty; this pins the loop's rules precisely and quickly)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from servomexd.acquisition.supervisor import DeviceSupervisor
from servomexd.backoff import Backoff
from servomexd.errors import ServomexChecksumError, ServomexConnectionError
from servomexd.metrics import Metrics
from servomexd.model import (
    CLEAR_STATUS,
    AcquisitionEvent,
    AnalyserStatus,
    ChannelId,
    ChannelKind,
    Frame,
    ProtocolKind,
    Reading,
    Rejection,
    Sample,
    Unit,
)

END = object()


def frame(value: float) -> Frame:
    now = datetime.now(UTC)
    reading = Reading(
        ChannelId.I1, ChannelKind.TRANSDUCER, "O2", value, Unit.PERCENT, CLEAR_STATUS,
        ProtocolKind.CONTINUOUS, now, 1,
    )
    return Frame((reading,), AnalyserStatus(), ProtocolKind.CONTINUOUS, now, 1)


class FakeSession:
    def __init__(self, script: asyncio.Queue[object]) -> None:
        self.script = script
        self.closed = False

    @property
    def protocol(self) -> ProtocolKind:
        return ProtocolKind.CONTINUOUS

    async def events(self) -> AsyncIterator[AcquisitionEvent]:
        while True:
            item = await self.script.get()
            if item is END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, Frame | Rejection)
            yield item

    async def aclose(self) -> None:
        self.closed = True


class FakeFactory:
    """Each open() pops the next outcome: an exception to raise, or a script queue."""

    description = "fake:0"

    def __init__(self) -> None:
        self.outcomes: asyncio.Queue[BaseException | asyncio.Queue[object]] = asyncio.Queue()
        self.sessions: list[FakeSession] = []
        self.open_calls = 0

    async def open(self) -> FakeSession:
        self.open_calls += 1
        outcome = await self.outcomes.get()
        if isinstance(outcome, BaseException):
            raise outcome
        session = FakeSession(outcome)
        self.sessions.append(session)
        return session


class Buffer:
    def __init__(self) -> None:
        self.samples: list[Sample] = []

    def add_samples(self, samples: Sequence[Sample]) -> None:
        self.samples.extend(samples)


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll a condition (the supervisor exposes state, not events) up to ``within`` s."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polling observable state on purpose
            await asyncio.sleep(0.005)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def value(metrics: Metrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def make(metrics: Metrics, silence: float = 5.0) -> tuple[DeviceSupervisor, FakeFactory, Buffer]:
    factory = FakeFactory()
    buffer = Buffer()
    supervisor = DeviceSupervisor(
        "dev", factory, buffer, metrics, silence_timeout=silence,
        backoff=Backoff(initial=0.01, cap=0.02, floor=0.0),
    )
    return supervisor, factory, buffer


async def test_frames_and_rejections_flow_to_buffer_and_metrics(metrics: Metrics) -> None:
    supervisor, factory, buffer = make(metrics)
    script: asyncio.Queue[object] = asyncio.Queue()
    await factory.outcomes.put(script)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(supervisor.run())
        await script.put(frame(20.9))
        await until(lambda: supervisor.link_up)
        assert value(metrics, "servomexd_link_up", device="dev") == 1
        rejection = Rejection(
            ServomexChecksumError("bad", expected=1, received=2), ProtocolKind.CONTINUOUS,
            datetime.now(UTC), 2, b"junk",
        )
        await script.put(rejection)
        await script.put(frame(21.0))
        await until(lambda: len(buffer.samples) == 3)
        task.cancel()
    assert [s.reading.value if s.reading else None for s in buffer.samples] == [20.9, None, 21.0]
    assert buffer.samples[1].error is not None
    assert value(metrics, "servomexd_frames_total", device="dev") == 2
    assert value(metrics, "servomexd_frames_rejected_total", device="dev", reason="checksum") == 1
    assert value(metrics, "servomexd_link_up", device="dev") == 0
    assert factory.sessions[0].closed  # closed on cancellation too
    assert not supervisor.running


async def test_missing_port_is_retried_not_fatal(metrics: Metrics) -> None:
    supervisor, factory, buffer = make(metrics)
    for _ in range(3):
        await factory.outcomes.put(ServomexConnectionError("no such port"))
    script: asyncio.Queue[object] = asyncio.Queue()
    await factory.outcomes.put(script)
    await script.put(frame(1.0))
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(supervisor.run())
        await until(lambda: supervisor.link_up)
        task.cancel()
    assert factory.open_calls == 4
    assert supervisor.reconnects == 0  # the first successful open is not a reconnect
    assert len(buffer.samples) == 1


@pytest.mark.parametrize(
    "failure",
    [END, ServomexConnectionError("adapter unplugged"), OSError(5, "I/O error"),
     RuntimeError("driver bug")],
)
async def test_link_failure_closes_at_once_and_reconnects(
    metrics: Metrics, failure: object
) -> None:
    supervisor, factory, buffer = make(metrics)
    first: asyncio.Queue[object] = asyncio.Queue()
    second: asyncio.Queue[object] = asyncio.Queue()
    await factory.outcomes.put(first)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(supervisor.run())
        await first.put(frame(1.0))
        await until(lambda: supervisor.link_up)
        await first.put(failure)
        # closed before the backoff sleep, and reported down
        await until(lambda: factory.sessions[0].closed and not supervisor.link_up)
        assert supervisor.last_error
        await factory.outcomes.put(second)
        await second.put(frame(2.0))
        await until(lambda: len(buffer.samples) == 2)
        task.cancel()
    assert supervisor.reconnects == 1
    assert value(metrics, "servomexd_reconnects_total", device="dev") == 1


async def test_silence_timeout_reconnects(metrics: Metrics) -> None:
    supervisor, factory, _ = make(metrics, silence=0.2)
    first: asyncio.Queue[object] = asyncio.Queue()
    await factory.outcomes.put(first)
    await factory.outcomes.put(asyncio.Queue())
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(supervisor.run())
        await first.put(frame(1.0))
        await until(lambda: supervisor.link_up)
        await until(lambda: factory.open_calls == 2 and factory.sessions[0].closed)
        assert supervisor.last_error is not None and "silence_timeout" in supervisor.last_error
        task.cancel()


async def test_rejections_alone_do_not_keep_link_alive(metrics: Metrics) -> None:
    """Garbage (a wrong baud rate) is not a valid frame: silence still applies."""
    supervisor, factory, buffer = make(metrics, silence=0.3)
    noisy: asyncio.Queue[object] = asyncio.Queue()
    await factory.outcomes.put(noisy)
    await factory.outcomes.put(asyncio.Queue())

    async def spew() -> None:
        while True:
            await noisy.put(
                Rejection(ServomexChecksumError("x"), ProtocolKind.CONTINUOUS,
                          datetime.now(UTC), 0)
            )
            await asyncio.sleep(0.02)

    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(supervisor.run())
        spewer = tg.create_task(spew())
        await until(lambda: factory.open_calls == 2, within=3)
        assert not supervisor.link_up
        assert len(buffer.samples) > 3  # every rejected line recorded
        task.cancel()
        spewer.cancel()


async def test_devices_are_isolated(metrics: Metrics) -> None:
    good, good_factory, good_buffer = make(metrics)
    good.name = "good"
    bad, bad_factory, _ = make(metrics)
    bad.name = "bad"
    script: asyncio.Queue[object] = asyncio.Queue()
    await good_factory.outcomes.put(script)
    for _ in range(50):
        await bad_factory.outcomes.put(PermissionError(13, "Permission denied"))
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(good.run()), tg.create_task(bad.run())]
        for i in range(20):
            await script.put(frame(float(i)))
            await asyncio.sleep(0.005)
        await until(lambda: len(good_buffer.samples) == 20)
        assert bad_factory.open_calls > 2 and bad.running and good.link_up
        for task in tasks:
            task.cancel()


async def test_an_open_that_hangs_is_reported_not_silent(metrics: Metrics) -> None:
    """A wedged adapter's open() never returns: the device must say so (readyz, log)
    instead of staying "not connected yet", and cancelling still stops at once."""
    factory = FakeFactory()  # no outcome queued: open() blocks
    supervisor = DeviceSupervisor(
        "dev", factory, Buffer(), metrics, silence_timeout=5.0,
        backoff=Backoff(initial=0.01, cap=0.02, floor=0.0), open_warn_after=0.05,
    )
    task = asyncio.create_task(supervisor.run())
    await until(lambda: "has not returned" in (supervisor.last_error or ""), within=2)
    assert factory.open_calls == 1  # not retried on top of the blocked open
    assert not supervisor.link_up
    # the open completes late: supervision carries on normally
    script: asyncio.Queue[object] = asyncio.Queue()
    await factory.outcomes.put(script)
    await script.put(frame(20.9))
    await until(lambda: supervisor.link_up)
    assert supervisor.last_error is None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)


class SwallowingSession(FakeSession):
    """A driver that turns a cancellation into its own error (some do)."""

    async def events(self) -> AsyncIterator[AcquisitionEvent]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise ServomexConnectionError("port or connection lost") from None
        yield frame(0.0)  # pragma: no cover - never reached


async def test_a_cancellation_a_driver_swallowed_still_stops_the_supervisor(
    metrics: Metrics,
) -> None:
    """Stopping must stop the device even when the session's driver converts the
    CancelledError into a link error: no reconnect after the request to stop."""
    supervisor, factory, _ = make(metrics)

    async def open_swallowing() -> FakeSession:
        factory.open_calls += 1
        if factory.open_calls > 1:  # reconnecting: hold here, where a cancel works
            await asyncio.sleep(3600)
        return SwallowingSession(asyncio.Queue())

    factory.open = open_swallowing  # type: ignore[method-assign]
    task = asyncio.create_task(supervisor.run())
    await until(lambda: factory.open_calls == 1)
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=2.0)
    if not done:
        task.cancel()
        await asyncio.wait([task], timeout=2.0)
    assert factory.open_calls == 1, "reconnected after being asked to stop"
    assert task.cancelled()
