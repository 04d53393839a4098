"""A Debian 12 container booted with systemd 252 as PID 1, for the system suite.

``systemd-nspawn -b`` boots a cached minbase root file system (built once with mmdebstrap
and kept under /var/cache/servomexd-ci/, keyed by what goes into it) on a throwaway
overlay (``--volatile=overlay``), so every run starts from the same clean image. There is
no machined on the host: commands run inside through ``nsenter`` into the container's
PID 1, and the container lives in a cgroup of its own that is removed afterwards.

Facts behind the flags (found on a cgroup-v1-hybrid Debian 12 host without systemd):
- ``--keep-unit --register=no``: without them nspawn asks the host's (absent) systemd
  for a scope and fails with "Failed to open system bus".
- ``SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1``, ``CAP_BPF`` and the ``bpf`` system call: without
  all three the container's systemd cannot attach device programs, and DevicePolicy= /
  DeviceAllow= are silently not enforced.
- ``--private-network``: the container has only its own loopback, off the host's ports.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

CACHE = Path(os.environ.get("SERVOMEXD_CI_CACHE", "/var/cache/servomexd-ci"))
SUITE = "bookworm"
"""Debian 12: its systemd is 252, the version the unit files are written for."""
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "procps")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
EXTRAS = "postgres"
"""Package extras installed in the container: asyncpg for the credential test. pyarrow
(parquet) is left out: 40 MB to unpack per run for nothing this suite looks at."""


class ContainerError(RuntimeError):
    """The container could not be built, booted or driven."""


def _run(argv: Sequence[str], *, timeout: float, what: str) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise ContainerError(
            f"{what} failed ({proc.returncode}): {' '.join(argv)}\n{proc.stdout[-3000:]}"
            f"\n{proc.stderr[-3000:]}"
        )
    return str(proc.stdout)


# --- the root file system ------------------------------------------------------------------


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The Debian archive this machine's apt uses (the only one it may be able to reach)."""
    texts = []
    for path in [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            texts.append(path.read_text())
    for text in texts:
        # deb822 stanzas: URIs: ... with Suites: bookworm ...
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and SUITE in suites.group(1).split() and "security" not in uris[1]:
                return uris.group(1)
        # one-line format: deb [options] URI SUITE COMPONENTS
        for line in text.splitlines():
            match = re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line.strip())
            if match and match.group(2) == SUITE:
                return match.group(1)
    return DEFAULT_MIRROR


def rootfs(log: Path) -> Path:
    """The cached root file system, built with mmdebstrap on first use (about 30-130 s)."""
    mirror = debian_mirror()
    key = hashlib.sha256(f"minbase {SUITE} {mirror} {','.join(PACKAGES)}".encode()).hexdigest()
    target = CACHE / f"rootfs-{key[:16]}"
    if (target / "usr" / "lib" / "systemd" / "systemd").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    # Built beside the final name and renamed: an interrupted build is never mistaken
    # for a finished one, and two concurrent runs do not share a half-built tree.
    building = Path(tempfile.mkdtemp(prefix=f"{target.name}.building-", dir=CACHE))
    try:
        with log.open("ab") as out:
            proc = subprocess.run(
                ["mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                 SUITE, str(building), mirror],
                stdout=out, stderr=subprocess.STDOUT, timeout=600, check=False,
            )  # fmt: skip
        if proc.returncode != 0:
            raise ContainerError(
                f"mmdebstrap failed ({proc.returncode}); its output is in {log}:\n"
                + log.read_text(errors="replace")[-3000:]
            )
        try:
            building.rename(target)
        except OSError:
            if not (target / "usr" / "lib" / "systemd" / "systemd").exists():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


# --- the wheelhouse ------------------------------------------------------------------------


def _ignore_build_litter(_dir: str, names: list[str]) -> set[str]:
    litter = {".git", ".venv", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache",
              ".pytest_cache", "servomexd-demo"}  # fmt: skip
    return {n for n in names if n in litter or n.endswith(".egg-info")}


def copy_source(repo: Path, dest: Path) -> Path:
    """A copy of the source tree: setuptools writes build/ and .egg-info into what it builds."""
    shutil.copytree(repo, dest, ignore=_ignore_build_litter, symlinks=True)
    return dest


def wheelhouse(source_copy: Path, dest: Path) -> Path:
    """servomexd's wheel (built now) plus its dependencies' wheels (cached), in ``dest``.

    The container has no network: deploy/install.sh installs from here with
    PIP_NO_INDEX=1. Built by the interpreter running the tests, which must be the
    container's CPython minor version (the compiled dependencies are per version).
    """
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    deps_key = hashlib.sha256(
        (source_copy / "pyproject.toml").read_bytes()
        + f"{sys.version_info[:2]} {EXTRAS}".encode()
    ).hexdigest()
    deps = CACHE / f"wheels-{deps_key[:16]}"
    dest.mkdir(parents=True, exist_ok=True)
    if not deps.is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f"{deps.name}.building-", dir=CACHE))
        try:
            _run([*pip, "wheel", "-q", "--wheel-dir", str(building), f"{source_copy}[{EXTRAS}]"],
                 timeout=600, what="pip wheel (dependencies)")  # fmt: skip
            for own in building.glob("servomexd-*.whl"):
                own.unlink()
            with contextlib.suppress(OSError):
                building.rename(deps)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    for wheel in deps.glob("*.whl"):
        shutil.copy2(wheel, dest / wheel.name)
    _run([*pip, "wheel", "-q", "--no-deps", "--wheel-dir", str(dest), str(source_copy)],
         timeout=300, what="pip wheel (servomexd)")  # fmt: skip
    return dest


# --- the booted container ------------------------------------------------------------------


def _cgroup_roots() -> list[Path]:
    """Where to make the container's own cgroup: the v2 tree (and name=systemd on hybrid)."""
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.procs").exists() and (base / "cgroup.controllers").exists():
        return [base]  # pure cgroup v2
    return [p for p in (base / "unified", base / "systemd") if (p / "cgroup.procs").exists()]


def _remove_cgroup(path: Path) -> None:
    """Remove a cgroup tree bottom-up (cgroupfs only allows rmdir of empty groups)."""
    if not path.is_dir():
        return
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


class Container:
    """One booted container: ``boot()``, ``run()`` commands inside it, ``shutdown()``."""

    NSPAWN_LEFTOVERS = (Path("/run/systemd/nspawn/locks"), Path("/run/systemd/nspawn/propagate"),
                        Path("/run/systemd/nspawn"))  # fmt: skip

    def __init__(self, root: Path, workdir: Path, binds: Sequence[tuple[Path, str, bool]]) -> None:
        self.root = root
        self.workdir = workdir
        self.binds = binds
        self.name = f"servomexd-ci-{os.getpid()}-{int(time.time())}"
        self.console_log = workdir / "console.log"
        self.cgroups = [root_ / self.name for root_ in _cgroup_roots()]
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self._preexisting = {p for p in self.NSPAWN_LEFTOVERS if p.exists()}

    # --- lifecycle ---

    def boot(self, timeout: float = 120.0) -> None:
        for group in self.cgroups:
            group.mkdir()
        procs = [str(g / "cgroup.procs") for g in self.cgroups]

        def enter_own_cgroup() -> None:
            for path in procs:
                with open(path, "w") as f:
                    f.write(str(os.getpid()))

        argv = [
            "systemd-nspawn", "--quiet", "--volatile=overlay", "--register=no", "--keep-unit",
            "--private-network", "--console=read-only", "--capability=CAP_BPF",
            "--system-call-filter=bpf", f"--machine={self.name}", "-D", str(self.root),
        ]  # fmt: skip
        for src, dst, read_only in self.binds:
            argv.append(f"--bind{'-ro' if read_only else ''}={src}:{dst}")
        argv.append("-b")
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
        with self.console_log.open("wb") as console:
            self.nspawn = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                env=env, preexec_fn=enter_own_cgroup, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self.nspawn.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited ({self.nspawn.returncode}):\n"
                                     + self.console())  # fmt: skip
            if time.monotonic() > deadline:
                raise ContainerError("the container's PID 1 did not appear:\n" + self.console())
            self.leader = self._find_leader()
            time.sleep(0.1)
        remaining = max(5.0, deadline - time.monotonic())
        while True:
            # is-system-running fails until PID 1's bus is up; retry until the deadline.
            state = self.run("systemctl", "is-system-running", "--wait", check=False,
                             timeout=remaining)  # fmt: skip
            if state.stdout.strip() in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                raise ContainerError(f"boot did not finish: {state.stdout}{state.stderr}\n"
                                     + self.console())  # fmt: skip
            time.sleep(0.3)

    def _find_leader(self) -> int:
        """The container's PID 1 as seen from the host: nspawn's child running systemd."""
        assert self.nspawn is not None
        for task in Path(f"/proc/{self.nspawn.pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    with contextlib.suppress(OSError):
                        if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                            return int(child)
        return 0

    def console(self) -> str:
        with contextlib.suppress(OSError):
            return self.console_log.read_text(errors="replace")[-4000:]
        return ""

    def shutdown(self) -> None:
        """Power off (kill as a fallback), then remove the cgroup and nspawn's leftovers."""
        try:
            if self.nspawn is not None and self.nspawn.poll() is None:
                if self.leader:
                    with contextlib.suppress(Exception):
                        self.run("systemctl", "poweroff", "--no-block", check=False, timeout=10)
                try:
                    self.nspawn.wait(30)
                except subprocess.TimeoutExpired:
                    for pid in (self.leader, self.nspawn.pid):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    self.nspawn.wait(30)
        finally:
            self._kill_stragglers()
            for group in self.cgroups:
                _remove_cgroup(group)
            for path in self.NSPAWN_LEFTOVERS:
                if path not in self._preexisting:
                    with contextlib.suppress(OSError):
                        path.rmdir()  # only when empty: never remove another run's state

    def _kill_stragglers(self) -> None:
        for group in self.cgroups:
            for procs in group.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    for pid in procs.read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            p.read_text().strip() for g in self.cgroups for p in g.rglob("cgroup.procs")
        ):
            time.sleep(0.1)

    # --- commands inside ---

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (as root, in all its namespaces)."""
        prefix = ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-C",
                  "-r", "-w"]  # fmt: skip
        # A clean environment: the host's (PATH into .venv, CI, PIP_*) means nothing inside.
        inner = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                 "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}  # fmt: skip
        inner.update(env or {})
        proc = subprocess.run(
            [*prefix, "env", "-i", *(f"{k}={v}" for k, v in inner.items()), *argv],
            input=input, capture_output=True, text=True, timeout=timeout, check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise ContainerError(
                f"in the container: {' '.join(argv)} -> {proc.returncode}\n"
                f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}"
            )
        return proc

    def path(self, inside: str) -> Path:
        """A path inside the container, seen from the host (through its PID 1's root)."""
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")
