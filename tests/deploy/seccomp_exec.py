"""Exec a program under the system-call restrictions servomexd.service puts on the daemon.

    /usr/bin/python3 seccomp_exec.py SPEC.json -- PROGRAM [ARGS...]

SPEC: {"allow": [syscall names], "errno": 1, "families": [1, 2, 10], "mdwe": true}
reproduces, with the same libseccomp systemd uses, SystemCallFilter= (the expanded allow
list; everything else fails with SystemCallErrorNumber=), SystemCallArchitectures=native,
RestrictAddressFamilies= and MemoryDenyWriteExecute= (the rules systemd.exec(5) lists).
It runs under Debian's python3 because the libseccomp bindings are a Debian package
(python3-seccomp); the filters survive execve into the program under test. Before exec it
proves the filters bite, so a test through it cannot pass with a filter that is not there.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import socket
import sys
from typing import Any

import seccomp

SHM_EXEC = 0o100000
EXIT_FILTER_INEFFECTIVE = 70


def build_filters(spec: dict[str, Any]) -> list[seccomp.SyscallFilter]:
    # Restrictions that refine allowed calls go in their own filter (systemd does the
    # same): the kernel evaluates every loaded filter and the strictest answer wins.
    refine = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    if spec["mdwe"]:
        wx = mmap.PROT_WRITE | mmap.PROT_EXEC
        x = mmap.PROT_EXEC
        eperm = seccomp.ERRNO(errno.EPERM)
        refine.add_rule(eperm, "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, wx, wx))
        refine.add_rule(eperm, "mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, x, x))
        refine.add_rule(eperm, "pkey_mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, x, x))
        refine.add_rule(eperm, "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, SHM_EXEC, SHM_EXEC))
    families = set(spec["families"])
    for family in range(64):  # AF_MAX is 46 on Linux 6.x
        if family not in families:
            refine.add_rule(
                seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, family)
            )

    allow = seccomp.SyscallFilter(defaction=seccomp.ERRNO(int(spec["errno"])))
    for name in spec["allow"]:
        # a call this architecture or this libseccomp does not know is skipped
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            allow.add_rule(seccomp.ALLOW, name)
    # The allow list goes last: it does not permit seccomp(2) itself.
    return [refine, allow]


def filters_bite() -> bool:
    """Each restriction refuses what it must."""
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        return False
    except PermissionError:
        pass
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()
        return False
    except OSError as exc:
        if exc.errno != errno.EAFNOSUPPORT:
            return False
    try:
        os.sched_setaffinity(0, os.sched_getaffinity(0))  # @resources, removed from the list
        return False
    except PermissionError:
        pass
    return True


def main() -> int:
    separator = sys.argv.index("--")
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    argv = sys.argv[separator + 1 :]
    for flt in build_filters(spec):
        flt.load()
    if not filters_bite():
        print("seccomp_exec: the filters are not effective", file=sys.stderr)
        return EXIT_FILTER_INEFFECTIVE
    sys.stdout.flush()
    os.execv(argv[0], argv)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
