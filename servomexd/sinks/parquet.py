"""``ParquetSink``: columnar files for analysis (pyarrow, the ``[parquet]`` extra).

One row group per write (unless ``row_group_size`` splits it further), the file
footer is written on close: until then the file is not readable, which is why the
daemon rolls to a new file periodically. Column types are fixed by the row format:
value and latency_s float64, monotonic_ns int64, everything else string (booleans
"true"/"false", timestamps ISO-8601), all nullable. Delivery is at-least-once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from servomexd.errors import (
    ServomexSinkDependencyError,
    ServomexSinkWriteError,
    ServomexValidationError,
)
from servomexd.rows import ROW_COLUMNS, Record
from servomexd.sinks.threaded import ThreadedTextSink

COMPRESSIONS = frozenset({"zstd", "snappy", "gzip", "brotli", "lz4", "none"})
_ARROW_TYPES = {"value": "float64", "latency_s": "float64", "monotonic_ns": "int64"}


class ParquetSink(ThreadedTextSink):
    kind = "parquet"
    file_suffix = "parquet"
    new_file_per_open = True
    reopens_on_hup = True
    rolls_periodically = True  # the footer is written on close: only closed files read

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

    def _context(self) -> dict[str, str]:
        return {"path": str(self.path)}

    def _error(self, action: str, exc: BaseException) -> ServomexSinkWriteError:
        return ServomexSinkWriteError(f"parquet {action} failed: {exc}", context=self._context())

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
            raise self._error("open", exc) from exc
        self._is_open = True

    def _store_sync(self, rows: list[Record]) -> None:
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
            raise self._error("write", exc) from exc

    def _close_sync(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
