"""The delivery side against a real SqliteSink (or JSONL file) and a real spool.

Sink failures are injected by a thin Destination subclass (a real SQLite file is behind
it); the Postgres outage with a real server is in tests/e2e.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry

from servomexd.backoff import Backoff
from servomexd.config import SinkSettings
from servomexd.delivery import Writer
from servomexd.destination import Destination
from servomexd.errors import ServomexSinkWriteError
from servomexd.metrics import Metrics
from servomexd.rows import Record
from servomexd.spool import Spool

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def rec(i: int) -> Record:
    return (
        "dev", "I1", "transducer", "O2", float(i), "%", True, False, False, False, False,
        "continuous", i, T0 + timedelta(milliseconds=i), None, None, None,
    )


class FlakyDestination(Destination):
    """A real sink behind it; ``fail`` decides per write: None, "before" or "after" commit."""

    def __init__(self, settings: SinkSettings) -> None:
        super().__init__(settings)
        self.fail: Callable[[int], str | None] = lambda n: None
        self.writes: list[int] = []
        self.down = False

    async def open(self) -> None:
        if self.down:
            raise ServomexSinkWriteError("connection refused")
        await super().open()

    async def write_records(
        self, records: Sequence[Record], *, checkpoint: tuple[str, int] | None
    ) -> None:
        if self.down:
            raise ServomexSinkWriteError("connection refused")
        mode = self.fail(len(self.writes))
        self.writes.append(len(records))
        if mode == "before":
            raise ServomexSinkWriteError("injected failure before commit")
        await super().write_records(records, checkpoint=checkpoint)
        if mode == "after":
            raise TimeoutError("injected: reply lost after commit")


def stored(path: Path) -> list[float]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT value FROM samples ORDER BY rowid")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polling observable state on purpose
            await asyncio.sleep(0.01)


class Rig:
    """A Writer over a real spool and a FlakyDestination; ``make_dest``/``spool`` swap
    in another destination or spool before the writer is built."""

    def __init__(
        self,
        tmp_path: Path,
        kind: str = "sqlite",
        *,
        make_dest: Callable[[SinkSettings], FlakyDestination] = FlakyDestination,
        spool: Spool | None = None,
        **writer_kw: object,
    ) -> None:
        suffix = {"sqlite": "sqlite", "jsonl": "jsonl"}[kind]
        self.db = tmp_path / f"out.{suffix}"
        self.settings = SinkSettings(type=kind, path=self.db)
        self.metrics = Metrics(CollectorRegistry())
        self.spool = spool if spool is not None else Spool(tmp_path / "spool")
        self.dest = make_dest(self.settings)
        kw: dict[str, object] = {
            "batch_size": 10, "flush_interval": 0.05, "max_write_rows": 1000,
            "write_timeout": 5.0, "backoff": Backoff(initial=0.02, cap=0.05, floor=0.0),
        }
        kw.update(writer_kw)
        self.writer = Writer(self.spool, self.dest, self.metrics, **kw)
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Rig:
        await self.spool.open()
        self.task = asyncio.create_task(self.writer.run())
        return self

    async def stop(self) -> None:
        self.writer.request_stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 10)
        await self.writer.aclose()
        await self.spool.close()

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None and not self.task.done():
            await self.stop()

    def add(self, records: Sequence[Record]) -> None:
        self.writer.flusher.add_records(records)

    @property
    def idle(self) -> bool:
        """Everything accepted has left the memory buffer and the spool."""
        return self.spool.stats.batches == 0 and self.writer.flusher.buffered == 0

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value
