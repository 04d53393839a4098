"""The silence watchdog and the daemon's own lag, over a real pty: a device whose
frames wait unread because the event loop was busy is not declared silent."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from servomexd.acquisition.continuous import ContinuousSessionFactory
from servomexd.acquisition.supervisor import DeviceSupervisor
from servomexd.backoff import Backoff
from servomexd.link.serial import SerialSettings
from servomexd.metrics import Metrics
from servomexd.model import Sample
from servomexd.protocol.continuous import build_frame
from servomexd.simulator.continuous import simulated_blocks
from servomexd.simulator.pty import PtyDevice

pytestmark = pytest.mark.timeout(60)


class Buffer:
    def __init__(self) -> None:
        self.samples: list[Sample] = []

    def add_samples(self, samples: Sequence[Sample]) -> None:
        self.samples.extend(samples)


@pytest.fixture
def broadcasting(tmp_path: Path) -> Iterator[PtyDevice]:
    """An analyser broadcasting every 50 ms from its own thread, whatever our loop does."""
    stop = threading.Event()
    with PtyDevice(tmp_path / "analyser") as device:

        def broadcast() -> None:
            index = 0
            while not stop.wait(0.05):
                device.write(build_frame(simulated_blocks(index, 3), clock=datetime.now()) + b"\n")
                index += 1

        thread = threading.Thread(target=broadcast, daemon=True)
        thread.start()
        yield device
        stop.set()
        thread.join(5)


async def test_busy_loop_is_not_device_silence(broadcasting: PtyDevice) -> None:
    supervisor = DeviceSupervisor(
        "dev",
        ContinuousSessionFactory(SerialSettings(str(broadcasting.link)), read_timeout=1.0),
        Buffer(),
        Metrics(CollectorRegistry()),
        silence_timeout=0.3,
        backoff=Backoff(initial=0.01, cap=0.02, floor=0.0),
    )
    task = asyncio.create_task(supervisor.run())
    try:
        async with asyncio.timeout(5):
            while supervisor.frames < 3:  # noqa: ASYNC110  # state owned by the supervisor
                await asyncio.sleep(0.01)
        for _ in range(3):
            # The daemon stalls (CPU hog, swap, SIGSTOP) for twice the silence timeout
            # while the analyser keeps talking: its frames wait in the kernel.
            time.sleep(0.6)  # noqa: ASYNC251  # the stall under test
            before = supervisor.frames
            await asyncio.sleep(0.4)
            assert supervisor.frames > before
        assert supervisor.reconnects == 0
        assert supervisor.sessions_opened == 1
        assert supervisor.link_up
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
