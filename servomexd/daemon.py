"""``servomexd run``: wires the pieces together; reads top to bottom like uvicorn's server.

startup   load config (exit 78 when invalid), logging, metrics registry, spool, sink
          (a sink that cannot be reached is NOT fatal: the spool holds the data and the
          writer keeps retrying), metrics/health server, one supervisor per device, the
          writer, then READY=1
main      a TaskGroup of supervisors, writer and sd_notify loop, until a signal
shutdown  SIGTERM/SIGINT only set an event; then: stop acquisition (ports closed), flush
          the memory buffer to the spool, deliver to the sink within
          ``sink.shutdown_timeout`` (what is left stays spooled for the next start),
          close everything, STOPPING=1, exit 0 well within 10 s

SIGHUP reopens the sink's output file (CSV starts a new timestamped file, JSONL reopens
its path after logrotate, Parquet closes the current file and starts the next). It does
NOT reload the configuration: configuration changes need ``systemctl restart``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry

from servomexd import __version__
from servomexd.acquisition.backoff import Backoff
from servomexd.acquisition.factory import build_session_factory
from servomexd.acquisition.supervisor import DeviceSupervisor
from servomexd.config import (
    EX_CONFIG,
    ConfigInvalid,
    Settings,
    config_path,
    load_settings,
)
from servomexd.errors import ServomexConfigError, ServomexError
from servomexd.logs import configure_logging
from servomexd.metrics import Metrics
from servomexd.notify import Notifier
from servomexd.spool import Spool
from servomexd.writer import Writer

if TYPE_CHECKING:
    from servomexd.acquisition.modbus import ModbusBusRegistry
    from servomexd.destination import Destination

log = structlog.get_logger("servomexd.daemon")

EX_SOFTWARE = 70
_SUPERVISOR_STOP_TIMEOUT = 2.0
_STOP_BUDGET = 9.0
"""Seconds from the stop signal to exit, all steps included: systemd's TimeoutStopSec
is 30 s, the promise to operators is "well within 10 s"."""
_READY_SINK_WAIT = 5.0
_THREAD_EXIT_GRACE = 0.5


class Daemon:
    """One running servomexd: owns every component and its lifecycle."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics(registry if registry is not None else CollectorRegistry())
        self.notifier = notifier if notifier is not None else Notifier()
        self.supervisors: list[DeviceSupervisor] = []
        self.spool: Spool | None = None
        self.writer: Writer | None = None
        self.destination: Destination | None = None
        self.buses: ModbusBusRegistry | None = None
        self.http: Any = None
        self.metrics_port: int | None = None
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._tasks: list[asyncio.Task[None]] = []
        self._writer_task: asyncio.Task[None] | None = None
        self._started = time.monotonic()
        self._stop_deadline: float | None = None
        self.ready = asyncio.Event()

    # --- control ---------------------------------------------------------------------------

    def request_stop(self, reason: str = "requested") -> None:
        if self._stop.is_set():
            # A second Ctrl-C / SIGTERM: stop waiting for the sink.
            if self._writer_task is not None and not self._writer_task.done():
                log.warning("daemon.stop_forced", reason=reason)
                self._writer_task.cancel()
            return
        self._stop_reason = reason
        self._stop.set()

    def reopen_outputs(self) -> None:
        """SIGHUP: reopen sink files (logrotate); configuration is not reloaded."""
        log.info(
            "daemon.sighup",
            action="reopening sink output",
            note="configuration changes need a restart (systemctl restart servomexd)",
        )
        if self.writer is not None:
            self.writer.request_reopen()

    # --- health, status, liveness ----------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """For /readyz: every link up, and the sink up or the spool accepting."""
        problems: list[str] = []
        devices: dict[str, object] = {}
        for sup in self.supervisors:
            devices[sup.name] = "up" if sup.link_up else f"down: {sup.last_error or 'unknown'}"
            if not sup.link_up:
                problems.append(f"device {sup.name} link down")
        writer, spool = self.writer, self.spool
        sink: dict[str, object] = {"type": self.settings.sink.type, "up": False}
        spool_info: dict[str, object] = {}
        if writer is None or spool is None:
            problems.append("starting")
        else:
            stats = spool.stats
            accepting = writer.spool_ok and stats.bytes < self.settings.spool.max_bytes
            sink = {
                "type": self.settings.sink.type,
                "up": writer.sink_up,
                "error": writer.last_sink_error,
            }
            spool_info = {
                "accepting": accepting,
                "pending_samples": stats.samples,
                "bytes": stats.bytes,
                "oldest_age_s": round(stats.oldest_age(), 1),
            }
            if not writer.sink_up and not accepting:
                problems.append("sink down and spool not accepting")
        ready = not problems
        return ready, {
            "ready": ready,
            "problems": problems,
            "devices": devices,
            "sink": sink,
            "spool": spool_info,
        }

    def status_line(self) -> str:
        up = sum(1 for s in self.supervisors if s.link_up)
        writer = self.writer
        if writer is None:
            return "starting"
        sink = "up" if writer.sink_up else "DOWN"
        return (
            f"devices up {up}/{len(self.supervisors)}, "
            f"samples written {writer.samples_written}, backlog {writer.backlog}, sink {sink}"
        )

    def alive(self) -> bool:
        """Watchdog: the loop runs this, and every supervisor and the writer still run."""
        if self._writer_task is None or self._writer_task.done():
            return False
        return all(not task.done() for task in self._tasks)

    # --- lifecycle -------------------------------------------------------------------------

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        try:
            await self._startup()
        except ServomexConfigError as exc:
            log.critical("daemon.config_error", error=str(exc))
            await self._close_all()
            return EX_CONFIG
        except (ServomexError, OSError) as exc:
            log.critical("daemon.startup_failed", error=f"{type(exc).__name__}: {exc}")
            await self._close_all()
            return 1
        try:
            async with asyncio.TaskGroup() as tg:
                await self._main(tg)
        finally:
            await self._close_all()
            self._remove_signals(loop)
        self._log_summary()
        return 0

    async def _startup(self) -> None:
        s = self.settings
        log.info(
            "daemon.starting",
            version=__version__,
            pid=os.getpid(),
            devices=len(s.devices),
            sink=s.sink.type,
            spool=str(s.spool.path),
        )
        self.spool = Spool(
            s.spool.path,
            max_bytes=s.spool.max_bytes,
            synchronous=s.spool.synchronous,
            on_drop=lambda _batches, samples: self.metrics.spool_dropped_samples.inc(samples),
        )
        await self.spool.open()
        from servomexd.destination import Destination

        password = s.sink.postgres.resolve_password() if s.sink.type == "postgres" else None
        self.destination = Destination(s.sink, password=password)
        del password
        self.writer = Writer(
            self.spool,
            self.destination,
            self.metrics,
            batch_size=s.sink.batch_size,
            flush_interval=s.sink.flush_interval,
            max_write_rows=s.sink.max_write_rows,
            write_timeout=s.sink.write_timeout,
            retry_max_delay=s.sink.retry_max_delay,
        )
        if any(d.is_modbus for d in s.devices):
            from servomexd.acquisition.modbus import ModbusBusRegistry

            self.buses = ModbusBusRegistry(self.metrics)
        for device in s.devices:
            try:
                factory = build_session_factory(device, self.buses)
            except ValueError as exc:  # ServomexValidationError is a ValueError
                raise ServomexConfigError(f"device {device.name}: {exc}") from exc
            self.supervisors.append(
                DeviceSupervisor(
                    device.name,
                    factory,
                    self.writer,
                    self.metrics,
                    silence_timeout=device.silence_timeout,
                    backoff=Backoff(initial=0.5, cap=30.0, healthy_after=30.0),
                )
            )
        if s.metrics.enabled:
            await self._start_http()

    async def _start_http(self) -> None:
        try:
            from servomexd.http import MetricsServer
        except ImportError:  # pragma: no cover - http.py ships with the package
            log.warning("metrics.unavailable", reason="servomexd.http is missing")
            return
        m = self.settings.metrics
        self.http = MetricsServer(m.host, m.port, self.metrics.registry, self)
        try:
            await self.http.start()
        except OSError as exc:
            self.http = None
            raise ServomexError(
                f"cannot listen for metrics on {m.listen}: {exc.strerror or exc}",
                context={"key": "metrics.listen"},
            ) from exc
        self.metrics_port = self.http.bound_port

    async def _main(self, tg: asyncio.TaskGroup) -> None:
        assert self.writer is not None
        self._writer_task = tg.create_task(self.writer.run(), name="writer")
        self._tasks = [
            tg.create_task(sup.run(), name=f"device:{sup.name}") for sup in self.supervisors
        ]
        # READY once the sink has been tried (open + checkpoint), up or not.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_READY_SINK_WAIT):
                await self.writer.first_sync.wait()
        notify_task = tg.create_task(
            self.notifier.run(self.status_line, self.alive), name="sd_notify"
        )
        self.notifier.ready(self.status_line())
        self.ready.set()
        log.info(
            "daemon.ready",
            devices=",".join(s.name for s in self.supervisors),
            sink=self.destination.description if self.destination else None,
            metrics=None if self.metrics_port is None else
            f"{self.settings.metrics.host}:{self.metrics_port}",
        )
        await self._stop.wait()
        await self._shutdown(notify_task)

    def _remaining(self, cap: float) -> float:
        """Time a shutdown step may take: its own cap, within the overall budget."""
        if self._stop_deadline is None:
            return cap
        return max(0.1, min(cap, self._stop_deadline - time.monotonic()))

    async def _shutdown(self, notify_task: asyncio.Task[None]) -> None:
        self._stop_deadline = time.monotonic() + _STOP_BUDGET
        log.info("daemon.stopping", reason=self._stop_reason)
        self.notifier.stopping("stopping: flushing samples")
        # 1. stop acquisition: supervisors close their ports
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=_SUPERVISOR_STOP_TIMEOUT)
        # 2. flush the buffer to the spool and deliver within the deadline
        assert self.writer is not None and self._writer_task is not None
        self.writer.request_stop()
        # the closing steps after this one need about 2 s of the budget
        deadline = min(
            self.settings.sink.shutdown_timeout + 1.0, self._remaining(_STOP_BUDGET) - 2.0
        )
        done, _ = await asyncio.wait({self._writer_task}, timeout=max(0.5, deadline))
        if not done:
            log.warning(
                "daemon.shutdown_deadline",
                seconds=deadline,
                backlog_samples=self.writer.backlog,
                note="undelivered samples stay in the spool for the next start",
            )
            self._writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer_task
            # the final flush may have been cut short: make sure the buffer is spooled
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.flush(), self._remaining(1.0))
        notify_task.cancel()

    async def _close_all(self) -> None:
        """Close whatever was opened (idempotent; each step independent)."""
        if self.writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.aclose(), self._remaining(1.0))
        if self.buses is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.buses.aclose(), self._remaining(0.5))
        if self.spool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.spool.close(), self._remaining(1.0))
        if self.http is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.http.stop(), self._remaining(0.5))
            self.http = None

    def _log_summary(self) -> None:
        writer = self.writer
        stats = self.spool.stats if self.spool is not None else None
        log.info(
            "daemon.stopped",
            reason=self._stop_reason,
            uptime_s=round(time.monotonic() - self._started, 1),
            samples_accepted=writer.samples_accepted if writer else 0,
            samples_written=writer.samples_written if writer else 0,
            left_in_spool=stats.samples if stats else 0,
            frames=sum(s.frames for s in self.supervisors),
            rejected=sum(s.rejections for s in self.supervisors),
            reconnects=sum(s.reconnects for s in self.supervisors),
        )

    # --- signals ---------------------------------------------------------------------------

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        handlers: dict[int, Callable[[], None]] = {
            signal.SIGTERM: lambda: self.request_stop("SIGTERM"),
            signal.SIGINT: lambda: self.request_stop("SIGINT"),
            signal.SIGHUP: self.reopen_outputs,
        }
        for signum, handler in handlers.items():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, handler)

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)


def run_daemon(config: str | None) -> int:
    """``servomexd run``: returns the process exit status."""
    try:
        settings = load_settings(config)
    except ConfigInvalid as exc:
        for line in exc.lines():
            print(f"servomexd: {line}", file=sys.stderr)
        return EX_CONFIG
    except ServomexConfigError as exc:
        print(f"servomexd: {exc.message}", file=sys.stderr)
        return EX_CONFIG
    configure_logging(settings.log.level, settings.log.format)
    log.debug("daemon.config_loaded", path=str(config_path(config)))
    for device in settings.devices:  # accepted settings that cannot apply (check-config too)
        for warning in device.warnings():
            log.warning("config.setting_ignored", device=device.name, warning=warning)
    try:
        code = _run(Daemon(settings).serve())
    except KeyboardInterrupt:  # a signal before the handlers were installed
        code = 130
    except Exception:
        log.critical("daemon.crashed", exc_info=True)
        code = EX_SOFTWARE
    _exit_past_stuck_threads(code)
    return code


def _run(main: Coroutine[Any, Any, int]) -> int:
    """``asyncio.run`` without its unbounded wait for the default executor at exit.

    A serial open() runs in an executor thread and can block for ever (a wedged USB
    adapter); asyncio.run would then wait for that thread and SIGTERM would never exit.
    """
    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(thread_name_prefix="servomexd-io")
    loop.set_default_executor(executor)
    try:
        asyncio.set_event_loop(loop)
        code = loop.run_until_complete(main)
        leftovers = asyncio.all_tasks(loop)
        for task in leftovers:
            task.cancel()
        if leftovers:
            loop.run_until_complete(asyncio.wait(leftovers, timeout=1.0))
        loop.run_until_complete(loop.shutdown_asyncgens())
        return code
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        asyncio.set_event_loop(None)
        loop.close()


def _exit_past_stuck_threads(code: int, grace: float = _THREAD_EXIT_GRACE) -> None:
    """Exit now if a thread is still blocked after everything was flushed and closed.

    Python joins executor threads at interpreter exit, so one stuck in a blocking system
    call would hold the process past systemd's stop timeout (and get it SIGKILLed,
    logged as a failure). The spool and sink are closed by now: nothing is lost.
    """
    deadline = time.monotonic() + grace
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.daemon:
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [
        t.name
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]
    if not stuck:
        return
    log.warning(
        "daemon.exit_with_stuck_threads",
        threads=",".join(stuck),
        hint="a blocking call (for example a wedged serial adapter's open) never returned",
    )
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
