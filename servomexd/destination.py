"""The configured sink as the daemon's writer uses it: built from ``[sink]``, opened,
reopened after a failure or on SIGHUP, and (for files) never overwriting earlier data.

* sqlite, postgres: exactly-once; rows and the spool checkpoint commit together.
* csv: the sink truncates on open by design, so every open (each start, each recovery,
  each SIGHUP) writes a new file with a UTC timestamp in its name.
* parquet: a file is only readable once its footer is written on close, so the writer
  rolls to a new timestamped file every ``roll_interval`` seconds; a crash leaves every
  earlier file readable and loses only the open one's footer.
* jsonl: appended to as is; SIGHUP reopens the path (after logrotate moved the file).

csv/jsonl/parquet keep no checkpoint: after a crash between a write and the spool ack
the batch is written again (at-least-once), which is documented.

Only the writer's delivery task touches a ``Destination``: no locking needed.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from servomexd.config import SinkSettings
from servomexd.rows import Record
from servomexd.sinks import (
    CsvSink,
    JsonlSink,
    ParquetSink,
    PostgresConfig,
    PostgresSink,
    RecordSink,
    SqliteSink,
)
from servomexd.sinks.base import Checkpoint

TIMESTAMPED_KINDS = frozenset({"csv", "parquet"})
CHECKPOINT_KINDS = frozenset({"sqlite", "postgres"})
_FILES_REMEMBERED = 64


def timestamped_path(base: Path, now: datetime) -> Path:
    """``samples.csv`` -> ``samples-20250101T120000Z.csv`` (a free name, never an old one)."""
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = base.suffix
    stem = base.name[: -len(suffix)] if suffix else base.name
    candidate = base.with_name(f"{stem}-{stamp}{suffix}")
    counter = 2
    while candidate.exists():
        candidate = base.with_name(f"{stem}-{stamp}-{counter}{suffix}")
        counter += 1
    return candidate


class Destination:
    """Lifecycle wrapper around one ``RecordSink`` of the configured type."""

    def __init__(
        self,
        settings: SinkSettings,
        *,
        password: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.kind = settings.type
        self.supports_checkpoint = self.kind in CHECKPOINT_KINDS
        self._password = password
        self._clock = clock
        self._sink: RecordSink | None = None
        self._opened_at = 0.0
        self.current_path: Path | None = None
        self.files_written: deque[Path] = deque(maxlen=_FILES_REMEMBERED)
        """The most recent files opened (bounded: a Parquet roll every interval, a new
        CSV file per sink recovery, for months)."""

    @property
    def is_open(self) -> bool:
        return self._sink is not None

    @property
    def description(self) -> str:
        """Log-safe target: a path, or ``host:port/db.schema.table`` (no password)."""
        if self.kind == "postgres":
            return self._postgres_config().target()
        path = self.current_path or self.settings.path
        return f"{self.kind}:{path}"

    def _postgres_config(self) -> PostgresConfig:
        return self.settings.postgres.to_sink_config(password=self._password)

    def _build(self) -> RecordSink:
        s = self.settings
        path = s.path
        if self.kind in TIMESTAMPED_KINDS:
            path = timestamped_path(s.path, datetime.now(UTC))
        self.current_path = path if self.kind != "postgres" else None
        if self.kind == "sqlite":
            return SqliteSink(path, table=s.table, synchronous=s.synchronous)
        if self.kind == "postgres":
            return PostgresSink(self._postgres_config())
        if self.kind == "csv":
            return CsvSink(path)
        if self.kind == "jsonl":
            return JsonlSink(path)
        if self.kind == "parquet":
            return ParquetSink(path, compression=s.parquet.compression)
        raise ValueError(f"unknown sink type {self.kind!r}")

    async def open(self) -> None:
        if self._sink is not None:
            return
        if self.kind != "postgres":
            self.settings.path.parent.mkdir(parents=True, exist_ok=True)
        sink = self._build()
        try:
            await sink.open()
        except BaseException:
            with contextlib.suppress(Exception):
                await sink.close()
            raise
        self._sink = sink
        self._opened_at = self._clock()
        if self.current_path is not None and self.current_path not in self.files_written:
            self.files_written.append(self.current_path)

    async def close(self) -> None:
        """Close (idempotent); errors propagate after the sink is forgotten."""
        sink, self._sink = self._sink, None
        if sink is not None:
            await sink.close()

    async def write_records(
        self, records: Sequence[Record], *, checkpoint: Checkpoint | None
    ) -> None:
        if self._sink is None:
            await self.open()
        assert self._sink is not None
        await self._sink.write_records(
            records, checkpoint=checkpoint if self.supports_checkpoint else None
        )

    async def read_checkpoint(self, stream: str) -> int:
        if not self.supports_checkpoint:
            return 0
        if self._sink is None:
            await self.open()
        assert self._sink is not None
        return await self._sink.read_checkpoint(stream)

    def roll_due(self) -> bool:
        """A Parquet file has been open for ``roll_interval``: close it, start the next."""
        return (
            self.kind == "parquet"
            and self._sink is not None
            and self._clock() - self._opened_at >= self.settings.parquet.roll_interval
        )

    @property
    def reopens_on_hup(self) -> bool:
        return self.kind in {"csv", "jsonl", "parquet"}
