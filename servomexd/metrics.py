"""Every Prometheus metric servomexd exports, defined in one place.

The metric objects live on a ``Metrics`` instance bound to its own
``CollectorRegistry`` so that tests (and several daemons in one test process)
never share counters. Label values come only from configuration (device and
sink names), the fixed channel ids and flag names, the fixed rejection
reasons, and the channel name/unit the analyser reports (at most one series
per device and channel: when the analyser relabels a channel, the old series
is removed). The label set is bounded by construction; docs/metrics.md lists
every metric.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    Metric,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from servomexd import __version__
from servomexd.errors import SINK_FAULT_REASONS
from servomexd.model import STATUS_FLAGS, Frame, Reading
from servomexd.sinks import pg_stats

REJECTION_REASONS: tuple[str, ...] = (
    "checksum",
    "parse",
    "noise",
    "overlong",
    "timeout",
    "modbus_exception",
    "other",
)
"""Every value of the ``reason`` label; any other error reason is counted as ``other`` so the
label set stays fixed and documented (docs/metrics.md)."""
_KNOWN_REASONS = frozenset(REJECTION_REASONS)


class Metrics:
    """The daemon's metric objects, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No ``*_created`` twin per counter and histogram: Prometheus ignores them by
        # default and they would be a sixth of the exposition. (A process-wide switch;
        # servomexd owns its process.)
        disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Info("servomexd_build", "servomexd build information.", registry=r)
        self.build_info.info({"version": __version__})

        # --- links -------------------------------------------------------------------
        self.link_up = Gauge(
            "servomexd_link_up",
            "1 while the link to the device is up and delivering frames, else 0.",
            ["device"],
            registry=r,
        )
        self.reconnects = Counter(
            "servomexd_reconnects",
            "Times the link to the device was re-established after a failure.",
            ["device"],
            registry=r,
        )
        self.frames = Counter(
            "servomexd_frames",
            "Valid frames (continuous) or complete poll sweeps (Modbus) decoded.",
            ["device"],
            registry=r,
        )
        self.frames_rejected = Counter(
            "servomexd_frames_rejected",
            "Lines or polls rejected, by reason (checksum, parse, noise, overlong, timeout, "
            "modbus_exception).",
            ["device", "reason"],
            registry=r,
        )
        self.samples_received = Counter(
            "servomexd_samples_received",
            "Samples produced by acquisition: one per channel reading, one per rejected frame.",
            ["device"],
            registry=r,
        )
        # servomexd_last_sample_timestamp_seconds, servomexd_reading and
        # servomexd_channel_status are built at scrape time from each device's latest
        # frame (``_LatestFrames``): per frame the daemon only stores a reference, instead
        # of 1 + 9 x channels locked gauge updates (issue 17: about 12 % of the main
        # thread at 32 analysers). A scrape every 15 s cannot see more anyway.
        self._latest = _LatestFrames()
        r.register(self._latest)
        self.event_loop_lag = Gauge(
            "servomexd_event_loop_lag_seconds",
            "How late the event loop ran a timer in the last measuring period (the worst "
            "of it): the daemon's own delay in reading ports and serving scrapes.",
            registry=r,
        )
        self.overload = Gauge(
            "servomexd_overload",
            "1 while the event loop lags more than the overload threshold and per-frame "
            "metrics detail is shed (samples are never shed), else 0.",
            registry=r,
        )

        # --- sink ----------------------------------------------------------------------
        self.samples_written = Counter(
            "servomexd_samples_written",
            "Samples committed to the sink (error rows included).",
            ["sink"],
            registry=r,
        )
        self.sink_up = Gauge(
            "servomexd_sink_up",
            "1 while the sink accepts writes, 0 during an outage.",
            ["sink"],
            registry=r,
        )
        self.sink_write_seconds = Histogram(
            "servomexd_sink_write_seconds",
            "Seconds to commit one batch to the sink, failed attempts included.",
            ["sink"],
            buckets=(
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10
            ),
            registry=r,
        )
        self.sink_fault = Gauge(
            "servomexd_sink_fault",
            "1 while the sink fails for a reason only an operator can fix (reason: "
            "authentication, authorization, missing_database, missing_schema, "
            "schema_mismatch, read_only_path, read_only_database, missing_driver, tls, "
            "rejects_every_row, other); 0 otherwise.",
            ["sink", "reason"],
            registry=r,
        )
        self.sink_errors = Counter(
            "servomexd_sink_errors",
            "Batch writes to the sink that failed (each is retried from the spool).",
            ["sink"],
            registry=r,
        )

        # --- spool ---------------------------------------------------------------------
        self.spool_pending_samples = Gauge(
            "servomexd_spool_pending_samples",
            "Samples held in the spool file (durable), not yet committed to the sink. "
            "Samples still in memory are servomexd_buffered_samples.",
            registry=r,
        )
        self.buffered_samples = Gauge(
            "servomexd_buffered_samples",
            "Samples held in memory, not yet in the spool file (normally under one "
            "flush_interval; grows while the spool cannot be written, e.g. its disk is full).",
            registry=r,
        )
        self.quarantined_samples = Counter(
            "servomexd_quarantined_samples",
            "Samples the sink refused alone, repeatedly, with a data error, moved to the "
            "spool's quarantine table (not delivered; see servomexd spool export --quarantine).",
            registry=r,
        )
        self.quarantine_pending_samples = Gauge(
            "servomexd_quarantine_pending_samples",
            "Samples in the spool's quarantine table, waiting for an operator "
            "(servomexd spool retry-quarantine or drop-quarantine).",
            registry=r,
        )
        self.spool_bytes = Gauge(
            "servomexd_spool_bytes", "Bytes of pending payload held in the spool.", registry=r
        )
        self.spool_dropped_samples = Counter(
            "servomexd_spool_dropped_samples",
            "Samples dropped (oldest first) because the spool reached its max_bytes limit.",
            registry=r,
        )
        self.spool_oldest_age_seconds = Gauge(
            "servomexd_spool_oldest_age_seconds",
            "Age in seconds of the oldest batch waiting in the spool (0 when empty).",
            registry=r,
        )

        PostgresPartitionCollector(registry=r)

        self.polls_missed = Counter(
            "servomexd_polls_missed",
            "Modbus poll slots skipped because the previous sweep overran (not made up).",
            ["device"],
            registry=r,
        )

        # Label lookups (``.labels(...)``) cost more than the updates themselves: the
        # per-device counter children are cached.
        self._devices: dict[str, _DeviceSeries] = {}
        self._cache_lock = threading.Lock()

    # --- helpers used by acquisition ---------------------------------------------------

    def register_device(self, device: str) -> None:
        """Create the per-device series at zero so dashboards and alerts see them at once."""
        self.link_up.labels(device).set(0)
        self.reconnects.labels(device)
        self.frames.labels(device)
        self.samples_received.labels(device)
        self.polls_missed.labels(device)
        for reason in REJECTION_REASONS:
            self.frames_rejected.labels(device, reason)

    def unregister_device(self, device: str) -> None:
        """Remove every series of ``device`` (a reload dropped it from the configuration)."""
        for metric in (
            self.link_up,
            self.reconnects,
            self.frames,
            self.samples_received,
            self.polls_missed,
        ):
            _remove_quietly(metric, device)
        for reason in REJECTION_REASONS:
            _remove_quietly(self.frames_rejected, device, reason)
        with self._cache_lock:
            self._devices.pop(device, None)
        # Its readings and flags are built at scrape time from the latest frame.
        self._latest.frames.pop(device, None)

    def register_sink(self, sink: str) -> None:
        """Create the per-sink series so a sink that never wrote still shows up."""
        self.samples_written.labels(sink)
        self.sink_errors.labels(sink)
        self.sink_up.labels(sink).set(0)
        for reason in SINK_FAULT_REASONS:
            self.sink_fault.labels(sink, reason).set(0)

    def observe_frame(self, device: str, frame: Frame) -> None:
        """Count a decoded frame; its values and flags are published at the next scrape."""
        series = self._devices.get(device) or self._device_series(device)
        series.frames.inc()
        series.samples_received.inc(len(frame.readings))
        self._latest.frames[device] = frame

    def shed_detail(self, shed: bool) -> None:
        """Overload: leave the per-channel gauges out of scrapes (or put them back)."""
        self._latest.shed = shed
        self.overload.set(1 if shed else 0)

    def observe_rejection(self, device: str, reason: str) -> None:
        """Count a rejected line or poll; it also becomes an error sample row."""
        if reason not in _KNOWN_REASONS:
            reason = "other"
        self.frames_rejected.labels(device, reason).inc()
        self.samples_received.labels(device).inc()

    def _device_series(self, device: str) -> _DeviceSeries:
        with self._cache_lock:
            series = _DeviceSeries(
                self.frames.labels(device), self.samples_received.labels(device)
            )
            self._devices[device] = series
        return series


class PostgresPartitionCollector:
    """Partition and retention figures of the Postgres sink's tables, read at scrape time.

    The sink publishes them in ``servomexd.sinks.pg_stats`` (it has no handle on this
    registry); one series per ``schema.table`` the process writes. The families are
    always described, with no series until a Postgres sink opens.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        registry.register(self)

    def describe(self) -> list[Metric]:
        return []  # no fixed series: the tables appear once the sink opens

    def collect(self) -> Iterator[Metric]:
        tables = pg_stats.snapshot()
        default = GaugeMetricFamily(
            "servomexd_pg_default_partition_rows",
            "Rows in the table's DEFAULT partition at the last maintenance (should be 0).",
            labels=["table"],
        )
        counters = {
            "partitions_created": CounterMetricFamily(
                "servomexd_pg_partitions_created",
                "Partitions this process created ahead of time.",
                labels=["table"],
            ),
            "partitions_dropped": CounterMetricFamily(
                "servomexd_pg_partitions_dropped",
                "Partitions this process dropped by retention (raw and rollup tables).",
                labels=["table"],
            ),
            "rows_dropped_estimate": CounterMetricFamily(
                "servomexd_pg_rows_dropped_estimate",
                "Planner row estimate of the partitions dropped by retention.",
                labels=["table"],
            ),
            "rows_to_default": CounterMetricFamily(
                "servomexd_pg_rows_to_default",
                "Rows written outside every partition's range (kept in DEFAULT).",
                labels=["table"],
            ),
            "maintenance_failures": CounterMetricFamily(
                "servomexd_pg_maintenance_failures",
                "Partition maintenance runs that failed (retried a minute later).",
                labels=["table"],
            ),
        }
        for table, stats in sorted(tables.items()):
            default.add_metric([table], stats.default_rows)
            for field, family in counters.items():
                family.add_metric([table], getattr(stats, field))
        yield default
        yield from counters.values()


class _DeviceSeries:
    __slots__ = ("frames", "samples_received")

    def __init__(self, frames: Counter, samples_received: Counter) -> None:
        self.frames = frames
        self.samples_received = samples_received


class _LatestFrames(Collector):
    """The per-channel gauges, read from each device's latest frame at scrape time.

    A channel keeps its last published value while later frames omit it; a relabelled
    channel (new name or unit on the front panel) is exported under its new labels only,
    so no stale series stays behind.
    """

    def __init__(self) -> None:
        self.frames: dict[str, Frame] = {}
        """device -> its newest frame; written on the event loop, read by the scrape."""
        self._channels: dict[str, dict[str, Reading]] = {}
        self._lock = threading.Lock()  # scrapes run in worker threads, maybe two at once
        self.shed = False
        """Overloaded: export only the data age, not every channel (``LoopLagMonitor``)."""

    def describe(self) -> list[Metric]:
        return []  # the names are fixed, but the families are built per scrape

    def collect(self) -> Iterator[Metric]:
        last = GaugeMetricFamily(
            "servomexd_last_sample_timestamp_seconds",
            "Wall-clock time (Unix seconds) the newest valid frame was received.",
            labels=["device"],
        )
        reading = GaugeMetricFamily(
            "servomexd_reading",
            "Latest value of each channel in the unit named by the unit label (NaN when the "
            "analyser sent no valid value).",
            labels=["device", "channel", "name", "unit"],
        )
        status = GaugeMetricFamily(
            "servomexd_channel_status",
            "Latest status flags of each channel (1 = raised, 0 = clear).",
            labels=["device", "channel", "flag"],
        )
        with self._lock:
            self._fill(last, reading, status)
        yield last
        yield reading
        yield status

    def _fill(
        self, last: GaugeMetricFamily, reading: GaugeMetricFamily, status: GaugeMetricFamily
    ) -> None:
        for device, frame in list(self.frames.items()):
            last.add_metric([device], frame.received_at.timestamp())
            if self.shed:
                continue
            channels = self._channels.setdefault(device, {})
            for r in frame.readings:
                channels[r.channel.value] = r
            for channel, r in channels.items():
                # NaN rather than the previous value: a stale number shown as current is
                # worse than a gap when the analyser reports no valid value.
                value = math.nan if r.value is None else r.value
                reading.add_metric([device, channel, r.name or "", r.unit_label], value)
                for flag, raised in zip(STATUS_FLAGS, r.status.flags(), strict=True):
                    status.add_metric([device, channel, flag], 1.0 if raised else 0.0)


def _remove_quietly(metric: Counter | Gauge, *labels: str) -> None:
    """``metric.remove`` that tolerates a child that was never created."""
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
