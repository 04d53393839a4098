"""``servomexd decode`` as a real subprocess."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from servomexd.rows import ROW_COLUMNS

FIXTURES = Path(__file__).resolve().parent / "fixtures"
IDLE = FIXTURES / "continuous_4100_idle_5ch.bin"
LIVE = FIXTURES / "continuous_4100_live_5ch.bin"


def decode(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "servomexd", "decode", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
    )


def jsonl(output: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.decode("utf-8").splitlines()]


@pytest.mark.parametrize(
    ("path", "o2", "co2"),
    [(IDLE, [20.376] * 6, 0.25), (LIVE, [20.379] + [20.378] * 5, 0.247)],
    ids=["idle", "live"],
)
def test_captures_to_jsonl(path: Path, o2: list[float], co2: float) -> None:
    before = datetime.now(UTC)
    result = decode(str(path), "--device", "stack-1")
    after = datetime.now(UTC)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    rows = jsonl(result.stdout)
    assert len(rows) == 30
    for row in rows:
        assert tuple(row) == ROW_COLUMNS  # exact keys, exact order
        assert row["error"] is None and row["device"] == "stack-1"
        assert row["protocol"] == "continuous"
        assert row["requested_at"] is None and row["latency_s"] is None
        assert (row["ok"], row["fault"], row["maintenance"]) == ("true", "false", "false")
        assert (row["calibrating"], row["warming_up"]) == ("false", "false")
        received = datetime.fromisoformat(str(row["received_at"]))
        assert received.utcoffset() is not None and before <= received <= after
        assert isinstance(row["monotonic_ns"], int)
    got = [(r["channel"], r["kind"], r["name"], r["value"], r["unit"]) for r in rows]
    expected = []
    for oxygen in o2:
        expected += [
            ("I1", "transducer", "Oxygen", oxygen, "%"),
            ("I2", "transducer", "CO", 0.084, "%"),
            ("I3", "transducer", "CO2", co2, "%"),
            ("E1", "external_input", None, 0.0, "mA"),
            ("E2", "external_input", None, 0.0, "mA"),
        ]
    assert got == expected
    # The five rows of a frame share their stamps; frames have distinct ones.
    frames = {(r["monotonic_ns"], r["received_at"]) for r in rows}
    assert len(frames) == 6


def test_csv_from_stdin() -> None:
    result = decode("-", "--format", "csv", stdin=LIVE.read_bytes())
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode("utf-8")
    assert text.startswith(",".join(ROW_COLUMNS) + "\r\n")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(rows) == 30
    assert list(rows[0]) == list(ROW_COLUMNS)
    assert rows[0]["device"] == "capture"  # the default device name
    assert (rows[0]["channel"], rows[0]["value"], rows[0]["ok"]) == ("I1", "20.379", "true")
    assert rows[3]["name"] == "" and rows[3]["unit"] == "mA"
    assert rows[0]["requested_at"] == "" and rows[0]["error"] == ""


def test_rejected_lines_become_error_rows() -> None:
    good = IDLE.read_bytes().split(b"\n")
    capture = (
        good[0][120:] + b"\n"  # a partial first line
        + good[0] + b"\r\n"
        + b"\xff\xfe line noise\n"
        + good[1].replace(b"20.376", b"20.000") + b"\n"  # bad checksum
        + good[2]  # last line without its terminator
    )  # fmt: skip
    result = decode("-", stdin=capture)
    assert result.returncode == 0, result.stderr
    rows = jsonl(result.stdout)
    errors = [r for r in rows if r["error"] is not None]
    assert len(errors) == 3 and len(rows) == 3 + 10
    for row in errors:
        assert tuple(row) == ROW_COLUMNS
        assert all(row[c] is None for c in ("channel", "kind", "name", "value", "unit", "ok"))
        assert row["protocol"] == "continuous"
    assert "start character" in str(errors[1]["error"])
    assert "checksum mismatch" in str(errors[2]["error"])
    assert "computed=" in str(errors[2]["error"]) and "received=2A1F" in str(errors[2]["error"])
    assert [r["value"] for r in rows if r["channel"] == "I1"] == [20.376, 20.376]


def test_empty_input_gives_no_rows() -> None:
    result = decode("-", "--format", "jsonl", stdin=b"")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


@pytest.mark.parametrize("target", ["missing.bin", "."])
def test_unreadable_input_is_one_line_and_exit_2(tmp_path: Path, target: str) -> None:
    path = tmp_path / target
    result = decode(str(path))
    assert result.returncode == 2
    assert result.stdout == b""
    message = result.stderr.decode()
    assert message.count("\n") == 1 and message.startswith("servomexd decode: cannot read")
    assert str(path) in message and "Traceback" not in message


def test_broken_pipe_is_quiet(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(IDLE.read_bytes() * 2000)
    script = (
        f"{sys.executable} -m servomexd decode {big} 2>{tmp_path / 'err'} | head -n 1; "
        'echo "status=${PIPESTATUS[0]}"'
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["channel"] == "I1"
    assert lines[1] == "status=141"
    assert (tmp_path / "err").read_text() == ""
