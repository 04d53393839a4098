"""The configured sink as the delivery loop uses it: built from ``[sink]``, opened,
reopened after a failure or on SIGHUP, and (for files) never overwriting earlier data.

What a sink can do is read from its class (see ``servomexd.sinks.registry``):

* ``supports_checkpoint`` (sqlite, postgres): exactly-once; rows and the spool
  checkpoint commit together. Without it delivery is at-least-once: after a crash
  between a write and the spool ack the batch is written again (documented).
* ``new_file_per_open`` (csv truncates on open, parquet starts a file): every open
  (each start, each recovery, each SIGHUP or roll) writes a new file with a UTC
  timestamp in its name.
* ``rolls_periodically`` (parquet: a file is readable only once its footer is
  written on close): the file is rolled every ``roll_interval`` seconds, so a crash
  loses only the open file's footer.
* ``reopens_on_hup`` (csv, jsonl, parquet): SIGHUP reopens the file (jsonl appends
  to its path again after logrotate moved the old one).

Only the delivery task touches a ``Destination``: no locking needed.
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
from servomexd.sinks.base import BaseSink, Checkpoint
from servomexd.sinks.registry import sink_type

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
    """Lifecycle wrapper around one sink of the configured type."""

    def __init__(
        self,
        settings: SinkSettings,
        *,
        password: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.kind = settings.type
        self._type = sink_type(settings.type)
        capabilities = self._type.sink
        self.supports_checkpoint = capabilities.supports_checkpoint
        self.reopens_on_hup = capabilities.reopens_on_hup
        self._writes_files = capabilities.file_suffix is not None
        self._new_file_per_open = capabilities.new_file_per_open
        roll = self._type.roll_interval
        self.roll_interval: float | None = (
            roll(settings) if capabilities.rolls_periodically and roll is not None else None
        )
        """Seconds a file stays open before the next one starts; None: never rolled."""
        self._password = password
        self._clock = clock
        self._sink: BaseSink | None = None
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
        if self._type.target is not None:
            return self._type.target(self.settings)
        path = self.current_path or self.settings.path
        return f"{self.kind}:{path}"

    def _build(self) -> BaseSink:
        path = self.settings.path
        if self._new_file_per_open:
            path = timestamped_path(path, datetime.now(UTC))
        self.current_path = path if self._writes_files else None
        return self._type.build(self.settings, path, self._password)

    async def open(self) -> None:
        await self._opened()

    async def _opened(self) -> BaseSink:
        """The open sink; opens a new one when there is none."""
        if self._sink is not None:
            return self._sink
        if self._writes_files:
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
        return sink

    async def close(self) -> None:
        """Close (idempotent); errors propagate after the sink is forgotten."""
        sink, self._sink = self._sink, None
        if sink is not None:
            await sink.close()

    async def write_records(
        self, records: Sequence[Record], *, checkpoint: Checkpoint | None
    ) -> None:
        sink = await self._opened()
        await sink.write_records(
            records, checkpoint=checkpoint if self.supports_checkpoint else None
        )

    async def read_checkpoint(self, stream: str) -> int:
        if not self.supports_checkpoint:
            return 0
        sink = await self._opened()
        return await sink.read_checkpoint(stream)

    def roll_due(self) -> bool:
        """The file has been open for ``roll_interval``: close it, start the next."""
        return (
            self.roll_interval is not None
            and self._sink is not None
            and self._clock() - self._opened_at >= self.roll_interval
        )
