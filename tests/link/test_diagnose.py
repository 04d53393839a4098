"""servomexd.link.diagnose against real paths, real ptys and a real second process."""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from servomexd.link.diagnose import diagnose, holders, probe_open
from servomexd.link.endpoint import is_network_port


def test_missing_path(tmp_path: Path) -> None:
    found = diagnose(str(tmp_path / "ttyUSB7"), FileNotFoundError(errno.ENOENT, "x"))
    assert found.kind == "missing"
    assert found.text.startswith("missing: no such file")
    assert str(tmp_path) not in found.text  # the log line names the port once, as target


def test_dangling_symlink_names_its_target(tmp_path: Path) -> None:
    link = tmp_path / "by-id"
    link.symlink_to("/dev/ttyUSB-unplugged")
    found = diagnose(str(link))
    assert found.text.startswith("missing: the link points to /dev/ttyUSB-unplugged")


@pytest.mark.parametrize(("make", "kind"), [("file", "a regular file"), ("dir", "a directory")])
def test_not_a_serial_device(tmp_path: Path, make: str, kind: str) -> None:
    path = tmp_path / "x"
    if make == "file":
        path.write_text("")
    else:
        path.mkdir()
    found = diagnose(str(path), OSError(errno.ENOTTY, "Inappropriate ioctl for device"))
    assert found.kind == "not_a_tty"
    assert found.text == f"not a tty: it is {kind}, not a serial device"


def test_char_device_that_is_not_a_tty() -> None:
    assert probe_open("/dev/null") is not None
    found = diagnose("/dev/null", probe_open("/dev/null"))
    assert found.text == "not a tty: not a serial device"


def test_permission_names_the_group_to_join(pty_path: str) -> None:
    stranger = next(g for g in grp.getgrall()
                    if g.gr_gid not in os.getgroups() and g.gr_gid != os.getegid())  # fmt: skip
    os.chown(pty_path, 65534, stranger.gr_gid)
    os.chmod(pty_path, 0o660)
    found = diagnose(pty_path, PermissionError(errno.EACCES, "Permission denied"))
    assert found.kind == "permission"
    assert f":{stranger.gr_name} crw-rw----;" in found.text
    name = stranger.gr_name
    assert f"is not in group {name}: join it (usermod -aG {name}" in found.text


def test_busy_names_the_holder(pty_path: str) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         f"fd = os.open({pty_path!r}, os.O_RDWR | os.O_NOCTTY)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(30)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        problem = probe_open(pty_path)
        assert isinstance(problem, OSError) and problem.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
        assert f"pid {holder.pid} (" in " ".join(holders(pty_path))
        found = diagnose(pty_path, problem)
        assert found.kind == "busy" and f"pid {holder.pid} (python" in found.text
    finally:
        holder.kill()
        holder.wait()


def test_probe_open_of_a_free_pty_succeeds(pty_path: str) -> None:
    assert probe_open(pty_path) is None
    fd = os.open(pty_path, os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the probe left no lock behind
    finally:
        os.close(fd)


def test_urls_are_not_paths() -> None:
    assert is_network_port("socket://10.0.0.5:4001") and is_network_port("rfc2217://host:2217")
    assert not is_network_port("/dev/serial/by-id/usb-FTDI-if00-port0")
