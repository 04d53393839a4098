"""The Metrics object: exact names, pre-created series, relabelling, bounded labels."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from servomexd import __version__
from servomexd.metrics import REJECTION_REASONS, Metrics
from servomexd.model import (
    STATUS_FLAGS,
    AnalyserStatus,
    ChannelId,
    ChannelStatus,
    Frame,
    ProtocolKind,
    Reading,
    Unit,
)


def reading(
    channel: ChannelId,
    name: str | None,
    value: float | None,
    unit: Unit = Unit.PERCENT,
    status: ChannelStatus | None = None,
    unit_text: str = "",
) -> Reading:
    return Reading(
        channel, channel.kind, name, value, unit, status or ChannelStatus(),
        ProtocolKind.CONTINUOUS, datetime.now(UTC), time.monotonic_ns(), b"", unit_text,
    )


def frame(*readings: Reading, at: datetime | None = None) -> Frame:
    when = at or datetime.now(UTC)
    return Frame(readings, AnalyserStatus(), ProtocolKind.CONTINUOUS, when, time.monotonic_ns())


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(m.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(m: Metrics, metric: str, /, **labels: str) -> float | None:
    return samples(m).get((metric, tuple(sorted(labels.items()))))


def test_required_names_are_exposed() -> None:
    m = Metrics(CollectorRegistry())
    m.register_device("ana1")
    m.register_sink("db")
    m.sink_write_seconds.labels("db").observe(0.01)
    m.observe_frame("ana1", frame(reading(ChannelId.I1, "O2", 20.9)))
    names = {name for name, _ in samples(m)}
    required = {
        "servomexd_build_info", "servomexd_link_up", "servomexd_reconnects_total",
        "servomexd_frames_total", "servomexd_frames_rejected_total",
        "servomexd_samples_received_total", "servomexd_samples_written_total",
        "servomexd_last_sample_timestamp_seconds", "servomexd_reading",
        "servomexd_channel_status", "servomexd_sink_up", "servomexd_sink_write_seconds_bucket",
        "servomexd_sink_errors_total", "servomexd_spool_pending_samples", "servomexd_spool_bytes",
        "servomexd_spool_dropped_samples_total", "servomexd_spool_oldest_age_seconds",
        "process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
    }
    assert required <= names, required - names
    assert value(m, "servomexd_build_info", version=__version__) == 1


def test_register_device_creates_zero_series() -> None:
    m = Metrics(CollectorRegistry())
    m.register_device("ana1")
    assert value(m, "servomexd_link_up", device="ana1") == 0
    assert value(m, "servomexd_frames_total", device="ana1") == 0
    assert value(m, "servomexd_reconnects_total", device="ana1") == 0
    for reason in REJECTION_REASONS:
        assert value(m, "servomexd_frames_rejected_total", device="ana1", reason=reason) == 0


def test_observe_frame_counts_and_publishes() -> None:
    m = Metrics(CollectorRegistry())
    at = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    alarm = ChannelStatus(fault=False, maintenance=True, alarms=(False, True, False, False))
    m.observe_frame("ana1", frame(
        reading(ChannelId.I1, "O2", 20.9, status=alarm),
        reading(ChannelId.I2, "CO2", 400.0, Unit.VPM),
        at=at,
    ))
    m.observe_frame("ana1", frame(reading(ChannelId.I1, "O2", 20.5, status=alarm),
                                  reading(ChannelId.I2, "CO2", 401.0, Unit.VPM)))
    assert value(m, "servomexd_frames_total", device="ana1") == 2
    assert value(m, "servomexd_samples_received_total", device="ana1") == 4
    assert value(m, "servomexd_reading", device="ana1", channel="I1", name="O2", unit="%") == 20.5
    assert value(m, "servomexd_reading", device="ana1", channel="I2", name="CO2",
                 unit="vpm") == 401.0
    flags = {flag: value(m, "servomexd_channel_status", device="ana1", channel="I1", flag=flag)
             for flag in STATUS_FLAGS}
    assert flags == {"fault": 0, "maintenance": 1, "calibrating": 0, "warming_up": 0,
                     "alarm1": 0, "alarm2": 1, "alarm3": 0, "alarm4": 0}
    newest = value(m, "servomexd_last_sample_timestamp_seconds", device="ana1")
    assert newest is not None and newest > at.timestamp()


def test_relabelled_channel_leaves_no_stale_series() -> None:
    m = Metrics(CollectorRegistry())
    m.observe_frame("ana1", frame(reading(ChannelId.I1, "O2", 20.9)))
    m.observe_frame("ana2", frame(reading(ChannelId.I1, "O2", 5.0)))
    # Somebody renamed the channel and changed its unit on the front panel.
    m.observe_frame("ana1", frame(reading(ChannelId.I1, "O2 low", 2090.0, Unit.VPM)))
    series = [(n, dict(labels)) for (n, labels) in samples(m) if n == "servomexd_reading"]
    assert sorted(series, key=lambda s: s[1]["device"]) == [
        ("servomexd_reading", {"device": "ana1", "channel": "I1", "name": "O2 low",
                               "unit": "vpm"}),
        ("servomexd_reading", {"device": "ana2", "channel": "I1", "name": "O2", "unit": "%"}),
    ]


def test_unknown_unit_keeps_the_analyser_text() -> None:
    m = Metrics(CollectorRegistry())
    m.observe_frame("ana1", frame(reading(ChannelId.E1, "Flow", 1.5, Unit.UNKNOWN,
                                          unit_text="l/min")))
    assert value(m, "servomexd_reading", device="ana1", channel="E1", name="Flow",
                 unit="l/min") == 1.5


def test_missing_value_is_nan_not_stale() -> None:
    m = Metrics(CollectorRegistry())
    m.observe_frame("ana1", frame(reading(ChannelId.I1, "O2", 20.9)))
    m.observe_frame("ana1", frame(reading(ChannelId.I1, "O2", None)))
    got = value(m, "servomexd_reading", device="ana1", channel="I1", name="O2", unit="%")
    assert got is not None and math.isnan(got)


def test_rejection_counts_reason_and_error_sample() -> None:
    m = Metrics(CollectorRegistry())
    m.register_device("ana1")
    m.observe_rejection("ana1", "checksum")
    m.observe_rejection("ana1", "checksum")
    m.observe_rejection("ana1", "noise")
    assert value(m, "servomexd_frames_rejected_total", device="ana1", reason="checksum") == 2
    assert value(m, "servomexd_frames_rejected_total", device="ana1", reason="noise") == 1
    assert value(m, "servomexd_samples_received_total", device="ana1") == 3
    assert value(m, "servomexd_frames_total", device="ana1") == 0


def test_two_instances_do_not_share_state() -> None:
    a, b = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    a.register_device("x")
    a.frames.labels("x").inc()
    b.register_device("x")
    assert value(b, "servomexd_frames_total", device="x") == 0


def test_unknown_rejection_reason_is_counted_as_other() -> None:
    m = Metrics(CollectorRegistry())
    m.register_device("ana1")
    m.observe_rejection("ana1", "connection")
    m.observe_rejection("ana1", "something-made-up")
    assert value(m, "servomexd_frames_rejected_total", device="ana1", reason="other") == 2
    reasons = {dict(labels)["reason"] for name, labels in samples(m)
               if name == "servomexd_frames_rejected_total"}
    assert reasons == set(REJECTION_REASONS)


def test_status_flags_follow_every_change() -> None:
    m = Metrics(CollectorRegistry())
    fault = ChannelStatus(fault=True)
    for status, expected in ((fault, 1), (fault, 1), (ChannelStatus(), 0), (fault, 1)):
        m.observe_frame("ana1", frame(reading(ChannelId.I1, "O2", 20.9, status=status)))
        assert value(m, "servomexd_channel_status", device="ana1", channel="I1",
                     flag="fault") == expected


def test_no_created_series() -> None:
    m = Metrics(CollectorRegistry())
    m.register_device("ana1")
    assert not [name for name, _ in samples(m) if name.endswith("_created")]


def test_postgres_partition_figures_are_exported_per_table() -> None:
    from servomexd.sinks.pg_stats import table_stats

    stats = table_stats("fleet_test.metrics_samples")
    stats.default_rows = 7
    stats.partitions_dropped += 2
    stats.rows_to_default += 5
    m = Metrics(CollectorRegistry())
    table = "fleet_test.metrics_samples"
    assert value(m, "servomexd_pg_default_partition_rows", table=table) == 7
    dropped = value(m, "servomexd_pg_partitions_dropped_total", table=table)
    assert dropped == stats.partitions_dropped
    assert value(m, "servomexd_pg_rows_to_default_total", table=table) == stats.rows_to_default
    assert value(m, "servomexd_pg_maintenance_failures_total", table=table) == 0
