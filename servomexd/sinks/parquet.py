"""``ParquetSink``: columnar files for analysis (pyarrow, the ``[parquet]`` extra).

One row group per write (unless ``row_group_size`` splits it further), the file
footer is written on close: until then the file is not readable, which is why the
daemon rolls to a new file periodically. Column types are fixed by the row format:
value and latency_s float64, monotonic_ns int64, everything else string (booleans
"true"/"false", timestamps ISO-8601), all nullable. Delivery is at-least-once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from servomexd.errors import (
    ServomexSinkDependencyError,
    ServomexSinkWriteError,
    ServomexValidationError,
)
from servomexd.model import Sample
from servomexd.rows import ROW_COLUMNS, Record
from servomexd.sinks.base import BaseSink, Checkpoint, validate_checkpoint
from servomexd.sinks.encoding import RowEncoder
from servomexd.sinks.worker import SinkWorker

COMPRESSIONS = frozenset({"zstd", "snappy", "gzip", "brotli", "lz4", "none"})
_ARROW_TYPES = {"value": "float64", "latency_s": "float64", "monotonic_ns": "int64"}


class ParquetSink(BaseSink):
    kind = "parquet"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        compression: str = "zstd",
        row_group_size: int | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        compression = compression.lower()
        if compression not in COMPRESSIONS:
            raise ServomexValidationError(
                f"compression must be one of {sorted(COMPRESSIONS)}, got {compression!r}"
            )
        if row_group_size is not None and row_group_size < 1:
            raise ServomexValidationError(f"row_group_size must be >= 1, got {row_group_size}")
        self.compression = compression
        self.row_group_size = row_group_size
        self._pa: Any = None
        self._pq: Any = None
        self._schema: Any = None
        self._writer: Any = None
        self._encoder = RowEncoder()
        self._worker = SinkWorker("servomexd-parquet-sink")

    def _context(self) -> dict[str, str]:
        return {"path": str(self.path)}

    async def open(self) -> None:
        if self._is_open:
            return
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ServomexSinkDependencyError(
                "the Parquet sink needs pyarrow: pip install 'servomexd[parquet]'",
                context={"extra": "servomexd[parquet]"},
            ) from exc
        self._pa, self._pq = pa, pq
        self._schema = pa.schema(
            [
                pa.field(name, getattr(pa, _ARROW_TYPES.get(name, "string"))(), nullable=True)
                for name in ROW_COLUMNS
            ]
        )
        self._worker.start()
        try:
            await self._worker.run(self.path.parent.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            self._worker.stop()
            raise ServomexSinkWriteError(
                f"parquet open failed: {exc}", context=self._context()
            ) from exc
        self._is_open = True

    def _write_sync(self, rows: list[Record]) -> None:
        pa = self._pa
        schema = self._schema
        columns = list(zip(*rows, strict=True))
        arrays = [
            pa.array(column, type=field.type) for column, field in zip(columns, schema, strict=True)
        ]
        table = pa.Table.from_arrays(arrays, schema=schema)
        try:
            if self._writer is None:
                # The writer (and the file) starts at the first batch: "first batch wins".
                self._writer = self._pq.ParquetWriter(
                    str(self.path),
                    schema,
                    compression=None if self.compression == "none" else self.compression,
                    use_dictionary=True,
                )
            self._writer.write_table(table, row_group_size=self.row_group_size or len(rows))
        except OSError as exc:
            raise ServomexSinkWriteError(
                f"parquet write failed: {exc}", context=self._context()
            ) from exc

    async def write_many(self, samples: Sequence[Sample]) -> None:
        self._require_open()
        if not samples:
            return
        await self._worker.run(self._write_sync, self._encoder.text_rows(samples))

    async def write_records(
        self, records: Sequence[Record], *, checkpoint: Checkpoint | None = None
    ) -> None:
        self._require_open()
        validate_checkpoint(checkpoint)
        if not records:
            return
        await self._worker.run(self._write_sync, self._encoder.records_to_text(records))

    def _close_sync(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    async def close(self) -> None:
        if not self._is_open:
            return
        self._is_open = False
        try:
            await self._worker.run(self._close_sync)
        except OSError as exc:
            raise ServomexSinkWriteError(
                f"parquet close failed: {exc}", context=self._context()
            ) from exc
        finally:
            self._worker.stop()
