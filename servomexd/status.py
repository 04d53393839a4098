"""What the daemon reports about itself, from its components' health snapshots:
/readyz's verdict and details, and sd_notify's STATUS= line.

Pure functions of ``LinkHealth`` (one per device) and ``DeliveryHealth`` (None while
starting), so the rules read in one place and test without a running daemon.
"""

from __future__ import annotations

from collections.abc import Sequence

from servomexd.acquisition.supervisor import LinkHealth
from servomexd.delivery import DeliveryHealth


def readiness(
    links: Sequence[LinkHealth], delivery: DeliveryHealth | None, sink_type: str
) -> tuple[bool, dict[str, object]]:
    """Ready: every link up, the sink up or the spool accepting, and no sink fault that
    only an operator can fix (the spool would only fill until someone fixes it)."""
    problems: list[str] = []
    devices: dict[str, object] = {}
    for link in links:
        devices[link.name] = "up" if link.up else f"down: {link.error or 'unknown'}"
        if not link.up:
            problems.append(f"device {link.name} link down")
    sink: dict[str, object] = {"type": sink_type, "up": False}
    spool: dict[str, object] = {}
    if delivery is None:
        problems.append("starting")
    else:
        stats = delivery.spool
        sink = {"type": delivery.sink_type, "up": delivery.sink_up, "error": delivery.sink_error}
        fault = delivery.sink_fault
        if fault is not None:
            sink["fault"] = fault.reason
            sink["fix"] = fault.fix
            problems.append(
                f"sink needs an operator: {fault.reason}: {fault.fix or 'see the error'} "
                f"({fault.error})"
            )
        spool = {
            "accepting": delivery.spool_accepting,
            "pending_samples": stats.samples,
            "bytes": stats.bytes,
            "oldest_age_s": round(stats.oldest_age(), 1),
            "buffered_samples": delivery.buffered,
            "quarantined_samples": stats.quarantined,
        }
        if not delivery.sink_up and not delivery.spool_accepting:
            problems.append("sink down and spool not accepting")
    ready = not problems
    details: dict[str, object] = {
        "ready": ready,
        "problems": problems,
        "devices": devices,
        "sink": sink,
        "spool": spool,
    }
    return ready, details


def status_line(links: Sequence[LinkHealth], delivery: DeliveryHealth | None) -> str:
    if delivery is None:
        return "starting"
    up = sum(1 for link in links if link.up)
    sink = "up" if delivery.sink_up else "DOWN"
    if delivery.sink_fault is not None:
        sink = f"FAULT {delivery.sink_fault.reason}"
    return (
        f"devices up {up}/{len(links)}, samples written {delivery.samples_written}, "
        f"backlog {delivery.backlog}, sink {sink}"
    )


def stop_summary(links: Sequence[LinkHealth], delivery: DeliveryHealth | None) -> dict[str, int]:
    """The counts the ``daemon.stopped`` line reports: what came in, what was stored."""
    return {
        "samples_accepted": delivery.samples_accepted if delivery else 0,
        "samples_written": delivery.samples_written if delivery else 0,
        "left_in_spool": delivery.spool.samples if delivery else 0,
        "frames": sum(link.frames for link in links),
        "rejected": sum(link.rejections for link in links),
        "reconnects": sum(link.reconnects for link in links),
    }
