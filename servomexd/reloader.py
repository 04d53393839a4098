"""Applying a configuration reload (SIGHUP, ``systemctl reload``) to the running daemon.

``reload.py`` says what changed; this module makes the running parts follow, in an
order that keeps data safe: everything that can refuse (the file, the credentials, a
device's Modbus line settings) is checked before anything changes, so a bad file leaves
the previous configuration running, whole. Then logging and the metrics listener change
in place, the writer takes the new delivery knobs, a changed sink is switched between
two writes (the spool keeps everything in between, ``delivery/current_sink.py``), and
only the devices added, removed or changed start, stop or restart. One reload runs at
a time, and none outlives the shutdown that cancels it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Protocol

import structlog

from servomexd.acquisition.devices import Devices
from servomexd.acquisition.supervisor import DeviceSupervisor
from servomexd.config import ConfigInvalid, Settings, config_path, load_settings
from servomexd.delivery import Writer
from servomexd.destination import Destination
from servomexd.errors import ServomexConfigError
from servomexd.logs import configure_logging
from servomexd.metrics import Metrics
from servomexd.notify import Notifier
from servomexd.reload import ReloadPlan, plan_reload
from servomexd.sinks.registry import resolve_credentials

log = structlog.get_logger("servomexd.daemon")

_CLOSE_GRACE = 10.0
"""Beyond the write timeout, the wait for a sink switch (the write in progress ends first)."""


class Running(Protocol):
    """The parts of the running daemon a reload changes (``Daemon`` provides them)."""

    settings: Settings
    writer: Writer | None
    metrics: Metrics
    notifier: Notifier
    devices: Devices
    reload_error: str | None
    """Why the last reload was refused (None: it worked, or none happened)."""

    def status_line(self) -> str: ...

    async def restart_http(self) -> None: ...


class Reloader:
    """Re-reads the configuration file and applies what changed, one reload at a time."""

    def __init__(self, daemon: Running, config: str | None) -> None:
        self._daemon = daemon
        self._config = config
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    def schedule(self, tg: asyncio.TaskGroup) -> None:
        """Start a reload in ``tg`` (it waits for one already running)."""
        self._tasks.append(tg.create_task(self.reload(), name="reload"))
        self._tasks = [task for task in self._tasks if not task.done()]

    def cancel(self) -> None:
        """At shutdown: a reload must not outlive the parts it changes."""
        for task in self._tasks:
            task.cancel()

    async def reload(self) -> None:
        """Re-read the configuration and apply what changed (one reload at a time)."""
        d = self._daemon
        async with self._lock:
            d.notifier.reloading("reloading the configuration")
            try:
                summary = await self._reload()
            except Exception as exc:  # a bug or an unexpected failure: keep running
                summary = f"reload failed: {type(exc).__name__}: {exc}"
                d.reload_error = summary
                log.error("daemon.reload_failed", error=summary, exc_info=True)
            d.notifier.ready(f"{summary}; {d.status_line()}")

    async def _reload(self) -> str:
        d = self._daemon
        try:
            new = load_settings(self._config)
            password = resolve_credentials(new.sink)
        except ConfigInvalid as exc:
            return self._refused(exc.lines())
        except ServomexConfigError as exc:
            return self._refused([exc.message])
        plan = plan_reload(d.settings, new)
        try:
            # Built before anything changes: a device the new file describes badly (a
            # Modbus line conflict) refuses the whole reload, not half of it.
            starting = self._new_supervisors(plan, new)
        except ServomexConfigError as exc:
            return self._refused([str(exc)])
        d.settings = new
        if plan.log:
            configure_logging(new.log.level, new.log.format)
        if plan.metrics:
            await d.restart_http()
        writer = d.writer
        if writer is not None:
            tune_writer(writer, new)
        if plan.sink and writer is not None:
            destination = Destination(new.sink, password=password)
            try:
                async with asyncio.timeout(new.sink.write_timeout + _CLOSE_GRACE):
                    await writer.replace_destination(destination)
            except TimeoutError:
                log.warning("daemon.sink_switch_pending",
                            hint="the switch happens after the write in progress")  # fmt: skip
        await self._restart_devices(plan, starting)
        d.reload_error = None
        summary = f"reloaded: {plan.describe()}"
        log.info("daemon.reloaded", changes=plan.describe())
        if plan.spool:
            log.warning("daemon.reload_spool_unchanged",
                        hint="[spool] changes take effect at the next restart")  # fmt: skip
        return summary

    def _refused(self, problems: list[str]) -> str:
        self._daemon.reload_error = "; ".join(problems)
        log.error(
            "daemon.reload_failed",
            problems=problems,
            config=str(config_path(self._config)),
            hint="the previous configuration keeps running; fix the file and reload again",
        )
        return f"reload failed ({len(problems)} invalid setting(s)), previous configuration kept"

    def _new_supervisors(self, plan: ReloadPlan, new: Settings) -> list[DeviceSupervisor]:
        """Supervisors for the added and changed devices of ``new`` (not started)."""
        d = self._daemon
        starting = set(plan.added) | set(plan.changed)
        devices = [device for device in new.devices if device.name in starting]
        if not devices:
            return []
        assert d.writer is not None
        buses = d.devices.modbus_buses(create=any(device.is_modbus for device in devices))
        if buses is not None:
            # Ports only left or changed devices used may take new line settings.
            going = set(plan.removed) | set(plan.changed)
            kept = {os.path.normpath(str(x.port)) for x in d.settings.devices
                    if x.is_modbus and x.name not in going}  # fmt: skip
            for device in d.settings.devices:
                port = os.path.normpath(str(device.port))
                if device.is_modbus and device.name in going and port not in kept:
                    buses._declared.pop(port, None)
        return [d.devices.build(device) for device in devices]

    async def _restart_devices(
        self, plan: ReloadPlan, starting: list[DeviceSupervisor]
    ) -> None:
        """Stop removed and changed devices (their ports close), start the new
        supervisors; the others keep running untouched."""
        going = set(plan.removed) | set(plan.changed)
        names = [device.name for device in self._daemon.settings.devices]
        await self._daemon.devices.replace(going, set(plan.removed), starting, names)


def tune_writer(writer: Writer, settings: Settings) -> None:
    """The delivery knobs a reload changes in place (the sink itself is swapped apart)."""
    sink = settings.sink
    writer.flusher.batch_size = sink.batch_size
    writer.flusher.flush_interval = sink.flush_interval
    writer.deliverer.max_write_rows = sink.max_write_rows
    writer.deliverer.write_timeout = sink.write_timeout
    writer.deliverer.backoff.cap = max(sink.retry_max_delay, writer.deliverer.backoff.initial)
