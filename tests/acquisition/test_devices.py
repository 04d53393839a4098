"""servomexd/acquisition/devices.py: a reload's replace stops only the devices going,
starts the new ones, and leaves every other supervisor's task running untouched."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from servomexd.acquisition.devices import Devices
from servomexd.config import DeviceConfig
from servomexd.delivery.flusher import Flusher
from servomexd.metrics import Metrics
from servomexd.spool import Spool

pytestmark = pytest.mark.timeout(30)


def device(name: str, tmp_path: Path) -> DeviceConfig:
    # A port that does not exist: the supervisor keeps retrying until it is cancelled.
    return DeviceConfig(name=name, port=str(tmp_path / f"tty-{name}"), protocol="continuous")


async def test_replace_keeps_the_untouched_devices_running(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    async with Spool(tmp_path / "spool") as spool:
        flusher = Flusher(spool, metrics, batch_size=100, flush_interval=1.0)
        closes: list[object] = []
        devices = Devices(metrics)
        devices.build_all([device(n, tmp_path) for n in ("a", "b", "c")], flusher, closes.append)
        assert closes == []  # no Modbus device: no bus registry to close
        async with asyncio.TaskGroup() as tg:
            devices.start(tg)
            task_a, task_b, task_c = devices.tasks
            await asyncio.sleep(0.1)
            assert devices.alive()
            starting = [devices.build(device("d", tmp_path))]
            await devices.replace({"b"}, {"b"}, starting, ["d", "a", "c"])
            assert [sup.name for sup in devices.supervisors] == ["d", "a", "c"]
            assert devices.tasks[1] is task_a and devices.tasks[2] is task_c
            assert task_b.done() and not task_a.done() and not task_c.done()
            assert not devices.tasks[0].done()
            assert devices.alive()
            await devices.stop()
            assert all(task.done() for task in devices.tasks)
            assert not devices.alive()
