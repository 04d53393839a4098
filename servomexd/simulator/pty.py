"""A pseudo-terminal standing in for a USB-serial adapter, its device symlinked at a path.

The daemon opens the symlink like ``/dev/serial/by-id/...``; the simulator writes to
the master side. ``unplug()`` behaves like pulling the adapter: the master closes (the
reader's fd hangs up: EIO / readable-with-no-data) and the path vanishes.
``replug()`` makes a *new* pty appear at the same path, as udev would.

The slave side is put in raw mode and then closed by us: the settings persist while
the master is open, and not holding the slave means a closed master is the only
thing keeping a reader's fd alive, exactly like a real adapter.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tty
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["PtyDevice"]


class PtyDevice:
    """One simulated serial adapter. Not thread-safe; use it from one thread or loop."""

    def __init__(self, link: str | os.PathLike[str]) -> None:
        self._link = Path(link)
        self._master: int | None = None
        self._slave_name: str | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def open(self) -> Self:
        """Create the pty and (atomically) point the symlink at its slave device."""
        if self._master is not None:
            return self
        if self._link.exists() and not self._link.is_symlink():
            raise FileExistsError(
                errno.EEXIST, "refusing to replace a file that is not a symlink", str(self._link)
            )
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            slave_name = os.ttyname(slave)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self._master = master
        self._slave_name = slave_name
        # Create under a temporary name and rename over the link: a reader polling for
        # the path never sees a half-made or stale link, and a stale one is replaced.
        temporary = self._link.with_name(f".{self._link.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        os.symlink(slave_name, temporary)
        os.replace(temporary, self._link)
        return self

    def unplug(self) -> None:
        """Pull the adapter: close the master and remove the link (if still ours)."""
        master, self._master = self._master, None
        if master is not None:
            with contextlib.suppress(OSError):
                os.close(master)
        self._remove_link()
        self._slave_name = None

    def replug(self) -> Self:
        """Plug a new adapter in at the same path (a fresh pty, a new device number)."""
        self.unplug()
        return self.open()

    def close(self) -> None:
        """Remove everything; idempotent."""
        self.unplug()

    def _remove_link(self) -> None:
        slave_name = self._slave_name
        if slave_name is None:
            return
        with contextlib.suppress(OSError):
            if os.readlink(self._link) == slave_name:
                self._link.unlink()

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- state and I/O ---------------------------------------------------------------------

    @property
    def link(self) -> Path:
        return self._link

    @property
    def plugged(self) -> bool:
        return self._master is not None

    @property
    def slave_name(self) -> str | None:
        """The real device (``/dev/pts/N``) while plugged."""
        return self._slave_name

    @property
    def master_fd(self) -> int:
        """The master side (non-blocking), for event-loop readers."""
        if self._master is None:
            raise OSError(errno.ENODEV, "simulated adapter is unplugged", str(self._link))
        return self._master

    def write(self, data: bytes) -> int:
        """Send ``data`` towards the reader; returns how much the pty accepted.

        Like a UART with nobody listening, a full buffer drops data rather than block:
        0 (or a short count) means the rest was lost.
        """
        master = self.master_fd
        try:
            return os.write(master, data)
        except BlockingIOError:
            return 0

    def read(self, size: int = 4096) -> bytes:
        """Bytes the reader wrote (non-blocking): ``b""`` when there are none, or when
        no reader has the device open (the master then reports EIO)."""
        master = self.master_fd
        try:
            return os.read(master, size)
        except BlockingIOError:
            return b""
        except OSError as error:
            if error.errno == errno.EIO:
                return b""
            raise
