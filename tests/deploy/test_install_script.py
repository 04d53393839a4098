"""deploy/install.sh against a temporary root (--destdir / DESTDIR), without the venv step.

The venv step (a real wheel into a real virtualenv) is tested in test_packaging.py. A
staging root implies no user creation and no systemctl: these tests run as root on the
build machine and must not create a system user or touch the host's systemd.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest
from deploy_helpers import DEPLOY, EXAMPLE_CONFIG, INSTALL_SH, REPO, SHIPPED_EXEC, require_tool, run

UNIT = "usr/local/lib/systemd/system/servomexd.service"
TEMPLATE = "usr/local/lib/systemd/system/servomexd@.service"
MODULES = "etc/modules-load.d/servomexd.conf"
UDEV = "etc/udev/rules.d/99-servomex.rules"
LOGROTATE = "etc/logrotate.d/servomexd"
CONFIG = "etc/servomexd/servomexd.toml"
DOC = "usr/local/share/doc/servomexd/operations.md"

# Installed file -> the repository file it is a copy of.
SHIPPED = {
    UNIT: DEPLOY / "systemd" / "servomexd.service",
    TEMPLATE: DEPLOY / "systemd" / "servomexd@.service",
    MODULES: DEPLOY / "modules-load.d" / "servomexd.conf",
    UDEV: DEPLOY / "udev" / "99-servomex.rules",
    LOGROTATE: DEPLOY / "logrotate" / "servomexd",
    CONFIG: EXAMPLE_CONFIG,
    DOC: REPO / "docs" / "operations.md",
}


def install(*args: str | Path, env: dict[str, str] | None = None) -> str:
    result = run(["bash", INSTALL_SH, *args], env=env)
    assert result.returncode == 0, f"install.sh {args} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def user_absent() -> None:
    """The tests run as root: prove a staging install never creates the system user."""
    try:
        pwd.getpwnam("servomexd")
    except KeyError:
        return
    pytest.skip("a servomexd user exists on this machine; cannot check it is not created")


def test_stages_the_expected_files(tmp_path: Path, user_absent: None) -> None:
    root = tmp_path / "root"
    out = install("--destdir", root, "--skip-venv")
    assert files_under(root) == set(SHIPPED)
    for installed, source in SHIPPED.items():
        assert (root / installed).read_bytes() == source.read_bytes(), installed
    # The config may hold a DSN: not world-readable, directory not world-listable.
    assert mode(root / CONFIG) == 0o640
    assert mode(root / "etc/servomexd") == 0o750
    assert mode(root / UNIT) == 0o644
    assert "not reloading systemd" in out
    with pytest.raises(KeyError):
        pwd.getpwnam("servomexd")


def test_destdir_from_the_environment(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install("--skip-venv", env={**os.environ, "DESTDIR": str(root)})
    assert files_under(root) == set(SHIPPED)


def test_prefix_rewrites_execstart(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install("--destdir", root, "--skip-venv", "--prefix", "/srv/servomexd")
    for unit in (UNIT, TEMPLATE):
        text = (root / unit).read_text()
        assert SHIPPED_EXEC not in text
        assert "ExecStart=/srv/servomexd/venv/bin/servomexd run --config" in text


def test_second_run_keeps_operator_files_and_repairs_ours(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install("--destdir", root, "--skip-venv")
    site_config = '[[devices]]\nname = "kiln"\nport = "/dev/servomex-kiln"\n'
    (root / CONFIG).write_text(site_config)
    (root / UDEV).write_text('SUBSYSTEM=="tty", SYMLINK+="servomex-kiln"\n')
    (root / LOGROTATE).write_text("# site retention\n")
    (root / UNIT).write_text("[Service]\nExecStart=/bin/false\n")  # a stale unit
    (root / MODULES).unlink()

    out = install("--destdir", root, "--skip-venv")

    assert (root / CONFIG).read_text() == site_config
    assert (root / UDEV).read_text() == 'SUBSYSTEM=="tty", SYMLINK+="servomex-kiln"\n'
    assert (root / LOGROTATE).read_text() == "# site retention\n"
    assert (root / UNIT).read_bytes() == SHIPPED[UNIT].read_bytes()
    assert (root / MODULES).read_bytes() == SHIPPED[MODULES].read_bytes()
    assert "keeping existing /etc/servomexd/servomexd.toml" in out
    assert "keeping existing /etc/udev/rules.d/99-servomex.rules" in out


def test_uninstall_keeps_config_and_data_purge_removes_them(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install("--destdir", root, "--skip-venv")
    state = root / "var/lib/servomexd"
    state.mkdir(parents=True)
    (state / "samples.sqlite").write_bytes(b"rows")
    (root / UDEV).write_text("# edited by the site\n")

    out = install("--destdir", root, "--skip-venv", "--uninstall")

    remaining = files_under(root)
    # Ours are gone, including untouched copies of the example logrotate entry;
    # configuration, data and the edited udev rule stay.
    assert remaining == {CONFIG, UDEV, "var/lib/servomexd/samples.sqlite"}
    assert "kept /etc/servomexd (--purge removes it)" in out

    install("--destdir", root, "--uninstall", "--purge")
    assert files_under(root) == set()
    assert not (root / "etc/servomexd").exists() and not state.exists()


def test_uninstall_removes_only_the_venv_it_made(tmp_path: Path) -> None:
    root = tmp_path / "root"
    prefix = root / "opt/servomexd"
    (prefix / "venv").mkdir(parents=True)
    (prefix / "venv/pyvenv.cfg").write_text("home = /usr/bin\n")
    (prefix / "notes.txt").write_text("someone else's file\n")
    install("--destdir", root, "--skip-venv", "--uninstall")
    assert not (prefix / "venv").exists()
    assert (prefix / "notes.txt").exists()


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    out = install("--destdir", root, "--skip-venv", "--dry-run")
    assert not root.exists()
    commands = [line for line in out.splitlines() if line.startswith("+ ")]
    assert any(f"{root}/usr/local/lib/systemd/system/servomexd.service" in c for c in commands)
    assert f"{root}/etc/servomexd/servomexd.toml" in out
    # It says what it would do; it never claims to have done it.
    said = [line for line in out.splitlines() if not line.startswith("+ ")]
    assert f"install.sh: would install {'/' + CONFIG} (edit it for your site)" in said, said
    claims = ("installed", "created", "linked", "removed")
    assert not [line for line in said if any(f": {word} " in line for word in claims)], said


def test_links_the_command_and_uninstall_unlinks_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    out = install("--destdir", root, "--skip-venv")
    link = root / "usr/local/bin/servomexd"
    assert os.readlink(link) == "/opt/servomexd/venv/bin/servomexd"
    assert "linked /usr/local/bin/servomexd -> /opt/servomexd/venv/bin/servomexd" in out
    install("--destdir", root, "--skip-venv")  # idempotent
    assert os.readlink(link) == "/opt/servomexd/venv/bin/servomexd"
    install("--destdir", root, "--skip-venv", "--uninstall")
    assert not link.is_symlink()


def test_never_replaces_another_servomexd_command(tmp_path: Path) -> None:
    root = tmp_path / "root"
    mine = root / "usr/local/bin/servomexd"
    mine.parent.mkdir(parents=True)
    mine.write_text("#!/bin/sh\n")
    out = install("--destdir", root, "--skip-venv")
    assert "is not our link" in out and mine.read_text() == "#!/bin/sh\n"
    install("--destdir", root, "--skip-venv", "--uninstall")
    assert mine.read_text() == "#!/bin/sh\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown option: --bogus"),
        (["--purge"], "--purge only goes with --uninstall"),
        (["--prefix", "relative/dir"], "--prefix must be an absolute path"),
        (["--prefix", "/opt/a&b"], "--prefix may only use"),
        (["--wheel", "/nonexistent/servomexd.whl"], "no such wheel"),
        (["--prefix"], "--prefix needs an argument"),
    ],
)
def test_rejects_bad_usage(args: list[str], message: str, tmp_path: Path) -> None:
    result = run(["bash", INSTALL_SH, "--destdir", tmp_path / "root", *args])
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "root").exists()


def test_help_lists_every_option() -> None:
    result = run(["bash", INSTALL_SH, "--help"])
    assert result.returncode == 0
    script = INSTALL_SH.read_text()
    for option in (
        "--prefix",
        "--wheel",
        "--extras",
        "--python",
        "--skip-venv",
        "--enable",
        "--destdir",
        "--no-user",
        "--no-systemctl",
        "--uninstall",
        "--purge",
        "--dry-run",
    ):
        assert option in result.stdout
        assert f"{option})" in script or f"{option}=*)" in script


def test_shellcheck_clean() -> None:
    shellcheck = require_tool("shellcheck", "apt-get install shellcheck")
    result = run([shellcheck, "--severity=style", INSTALL_SH])
    assert result.returncode == 0, result.stdout + result.stderr


def test_live_dry_run_plans_the_user_and_changes_nothing(user_absent: None) -> None:
    """Without a staging root the script manages the user and the live paths; --dry-run
    shows that plan (as root, on this machine) without carrying any of it out."""
    live_unit = Path("/", UNIT)
    if live_unit.exists():
        pytest.skip("servomexd is installed on this machine")
    live_paths = [Path("/", p) for p in SHIPPED] + [Path("/opt/servomexd")]
    before = {p: p.exists() for p in live_paths}
    out = install("--dry-run", "--wheel", INSTALL_SH)  # any existing file passes the check
    commands = [line for line in out.splitlines() if line.startswith("+ ")]
    assert any(
        c.startswith("+ useradd --system") and "--gid servomexd --groups dialout" in c
        and c.endswith("servomexd")
        for c in commands
    ), commands
    assert "+ chown root:servomexd -- /etc/servomexd" in commands
    assert any(
        c.startswith("+ install -D -m 0644 --") and c.endswith(f" /{UNIT}") for c in commands
    )
    assert any("/opt/servomexd/venv" in c and " -m venv " in c for c in commands), commands
    assert {p: p.exists() for p in live_paths} == before
    with pytest.raises(KeyError):
        pwd.getpwnam("servomexd")
