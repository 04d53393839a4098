"""The sink's health as operators see it: up or down, since when, draining a backlog.

One place decides what is logged and counted when the sink fails, comes back or has
caught up, so the events keep their names (runbooks and alerts use them):

* ``sink.opened`` (info): first successful open;
* ``sink.down`` (error): the first failure of an outage; ``sink.still_down``
  (warning) when the error changes during it;
* ``sink.recovered`` (warning): the first proof the sink works again after an outage;
* ``sink.backlog_drained`` (info): the spool emptied after a recovery;
* ``sink.fault`` (error): a failure only an operator can fix (``ServomexSinkFault``: a
  certificate that fails verification), once per distinct fault; readiness fails and
  retries slow down until it is fixed.

Metrics: ``servomexd_sink_up``, ``servomexd_sink_errors_total``,
``servomexd_samples_written_total``, ``servomexd_sink_write_seconds``, and the spool
gauges (``update_spool_gauges``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from servomexd.errors import ServomexSinkFault
from servomexd.metrics import Metrics
from servomexd.spool import Spool, SpoolStats

log = structlog.get_logger("servomexd.writer")


@dataclass(frozen=True)
class DeliveryHealth:
    """What readiness, the status line and the shutdown summary need to know."""

    sink_type: str
    sink_up: bool
    sink_error: str | None
    spool_accepting: bool
    """The spool takes appends and is below its size limit."""
    spool: SpoolStats
    buffered: int
    samples_accepted: int
    samples_written: int
    sink_fault: str | None = None
    """Set while the sink fails for a reason only an operator can fix."""

    @property
    def backlog(self) -> int:
        """Samples accepted but not yet committed to the sink (spool + memory)."""
        return self.spool.samples + self.buffered


def update_spool_gauges(spool: Spool, metrics: Metrics) -> None:
    stats = spool.stats
    metrics.spool_pending_samples.set(stats.samples)
    metrics.spool_bytes.set(stats.bytes)
    metrics.spool_oldest_age_seconds.set(stats.oldest_age())


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
        self.fault: str | None = None
        """The operator-needed fault the sink fails with now (``ServomexSinkFault``)."""
        self.samples_written = 0
        self._down_since: float | None = None
        self._draining = False
        self._drain_started = 0.0
        self._drain_written_before = 0
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
                hint="samples keep being spooled; delivery resumes when the sink is back",
            )
        elif error != self.last_error:
            log.warning("sink.still_down", sink=self.sink, action=action, error=error)
        self._note_fault(exc)
        self.up = False
        self.last_error = error

    def _note_fault(self, exc: BaseException) -> None:
        fault = exc if isinstance(exc, ServomexSinkFault) else None
        if fault is not None and fault.message != self.fault:
            log.error(
                "sink.fault",
                sink=self.sink,
                check=fault.context.get("check"),
                error=fault.message,
                hint="an operator must fix this; retried slowly, no restart needed",
            )
        self.fault = None if fault is None else fault.message

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
        self.fault = None

    def wrote(self, rows: int, seconds: float) -> None:
        """A write of ``rows`` committed in ``seconds``."""
        self.metrics.sink_write_seconds.labels(self.sink).observe(seconds)
        self.metrics.samples_written.labels(self.sink).inc(rows)
        self.samples_written += rows

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
