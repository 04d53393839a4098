"""servomexd/spool.py: codec round trip, ordering, ack, overflow, crash safety."""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servomexd.rows import ROW_COLUMNS, Record
from servomexd.spool import (
    SPOOL_FILENAME,
    ServomexSpoolError,
    Spool,
    decode_records,
    encode_records,
)

NOW = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def record(i: int, device: str = "dev", value: float | None = 20.9) -> Record:
    return (
        device, "I1", "transducer", "O2", value, "%", True, False, False, False, False,
        "continuous", 1000 + i, NOW + timedelta(seconds=i), None, None, None,
    )


def error_record(i: int) -> Record:
    return (
        "dev", None, None, None, None, None, None, None, None, None, None,
        "modbus_rtu", 5 + i, NOW, NOW - timedelta(milliseconds=3), 0.003, "checksum mismatch",
    )


# --- codec ---------------------------------------------------------------------------------

aware = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), UTC]),
)
text = st.none() | st.text(max_size=20)
boolish = st.none() | st.booleans()
records = st.tuples(
    st.text(min_size=1, max_size=10), text, text, text,
    st.none() | st.floats(allow_nan=True, allow_infinity=True), text,
    boolish, boolish, boolish, boolish, boolish, text,
    st.integers(min_value=0, max_value=2**63 - 1), aware, st.none() | aware,
    st.none() | st.floats(min_value=0, max_value=1e6), text,
)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


@settings(max_examples=200, deadline=None)
@given(st.lists(records, max_size=30))
def test_codec_round_trip(batch: list[Record]) -> None:
    decoded = decode_records(encode_records(batch))
    assert len(decoded) == len(batch)
    for original, back in zip(batch, decoded, strict=True):
        assert len(back) == len(ROW_COLUMNS)
        for index, (a, b) in enumerate(zip(original, back, strict=True)):
            if isinstance(a, datetime):
                # Same instant, returned as tz-aware UTC.
                assert b == a and b.tzinfo is UTC, ROW_COLUMNS[index]
            else:
                assert same(a, b), (ROW_COLUMNS[index], a, b)


def test_codec_is_not_pickle() -> None:
    import json
    import marshal
    import zlib

    payload = encode_records([record(1), error_record(2)])
    assert payload[:1] == b"\x03"
    columns = marshal.loads(zlib.decompress(payload[1:]))
    assert columns[0] == ["dev", "dev"]
    # payloads written by earlier versions (columnar JSON, plain or zlib) stay readable
    text = json.dumps(columns).encode()
    assert decode_records(b"\x01" + text) == decode_records(payload)
    assert decode_records(b"\x02" + zlib.compress(text)) == decode_records(payload)
    with pytest.raises(ValueError, match="format"):
        decode_records(b"\x80\x04" + payload)  # a pickle header is refused


def _framed(value: object) -> bytes:
    import marshal
    import zlib

    return b"\x03" + zlib.compress(marshal.dumps(value))


@pytest.mark.parametrize(
    ("what", "damage"),
    [
        ("truncated", lambda p: p[:-3]),
        ("flipped byte", lambda p: p[:10] + bytes([p[10] ^ 0xFF]) + p[11:]),
        ("not marshal", lambda p: b"\x03" + __import__("zlib").compress(b"\x00garbage")),
        ("not a list", lambda p: _framed({"a": 1})),
        ("wrong column count", lambda p: _framed([[1], [1]])),
        ("ragged columns", lambda p: _framed([[1]] * 16 + [[1, 2]])),
        ("column not a list", lambda p: _framed([[1]] * 16 + ["x"])),
    ],
)
def test_damaged_payload_is_a_value_error(what: str, damage: Any) -> None:
    payload = encode_records([record(1), error_record(2)])
    with pytest.raises(ValueError):
        decode_records(damage(payload))


def test_codec_naive_timestamp_is_utc() -> None:
    naive = (*record(0)[:13], datetime(2025, 1, 1, 0, 0), *record(0)[14:])
    (back,) = decode_records(encode_records([naive]))
    assert back[13] == datetime(2025, 1, 1, tzinfo=UTC)


# --- the spool -------------------------------------------------------------------------------


async def test_append_peek_ack_in_order(tmp_path: Path) -> None:
    async with Spool(tmp_path) as spool:
        stream = spool.stream_id
        seqs = [await spool.append([record(i), record(i + 100)]) for i in range(5)]
        assert seqs == sorted(seqs) and len(set(seqs)) == 5
        assert spool.stats.samples == 10 and spool.stats.batches == 5
        batches = await spool.peek()
        assert [b.seq for b in batches] == seqs
        assert batches[0].records == [record(0), record(100)]
        await spool.ack(seqs[2])
        assert [b.seq for b in await spool.peek()] == seqs[3:]
        assert spool.stats.samples == 4
        # read_after respects the row limit but always returns at least one batch
        assert [b.seq for b in await spool.read_after(0, 1)] == [seqs[3]]
        assert [b.seq for b in await spool.read_after(seqs[3], 100)] == [seqs[4]]
    async with Spool(tmp_path) as again:
        assert again.stream_id == stream
        pending = await again.peek()
        assert [b.seq for b in pending] == seqs[3:]
        assert pending[0].records == [record(3), record(103)]  # read back from disk
        assert again.stats.last_seq == seqs[-1]
        new = await again.append([record(9)])
        assert new > seqs[-1]


async def test_seq_never_reused_after_ack(tmp_path: Path) -> None:
    async with Spool(tmp_path) as spool:
        first = await spool.append([record(1)])
        await spool.ack(first)
        assert spool.stats.batches == 0
    async with Spool(tmp_path) as spool:
        assert await spool.append([record(2)]) == first + 1


async def test_overflow_drops_oldest_and_counts(tmp_path: Path) -> None:
    drops: list[tuple[int, int]] = []
    size = len(encode_records([record(0)] * 50))
    spool = Spool(tmp_path, max_bytes=1_048_576, on_drop=lambda b, s: drops.append((b, s)))
    spool._store.max_bytes = size * 3 + 10  # small bound for the test (config floor is 1 MiB)
    async with spool:
        seqs = [await spool.append([record(i)] * 50) for i in range(5)]
        pending = [b.seq for b in await spool.peek()]
        assert pending == seqs[2:]  # the two oldest went
        assert spool.stats.bytes <= spool._store.max_bytes
        assert spool.dropped_samples == 100 and spool.dropped_batches == 2
        assert drops == [(1, 50), (1, 50)]


async def test_oldest_age_and_bytes(tmp_path: Path) -> None:
    async with Spool(tmp_path) as spool:
        assert spool.stats.oldest_age() == 0.0
        await spool.append([record(0)])
        stats = spool.stats
        assert stats.bytes > 0 and 0 <= stats.oldest_age() < 5
        assert stats.oldest_created_at is not None
        assert stats.oldest_age(now=stats.oldest_created_at + 7) == pytest.approx(7)


async def test_committed_batches_survive_sigkill(tmp_path: Path) -> None:
    """append() returning is the durability point: a killed process keeps every batch."""
    script = textwrap.dedent(
        f"""
        import asyncio, os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_spool import record
        from servomexd.spool import Spool
        async def main():
            spool = Spool({str(tmp_path)!r})
            await spool.open()
            for i in range(20):
                seq = await spool.append([record(i)])
                print("SEQ", seq, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        asyncio.run(main())
        """
    )
    proc = subprocess.run(  # noqa: ASYNC221 - the test waits for the child on purpose
        [sys.executable, "-c", script], capture_output=True, text=True
    )
    assert proc.returncode == -9
    printed = [int(x.split()[1]) for x in proc.stdout.splitlines() if x.startswith("SEQ ")]
    assert len(printed) == 20
    async with Spool(tmp_path) as spool:
        pending = await spool.peek()
        assert [b.seq for b in pending] == printed
        assert [b.records[0] for b in pending] == [record(i) for i in range(20)]


async def test_corrupt_file_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / SPOOL_FILENAME).write_bytes(b"this is not a database" * 100)
    async with Spool(tmp_path) as spool:
        await spool.append([record(1)])
        assert spool.stats.batches == 1
    names = [p.name for p in tmp_path.iterdir()]  # noqa: ASYNC240 - tiny test dir
    assert any(n.startswith(SPOOL_FILENAME + ".corrupt-") for n in names)


async def test_undecodable_batch_is_skipped_and_counted(tmp_path: Path) -> None:
    async with Spool(tmp_path, cache_rows=0) as spool:
        a = await spool.append([record(1)])
        b = await spool.append([record(2), record(3)])
        c = await spool.append([record(4)])
    conn = sqlite3.connect(tmp_path / SPOOL_FILENAME)
    conn.execute("UPDATE batches SET payload = x'02ff00' WHERE seq = ?", (b,))
    conn.commit()
    conn.close()
    async with Spool(tmp_path) as spool:
        assert [x.seq for x in await spool.peek()] == [a, c]
        assert spool.dropped_samples == 2


async def test_unwritable_directory(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = Path("/proc/servomexd-spool-test")  # even root cannot create it
    else:
        target = tmp_path / "ro"
        target.mkdir()
        target.chmod(0o500)
    with pytest.raises((ServomexSpoolError, OSError)):
        await Spool(target / "spool").open()


async def test_not_open_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ServomexSpoolError, match="not open"):
        await Spool(tmp_path).append([record(0)])
