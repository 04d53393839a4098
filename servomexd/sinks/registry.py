"""The one table from a ``[sink] type`` to the sink that serves it.

A new sink is one module (a ``BaseSink`` subclass whose class attributes say what it
can do: checkpointed writes, a file per open, reopen on SIGHUP, periodic roll,
credentials) plus one entry in ``SINK_TYPES``. Nothing else in the daemon names a
sink type: the destination, the delivery loop, the daemon and the configuration's
default paths all read this table and those attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from servomexd.sinks.base import BaseSink
from servomexd.sinks.files import CsvSink, JsonlSink
from servomexd.sinks.parquet import ParquetSink
from servomexd.sinks.postgres import PostgresSink
from servomexd.sinks.postgres_config import PostgresConfig
from servomexd.sinks.sqlite import SqliteSink


class _PostgresSettings(Protocol):
    def to_sink_config(self, password: str | None) -> PostgresConfig: ...
    def resolve_password(self) -> str | None: ...


class _ParquetSettings(Protocol):
    @property
    def compression(self) -> str: ...
    @property
    def roll_interval(self) -> float: ...


class SinkSettings(Protocol):
    """The ``[sink]`` settings as this table reads them (``config.SinkSettings``).

    Structural, so the settings model can import this table and not the other way round.
    """

    @property
    def type(self) -> str: ...
    @property
    def table(self) -> str: ...
    @property
    def synchronous(self) -> str: ...
    @property
    def postgres(self) -> _PostgresSettings: ...
    @property
    def parquet(self) -> _ParquetSettings: ...


Builder = Callable[[SinkSettings, Path, "str | None"], BaseSink]
"""``(settings, path, password) -> sink``: ``path`` is where a file sink writes (a new
timestamped name when the sink makes a file per open), ``password`` its credential."""


def _no_credentials(settings: SinkSettings) -> str | None:
    return None


@dataclass(frozen=True)
class SinkType:
    """One configurable sink: its class (capabilities) and how settings build it."""

    sink: type[BaseSink]
    build: Builder
    credentials: Callable[[SinkSettings], str | None] = _no_credentials
    """Reads the secret at startup; only for a sink that ``needs_credentials``."""
    target: Callable[[SinkSettings], str] | None = None
    """A log-safe description for a sink that writes no file (never the password)."""
    roll_interval: Callable[[SinkSettings], float] | None = None
    """Seconds between rolls, for a sink that ``rolls_periodically``."""


SINK_TYPES: Mapping[str, SinkType] = {
    "sqlite": SinkType(
        SqliteSink,
        lambda s, path, _pw: SqliteSink(path, table=s.table, synchronous=s.synchronous),
    ),
    "postgres": SinkType(
        PostgresSink,
        lambda s, _path, pw: PostgresSink(s.postgres.to_sink_config(password=pw)),
        credentials=lambda s: s.postgres.resolve_password(),
        target=lambda s: s.postgres.to_sink_config(password=None).target(),
    ),
    "csv": SinkType(CsvSink, lambda _s, path, _pw: CsvSink(path)),
    "jsonl": SinkType(JsonlSink, lambda _s, path, _pw: JsonlSink(path)),
    "parquet": SinkType(
        ParquetSink,
        lambda s, path, _pw: ParquetSink(path, compression=s.parquet.compression),
        roll_interval=lambda s: s.parquet.roll_interval,
    ),
}


def sink_type(name: str) -> SinkType:
    """The table entry for ``[sink] type = name``."""
    try:
        return SINK_TYPES[name]
    except KeyError:
        raise ValueError(
            f"unknown sink type {name!r}; one of {', '.join(sorted(SINK_TYPES))}"
        ) from None


def default_path(name: str, directory: Path) -> Path | None:
    """``directory/samples.<suffix>`` for a file sink; None for a server sink (or an
    unknown type, which the settings model rejects with its own message)."""
    entry = SINK_TYPES.get(name)
    if entry is None or entry.sink.file_suffix is None:
        return None
    return directory / f"samples.{entry.sink.file_suffix}"


def resolve_credentials(settings: SinkSettings) -> str | None:
    """The sink's secret, read once at startup so a missing file fails fast."""
    entry = sink_type(settings.type)
    return entry.credentials(settings) if entry.sink.needs_credentials else None


__all__ = ["SINK_TYPES", "Builder", "SinkType", "default_path", "resolve_credentials", "sink_type"]
