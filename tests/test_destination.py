"""servomexd/destination.py: building, naming and reopening the configured sink."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from servomexd.config import SinkSettings
from servomexd.destination import Destination, timestamped_path

T0 = datetime(2025, 1, 1, tzinfo=UTC)



@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_timestamped_files_never_overwrite(tmp_path: Path, kind: str) -> None:
    base = tmp_path / f"samples.{kind}"
    first = timestamped_path(base, T0)
    first.write_text("x")
    second = timestamped_path(base, T0)
    assert first.name == f"samples-20250101T000000Z.{kind}"
    assert second != first and second.name.startswith("samples-20250101T000000Z-2")


async def test_destination_memory_does_not_grow_per_reopen(tmp_path: Path) -> None:
    """Each CSV open (start, every sink recovery, SIGHUP) is a new file: the record of
    the files written must stay bounded over months of reopens."""
    dest = Destination(SinkSettings(type="csv", path=tmp_path / "out.csv"))
    for _ in range(100):
        await dest.open()
        await dest.close()
    assert len(await asyncio.to_thread(lambda: list(tmp_path.glob("out-*.csv")))) == 100
    assert 0 < len(dest.files_written) <= 64
    assert dest.files_written[-1] == dest.current_path


async def test_parquet_rolls_after_its_interval_by_the_clock(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    now = [0.0]
    settings = SinkSettings(
        type="parquet", path=tmp_path / "s.parquet", parquet={"roll_interval": 60.0}
    )
    dest = Destination(settings, clock=lambda: now[0])
    assert dest.roll_interval == 60.0 and dest.reopens_on_hup
    assert not dest.roll_due()  # nothing open yet
    await dest.open()
    now[0] = 59.9
    assert not dest.roll_due()
    now[0] = 60.0
    assert dest.roll_due()
    await dest.close()


@pytest.mark.parametrize(
    ("kind", "checkpoint", "hup"),
    [("sqlite", True, False), ("csv", False, True), ("jsonl", False, True)],
)
async def test_capabilities_come_from_the_sink_class(
    tmp_path: Path, kind: str, checkpoint: bool, hup: bool
) -> None:
    dest = Destination(SinkSettings(type=kind, path=tmp_path / f"s.{kind}"))  # type: ignore[arg-type]
    assert dest.supports_checkpoint is checkpoint
    assert dest.reopens_on_hup is hup
    assert dest.roll_interval is None
    assert not dest.roll_due()


async def test_jsonl_reopens_its_own_path_and_csv_a_new_name(tmp_path: Path) -> None:
    jsonl = Destination(SinkSettings(type="jsonl", path=tmp_path / "s.jsonl"))
    await jsonl.open()
    assert jsonl.current_path == tmp_path / "s.jsonl"
    assert jsonl.description == f"jsonl:{tmp_path / 's.jsonl'}"
    await jsonl.close()
    csv = Destination(SinkSettings(type="csv", path=tmp_path / "s.csv"))
    await csv.open()
    assert csv.current_path is not None and csv.current_path.name.startswith("s-")
    assert csv.description == f"csv:{csv.current_path}"
    await csv.close()


def test_postgres_description_never_holds_the_password() -> None:
    settings = SinkSettings(
        type="postgres",
        postgres={"host": "db.example", "port": 6543, "database": "lab", "password": "pw9"},
    )
    dest = Destination(settings, password="pw9")
    assert dest.description.startswith("db.example:6543/lab.")
    assert "pw9" not in dest.description
    assert dest.supports_checkpoint and not dest.reopens_on_hup
    assert dest.current_path is None
