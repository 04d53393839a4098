"""The configured devices as one running group: one supervisor and one task each.

Built from the settings at start, started in the daemon's task group, stopped together
at shutdown, and changed one device at a time by a reload (a device whose settings did
not change keeps its task and misses no frame). Modbus devices share the bus registry
made here, on demand: RS485 multidrop and Modbus TCP gateways serve several devices.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from servomexd.acquisition.factory import build_session_factory
from servomexd.acquisition.settings import DeviceSettings
from servomexd.acquisition.supervisor import DeviceSupervisor, LinkHealth, SampleBuffer
from servomexd.backoff import Backoff
from servomexd.errors import ServomexConfigError
from servomexd.metrics import Metrics

STOP_TIMEOUT = 2.0
"""Seconds cancelled supervisors are given to close their ports."""

Closes = Callable[[Callable[[], Awaitable[Any]]], None]
"""Registers a close to run at shutdown (the daemon's exit stack, bounded in time)."""


class SupervisedDevice(DeviceSettings, Protocol):
    """A configured device as supervision reads it (``config.DeviceConfig`` fits)."""

    @property
    def name(self) -> str: ...
    @property
    def silence_timeout(self) -> float: ...
    @property
    def is_modbus(self) -> bool: ...


class Devices:
    """The supervisors in configuration order, their tasks, their shared Modbus buses."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.supervisors: list[DeviceSupervisor] = []
        self.tasks: list[asyncio.Task[None]] = []
        self._buses: Any = None
        self._buffer: SampleBuffer | None = None
        self._closes: Closes | None = None
        self._tg: asyncio.TaskGroup | None = None

    def build_all(
        self, devices: Iterable[SupervisedDevice], buffer: SampleBuffer, closes: Closes
    ) -> None:
        """One supervisor per device, each feeding ``buffer`` (not started yet)."""
        self._buffer, self._closes = buffer, closes
        devices = list(devices)
        self.modbus_buses(create=any(d.is_modbus for d in devices))
        self.supervisors = [self.build(device) for device in devices]

    def modbus_buses(self, *, create: bool) -> Any:
        """The Modbus bus registry; made on demand (at start, or by a reload adding the
        first Modbus device), None while no device needs it."""
        if create and self._buses is None:
            from servomexd.acquisition.modbus import ModbusBusRegistry

            self._buses = ModbusBusRegistry(self.metrics)
            if self._closes is not None:
                self._closes(self._buses.aclose)
        return self._buses

    def build(self, device: SupervisedDevice) -> DeviceSupervisor:
        """A supervisor for ``device`` (a bad one raises ``ServomexConfigError``)."""
        assert self._buffer is not None
        try:
            factory = build_session_factory(device, self._buses)
        except ValueError as exc:  # ServomexValidationError is a ValueError
            raise ServomexConfigError(f"device {device.name}: {exc}") from exc
        return DeviceSupervisor(
            device.name,
            factory,
            self._buffer,
            self.metrics,
            silence_timeout=device.silence_timeout,
            # After valid frames, retry within 1 s for 30 s (a replug, a resumed
            # process), then back off as usual.
            backoff=Backoff(
                initial=0.5, cap=30.0, healthy_after=30.0, quick_for=30.0, quick_cap=1.0
            ),
        )

    def start(self, tg: asyncio.TaskGroup) -> None:
        """Run every supervisor in ``tg``; devices a reload adds start there too."""
        self._tg = tg
        self.tasks = [self._start(sup) for sup in self.supervisors]

    def _start(self, supervisor: DeviceSupervisor) -> asyncio.Task[None]:
        assert self._tg is not None
        return self._tg.create_task(supervisor.run(), name=f"device:{supervisor.name}")

    def alive(self) -> bool:
        return all(not task.done() for task in self.tasks)

    def health(self) -> list[LinkHealth]:
        return [sup.health() for sup in self.supervisors]

    async def stop(self) -> None:
        """Shutdown: cancel every supervisor; each closes its port."""
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=STOP_TIMEOUT)

    async def replace(
        self,
        going: set[str],
        removed: set[str],
        starting: list[DeviceSupervisor],
        order: list[str],
    ) -> None:
        """Stop the devices ``going`` (their ports close; ``removed`` ones leave the
        metrics), start ``starting``; the others keep running untouched. ``order``:
        every device's name, in configuration order."""
        pairs = list(zip(self.supervisors, self.tasks, strict=True))
        stopping = [(sup, task) for sup, task in pairs if sup.name in going]
        for _, task in stopping:
            task.cancel()
        if stopping:
            await asyncio.wait([task for _, task in stopping], timeout=STOP_TIMEOUT)
        for sup, _ in stopping:
            if sup.name in removed:
                self.metrics.unregister_device(sup.name)
        kept = [(sup, task) for sup, task in pairs if sup.name not in going]
        for sup in starting:
            kept.append((sup, self._start(sup)))
        position = {name: i for i, name in enumerate(order)}
        kept.sort(key=lambda pair: position[pair[0].name])
        self.supervisors = [sup for sup, _ in kept]
        self.tasks = [task for _, task in kept]
