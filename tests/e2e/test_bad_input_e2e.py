"""Bad input to the running daemon and to every sub-command: counted, logged, no traceback.

The line-noise test drives a real pseudo-terminal by hand (not the simulator), so it can
send what a wrong baud rate produces: long runs of random bytes without a terminator.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import tty
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_harness import PYTHON, ROOT, DaemonProc, sqlite_rows, wait_for, write_config

from servomexd.protocol.continuous import DEFAULT_MAX_LINE, build_frame
from servomexd.simulator.continuous import simulated_blocks

pytestmark = pytest.mark.e2e
CHANNELS = 5


def _garbage(rng: random.Random, size: int) -> bytes:
    """What a 9600-baud listener makes of a 19200-baud line: bytes, never a LF."""
    return bytes(rng.choice([b for b in range(256) if b != 0x0A]) for _ in range(size))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view[:4096])
        view = view[written:]


def test_wrong_baud_rate_noise_counted_recorded_and_survived(tmp_path: Path) -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    link = tmp_path / "tty-raw"
    link.symlink_to(os.ttyname(slave))
    config = write_config(tmp_path, [{"name": "noisy", "port": str(link), "silence_timeout": 5.0}])
    daemon = DaemonProc(config)
    rng = random.Random(7)
    index = 0

    def frames(count: int) -> None:
        nonlocal index
        for _ in range(count):
            _write_all(master, build_frame(simulated_blocks(index), terminator=b"\r\n"))
            index += 1
            time.sleep(0.02)

    try:
        daemon.wait_ready()
        wait_for(lambda: bool(daemon.events("device.port_opened")), 15, "port opened")
        frames(5)
        _write_all(master, _garbage(rng, 5 * DEFAULT_MAX_LINE) + b"\n")  # overlong 1
        frames(3)
        _write_all(master, b"\x7f\xfeGARBAGE\x00\n" + b"-- not a frame --\r\n")  # noise x2
        frames(1)
        _write_all(master, _garbage(rng, 12 * DEFAULT_MAX_LINE) + b"\r\n")  # overlong 2
        frames(4)
        db = tmp_path / "samples.sqlite"
        total = 13 * CHANNELS + 4
        wait_for(lambda: len(sqlite_rows(db)) >= total, 20, f"{total} rows stored", step=0.1)

        def rejected(reason: str) -> float | None:
            return daemon.metric("servomexd_frames_rejected_total", device="noisy", reason=reason)

        assert daemon.metric("servomexd_frames_total", device="noisy") == 13
        assert rejected("overlong") == 2
        assert rejected("noise") == 2
        assert daemon.metric("servomexd_reconnects_total", device="noisy") == 0
        assert daemon.metric("servomexd_link_up", device="noisy") == 1
        code, _ = daemon.terminate()
        assert code == 0, daemon.text()
    finally:
        daemon.cleanup()
        os.close(master)
        os.close(slave)
    rows = sqlite_rows(tmp_path / "samples.sqlite")
    good = [r for r in rows if r[5] is None]
    errors = [r for r in rows if r[5] is not None]
    assert len(good) == 13 * CHANNELS and len(rows) == total
    assert sorted(e[5].split(" [")[0][:24] for e in errors) == sorted(
        ["line does not start with"] * 2 + [f"line longer than {DEFAULT_MAX_LINE} by"] * 2
    )
    assert all(r[1] is None and r[2] is None for r in errors)
    assert "Traceback" not in daemon.text()


def _cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [PYTHON, "-m", "servomexd", *args], input=stdin, capture_output=True, cwd=ROOT,
        timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["decode", "/nonexistent"], 2, "/nonexistent"),
        (["decode", "/"], 2, "directory"),
        (["check-config", "--config", "/nonexistent"], 78, "not found"),
        (["run", "--config", "/nonexistent"], 78, "not found"),
        (["simulate", "--link", "/nonexistent-dir/x", "--frames", "1"], 1, "/nonexistent-dir"),
        (["simulate", "--link", "x", "--period", "-1"], 2, "must be > 0"),
        (["decode", "--format", "xml"], 2, "invalid choice"),
        (["simulate", "--link", "x", "--frames", "many"], 2, "expected a whole number > 0"),
        (["demo", "--period", "nan"], 2, "must be > 0"),
        (["demo", "--dir", "/proc/nope", "--duration", "1"], 2, "No such file or directory"),
        (["demo", "--metrics-listen", "abc", "--duration", "1"], 2, "must be host:port"),
        (["simulate", "--link", "x", "--period", "soon"], 2, "expected a number > 0"),
    ],
)
def test_cli_bad_input_one_clear_line(args: list[str], code: int, needle: str) -> None:
    result = _cli(*args)
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert needle in err
    assert "Traceback" not in err
    # One line of error (argparse adds its usage lines before it).
    lines = [line for line in err.splitlines() if not line.startswith((" ", "usage:"))]
    assert len(lines) == 1, err


@pytest.mark.parametrize(
    "text",
    [
        b'[[devices]\nname = "a"\n',  # TOML syntax error
        b"\xff\xfe not utf-8",
        b'[[devices]]\nname = "a"\nport = "/dev/ttyX"\n[sink]\ntype = "postgres"\n',
        b'[[devices]]\nname = "a"\nport = "/dev/ttyX"\n[metrics]\nlisten = "0.0.0.0:99999"\n',
        b'devices = "not a list"\n',
    ],
)
@pytest.mark.parametrize("command", ["run", "check-config"])
def test_bad_config_file_exits_78_without_traceback(
    tmp_path: Path, text: bytes, command: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_bytes(text)
    result = _cli(command, "--config", str(config))
    err = result.stderr.decode()
    assert result.returncode == 78, err
    assert "Traceback" not in err and str(config.name) in err


def test_decode_line_noise_gives_error_rows_not_a_crash() -> None:
    noise = _garbage(random.Random(3), 3 * DEFAULT_MAX_LINE) + b"\nplain noise\n"
    good = build_frame(simulated_blocks(0), terminator=b"\n")
    result = _cli("decode", "-", stdin=noise + good)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 2 + CHANNELS  # overlong + noise error rows, then the frame
    assert all('"error": null' not in line for line in lines[:2])
    assert all('"error": null' in line for line in lines[2:])
