"""The daemon's own delay: how late the event loop runs a timer, and overload.

One loop reads every port, so its lag is how long bytes may wait unread in the
kernel. ``LoopLagMonitor`` sleeps a fixed period and measures how much later than
asked it woke; the worst of each window is exported as
``servomexd_event_loop_lag_seconds``. Above ``overload_after`` seconds of lag the
daemon is overloaded: it sheds metrics detail first (the per-channel gauges leave the
scrape, which is the largest CPU cost left on a busy loop) and never samples; a log
line and ``servomexd_overload`` say so, and again when it clears.
"""

from __future__ import annotations

import asyncio

import structlog

from servomexd.metrics import Metrics

__all__ = ["LoopLagMonitor"]

log = structlog.get_logger("servomexd.looplag")


class LoopLagMonitor:
    """Measures event-loop lag for as long as ``run()`` runs."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        period: float = 0.1,
        window: float = 2.0,
        overload_after: float = 0.5,
    ) -> None:
        self.metrics = metrics
        self.period = period
        self.window = window
        self.overload_after = overload_after
        self.lag = 0.0
        """The worst lag of the last complete window (seconds)."""
        self.worst = 0.0
        """The worst lag seen since start (seconds)."""
        self.overloaded = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        window_worst = 0.0
        window_end = loop.time() + self.window
        while True:
            asked = loop.time() + self.period
            await asyncio.sleep(self.period)
            now = loop.time()
            late = max(0.0, now - asked)
            window_worst = max(window_worst, late)
            self.worst = max(self.worst, late)
            # A lag this large shows at once; smaller ones at the end of the window.
            if late >= self.overload_after or now >= window_end:
                self._publish(max(window_worst, late))
                if now >= window_end:
                    window_worst, window_end = 0.0, now + self.window

    def _publish(self, lag: float) -> None:
        self.lag = lag
        self.metrics.event_loop_lag.set(lag)
        overloaded = lag >= self.overload_after
        if overloaded == self.overloaded:
            return
        self.overloaded = overloaded
        self.metrics.shed_detail(overloaded)
        if overloaded:
            log.warning(
                "daemon.overloaded",
                lag_s=round(lag, 3),
                shedding="per-channel metrics (samples are kept)",
                hint="more analysers than this CPU serves; see docs/performance.md",
            )
        else:
            log.info("daemon.overload_cleared", lag_s=round(lag, 3))
