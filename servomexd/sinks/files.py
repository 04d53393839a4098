"""Line-oriented file sinks: ``CsvSink`` (single run, truncates) and ``JsonlSink`` (appends).

Each batch is encoded in memory, then written with one ``write`` and flushed; if
that fails (disk full, I/O error) the file is truncated back to where the batch
started, so a failed batch leaves no partial line behind. Delivery to files is
at-least-once (``supports_checkpoint`` is False).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import IO

from servomexd.errors import ServomexSinkWriteError
from servomexd.rows import ROW_COLUMNS, Record
from servomexd.sinks.threaded import ThreadedTextSink


class _FileSink(ThreadedTextSink):
    _mode = "wb"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self._file: IO[bytes] | None = None

    def _error(self, action: str, exc: BaseException) -> ServomexSinkWriteError:
        return ServomexSinkWriteError(
            f"{self.kind} sink: {action} failed: {exc}",
            context={"path": str(self.path)},
        )

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, self._mode)  # noqa: SIM115 (kept open until close)

    async def open(self) -> None:
        if self._is_open:
            return
        self._worker.start()
        try:
            await self._worker.run(self._open_sync)
        except OSError as exc:
            self._worker.stop()
            raise self._error("open", exc) from exc
        self._is_open = True

    def _encode(self, rows: list[Record]) -> bytes:
        raise NotImplementedError

    def _store_sync(self, rows: list[Record]) -> None:
        file = self._file
        if file is None:
            raise ServomexSinkWriteError(f"{self.kind} sink is closed")
        data = self._encode(rows)
        start = file.tell()
        try:
            file.write(data)
            file.flush()
        except OSError as exc:
            try:
                file.seek(start)
                file.truncate(start)
            except (OSError, ValueError):
                pass
            raise self._error("write", exc) from exc

    def _close_sync(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()


class CsvSink(_FileSink):
    """Single-run CSV writer: open truncates; the first write puts the header.

    UTF-8, CR LF line ends (the csv module's default), empty field for null,
    booleans as "true"/"false", timestamps ISO-8601. Columns are ``ROW_COLUMNS``.
    """

    kind = "csv"
    file_suffix = "csv"
    new_file_per_open = True  # open truncates by design
    reopens_on_hup = True
    _mode = "wb"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._header_written = False

    def _open_sync(self) -> None:
        super()._open_sync()
        self._header_written = False

    def _encode(self, rows: list[Record]) -> bytes:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        if not self._header_written:
            writer.writerow(ROW_COLUMNS)
        writer.writerows(rows)
        return buffer.getvalue().encode("utf-8")

    def _store_sync(self, rows: list[Record]) -> None:
        super()._store_sync(rows)
        self._header_written = True


class JsonlSink(_FileSink):
    """Append-only JSON Lines: one row object per line, keys in ``ROW_COLUMNS`` order.

    Re-opening the same path extends it. Non-ASCII is kept literally (``CO₂``).
    """

    kind = "jsonl"
    file_suffix = "jsonl"
    reopens_on_hup = True
    _mode = "ab"

    def _encode(self, rows: list[Record]) -> bytes:
        dumps = json.dumps
        columns = ROW_COLUMNS
        lines = [dumps(dict(zip(columns, row, strict=True)), ensure_ascii=False) for row in rows]
        lines.append("")
        return "\n".join(lines).encode("utf-8")
