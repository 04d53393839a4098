"""InMemorySink, CsvSink, JsonlSink and ParquetSink, read back with their own readers,
under asyncio and trio."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sinkdata import steady_samples, varied_samples

from servomexd.errors import ServomexSinkDependencyError, ServomexSinkError, ServomexValidationError
from servomexd.rows import ROW_COLUMNS, sample_to_record
from servomexd.sinks import CsvSink, InMemorySink, JsonlSink, ParquetSink, sample_to_row

pytestmark = pytest.mark.anyio  # every async test runs under asyncio and trio


def csv_text(value: Any) -> str:
    return "" if value is None else str(value)


async def test_in_memory_sink_list_identity() -> None:
    sink = InMemorySink()
    samples_list = sink.samples
    async with sink:
        await sink.write_many(varied_samples(2))
        await sink.write_many(varied_samples(1))
        await sink.write_records([sample_to_record(s) for s in varied_samples(1)])
        assert await sink.read_checkpoint("x") == 0
    await sink.close()
    assert sink.samples is samples_list
    assert sink.samples == varied_samples(2) + varied_samples(1)
    assert len(sink.records) == 5
    assert not sink.supports_checkpoint


async def test_csv_round_trip_header_once_and_truncate_on_open(tmp_path: Path) -> None:
    path = tmp_path / "out" / "samples.csv"
    samples = varied_samples(8)
    async with CsvSink(path) as sink:
        await sink.write_many(samples[:9])
        await sink.write_many(samples[9:])
    raw = path.read_bytes()
    assert raw.count(b"device,channel") == 1
    assert raw.endswith(b"\r\n")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == list(ROW_COLUMNS)
    assert rows[1:] == [[csv_text(v) for v in sample_to_row(s).values()] for s in samples]
    assert "CO₂" in path.read_text(encoding="utf-8")

    async with CsvSink(path) as sink:  # a new run truncates
        await sink.write_many(samples[:1])
        await sink.write_records([sample_to_record(samples[1])])
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows == [list(ROW_COLUMNS)] + [
        [csv_text(v) for v in sample_to_row(s).values()] for s in samples[:2]
    ]


async def test_jsonl_appends_across_runs(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    first, second = varied_samples(4), varied_samples(3, device="stack-2")
    async with JsonlSink(path) as sink:
        await sink.write_many(first)
    async with JsonlSink(path) as sink:
        await sink.write_records([sample_to_record(s) for s in second])
    lines = path.read_text(encoding="utf-8").splitlines()
    objects = [json.loads(line) for line in lines]
    assert objects == [sample_to_row(s) for s in first + second]
    assert all(list(o) == list(ROW_COLUMNS) for o in objects)
    assert any("CO₂" in line for line in lines)  # non-ASCII kept literally


async def test_parquet_round_trip_row_groups_and_compression(tmp_path: Path) -> None:
    path = tmp_path / "p" / "samples.parquet"
    samples = varied_samples(10)
    async with ParquetSink(path) as sink:
        await sink.write_many(samples[:20])
        await sink.write_many(samples[20:])
        await sink.write_records([sample_to_record(s) for s in samples[:3]])
    parquet = pq.ParquetFile(path)
    assert parquet.metadata.num_row_groups == 3
    assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
    table = parquet.read()
    assert table.column_names == list(ROW_COLUMNS)
    assert str(table.schema.field("value").type) == "double"
    assert str(table.schema.field("monotonic_ns").type) == "int64"
    assert table.to_pylist() == [sample_to_row(s) for s in samples + samples[:3]]


async def test_parquet_other_compression(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    async with ParquetSink(path, compression="snappy") as sink:
        await sink.write_many(steady_samples(10))
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "SNAPPY"
    with pytest.raises(ServomexValidationError):
        ParquetSink(path, compression="zip")


async def test_missing_pyarrow_raises_dependency_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    sink = ParquetSink(tmp_path / "x.parquet")
    with pytest.raises(ServomexSinkDependencyError, match=r"servomexd\[parquet\]") as caught:
        await sink.open()
    assert isinstance(caught.value.__cause__, ImportError)


async def test_file_write_error_is_a_sink_write_error(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(ServomexSinkError) as caught:
        await CsvSink(blocked / "sub" / "x.csv").open()
    assert isinstance(caught.value.__cause__, OSError)


@pytest.mark.parametrize("factory", [CsvSink, JsonlSink, ParquetSink])
async def test_close_idempotent(tmp_path: Path, factory: Any) -> None:
    sink = factory(tmp_path / "x")
    await sink.open()
    await sink.close()
    await sink.close()
    with pytest.raises(ServomexSinkError):
        await sink.write_many(steady_samples(1))


def test_every_sink_implements_the_protocols(tmp_path: Path) -> None:
    from servomexd.sinks import PostgresConfig, PostgresSink, RecordSink, SampleSink, SqliteSink

    sinks = [
        InMemorySink(),
        CsvSink(tmp_path / "a.csv"),
        JsonlSink(tmp_path / "a.jsonl"),
        ParquetSink(tmp_path / "a.parquet"),
        SqliteSink(tmp_path / "a.sqlite"),
        PostgresSink(PostgresConfig(host="localhost")),
    ]
    for sink in sinks:
        assert isinstance(sink, SampleSink)
        assert isinstance(sink, RecordSink)
    assert [s.supports_checkpoint for s in sinks] == [False, False, False, False, True, True]
