"""The package as users get it: a wheel built from the source, installed by deploy/install.sh
into a clean virtualenv, runs `--version` and `check-config` on the example configuration.

This proves the packaging (package data, entry point, dependency metadata, extras), not the
source tree: nothing from this checkout's .venv is visible to the new environment.
Dependencies come from the package index (pip's cache makes a second run fast).
"""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
from deploy_helpers import EXAMPLE_CONFIG, INSTALL_SH, REPO, SHIPPED_EXEC, require_tool, run

import servomexd

# What a release tarball contains: enough to build the wheel and run deploy/install.sh.
SOURCE_PARTS = ["pyproject.toml", "README.md", "servomexd", "deploy", "etc", "docs"]


def copy_source_tree(target: Path) -> Path:
    """A clean copy, so that building never writes build/ or egg-info into the checkout."""
    target.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for part in SOURCE_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, target / part, ignore=ignore)
        else:
            shutil.copy2(source, target / part)
    return target


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = copy_source_tree(tmp_path_factory.mktemp("src"))
    dist = tmp_path_factory.mktemp("dist")
    result = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", dist, src],
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = dist.glob("servomexd-*.whl")
    return built


def test_wheel_contents(wheel: Path) -> None:
    assert wheel.name.startswith(f"servomexd-{servomexd.__version__}-py3-none-any")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = f"servomexd-{servomexd.__version__}.dist-info"
        # Only the package and its metadata: no tests, benchmarks or deploy files.
        assert all(n.startswith(("servomexd/", f"{dist_info}/")) for n in names), names
        assert "servomexd/py.typed" in names
        assert "servomexd/cli.py" in names and "servomexd/__main__.py" in names
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        assert "servomexd = servomexd.cli:main" in entry_points
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        assert "Provides-Extra: postgres" in metadata
        assert "Provides-Extra: parquet" in metadata


def test_install_sh_installs_the_wheel_into_a_clean_venv(wheel: Path, tmp_path: Path) -> None:
    src = copy_source_tree(tmp_path / "src")
    root = tmp_path / "root"
    install_sh = src / "deploy" / "install.sh"
    assert install_sh.read_bytes() == INSTALL_SH.read_bytes()

    result = run(["bash", install_sh, "--destdir", root, "--wheel", wheel], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr

    venv = root / "opt/servomexd/venv"
    exe = venv / "bin/servomexd"
    # A clean environment: not the checkout's venv, no system site-packages.
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    version = run([exe, "--version"])
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"servomexd {servomexd.__version__}"
    # (from tmp_path: `python -c` puts the working directory first on sys.path)
    probe = run(
        [
            venv / "bin/python",
            "-c",
            "import servomexd, asyncpg, pyarrow, sys; print(servomexd.__file__); print(sys.prefix)",
        ],
        cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    module_file, prefix = probe.stdout.split()
    assert module_file.startswith(str(venv)) and prefix == str(venv)

    config = root / "etc/servomexd/servomexd.toml"
    assert config.read_bytes() == EXAMPLE_CONFIG.read_bytes()
    checked = run([exe, "check-config", "--config", config])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "[[devices]]" in checked.stdout

    # The installed unit names the installed program: verify it with the staging root
    # prepended (the only difference to what runs on the target).
    analyze = require_tool("systemd-analyze", "apt-get install systemd")
    unit = root / "usr/local/lib/systemd/system/servomexd.service"
    staged = tmp_path / "servomexd.service"
    staged.write_text(unit.read_text().replace(SHIPPED_EXEC, str(exe)))
    verified = run([analyze, "verify", "--man=no", staged], cwd=tmp_path)
    assert verified.returncode == 0 and not (verified.stdout + verified.stderr).strip(), (
        verified.stdout + verified.stderr
    )

    # Upgrade in place from the source tree (the default mode): the venv is reused.
    again = run(["bash", install_sh, "--destdir", root], timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"installed servomexd {servomexd.__version__} into /opt/servomexd/venv" in again.stdout
    assert run([exe, "--version"]).returncode == 0
    # Installing from the source tree leaves no build output in it.
    assert not (src / "build").exists() and not list(src.glob("*.egg-info")), sorted(
        p.name for p in src.iterdir()
    )
    # servomexd is on PATH (a link in /usr/local/bin), as the README's commands assume.
    link = root / "usr/local/bin/servomexd"
    assert link.is_symlink() and os.readlink(link) == "/opt/servomexd/venv/bin/servomexd"

    removed = run(["bash", install_sh, "--destdir", root, "--uninstall"])
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not (root / "opt/servomexd").exists()
    assert not link.is_symlink() and not link.exists()
    assert config.exists()
