"""The sink's health as operators see it: up or down, since when, draining a backlog.

One place decides what is logged and counted when the sink fails, comes back or has
caught up, so the events keep their names (runbooks and alerts use them):

* ``sink.opened`` (info): first successful open;
* ``sink.down`` (error): the first failure of an outage; ``sink.still_down``
  (warning) when the error changes during it;
* ``sink.recovered`` (warning): the first proof the sink works again after an outage;
* ``sink.backlog_drained`` (info): the spool emptied after a recovery;
* ``sink.fault`` (error): a failure only an operator can fix (``SinkFailure.OPERATOR``),
  with its ``reason`` and the ``fix``; repeated at most every ``FAULT_LOG_INTERVAL``
  while it lasts, at once when the reason changes; ``sink.fault_cleared`` (warning).

Metrics: ``servomexd_sink_up``, ``servomexd_sink_fault{reason}``,
``servomexd_sink_errors_total``,
``servomexd_samples_written_total``, ``servomexd_sink_write_seconds``, and the spool
gauges (``update_spool_gauges``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from servomexd.errors import ServomexSinkError, SinkFailure, sink_failure
from servomexd.metrics import Metrics
from servomexd.spool import Spool, SpoolStats

log = structlog.get_logger("servomexd.writer")

FAULT_LOG_INTERVAL = 300.0
"""Seconds between two ``sink.fault`` lines for the same lasting fault."""


@dataclass(frozen=True)
class SinkFault:
    """An operator-needed failure: its bounded reason label, the error and the fix."""

    reason: str
    error: str
    fix: str | None
    check: str | None = None
    """Which check failed, when the sink names one (the TLS checks: ``CA``...)."""


@dataclass(frozen=True)
class DeliveryHealth:
    """What readiness, the status line and the shutdown summary need to know."""

    sink_type: str
    sink_up: bool
    sink_error: str | None
    sink_fault: SinkFault | None
    """Set while the sink fails for a reason only an operator can fix: not ready."""
    spool_accepting: bool
    """The spool takes appends and is below its size limit."""
    spool: SpoolStats
    buffered: int
    samples_accepted: int
    samples_written: int

    @property
    def backlog(self) -> int:
        """Samples accepted but not yet committed to the sink (spool + memory)."""
        return self.spool.samples + self.buffered


def update_spool_gauges(spool: Spool, metrics: Metrics) -> None:
    stats = spool.stats
    metrics.spool_pending_samples.set(stats.samples)
    metrics.spool_bytes.set(stats.bytes)
    metrics.spool_oldest_age_seconds.set(stats.oldest_age())
    metrics.quarantine_pending_samples.set(stats.quarantined)


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class SinkHealth:
    """Up/down state of one sink, its transition logs and its metrics."""

    def __init__(
        self,
        sink: str,
        target: Callable[[], str],
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self._target = target
        self.metrics = metrics
        self._clock = clock
        self.up = False
        self.last_error: str | None = None
        self.samples_written = 0
        self._down_since: float | None = None
        self._draining = False
        self._drain_started = 0.0
        self._drain_written_before = 0
        self.fault: SinkFault | None = None
        self._fault_logged_at = 0.0
        self.last_write_at: float | None = None
        """Monotonic time of the last committed write (None: none yet)."""
        metrics.register_sink(sink)

    @property
    def in_outage(self) -> bool:
        """A failure was seen and no success since (false before the first failure)."""
        return self._down_since is not None

    def failed(self, exc: BaseException, action: str, *, rows: int, backlog: int) -> None:
        """A sink open, write or reopen failed (``rows``: the rows of a failed write)."""
        self.metrics.sink_errors.labels(self.sink).inc()
        self.metrics.sink_up.labels(self.sink).set(0)
        error = describe_error(exc)
        operator = sink_failure(exc) is SinkFailure.OPERATOR
        if self.up or self._down_since is None:
            self._down_since = self._clock()
            log.error(
                "sink.down",
                sink=self.sink,
                target=self._target(),
                action=action,
                rows=rows,
                error=error,
                backlog_samples=backlog,
                hint="samples keep being spooled; "
                + (
                    "an operator must fix the cause (see sink.fault); retried slowly, "
                    "no restart needed"
                    if operator
                    else "delivery resumes when the sink is back"
                ),
            )
        elif error != self.last_error and not operator:
            log.warning("sink.still_down", sink=self.sink, action=action, error=error)
        self.up = False
        self.last_error = error
        if operator:
            assert isinstance(exc, ServomexSinkError)
            check = exc.context.get("check")
            fault = SinkFault(exc.fault or "other", error, exc.fix, None if check is None
                              else str(check))  # fmt: skip
            self._set_fault(fault, backlog)
        else:
            self._clear_fault()

    def _set_fault(self, fault: SinkFault, backlog: int) -> None:
        previous = self.fault
        now = self._clock()
        changed = previous is None or (previous.reason, previous.check) != (
            fault.reason, fault.check
        )
        if changed or now - self._fault_logged_at >= FAULT_LOG_INTERVAL:
            self._fault_logged_at = now
            log.error(
                "sink.fault",
                sink=self.sink,
                reason=fault.reason,
                check=fault.check,
                error=fault.error,
                fix=fault.fix,
                backlog_samples=backlog,
                hint="not ready until fixed; samples keep being spooled and the sink is "
                "retried slowly, so fixing the cause needs no restart",
            )
        if previous is not None and previous.reason != fault.reason:
            self.metrics.sink_fault.labels(self.sink, previous.reason).set(0)
        self.metrics.sink_fault.labels(self.sink, fault.reason).set(1)
        self.fault = fault

    def _clear_fault(self) -> None:
        fault, self.fault = self.fault, None
        if fault is None:
            return
        self.metrics.sink_fault.labels(self.sink, fault.reason).set(0)
        log.warning("sink.fault_cleared", sink=self.sink, reason=fault.reason)

    def refused(self, exc: BaseException, *, first_seq: int, last_seq: int, rows: int) -> None:
        """The sink refused the rows of a write (a data error): not an outage."""
        self.metrics.sink_errors.labels(self.sink).inc()
        log.warning(
            "sink.rows_refused",
            sink=self.sink,
            first_seq=first_seq,
            last_seq=last_seq,
            rows=rows,
            error=describe_error(exc),
            hint="isolating the refused rows; the others are delivered",
        )

    def recovered(self, *, backlog: int) -> None:
        """The sink works (opened, or a write committed); ``backlog``: spooled samples."""
        self.metrics.sink_up.labels(self.sink).set(1)
        if self._down_since is not None:
            log.warning(
                "sink.recovered",
                sink=self.sink,
                target=self._target(),
                outage_s=round(self._clock() - self._down_since, 1),
                backlog_samples=backlog,
            )
            self._draining = backlog > 0
            self._drain_started = self._clock()
            self._drain_written_before = self.samples_written
        elif not self.up:
            log.info("sink.opened", sink=self.sink, target=self._target(), backlog_samples=backlog)
        self._down_since = None
        self.up = True
        self.last_error = None
        self._clear_fault()

    def wrote(self, rows: int, seconds: float) -> None:
        """A write of ``rows`` committed in ``seconds``."""
        self.metrics.sink_write_seconds.labels(self.sink).observe(seconds)
        self.metrics.samples_written.labels(self.sink).inc(rows)
        self.samples_written += rows
        self.last_write_at = self._clock()

    def spool_emptied(self) -> None:
        """Nothing is left in the spool: a backlog being drained is done."""
        if self._down_since is not None or not self._draining:
            return
        self._draining = False
        log.info(
            "sink.backlog_drained",
            sink=self.sink,
            samples=self.samples_written - self._drain_written_before,
            seconds=round(self._clock() - self._drain_started, 2),
        )

    def closed(self) -> None:
        self.metrics.sink_up.labels(self.sink).set(0)
        self.up = False
