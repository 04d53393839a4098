"""``servomexd run``: wires the pieces together; reads top to bottom like uvicorn's server.

startup   load config (exit 78 when invalid), logging, metrics registry, then, each
          registering its close on one ``AsyncExitStack`` as it opens: signal handlers,
          the metrics/health server, the spool, the writer (a sink that cannot be
          reached is NOT fatal: the spool holds the data and the writer keeps
          retrying), one supervisor per device; then READY=1
main      a TaskGroup of supervisors, writer and sd_notify loop, until a signal
shutdown  SIGTERM/SIGINT only set an event; then: stop acquisition (ports closed), flush
          the memory buffer to the spool, deliver to the sink within
          ``sink.shutdown_timeout`` (what is left stays spooled for the next start),
          the stack closes everything in reverse order, STOPPING=1, exit 0 well
          within 10 s

SIGHUP (``systemctl reload``) reopens the sink's output file (CSV starts a new
timestamped file, JSONL reopens its path after logrotate, Parquet closes the current
file and starts the next) and reloads the configuration (``reload.py`` says what
changed, ``reloader.py`` applies it): devices added, removed or changed start, stop or
restart alone (``acquisition/devices.py``); a changed sink is swapped between two
writes (the spool keeps everything in between); logging and the metrics listener change
in place. An invalid new configuration is logged with every bad field and the running
one stays (``/readyz`` says the last reload failed). ``[spool]`` changes need a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from servomexd import __version__, status
from servomexd.acquisition.devices import Devices
from servomexd.acquisition.supervisor import DeviceSupervisor, LinkHealth
from servomexd.config import (
    EX_CONFIG,
    ConfigInvalid,
    Settings,
    config_path,
    load_settings,
)
from servomexd.delivery import DeliveryHealth, Writer
from servomexd.destination import Destination
from servomexd.errors import ServomexConfigError, ServomexError, ServomexSinkDependencyError
from servomexd.logs import configure_logging, early_line
from servomexd.looplag import LoopLagMonitor
from servomexd.metrics import Metrics
from servomexd.notify import Notifier
from servomexd.reloader import Reloader
from servomexd.signals import StopDeadline, capture_signals
from servomexd.sinks.registry import resolve_credentials, sink_type
from servomexd.spool import Spool
from servomexd.startup_checks import metrics_listen_error, spool_open_error

log = structlog.get_logger("servomexd.daemon")

EX_SOFTWARE = 70
_STOP_BUDGET = 9.0
"""Seconds from the stop signal to exit, all steps included: systemd's TimeoutStopSec
is 30 s, the promise to operators is "well within 10 s"."""
_STOP_DEADLINE = _STOP_BUDGET + 3.0
"""Seconds from the stop request after which ``servomexd run`` exits regardless."""
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
        config: str | None = None,
        reloadable: bool = False,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        """``on_stop``: called once, at the first stop request (``servomexd run`` starts
        its stop deadline there)."""
        self.settings = settings
        self._on_stop = on_stop
        self._reloadable = reloadable
        """SIGHUP re-reads ``config`` (``servomexd run``); embedders keep their settings."""
        self.reload_error: str | None = None
        """Why the last reload was refused (None: it worked, or none happened)."""
        self._reloader = Reloader(self, config)
        self._tg: asyncio.TaskGroup | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._http: Any = None
        self.metrics = Metrics(registry if registry is not None else CollectorRegistry())
        self.notifier = notifier if notifier is not None else Notifier()
        self.devices = Devices(self.metrics)
        self.writer: Writer | None = None
        """Set once the delivery side is built; None while starting."""
        self.metrics_port: int | None = None
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._lag_task: asyncio.Task[None] | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._started = time.monotonic()
        self._budget = StopBudget()
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
        if self._on_stop is not None:
            self._on_stop()

    def reopen_outputs(self) -> None:
        """SIGHUP: reopen sink files (logrotate), then reload the configuration."""
        log.info(
            "daemon.sighup",
            action="reopening sink output" + (", reloading the configuration"
                                              if self._reloadable else ""),
        )
        if self.writer is not None:
            self.writer.request_reopen()
        if self._reloadable and self._tg is not None and not self._stop.is_set():
            self._reloader.schedule(self._tg)

    async def reload(self) -> None:
        """Re-read the configuration and apply what changed (``reloader.py``)."""
        await self._reloader.reload()

    async def restart_http(self) -> None:
        """The metrics listener moved (a reload): stop it, start it on the new address."""
        if self._http is not None:
            await self._http.stop()
            self._http = None
            self.metrics_port = None
        if self.settings.metrics.enabled and self._stack is not None:
            try:
                await self._start_http(self._stack)
            except ServomexError as exc:
                log.error("metrics.listen_failed", error=str(exc),
                          hint="metrics stay off until the next successful reload")  # fmt: skip

    # --- health, status, liveness ----------------------------------------------------------

    @property
    def supervisors(self) -> list[DeviceSupervisor]:
        return self.devices.supervisors

    def _links(self) -> list[LinkHealth]:
        return self.devices.health()

    def _delivery(self) -> DeliveryHealth | None:
        return None if self.writer is None else self.writer.snapshot()

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """For /readyz: every link up, and the sink up or the spool accepting."""
        ready, details = status.readiness(
            self._links(), self._delivery(), self.settings.sink.type
        )
        if self.reload_error is not None:
            problems = details["problems"]
            assert isinstance(problems, list)
            problems.append(f"last reload failed: {self.reload_error}")
            details["ready"] = ready = False
        return ready, details

    def status_line(self) -> str:
        return status.status_line(self._links(), self._delivery())

    def alive(self) -> bool:
        """Watchdog: the loop runs this, and every supervisor and the writer still run."""
        if self._writer_task is None or self._writer_task.done():
            return False
        return self.devices.alive()

    # --- lifecycle -------------------------------------------------------------------------

    async def serve(self) -> int:
        """Start, run until a stop signal, shut down; each component closes in reverse
        order of opening, whichever step failed."""
        loop = asyncio.get_running_loop()
        signals: dict[int, Callable[[], None]] = {
            signal.SIGTERM: lambda: self.request_stop("SIGTERM"),
            signal.SIGINT: lambda: self.request_stop("SIGINT"),
            signal.SIGHUP: self.reopen_outputs,
        }
        async with contextlib.AsyncExitStack() as stack:
            self._stack = stack
            stack.enter_context(capture_signals(loop, signals))
            try:
                writer = await self._startup(stack)
            except ServomexConfigError as exc:
                log.critical("daemon.config_error", error=str(exc))
                return EX_CONFIG
            except (ServomexError, OSError) as exc:
                log.critical("daemon.startup_failed", error=f"{type(exc).__name__}: {exc}")
                return 1
            async with asyncio.TaskGroup() as tg:
                await self._main(tg, writer)
        log.info(
            "daemon.stopped",
            reason=self._stop_reason,
            uptime_s=round(time.monotonic() - self._started, 1),
            **status.stop_summary(self._links(), self._delivery()),
        )
        return 0

    async def _startup(self, stack: contextlib.AsyncExitStack) -> Writer:
        s = self.settings
        log.info(
            "daemon.starting",
            version=__version__,
            pid=os.getpid(),
            devices=len(s.devices),
            sink=s.sink.type,
            spool=str(s.spool.path),
        )
        try:
            sink_type(s.sink.type).sink.check_dependencies()
        except ServomexSinkDependencyError as exc:
            raise ServomexConfigError(f"[sink] type = {s.sink.type!r}: {exc.message}") from exc
        if s.metrics.enabled:
            await self._start_http(stack)
        spool = await _open_spool(s, self.metrics)
        self._budget.closes(stack, spool.close, 1.0)
        writer = _writer(s, spool, self.metrics)
        self._budget.closes(stack, writer.aclose, 1.0)
        self.devices.build_all(
            s.devices, writer.flusher, lambda close: self._budget.closes(stack, close, 0.5)
        )
        self.writer = writer
        return writer

    async def _start_http(self, stack: contextlib.AsyncExitStack) -> None:
        try:
            from servomexd.http import MetricsServer
        except ImportError:  # pragma: no cover - http.py ships with the package
            log.warning("metrics.unavailable", reason="servomexd.http is missing")
            return
        from servomexd.webconfig import web_security

        m = self.settings.metrics
        # A bad web config or certificate raises ServomexConfigError: exit 78.
        http = MetricsServer(m.host, m.port, self.metrics.registry, self, security=web_security(m))
        try:
            await http.start()
        except OSError as exc:
            raise metrics_listen_error(m.listen, exc) from exc
        self._budget.closes(stack, http.stop, 0.5)
        self._http = http
        self.metrics_port = http.bound_port

    async def _main(self, tg: asyncio.TaskGroup, writer: Writer) -> None:
        self._tg = tg
        self._writer_task = tg.create_task(writer.run(), name="writer")
        self.devices.start(tg)
        # READY once the sink has been tried (open + checkpoint), up or not.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_READY_SINK_WAIT):
                await writer.first_sync.wait()
        self.loop_lag = LoopLagMonitor(self.metrics)
        self._lag_task = tg.create_task(self.loop_lag.run(), name="loop-lag")
        notify_task = tg.create_task(
            self.notifier.run(self.status_line, self.alive), name="sd_notify"
        )
        self.notifier.ready(self.status_line())
        self.ready.set()
        log.info(
            "daemon.ready",
            devices=",".join(s.name for s in self.supervisors),
            sink=writer.destination.description,
            metrics=None if self.metrics_port is None else
            f"{self.settings.metrics.host}:{self.metrics_port}",
        )
        await self._stop.wait()
        await self._shutdown(writer, self._writer_task, notify_task)

    async def _shutdown(
        self, writer: Writer, writer_task: asyncio.Task[None], notify_task: asyncio.Task[None]
    ) -> None:
        self._budget.start(_STOP_BUDGET)
        log.info("daemon.stopping", reason=self._stop_reason)
        self.notifier.stopping("stopping: flushing samples")
        self._reloader.cancel()
        # 1. stop acquisition: supervisors close their ports
        await self.devices.stop()
        # 2. flush the buffer to the spool and deliver within the deadline
        writer.request_stop()
        # the closing steps after this one need about 2 s of the budget
        deadline = min(
            self.settings.sink.shutdown_timeout + 1.0, self._budget.remaining(_STOP_BUDGET) - 2.0
        )
        done, _ = await asyncio.wait({writer_task}, timeout=max(0.5, deadline))
        if not done:
            log.warning(
                "daemon.shutdown_deadline",
                seconds=deadline,
                backlog_samples=writer.backlog(),
                note="undelivered samples stay in the spool for the next start",
            )
            writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer_task
            # the final flush may have been cut short: make sure the buffer is spooled
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.flusher.flush(), self._budget.remaining(1.0))
        notify_task.cancel()
        if self._lag_task is not None:
            self._lag_task.cancel()


class StopBudget:
    """The time left for shutdown steps: each has its own cap, all fit in one budget."""

    def __init__(self) -> None:
        self._deadline: float | None = None

    def start(self, seconds: float) -> None:
        self._deadline = time.monotonic() + seconds

    def remaining(self, cap: float) -> float:
        """Time a shutdown step may take: its own cap, within the overall budget."""
        if self._deadline is None:
            return cap
        return max(0.1, min(cap, self._deadline - time.monotonic()))

    def closes(
        self, stack: contextlib.AsyncExitStack, close: Callable[[], Awaitable[Any]], cap: float
    ) -> None:
        """Register ``close`` on the stack, bounded by ``cap`` and the budget; a failing
        close does not keep the others from running."""

        async def bounded() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(close(), self.remaining(cap))

        stack.push_async_callback(bounded)


async def _open_spool(s: Settings, metrics: Metrics) -> Spool:
    """The configured spool, open (its losses counted in ``metrics``)."""
    spool = Spool(
        s.spool.path,
        max_bytes=s.spool.max_bytes,
        synchronous=s.spool.synchronous,
        quarantine_max_bytes=s.spool.quarantine_max_bytes,
        on_drop=lambda _batches, samples: metrics.spool_dropped_samples.inc(samples),
    )
    try:
        await spool.open()
    except ServomexError as exc:
        raise spool_open_error(s.spool.path, exc) from exc
    return spool


def _writer(s: Settings, spool: Spool, metrics: Metrics) -> Writer:
    """The delivery side for the configured sink (not started; its sink opens there)."""
    return Writer(
        spool,
        Destination(s.sink, password=resolve_credentials(s.sink)),
        metrics,
        batch_size=s.sink.batch_size,
        flush_interval=s.sink.flush_interval,
        max_write_rows=s.sink.max_write_rows,
        write_timeout=s.sink.write_timeout,
        retry_max_delay=s.sink.retry_max_delay,
        spool_limit=s.spool.max_bytes,
    )


def run_daemon(config: str | None) -> int:
    """``servomexd run``: returns the process exit status."""
    # Logging is not configured yet: early_line still gives journald the priority, or
    # `journalctl -p err` would hide why the unit failed.
    try:
        settings = load_settings(config)
    except ConfigInvalid as exc:
        for line in exc.lines():
            early_line(f"servomexd: {line}")
        return EX_CONFIG
    except ServomexConfigError as exc:
        early_line(f"servomexd: {exc.message}")
        return EX_CONFIG
    configure_logging(settings.log.level, settings.log.format)
    log.debug("daemon.config_loaded", path=str(config_path(config)))
    for device in settings.devices:  # accepted settings that cannot apply (check-config too)
        for warning in device.warnings():
            log.warning("config.setting_ignored", device=device.name, warning=warning)
    deadline = StopDeadline(_STOP_DEADLINE, _exit_after_overrun)
    try:
        daemon = Daemon(settings, config=config, reloadable=True, on_stop=deadline.start)
        code = _run(daemon.serve())
    except KeyboardInterrupt:  # a signal before the handlers were installed
        code = 130
    except Exception:
        log.critical("daemon.crashed", exc_info=True)
        code = EX_SOFTWARE
    finally:
        deadline.cancel()
    _exit_past_stuck_threads(code)
    return code


def _exit_after_overrun() -> None:
    """The stop deadline passed (``StopDeadline``): say so and leave. What was spooled
    stays for the next start; systemd would otherwise wait out ``TimeoutStopSec`` (30 s)
    and SIGKILL the unit."""
    log.critical(
        "daemon.stop_overrun",
        seconds=_STOP_DEADLINE,
        hint="a task did not finish after the stop request (a driver that lost the "
        "cancellation); exiting without waiting for it",
    )
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(EX_SOFTWARE)


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
