"""What a configuration reload (SIGHUP, ``systemctl reload``) changes: a pure diff of
the running settings against the new ones, so the daemon applies only that and the
status line can say what changed.

Devices are matched by name: one whose settings are unchanged keeps running untouched
(no frame missed); a changed one restarts alone. The sink is swapped only when
``[sink]`` changed; metrics and logging change in place. ``[spool]`` cannot change
under a running daemon (the file holds the data in flight): it needs a restart.
"""

from __future__ import annotations

from dataclasses import dataclass

from servomexd.config import Settings


@dataclass(frozen=True)
class ReloadPlan:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    sink: bool
    metrics: bool
    log: bool
    spool: bool
    """``[spool]`` changed: not applied until a restart."""

    @property
    def empty(self) -> bool:
        return not (
            self.added or self.removed or self.changed or self.sink or self.metrics or self.log
            or self.spool
        )

    def describe(self) -> str:
        """One line for STATUS= and the log: what the reload changed."""
        parts = []
        if self.added:
            parts.append(f"devices added {','.join(self.added)}")
        if self.removed:
            parts.append(f"devices removed {','.join(self.removed)}")
        if self.changed:
            parts.append(f"devices restarted {','.join(self.changed)}")
        if self.sink:
            parts.append("sink replaced")
        if self.metrics:
            parts.append("metrics listener moved")
        if self.log:
            parts.append("logging changed")
        if self.spool:
            parts.append("[spool] changes need a restart")
        return "; ".join(parts) if parts else "no change"


def plan_reload(old: Settings, new: Settings) -> ReloadPlan:
    before = {device.name: device for device in old.devices}
    after = {device.name: device for device in new.devices}
    return ReloadPlan(
        added=tuple(name for name in after if name not in before),
        removed=tuple(name for name in before if name not in after),
        changed=tuple(
            name for name in after if name in before and after[name] != before[name]
        ),
        sink=new.sink != old.sink,
        metrics=new.metrics != old.metrics,
        log=new.log != old.log,
        spool=new.spool != old.spool,
    )
