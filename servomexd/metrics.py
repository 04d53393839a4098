"""Every Prometheus metric servomexd exports, defined in one place.

The metric objects live on a ``Metrics`` instance bound to its own
``CollectorRegistry`` so that tests (and several daemons in one test process)
never share counters. Label values come only from configuration (device and
sink names), the fixed channel ids and flag names, and the fixed rejection
reasons: the label set is bounded by construction.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

from servomexd import __version__
from servomexd.model import STATUS_FLAGS, Frame

REJECTION_REASONS: tuple[str, ...] = (
    "checksum",
    "parse",
    "noise",
    "overlong",
    "timeout",
    "modbus_exception",
)


class Metrics:
    """The daemon's metric objects, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Info("servomexd_build", "servomexd build information.", registry=r)
        self.build_info.info({"version": __version__})

        # --- links -------------------------------------------------------------------
        self.link_up = Gauge(
            "servomexd_link_up", "1 while the serial link to the device is up.", ["device"],
            registry=r,
        )
        self.reconnects = Counter(
            "servomexd_reconnects",
            "Times the device link was re-established after a failure.",
            ["device"],
            registry=r,
        )
        self.frames = Counter(
            "servomexd_frames",
            "Valid frames (continuous) or poll sweeps (Modbus) decoded.",
            ["device"],
            registry=r,
        )
        self.frames_rejected = Counter(
            "servomexd_frames_rejected",
            "Lines or polls rejected, by reason.",
            ["device", "reason"],
            registry=r,
        )
        self.samples_received = Counter(
            "servomexd_samples_received",
            "Samples (channel readings and error rows) produced by acquisition.",
            ["device"],
            registry=r,
        )
        self.last_sample_timestamp = Gauge(
            "servomexd_last_sample_timestamp_seconds",
            "Wall-clock time of the newest decoded frame.",
            ["device"],
            registry=r,
        )
        self.reading = Gauge(
            "servomexd_reading",
            "Latest value of each channel, in the channel's unit.",
            ["device", "channel", "name", "unit"],
            registry=r,
        )
        self.channel_status = Gauge(
            "servomexd_channel_status",
            "Latest status flag of each channel (1 = raised).",
            ["device", "channel", "flag"],
            registry=r,
        )

        # --- sink ----------------------------------------------------------------------
        self.samples_written = Counter(
            "servomexd_samples_written",
            "Samples committed to the sink.",
            ["sink"],
            registry=r,
        )
        self.sink_up = Gauge(
            "servomexd_sink_up", "1 while the sink accepts writes.", ["sink"], registry=r
        )
        self.sink_write_seconds = Histogram(
            "servomexd_sink_write_seconds",
            "Time to commit one batch to the sink.",
            ["sink"],
            buckets=(
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10
            ),
            registry=r,
        )
        self.sink_errors = Counter(
            "servomexd_sink_errors", "Failed sink writes.", ["sink"], registry=r
        )

        # --- spool ---------------------------------------------------------------------
        self.spool_pending_samples = Gauge(
            "servomexd_spool_pending_samples",
            "Samples held in the spool, not yet committed to the sink.",
            registry=r,
        )
        self.spool_bytes = Gauge(
            "servomexd_spool_bytes", "Size of the spool's pending payload.", registry=r
        )
        self.spool_dropped_samples = Counter(
            "servomexd_spool_dropped_samples",
            "Samples dropped (oldest first) because the spool reached max_bytes.",
            registry=r,
        )
        self.spool_oldest_age_seconds = Gauge(
            "servomexd_spool_oldest_age_seconds",
            "Age of the oldest sample waiting in the spool (0 when empty).",
            registry=r,
        )

    # --- helpers used by acquisition ---------------------------------------------------

    def register_device(self, device: str) -> None:
        """Create the per-device series at zero so dashboards and alerts see them at once."""
        self.link_up.labels(device).set(0)
        self.reconnects.labels(device)
        self.frames.labels(device)
        self.samples_received.labels(device)
        for reason in REJECTION_REASONS:
            self.frames_rejected.labels(device, reason)

    def register_sink(self, sink: str) -> None:
        self.samples_written.labels(sink)
        self.sink_errors.labels(sink)
        self.sink_up.labels(sink).set(0)

    def observe_frame(self, device: str, frame: Frame) -> None:
        """Count a decoded frame and publish its latest values and status flags."""
        self.frames.labels(device).inc()
        self.samples_received.labels(device).inc(len(frame.readings))
        self.last_sample_timestamp.labels(device).set(frame.received_at.timestamp())
        for reading in frame.readings:
            channel = reading.channel.value
            if reading.value is not None:
                self.reading.labels(
                    device, channel, reading.name or "", reading.unit_label
                ).set(reading.value)
            for flag, raised in zip(STATUS_FLAGS, reading.status.flags(), strict=True):
                self.channel_status.labels(device, channel, flag).set(1 if raised else 0)

    def observe_rejection(self, device: str, reason: str) -> None:
        self.frames_rejected.labels(device, reason).inc()
        self.samples_received.labels(device).inc()
