"""RejectionLog: first rejection at warning, a summary per interval, one line when clean."""

from __future__ import annotations

import structlog
from structlog.testing import capture_logs

from servomexd.acquisition.rejections import RejectionLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_first_summary_clean() -> None:
    clock = Clock()
    with capture_logs() as logs:
        report = RejectionLog(structlog.get_logger().bind(device="a"), clock, interval=60.0)
        report.frame()  # clean so far: nothing to say
        assert report.rejected("noise", "not a frame")
        for _ in range(10):  # the same minute: counted, not logged
            clock.now += 1
            assert not report.rejected("checksum", "bad checksum")
            report.frame()
        clock.now += 50  # 60 s after the first
        assert report.rejected("noise", "not a frame")
        for _ in range(3):
            report.frame()
        clock.now += 61
        report.frame()
    events = [(e["event"], e["log_level"]) for e in logs]
    assert events == [
        ("device.frame_rejected", "warning"),
        ("device.frames_rejected_summary", "warning"),
        ("device.rejections_stopped", "info"),
    ]
    first, summary, clean = logs
    assert first["reason"] == "noise" and "baudrate, parity" in first["hint"]
    assert summary["rejected"] == "checksum:10,noise:2"
    assert summary["frames_ok"] == 10 and summary["rejected_share"] == "55%"
    assert "cabling" in summary["hint"]
    assert clean["rejected"] == "checksum:10,noise:2" and clean["clean_for_s"] == 61.0


def test_after_clean_the_next_rejection_is_a_first_again() -> None:
    clock = Clock()
    with capture_logs() as logs:
        report = RejectionLog(structlog.get_logger(), clock, interval=5.0)
        report.rejected("checksum", "x")
        clock.now += 6
        report.frame()
        report.rejected("checksum", "x")
    assert [e["event"] for e in logs] == [
        "device.frame_rejected", "device.rejections_stopped", "device.frame_rejected"
    ]
