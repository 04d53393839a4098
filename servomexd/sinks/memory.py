"""``InMemorySink``: keeps everything in lists; for tests, demos and notebooks."""

from __future__ import annotations

from collections.abc import Sequence

from servomexd.model import Sample
from servomexd.rows import Record
from servomexd.sinks.base import BaseSink, Checkpoint, validate_checkpoint


class InMemorySink(BaseSink):
    """``samples`` is one list, appended to, never reassigned and not cleared by close.

    ``write_records`` (the daemon path) appends to ``records`` instead.
    """

    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.samples: list[Sample] = []
        self.records: list[Record] = []

    async def open(self) -> None:
        self._is_open = True

    async def write_many(self, samples: Sequence[Sample]) -> None:
        self._require_open()
        self.samples.extend(samples)

    async def write_records(
        self, records: Sequence[Record], *, checkpoint: Checkpoint | None = None
    ) -> None:
        self._require_open()
        validate_checkpoint(checkpoint)
        self.records.extend(records)

    async def close(self) -> None:
        self._is_open = False
