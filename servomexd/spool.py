"""The crash-safe outbox between acquisition and the sink.

Every sample the daemon accepts is appended here (one row per batch, SQLite WAL,
``synchronous=FULL`` by default) before any sink sees it: the commit of ``append`` is
the durability point, so a crash loses at most what was still in the memory buffer.
The writer delivers batches in ``seq`` order and ``ack``s them once the sink has
committed them; the spool ``stream_id`` plus ``seq`` is the checkpoint the sink stores
in the same transaction, which makes a retry after an ambiguous failure idempotent.

``seq`` comes from ``INTEGER PRIMARY KEY AUTOINCREMENT``: SQLite never reuses a value,
even after the rows are deleted, so a checkpoint can never point at a newer batch.

A batch is stored as one payload (``spool_codec.py``: column lists, marshal, zlib;
never pickle). Rows the sink refuses alone wait in the quarantine table
(``spool_quarantine.py``) for an operator's decision.

All sqlite3 calls run on one dedicated thread that owns the connection and the
in-memory index of pending batches; the event loop only awaits results.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import structlog

from servomexd.errors import ServomexError
from servomexd.rows import Record
from servomexd.spool_codec import decode_records as decode_records
from servomexd.spool_codec import encode_records as encode_records
from servomexd.spool_quarantine import QuarantineResult as QuarantineResult
from servomexd.spool_quarantine import QuarantineTable
from servomexd.spool_sql import immediate, insert_batch

T = TypeVar("T")

SPOOL_FILENAME = "spool.sqlite"
_DECODE_SLICE_S = 0.0005
"""Longest stretch of payload decoding before yielding to the event loop."""

log = structlog.get_logger("servomexd.spool")


class ServomexSpoolError(ServomexError):
    """The spool file cannot be opened or written."""

    reason = "spool"


# --- the spool ---------------------------------------------------------------------------


class SpoolBatch(NamedTuple):
    seq: int
    records: list[Record]


class SpoolStats(NamedTuple):
    batches: int
    samples: int
    bytes: int
    oldest_created_at: float | None
    """Wall-clock time (epoch seconds) of the oldest pending batch."""
    last_seq: int
    """Highest seq ever appended (0 for a new spool)."""
    quarantined: int = 0
    """Samples in the quarantine table (refused by the sink; never delivered by itself)."""
    quarantine_bytes: int = 0

    def oldest_age(self, now: float | None = None) -> float:
        if self.oldest_created_at is None:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - self.oldest_created_at)


class _Entry(NamedTuple):
    created_at: float
    samples: int
    nbytes: int


class AppendResult(NamedTuple):
    seq: int
    dropped_batches: int
    dropped_samples: int
    dropped: tuple[tuple[int, int], ...] = ()
    """(seq, samples) of each batch dropped to make room."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    samples INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL,
    quarantined_at REAL NOT NULL,
    error TEXT NOT NULL,
    payload BLOB NOT NULL,
    retry INTEGER NOT NULL DEFAULT 0
);
"""
class _RecentBatches:
    """Just-appended batches kept in memory, so a healthy sink never re-reads them from
    the file; past ``max_rows`` records the oldest batches leave first."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self._batches: OrderedDict[int, list[Record]] = OrderedDict()
        self._rows = 0

    def __contains__(self, seq: int) -> bool:
        return seq in self._batches

    def get(self, seq: int) -> list[Record] | None:
        return self._batches.get(seq)

    def add(self, seq: int, records: list[Record]) -> None:
        self._batches[seq] = records
        self._rows += len(records)
        while self._rows > self.max_rows and self._batches:
            _, evicted = self._batches.popitem(last=False)
            self._rows -= len(evicted)

    def forget(self, seq: int) -> None:
        cached = self._batches.pop(seq, None)
        if cached is not None:
            self._rows -= len(cached)

    def replace(self, seq: int, records: list[Record]) -> None:
        """Batch ``seq`` was rewritten (rows quarantined): keep its new records, if held."""
        if seq in self._batches:
            self._rows += len(records) - len(self._batches[seq])
            self._batches[seq] = records


class _SpoolStore:
    """The thread-confined part: the connection, the index, the fast-path cache."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        synchronous: str,
        cache_rows: int,
        quarantine_max_bytes: int = 64 << 20,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.quarantined = QuarantineTable(quarantine_max_bytes)
        self.synchronous = synchronous
        self.conn: sqlite3.Connection | None = None
        self.stream_id = ""
        self.index: OrderedDict[int, _Entry] = OrderedDict()
        self.samples = 0
        self.bytes = 0
        self.last_seq = 0
        self.cache = _RecentBatches(cache_rows)

    # -- lifecycle --

    def open(self) -> str | None:
        """Open (creating if needed); returns the name a corrupt file was moved to, if any."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        moved: str | None = None
        try:
            self._open_db()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and not _is_corruption(exc):
                raise
            # Keep the evidence, start a new spool: refusing to start would stop recording.
            self._close_db()
            moved = _set_aside(self.path)
            self._open_db()
        return moved

    def _open_db(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        self.conn = conn
        self.stream_id = _prepare(conn, self.synchronous)
        self.index.clear()
        self.samples = self.bytes = 0
        for seq, created_at, samples, nbytes in conn.execute(
            "SELECT seq, created_at, samples, length(payload) FROM batches ORDER BY seq"
        ):
            self.index[seq] = _Entry(created_at, samples, nbytes)
            self.samples += samples
            self.bytes += nbytes
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'batches'").fetchone()
        self.last_seq = int(row[0]) if row else 0
        self.quarantined.count(conn)

    def _close_db(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._close_db()

    def _db(self) -> sqlite3.Connection:
        if self.conn is None:
            raise ServomexSpoolError("the spool is not open", context={"path": str(self.path)})
        return self.conn

    # -- operations --

    def append(self, records: Sequence[Record]) -> AppendResult:
        payload = encode_records(records)
        conn = self._db()
        # Make room by dropping the OLDEST batches: the newest data is the most useful
        # once the sink returns, and the operator is told loudly what was lost.
        dropped = _oldest_to_drop(self.index, self.bytes + len(payload) - self.max_bytes)
        created_at = time.time()
        with immediate(conn):
            if dropped:
                conn.execute("DELETE FROM batches WHERE seq <= ?", (dropped[-1][0],))
            rowid = insert_batch(conn, created_at, len(records), payload)
        if rowid is None:
            raise ServomexSpoolError("INSERT returned no rowid", context={"path": str(self.path)})
        seq = rowid
        for old, _ in dropped:
            self._forget(old)
        self.index[seq] = _Entry(created_at, len(records), len(payload))
        self.samples += len(records)
        self.bytes += len(payload)
        self.last_seq = seq
        self.cache.add(seq, list(records))
        return AppendResult(
            seq, len(dropped), sum(samples for _, samples in dropped), tuple(dropped)
        )

    def _forget(self, seq: int) -> None:
        entry = self.index.pop(seq, None)
        if entry is not None:
            self.samples -= entry.samples
            self.bytes -= entry.nbytes
        self.cache.forget(seq)

    def ack(self, upto_seq: int) -> int:
        """Forget every batch with seq <= upto_seq; returns how many were pending."""
        doomed = []
        for seq in self.index:
            if seq > upto_seq:
                break
            doomed.append(seq)
        if not doomed:
            return 0
        conn = self._db()
        # An ack needs no fsync: if it is lost, the sink's checkpoint says the batch is
        # already committed and it is acked again, not re-written.
        conn.execute("PRAGMA synchronous = NORMAL")
        try:
            conn.execute("DELETE FROM batches WHERE seq <= ?", (upto_seq,))
        finally:
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        for seq in doomed:
            self._forget(seq)
        if not self.index:
            self._reclaim()
        return len(doomed)

    def _reclaim(self) -> None:
        """Give the pages of a drained backlog back to the filesystem."""
        conn = self._db()
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        if free > 256:
            conn.execute("PRAGMA incremental_vacuum")

    def read_after(self, after_seq: int, max_rows: int) -> list[tuple[int, list[Record] | bytes]]:
        """Consecutive pending batches after ``after_seq``, up to ``max_rows`` rows (at least
        one batch): cached records, or the stored payload for the caller to decode."""
        wanted: list[int] = []
        rows = 0
        for seq, entry in self.index.items():
            if seq <= after_seq:
                continue
            if wanted and rows + entry.samples > max_rows:
                break
            wanted.append(seq)
            rows += entry.samples
        if not wanted:
            return []
        missing = [seq for seq in wanted if seq not in self.cache]
        loaded: dict[int, bytes] = {}
        if missing:
            loaded = dict(
                self._db().execute(
                    "SELECT seq, payload FROM batches WHERE seq >= ? AND seq <= ? ORDER BY seq",
                    (missing[0], missing[-1]),
                )
            )
        out: list[tuple[int, list[Record] | bytes]] = []
        for seq in wanted:
            item: list[Record] | bytes | None = self.cache.get(seq)
            if item is None:
                item = loaded.get(seq)
            if item is not None:
                out.append((seq, item))
        return out

    def records_of(self, seq: int) -> list[Record]:
        """The records of one pending batch (from the cache or decoded)."""
        cached = self.cache.get(seq)
        if cached is not None:
            return list(cached)
        row = self._db().execute("SELECT payload FROM batches WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            raise ServomexSpoolError(f"no pending batch {seq}", context={"path": str(self.path)})
        return decode_records(row[0])

    def quarantine(self, seq: int, bad: Sequence[int], error: str) -> QuarantineResult:
        """Move the records at indexes ``bad`` of batch ``seq`` to the quarantine table;
        the rest keeps its seq and its place in the order."""
        conn = self._db()
        kept, result = self.quarantined.move(conn, seq, self.records_of(seq), bad, error)
        entry = self.index.get(seq)
        if kept and entry is not None:
            nbytes = conn.execute(
                "SELECT length(payload) FROM batches WHERE seq = ?", (seq,)
            ).fetchone()[0]
            self.samples += len(kept) - entry.samples
            self.bytes += nbytes - entry.nbytes
            self.index[seq] = _Entry(entry.created_at, len(kept), nbytes)
            self.cache.replace(seq, kept)
        else:
            self._forget(seq)
        return result

    def requeue_quarantine(self) -> int:
        """Move quarantined rows marked for retry into a new batch at the end; returns
        the samples moved. Run by the daemon periodically, so a ``servomexd spool
        retry-quarantine`` takes effect while it runs."""
        batch = self.quarantined.requeue(self._db())
        if batch is None:
            return 0
        self.index[batch.seq] = _Entry(batch.created_at, batch.samples, batch.nbytes)
        self.samples += batch.samples
        self.bytes += batch.nbytes
        self.last_seq = batch.seq
        return batch.samples

    def drop(self, seqs: Sequence[int]) -> int:
        """Delete batches that cannot be decoded; returns the samples they held."""
        dropped = 0
        for seq in seqs:
            entry = self.index.get(seq)
            dropped += entry.samples if entry else 0
            self._db().execute("DELETE FROM batches WHERE seq = ?", (seq,))
            self._forget(seq)
        return dropped

    def stats(self) -> SpoolStats:
        oldest = next(iter(self.index.values())).created_at if self.index else None
        return SpoolStats(
            len(self.index),
            self.samples,
            self.bytes,
            oldest,
            self.last_seq,
            self.quarantined.samples,
            self.quarantined.bytes,
        )


def _oldest_to_drop(index: OrderedDict[int, _Entry], excess: int) -> list[tuple[int, int]]:
    """(seq, samples) of the oldest batches whose bytes add up to ``excess`` or more
    (none when ``excess <= 0``)."""
    dropped: list[tuple[int, int]] = []
    for seq, entry in index.items():
        if excess <= 0:
            break
        dropped.append((seq, entry.samples))
        excess -= entry.nbytes
    return dropped


def _prepare(conn: sqlite3.Connection, synchronous: str) -> str:
    """WAL, the durability level, the schema; returns the spool's ``stream_id`` (made
    and stored on first use)."""
    conn.execute("PRAGMA busy_timeout = 5000")
    # auto_vacuum only takes effect before the first table exists.
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch the spool to WAL (got {mode})")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA journal_size_limit = 67108864")
    conn.executescript(_SCHEMA)
    row = conn.execute("SELECT value FROM meta WHERE key = 'stream_id'").fetchone()
    if row is not None:
        return str(row[0])
    stream_id = str(uuid.uuid4())
    conn.execute("INSERT INTO meta (key, value) VALUES ('stream_id', ?)", (stream_id,))
    return stream_id


def _set_aside(path: Path) -> str:
    """Rename a corrupt spool file (and its WAL and shm) out of the way; its new name."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    path.rename(target)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    return str(target)


def _is_corruption(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text


class Spool:
    """Async face of the spool; every sqlite call runs on the spool's own thread."""

    def __init__(
        self,
        directory: str | Path,
        *,
        max_bytes: int = 1 << 30,
        synchronous: str = "FULL",
        cache_rows: int = 10_000,
        on_drop: Callable[[int, int], None] | None = None,
        quarantine_max_bytes: int = 64 << 20,
    ) -> None:
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"synchronous must be OFF/NORMAL/FULL/EXTRA, not {synchronous!r}")
        self.path = Path(directory) / SPOOL_FILENAME
        self._store = _SpoolStore(
            self.path,
            max_bytes=max_bytes,
            synchronous=synchronous.upper(),
            cache_rows=cache_rows,
            quarantine_max_bytes=quarantine_max_bytes,
        )
        self._executor: ThreadPoolExecutor | None = None
        self._on_drop = on_drop
        self._stats = SpoolStats(0, 0, 0, None, 0)
        self.dropped_samples = 0
        self.dropped_batches = 0
        self._held_upto = 0
        """Highest seq the deliverer has read and not yet settled (holds in memory)."""
        self._unsettled: dict[int, int] = {}
        """Batches dropped by overflow while the deliverer held them: (seq -> samples).
        Lost only if the write carrying them fails (``release``); counted then."""

    @property
    def stream_id(self) -> str:
        return self._store.stream_id

    @property
    def stats(self) -> SpoolStats:
        """Snapshot as of the last operation (cheap: no thread hop)."""
        return self._stats

    @property
    def is_open(self) -> bool:
        return self._executor is not None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise ServomexSpoolError("the spool is not open", context={"path": str(self.path)})
        store = self._store

        def call() -> tuple[T, SpoolStats]:
            # Stats are taken on the spool thread, which alone touches the index.
            return fn(*args), store.stats()

        loop = asyncio.get_running_loop()
        result, self._stats = await loop.run_in_executor(self._executor, call)
        return result

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        try:
            moved = await self._call(self._store.open)
        except (sqlite3.Error, OSError) as exc:
            await self._shutdown_executor()
            raise ServomexSpoolError(
                f"cannot open the spool: {exc}", context={"path": str(self.path)}
            ) from exc
        except BaseException:
            await self._shutdown_executor()
            raise
        if moved:
            log.critical(
                "spool.corrupt_file_replaced",
                path=str(self.path),
                moved_to=moved,
                hint="the old file is kept for inspection; recording continues in a new spool",
            )
        stats = self._stats
        log.info(
            "spool.opened",
            path=str(self.path),
            stream_id=self.stream_id,
            pending_samples=stats.samples,
            pending_batches=stats.batches,
        )

    async def append(self, records: Sequence[Record]) -> int:
        """Commit one batch durably; returns its seq."""
        try:
            result = await self._call(self._store.append, records)
        except sqlite3.Error as exc:
            raise ServomexSpoolError(
                f"cannot append to the spool: {exc}", context={"path": str(self.path)}
            ) from exc
        lost = [(seq, n) for seq, n in result.dropped if seq > self._held_upto]
        for seq, n in result.dropped:
            if seq <= self._held_upto:
                self._unsettled[seq] = n  # in the deliverer's hands: may still arrive
        if lost:
            self._dropped(len(lost), sum(n for _, n in lost), "max_bytes reached")
        return result.seq

    def settle(self, written_upto: int) -> None:
        """The write of every batch up to ``written_upto`` committed: batches dropped by
        overflow while held in memory did reach the sink, so they are not lost."""
        arrived = [seq for seq in self._unsettled if seq <= written_upto]
        if arrived:
            samples = sum(self._unsettled.pop(seq) for seq in arrived)
            log.info(
                "spool.overflow_delivered",
                batches=len(arrived),
                samples=samples,
                hint="dropped from the spool while being delivered; they reached the sink",
            )

    def release(self) -> None:
        """The deliverer dropped what it held (a failed write, a resync): held batches
        that overflow already removed from the spool are lost now, and counted."""
        self._held_upto = 0
        if self._unsettled:
            samples = sum(self._unsettled.values())
            batches = len(self._unsettled)
            self._unsettled.clear()
            self._dropped(batches, samples, "max_bytes reached")

    def _dropped(self, batches: int, samples: int, why: str) -> None:
        self.dropped_batches += batches
        self.dropped_samples += samples
        log.error(
            "spool.overflow_dropped_oldest" if why == "max_bytes reached" else "spool.dropped",
            reason=why,
            dropped_samples=samples,
            dropped_batches=batches,
            dropped_samples_total=self.dropped_samples,
            max_bytes=self._store.max_bytes,
            pending_samples=self._stats.samples,
        )
        if self._on_drop is not None:
            self._on_drop(batches, samples)

    async def ack(self, upto_seq: int) -> int:
        try:
            return await self._call(self._store.ack, upto_seq)
        except sqlite3.Error as exc:
            raise ServomexSpoolError(
                f"cannot ack spool batches: {exc}", context={"path": str(self.path)}
            ) from exc

    async def read_after(
        self, after_seq: int, max_rows: int, *, hold: bool = True
    ) -> list[SpoolBatch]:
        """Pending batches in seq order after ``after_seq`` (about ``max_rows`` rows).

        The spool thread only fetches; payloads are decoded here, on the caller's thread,
        a slice at a time. Decoding (pure Python, holding the GIL) on the spool thread
        while the loop streams a COPY made the two fight for the GIL and halved the drain
        rate; on the loop it is cheaper and yields every few milliseconds."""
        try:
            items = await self._call(self._store.read_after, after_seq, max_rows)
        except sqlite3.Error as exc:
            raise ServomexSpoolError(
                f"cannot read the spool: {exc}", context={"path": str(self.path)}
            ) from exc
        batches: list[SpoolBatch] = []
        bad: list[int] = []
        slice_started = time.perf_counter()
        for seq, item in items:
            if isinstance(item, list):
                batches.append(SpoolBatch(seq, item))
                continue
            try:
                batches.append(SpoolBatch(seq, decode_records(item)))
            except (ValueError, TypeError) as exc:
                log.error("spool.batch_undecodable", seq=seq, error=str(exc), path=str(self.path))
                bad.append(seq)
            if time.perf_counter() - slice_started > _DECODE_SLICE_S:
                await asyncio.sleep(0)
                slice_started = time.perf_counter()
        if bad:
            dropped = await self._call(self._store.drop, bad)
            self._dropped(0, dropped, "undecodable batch")
        if batches and hold:  # the deliverer now holds them in memory (see settle)
            self._held_upto = max(self._held_upto, batches[-1].seq)
        return batches

    async def records_of(self, seq: int) -> list[Record]:
        """The records of one pending batch."""
        return await self._call(self._store.records_of, seq)

    async def quarantine(self, seq: int, bad: Sequence[int], error: str) -> QuarantineResult:
        """Move rows of batch ``seq`` to the quarantine table (``spool_quarantine.py``).
        Rows that do not fit under ``quarantine_max_bytes`` are lost: counted as dropped
        and logged at error."""
        try:
            result = await self._call(self._store.quarantine, seq, list(bad), error)
        except sqlite3.Error as exc:
            raise ServomexSpoolError(
                f"cannot quarantine: {exc}", context={"path": str(self.path)}
            ) from exc
        if result.overflowed:
            log.error(
                "spool.quarantine_full",
                seq=seq,
                dropped_samples=result.overflowed,
                quarantine_bytes=self._stats.quarantine_bytes,
                quarantine_max_bytes=self._store.quarantined.max_bytes,
                hint="export and drop the quarantine (servomexd spool export --quarantine; "
                "servomexd spool drop-quarantine --yes) or raise [spool] quarantine_max_bytes",
            )
            self._dropped(0, result.overflowed, "quarantine full")
        return result

    async def requeue_quarantine(self) -> int:
        """Rows an operator marked for retry go back into delivery (a new batch)."""
        try:
            return await self._call(self._store.requeue_quarantine)
        except sqlite3.Error as exc:
            raise ServomexSpoolError(
                f"cannot requeue the quarantine: {exc}", context={"path": str(self.path)}
            ) from exc

    async def peek(self, limit_rows: int = 1 << 62) -> list[SpoolBatch]:
        """Every pending batch from the oldest, up to ``limit_rows`` rows."""
        return await self.read_after(0, limit_rows)

    async def close(self) -> None:
        if self._executor is None:
            return
        self.release()
        with contextlib.suppress(sqlite3.Error):
            await self._call(self._store.close)
        await self._shutdown_executor()

    async def _shutdown_executor(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown, True)

    async def __aenter__(self) -> Spool:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
