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
