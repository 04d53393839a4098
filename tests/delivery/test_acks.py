"""servomexd/delivery/acks.py: the spool ack runs beside the next write, in seq order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rig import FlakyDestination, Rig, rec, stored, until

from servomexd.config import SinkSettings
from servomexd.rows import Record
from servomexd.spool import Spool


class SlowAckSpool(Spool):
    """Acks take 0.1 s (a slow disk): they are recorded, and how many are in flight."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.acks: list[int] = []
        self.acking = 0

    async def ack(self, upto_seq: int) -> int:
        self.acking += 1
        try:
            await asyncio.sleep(0.1)
            self.acks.append(upto_seq)
            return await super().ack(upto_seq)
        finally:
            self.acking -= 1


class OverlapWatch(FlakyDestination):
    """Notes, per write, whether the previous write's ack was still running."""

    spool: SlowAckSpool

    def __init__(self, settings: SinkSettings) -> None:
        super().__init__(settings)
        self.beside_an_ack = 0

    async def write_records(self, records: Sequence[Record], *, checkpoint: Any) -> None:
        self.beside_an_ack += self.spool.acking > 0
        await super().write_records(records, checkpoint=checkpoint)


async def test_the_ack_runs_beside_the_next_write_in_seq_order(tmp_path: Path) -> None:
    """Step 3 overlapped: a backlog drains in chunks, each chunk written while the spool
    acks the one before; acks still go in seq order and nothing is lost or doubled."""
    spool = SlowAckSpool(tmp_path / "spool")
    rig = Rig(tmp_path, make_dest=OverlapWatch, spool=spool, max_write_rows=20)
    assert isinstance(rig.dest, OverlapWatch)
    rig.dest.spool = spool
    rig.dest.down = True
    async with rig:
        for i in range(0, 200, 10):
            rig.add([rec(i + j) for j in range(10)])
            await rig.writer.flusher.flush()  # one spool batch of 10 each
        await until(lambda: rig.spool.stats.samples == 200)
        rig.dest.down = False
        await until(lambda: rig.idle)
    assert stored(rig.db) == [float(i) for i in range(200)]
    assert rig.dest.beside_an_ack >= 5  # ~10 chunks of 20: most wrote beside an ack
    assert spool.acks == sorted(spool.acks) and len(set(spool.acks)) == len(spool.acks)
