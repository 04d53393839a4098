"""The shared body of the text-row sinks (CSV, JSONL, Parquet).

Their stores are blocking file writers, so every store call runs on the sink's own
``SinkWorker`` thread; rows arrive in the ``sample_to_row`` text form. A subclass
says how to store a batch, how to close, and how its errors read.
"""

from __future__ import annotations

from collections.abc import Sequence

from servomexd.errors import ServomexSinkWriteError
from servomexd.model import Sample
from servomexd.rows import Record
from servomexd.sinks.base import BaseSink, Checkpoint, validate_checkpoint
from servomexd.sinks.encoding import RowEncoder
from servomexd.sinks.worker import SinkWorker


class ThreadedTextSink(BaseSink):
    """A sink whose blocking store calls run on one worker thread (at-least-once)."""

    def __init__(self) -> None:
        super().__init__()
        self._encoder = RowEncoder()
        self._worker = SinkWorker(f"servomexd-{self.kind}-sink")

    def _error(self, action: str, exc: BaseException) -> ServomexSinkWriteError:
        raise NotImplementedError

    def _store_sync(self, rows: list[Record]) -> None:
        """Write one batch of text rows (worker thread)."""
        raise NotImplementedError

    def _close_sync(self) -> None:
        """Release the file (worker thread)."""
        raise NotImplementedError

    async def write_many(self, samples: Sequence[Sample]) -> None:
        self._require_open()
        if not samples:
            return
        await self._worker.run(self._store_sync, self._encoder.text_rows(samples))

    async def write_records(
        self, records: Sequence[Record], *, checkpoint: Checkpoint | None = None
    ) -> None:
        self._require_open()
        validate_checkpoint(checkpoint)
        if not records:
            return
        await self._worker.run(self._store_sync, self._encoder.records_to_text(records))

    async def close(self) -> None:
        if not self._is_open:
            return
        self._is_open = False
        try:
            await self._worker.run(self._close_sync)
        except OSError as exc:
            raise self._error("close", exc) from exc
        finally:
            self._worker.stop()
