"""servomexd/sinks/registry.py: one table from ``[sink] type`` to the sink that serves it."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from servomexd.config import SinkSettings, SinkType
from servomexd.sinks import CsvSink, JsonlSink, ParquetSink, PostgresSink, SqliteSink
from servomexd.sinks.base import BaseSink
from servomexd.sinks.registry import SINK_TYPES, default_path, resolve_credentials, sink_type


def test_every_configurable_type_has_one_entry_and_no_more() -> None:
    assert set(SINK_TYPES) == set(get_args(SinkType))


@pytest.mark.parametrize("name", sorted(SINK_TYPES))
def test_entry_hooks_match_the_class_capabilities(name: str) -> None:
    entry = sink_type(name)
    assert issubclass(entry.sink, BaseSink)
    assert entry.sink.kind == name
    assert (entry.roll_interval is not None) == entry.sink.rolls_periodically
    # a sink without a file needs a log-safe description of its target
    assert (entry.target is not None) == (entry.sink.file_suffix is None)


def test_capabilities_per_sink() -> None:
    checkpointed = {cls for cls in (SqliteSink, PostgresSink, CsvSink, JsonlSink, ParquetSink)
                    if cls.supports_checkpoint}
    assert checkpointed == {SqliteSink, PostgresSink}
    assert {c for c in (CsvSink, ParquetSink, JsonlSink) if c.new_file_per_open} == {
        CsvSink, ParquetSink}
    assert JsonlSink.reopens_on_hup and CsvSink.reopens_on_hup and ParquetSink.reopens_on_hup
    assert not SqliteSink.reopens_on_hup and not PostgresSink.reopens_on_hup
    assert ParquetSink.rolls_periodically and not CsvSink.rolls_periodically
    assert PostgresSink.needs_credentials and not SqliteSink.needs_credentials
    assert PostgresSink.file_suffix is None


@pytest.mark.parametrize("name", ["sqlite", "csv", "jsonl", "parquet"])
def test_file_sinks_build_at_the_given_path(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"x.{name}"
    settings = SinkSettings(type=name, path=path)  # type: ignore[arg-type]
    sink = sink_type(name).build(settings, path, None)
    assert type(sink) is sink_type(name).sink
    assert sink.path == path  # type: ignore[attr-defined]


def test_postgres_builds_with_the_password_and_describes_without_it() -> None:
    settings = SinkSettings(type="postgres", postgres={"host": "db.example", "database": "lab"})
    entry = sink_type("postgres")
    sink = entry.build(settings, Path("unused"), "s3cret")
    assert isinstance(sink, PostgresSink)
    assert sink.config.password == "s3cret"
    assert entry.target is not None
    described = entry.target(settings)
    assert "db.example" in described and "lab" in described and "s3cret" not in described


def test_credentials_only_for_sinks_that_need_them(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    pg = SinkSettings(
        type="postgres", postgres={"host": "h", "password_file": str(secret)}
    )
    assert resolve_credentials(pg) == "from-file"
    assert resolve_credentials(SinkSettings(type="sqlite", path=tmp_path / "s.sqlite")) is None


def test_default_path_from_the_file_suffix() -> None:
    base = Path("/var/lib/servomexd")
    assert default_path("csv", base) == base / "samples.csv"
    assert default_path("parquet", base) == base / "samples.parquet"
    assert default_path("postgres", base) is None
    assert default_path("nosuch", base) is None
    assert SinkSettings(type="jsonl").path == base / "samples.jsonl"


def test_unknown_type_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown sink type 'nosuch'; one of csv, jsonl"):
        sink_type("nosuch")
