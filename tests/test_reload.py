"""servomexd/reload.py: what a reload changes, device by device and section by section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from servomexd.config import Settings
from servomexd.reload import plan_reload


def settings(devices: list[dict[str, Any]], **sections: Any) -> Settings:
    return Settings(devices=devices, **sections)


A = {"name": "a", "port": "/dev/ttyUSB0"}
B = {"name": "b", "port": "/dev/ttyUSB1"}


def test_devices_by_name() -> None:
    old = settings([A, B])
    new = settings([A | {"silence_timeout": 7.0}, {"name": "c", "port": "/dev/ttyUSB2"}])
    plan = plan_reload(old, new)
    assert (plan.added, plan.removed, plan.changed) == (("c",), ("b",), ("a",))
    assert not (plan.sink or plan.metrics or plan.log or plan.spool)
    assert plan.describe() == "devices added c; devices removed b; devices restarted a"


def test_sections() -> None:
    old = settings([A])
    new = settings(
        [A],
        sink={"type": "sqlite", "path": Path("/tmp/other.sqlite")},
        metrics={"listen": "127.0.0.1:9999"},
        log={"level": "debug"},
        spool={"path": Path("/tmp/spool2")},
    )
    plan = plan_reload(old, new)
    assert (plan.sink, plan.metrics, plan.log, plan.spool) == (True, True, True, True)
    assert not (plan.added or plan.removed or plan.changed)
    assert plan.describe() == (
        "sink replaced; metrics listener moved; logging changed; [spool] changes need a restart"
    )


def test_nothing_changed() -> None:
    plan = plan_reload(settings([A, B]), settings([A, B]))
    assert plan.empty and plan.describe() == "no change"
