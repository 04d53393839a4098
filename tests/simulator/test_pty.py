"""PtyDevice: the simulated USB-serial adapter."""

from __future__ import annotations

import os
import termios
from pathlib import Path

import pytest

from servomexd.simulator.pty import PtyDevice


def test_open_links_a_raw_pty_and_close_removes_it(tmp_path: Path) -> None:
    link = tmp_path / "ttyUSB-sim"
    device = PtyDevice(link).open()
    try:
        assert device.plugged and link.is_symlink()
        assert os.readlink(link) == device.slave_name
        fd = os.open(link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            lflag = termios.tcgetattr(fd)[3]
            assert not lflag & (termios.ICANON | termios.ECHO)  # raw: no line editing, no echo
            assert device.write(b"abc\n") == 4
            assert os.read(fd, 100) == b"abc\n"
            os.write(fd, b"reply")
            assert device.read() == b"reply"
            assert device.read() == b""  # nothing pending: no block, no error
        finally:
            os.close(fd)
        assert device.read() == b""  # no reader at all (EIO on the master): still b""
    finally:
        device.close()
    assert not link.exists() and not link.is_symlink()
    device.close()  # idempotent


def test_unplug_hangs_up_the_reader_and_replug_makes_a_new_device(tmp_path: Path) -> None:
    link = tmp_path / "tty"
    with PtyDevice(link) as device:
        fd = os.open(link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            device.unplug()
            assert not device.plugged and not link.exists()
            with pytest.raises(OSError):
                device.write(b"x")
            # The reader's fd is hung up: a read reports EIO or end of file.
            try:
                assert os.read(fd, 10) == b""
            except OSError as error:
                assert error.errno == 5
        finally:
            os.close(fd)
        device.replug()
        assert device.plugged and os.readlink(link) == device.slave_name
    assert not link.exists()


def test_a_stale_link_is_replaced_but_a_file_is_not(tmp_path: Path) -> None:
    link = tmp_path / "tty"
    os.symlink("/dev/pts/gone", link)
    with PtyDevice(link) as device:
        assert os.readlink(link) == device.slave_name
    regular = tmp_path / "file"
    regular.write_text("keep me")
    with pytest.raises(FileExistsError):
        PtyDevice(regular).open()
    assert regular.read_text() == "keep me"


def test_close_leaves_a_link_someone_else_replaced(tmp_path: Path) -> None:
    link = tmp_path / "tty"
    device = PtyDevice(link).open()
    os.unlink(link)
    os.symlink("/dev/null", link)
    device.close()
    assert os.readlink(link) == "/dev/null"


def test_writes_never_block_when_nobody_reads(tmp_path: Path) -> None:
    with PtyDevice(tmp_path / "tty") as device:
        total = 0
        for _ in range(1000):  # ~200 KiB, far beyond the pty buffer
            total += device.write(b"y" * 200)
        assert 0 < total < 200 * 1000
