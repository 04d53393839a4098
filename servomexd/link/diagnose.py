"""Why a serial port cannot be opened, in words an operator can act on.

pyserial reports a failed open as ``[Errno 13] could not open port ...`` at best, and
pymodbus's ``connect()`` only returns False: the OS cause is lost. This module names it
from the errno when there is one, else by looking at the path itself (``diagnose``), and
``probe_open`` re-opens the port the way a driver would to recover the errno that
pymodbus dropped. Only ``os`` calls: check-config uses it without loading a driver.

Causes, each with the fix:

* ``missing``: the path does not exist (or a symlink points nowhere);
* ``permission denied``: names the device's group and whether the user is in it;
* ``busy``: another process holds the port, with its pid and name when /proc shows it;
* ``not a tty``: a regular file, a directory or another kind of device.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Diagnosis", "diagnose", "holders", "probe_open"]

_BUSY = {errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK}
_DENIED = {errno.EACCES, errno.EPERM}
_GONE = {errno.ENXIO, errno.ENODEV, errno.EIO}


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """``kind`` is a short label (missing, permission, busy, not_a_tty, gone, other);
    ``text`` does not repeat the port (the log line names it once, as ``target``)."""

    kind: str
    text: str

    def __str__(self) -> str:
        return self.text


def _errno_of(error: BaseException | None) -> int | None:
    seen = 0
    while error is not None and seen < 5:
        code = getattr(error, "errno", None)
        if isinstance(code, int):
            return code
        for arg in getattr(error, "args", ()):
            if isinstance(arg, int):
                return arg
            if isinstance(arg, BaseException):
                nested = _errno_of(arg)
                if nested is not None:
                    return nested
        if "Inappropriate ioctl" in str(error):
            return errno.ENOTTY
        error = error.__cause__ or error.__context__
        seen += 1
    return None


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def holders(port: str, proc: Path = Path("/proc")) -> list[str]:
    """``pid N (name)`` of each process with ``port`` open (those /proc lets us see)."""
    target = os.path.realpath(port)
    try:
        identity = _identity(os.stat(target))
    except OSError:
        return []
    found: list[str] = []
    with contextlib.suppress(OSError):
        for entry in proc.iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                fds = list((entry / "fd").iterdir())
            except OSError:
                continue
            for fd in fds:
                try:
                    # The name first (cheap), then the inode: another mount namespace
                    # (a container's devpts) can show the same name for another device.
                    if os.readlink(fd) == target and _identity(os.stat(fd)) == identity:
                        comm = (entry / "comm").read_text().strip()
                        found.append(f"pid {entry.name} ({comm})")
                        break
                except OSError:
                    continue
    return found


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_dev, st.st_ino, st.st_rdev)


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "a character device that is not a terminal"


def _missing(port: str) -> Diagnosis:
    if os.path.islink(port):
        target = os.readlink(port)
        return Diagnosis(
            "missing",
            f"missing: the link points to {target}, which does not exist "
            "(adapter unplugged?)",
        )
    return Diagnosis(
        "missing",
        "missing: no such file (adapter unplugged, or a wrong path: "
        "ls -l /dev/serial/by-id/)",
    )


def _permission(st: os.stat_result | None) -> Diagnosis:
    user = _user()
    if st is None:
        return Diagnosis("permission", f"permission denied: {user} may not open it")
    group = _group(st.st_gid)
    mode = stat.filemode(st.st_mode)
    member = st.st_gid in os.getgroups() or st.st_gid == os.getegid()
    if member:
        fix = (
            f"{user} is in group {group} already: the systemd unit's DeviceAllow= may not "
            "allow this device class (docs/operations.md section 3)"
        )
    else:
        fix = (
            f"{user} is not in group {group}: join it (usermod -aG {group} {user}, or "
            f"SupplementaryGroups={group} in the unit) and restart"
        )
    return Diagnosis(
        "permission",
        f"permission denied: the device is {_owner(st.st_uid)}:{group} {mode}; {fix}",
    )


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _busy(port: str) -> Diagnosis:
    who = holders(port)
    held = (
        f"held by {', '.join(who)}"
        if who
        else "held by another process (fuser -v on the port shows which)"
    )
    return Diagnosis(
        "busy",
        f"busy: {held}; stop it (ModemManager probes new adapters: "
        "systemctl disable --now ModemManager)",
    )


def diagnose(port: str, error: BaseException | None = None) -> Diagnosis:
    """Why ``port`` could not be opened: from ``error``'s errno, else from the path."""
    code = _errno_of(error)
    try:
        st: os.stat_result | None = os.stat(port)
    except FileNotFoundError:
        return _missing(port)
    except PermissionError:
        st = None
        code = code if code is not None else errno.EACCES
    except OSError:
        st = None
    if st is not None and not stat.S_ISCHR(st.st_mode):
        return Diagnosis(
            "not_a_tty", f"not a tty: it is {_kind_of(st.st_mode)}, not a serial device"
        )
    if code in _DENIED:
        return _permission(st)
    if code in _BUSY:
        return _busy(port)
    if code == errno.ENOTTY:
        return Diagnosis("not_a_tty", "not a tty: not a serial device")
    if code == errno.ENOENT:
        return _missing(port)
    if code in _GONE:
        return Diagnosis(
            "gone",
            "no device: the path exists but its adapter does not answer "
            f"({os.strerror(code)}); replug it",
        )
    if code is not None:
        return Diagnosis("other", f"{os.strerror(code)} (errno {code})")
    text = str(error).splitlines()[0] if error is not None and str(error) else "unknown cause"
    return Diagnosis("other", text)


def probe_open(port: str) -> OSError | None:
    """Open ``port`` as a driver would (read-write, exclusive lock): the OSError, or None.

    Recovers the errno a library swallowed. Non-blocking, no controlling terminal; the
    descriptor is closed at once. Blocking: run it in a thread from async code.
    """
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as error:
        return error
    try:
        if not os.isatty(fd):
            return OSError(errno.ENOTTY, os.strerror(errno.ENOTTY), port)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            return error
        return None
    finally:
        os.close(fd)
