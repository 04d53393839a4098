"""Start-up failures that are configuration problems, reworded as such (exit 78).

A metrics port already taken or a spool path the service cannot write never heals by
itself: exit 1 would make systemd restart the daemon ten times for nothing. These turn
the raw error into a ``ServomexConfigError`` that says what to change.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from servomexd.errors import ServomexConfigError, ServomexError

__all__ = ["metrics_listen_error", "spool_open_error", "unwritable_reason"]

_TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO}


def metrics_listen_error(listen: str, error: OSError) -> ServomexError:
    """``[metrics] listen`` cannot be bound: a config error when rebinding cannot help."""
    reason = error.strerror or str(error)
    if error.errno == errno.EADDRINUSE:
        fix = (
            "another process listens there (ss -ltnp shows which): stop it or set "
            "[metrics] listen to a free port"
        )
    elif error.errno == errno.EADDRNOTAVAIL:
        fix = "the address is not one of this host's: fix [metrics] listen"
    elif error.errno in (errno.EACCES, errno.EPERM):
        fix = "ports below 1024 need privileges the service does not have: use 9723"
    else:
        return ServomexError(
            f"cannot listen for metrics on {listen}: {reason}",
            context={"key": "metrics.listen"},
        )
    return ServomexConfigError(
        f"cannot listen for metrics on {listen}: {reason}; {fix}",
        context={"key": "metrics.listen"},
    )


def unwritable_reason(path: Path) -> str | None:
    """Why the service cannot create or write files in the directory ``path`` (None when
    it can)."""
    if path.exists():
        if not path.is_dir():
            return f"{path} is not a directory"
        if os.access(path, os.W_OK | os.X_OK):
            return None
        return f"{path} is not writable by this user (uid {os.geteuid()})"
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable by this user (uid {os.geteuid()})"
    return None


def spool_open_error(path: Path, error: ServomexError) -> ServomexError:
    """The spool cannot be opened: a config error when the path is the reason."""
    reason = unwritable_reason(path)
    if reason is None:
        cause = error.__cause__
        if isinstance(cause, OSError) and cause.errno in _TRANSIENT_ERRNOS:
            return error  # a full disk may clear: let systemd retry
        # Otherwise (missing parent on a read-only tree, permission, another instance's
        # lock): nothing a restart can fix.
        reason = (cause.strerror or str(cause)) if isinstance(cause, OSError) else str(
            cause or error.message
        )
    return ServomexConfigError(
        f"cannot open the spool {path}: {reason}; set [spool] path under "
        "/var/lib/servomexd, or fix the directory's owner (ReadWritePaths= for a path "
        "outside it under systemd)",
        context={"key": "spool.path"},
    )
