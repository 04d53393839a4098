"""Start-up failures reworded as configuration errors (exit 78) when they are one."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from servomexd.errors import ServomexConfigError, ServomexError
from servomexd.spool import ServomexSpoolError
from servomexd.startup_checks import metrics_listen_error, spool_open_error, unwritable_reason


def test_port_in_use_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with socket.socket() as second:
            try:
                second.bind(("127.0.0.1", port))
            except OSError as exc:
                error = metrics_listen_error(f"127.0.0.1:{port}", exc)
    assert isinstance(error, ServomexConfigError)
    assert "Address already in use; another process listens there" in error.message
    assert "[metrics] listen" in error.message


def test_other_bind_errors_stay_runtime_errors() -> None:
    error = metrics_listen_error("127.0.0.1:1", OSError(errno.ENOMEM, "Cannot allocate memory"))
    assert type(error) is ServomexError


def test_unwritable_reason(tmp_path: Path) -> None:
    assert unwritable_reason(tmp_path / "new" / "spool") is None
    (tmp_path / "file").write_text("")
    assert unwritable_reason(tmp_path / "file") == f"{tmp_path / 'file'} is not a directory"
    nested = unwritable_reason(tmp_path / "file" / "spool")
    assert nested == f"{tmp_path / 'file'} is not a directory"


def test_spool_error_with_a_full_disk_is_left_to_systemd(tmp_path: Path) -> None:
    error = ServomexSpoolError("cannot open the spool")
    error.__cause__ = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert spool_open_error(tmp_path, error) is error
    error.__cause__ = OSError(errno.EROFS, os.strerror(errno.EROFS))
    converted = spool_open_error(tmp_path, error)
    assert isinstance(converted, ServomexConfigError)
    assert "Read-only file system" in converted.message
