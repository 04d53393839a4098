"""What every sink shares: the protocols, identifier checks, the schema policy.

Schema policy (every tabular sink): the destination's columns win. A table that
already exists (or the first batch, for stores without a schema) fixes the
column set and order; a row column the destination lacks is dropped with ONE
``sink.unknown_column_dropped`` warning per column; a destination column the
rows lack is left NULL (or its DEFAULT). Values are coerced to the destination
column's type by a per-column converter chosen once, when the schema is locked.

Event loops: the sinks and ``pipe`` are backend-neutral (AnyIO), so an asyncio or a
trio application can use them; blocking drivers run on each sink's ``SinkWorker``
thread. ``PostgresSink`` is the exception: asyncpg is asyncio-only, so under trio its
``open()`` raises ``ServomexSinkDependencyError`` saying so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from operator import itemgetter
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import structlog

from servomexd.errors import ServomexSinkError, ServomexValidationError
from servomexd.model import Sample
from servomexd.rows import ROW_COLUMNS, Record

log = structlog.get_logger("servomexd.sinks")

IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
CHECKPOINT_TABLE = "servomexd_checkpoints"

SOURCE_KINDS: Mapping[str, str] = {
    "device": "str",
    "channel": "str",
    "kind": "str",
    "name": "str",
    "value": "float",
    "unit": "str",
    "ok": "bool",
    "fault": "bool",
    "maintenance": "bool",
    "calibrating": "bool",
    "warming_up": "bool",
    "protocol": "str",
    "monotonic_ns": "int",
    "received_at": "datetime",
    "requested_at": "datetime",
    "latency_s": "float",
    "error": "str",
}
"""The Python type of each ``ROW_COLUMNS`` entry in a native record."""

Checkpoint = tuple[str, int] | tuple[str, int, int]
"""``(stream, seq)`` or ``(stream, seq, first_seq)``: the write carries the spool batches
``first_seq..seq``. The sink refuses the write (``ServomexSinkCheckpointConflict``) when
its stored checkpoint is already ``>= first_seq``, checked inside the same transaction:
a write whose first attempt committed late (a COMMIT still in flight when the client
gave up) can then never be stored twice."""
Converter = Callable[[Any], Any]


@runtime_checkable
class SampleSink(Protocol):
    """A destination for samples: ``async with sink: await sink.write_many(samples)``."""

    async def open(self) -> None: ...

    async def write_many(self, samples: Sequence[Sample]) -> None: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class RecordSink(SampleSink, Protocol):
    """What the daemon needs on top: native records and an atomic delivery checkpoint.

    With ``supports_checkpoint`` the rows and ``checkpoint=(stream, seq)`` commit in
    one transaction, so after an ambiguous failure ``read_checkpoint(stream)`` says
    whether the batch landed (exactly-once). Without it, ``read_checkpoint`` is
    always 0 and delivery is at-least-once.
    """

    supports_checkpoint: bool

    async def write_records(
        self, records: Sequence[Record], *, checkpoint: Checkpoint | None = None
    ) -> None: ...

    async def read_checkpoint(self, stream: str) -> int: ...


def validate_identifier(name: object, what: str) -> str:
    """A SQL identifier we will double-quote: ``^[A-Za-z_][A-Za-z0-9_]{0,62}$`` only."""
    if not isinstance(name, str) or IDENTIFIER_RE.fullmatch(name) is None:
        raise ServomexValidationError(
            f"invalid {what}: {name!r}; use letters, digits and '_' (not first), "
            "at most 63 characters",
            context={"field": what},
        )
    return name


def validate_checkpoint(checkpoint: Checkpoint | None) -> None:
    if checkpoint is None:
        return
    if len(checkpoint) not in (2, 3):
        raise ServomexValidationError("checkpoint is (stream, seq) or (stream, seq, first_seq)")
    stream, seq = checkpoint[0], checkpoint[1]
    if not isinstance(stream, str) or not stream:
        raise ServomexValidationError("checkpoint stream must be a non-empty string")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ServomexValidationError(f"checkpoint seq must be an int >= 0, got {seq!r}")
    first = checkpoint_first_seq(checkpoint)
    if not isinstance(first, int) or isinstance(first, bool) or not 0 <= first <= seq:
        raise ServomexValidationError(
            f"checkpoint first_seq must be an int in 0..seq, got {first!r}"
        )


def checkpoint_first_seq(checkpoint: Checkpoint) -> int:
    """The first batch of the write: ``(stream, seq)`` is the one batch ``seq``."""
    return checkpoint[2] if len(checkpoint) == 3 else checkpoint[1]


@dataclass(frozen=True)
class ColumnPlan:
    """How a row tuple in ``ROW_COLUMNS`` order becomes a tuple for the destination."""

    columns: tuple[str, ...]
    """Destination columns written, in destination order."""
    indices: tuple[int, ...]
    """For each written column, its index in the source row."""
    converters: tuple[Converter | None, ...]
    dropped: tuple[str, ...]
    missing: tuple[str, ...]

    @cached_property
    def identity(self) -> bool:
        return self.indices == tuple(range(len(ROW_COLUMNS))) and not any(self.converters)

    def apply(self, rows: list[Record]) -> list[Record]:
        if self.identity:
            return rows
        indices = self.indices
        if not any(self.converters):
            if len(indices) == 1:
                only = indices[0]
                return [(row[only],) for row in rows]
            getter = itemgetter(*indices)
            return [getter(row) for row in rows]
        pairs = tuple(zip(indices, self.converters, strict=True))
        return [
            tuple(
                row[index] if convert is None or row[index] is None else convert(row[index])
                for index, convert in pairs
            )
            for row in rows
        ]


def build_plan(
    sink: str,
    target: Sequence[tuple[str, str]],
    converter_for: Callable[[str, str, str], Converter | None],
    *,
    casefold: bool = False,
    warned: set[str] | None = None,
) -> ColumnPlan:
    """Lock to ``target`` = [(column, type)] and log each dropped column once.

    ``converter_for(column, source_kind, target_type)`` returns a converter, None
    when the value passes as it is, or raises ``ServomexSinkSchemaError``. ``warned``
    (kept by the sink) makes the warning once per column for the sink's lifetime,
    even when the schema is locked again after a reconnect.
    """

    def key(name: str) -> str:
        return name.casefold() if casefold else name

    source_index = {key(name): index for index, name in enumerate(ROW_COLUMNS)}
    columns: list[str] = []
    indices: list[int] = []
    converters: list[Converter | None] = []
    missing: list[str] = []
    for column, type_name in target:
        index = source_index.get(key(column))
        if index is None:
            missing.append(column)
            continue
        source = ROW_COLUMNS[index]
        columns.append(column)
        indices.append(index)
        converters.append(converter_for(source, SOURCE_KINDS[source], type_name))
    target_keys = {key(column) for column, _ in target}
    dropped = tuple(name for name in ROW_COLUMNS if key(name) not in target_keys)
    if not columns:
        raise ServomexSinkError(
            f"{sink}: the destination has none of the sample columns",
            context={"columns": ",".join(column for column, _ in target)},
        )
    for name in dropped:
        if warned is not None:
            if name in warned:
                continue
            warned.add(name)
        log.warning("sink.unknown_column_dropped", sink=sink, column=name)
    if missing:
        log.info("sink.missing_columns_null", sink=sink, columns=",".join(missing))
    return ColumnPlan(tuple(columns), tuple(indices), tuple(converters), dropped, tuple(missing))


class BaseSink:
    """Lifecycle shared by the built-in sinks: ``async with``, idempotent close."""

    kind: ClassVar[str] = "sink"
    # What the sink can do, read by the daemon instead of switching on its type name.
    supports_checkpoint: bool = False
    """Rows and the delivery checkpoint commit in one transaction (exactly-once)."""
    file_suffix: ClassVar[str | None] = None
    """Writes a local file, named ``samples.<suffix>`` by default; None: a server."""
    new_file_per_open: ClassVar[bool] = False
    """Opening truncates or starts a file: every open gets a new timestamped name."""
    reopens_on_hup: ClassVar[bool] = False
    """SIGHUP reopens its file (logrotate moved it)."""
    rolls_periodically: ClassVar[bool] = False
    """A file is complete only once closed: the daemon rolls to a new one periodically."""
    needs_credentials: ClassVar[bool] = False
    """A secret (a password) is read at startup and handed to its builder."""
    supports_probe: ClassVar[bool] = False
    """``probe_records`` tries rows in a transaction it rolls back: delivery finds the
    rows the store refuses (poison rows) without committing anything."""

    def __init__(self) -> None:
        self._is_open = False

    @classmethod
    def check_dependencies(cls) -> None:
        """Raise ``ServomexSinkDependencyError`` naming the extra to install when the
        sink's driver is missing (checked at startup: exit 78, not an endless retry)."""

    @property
    def is_open(self) -> bool:
        return self._is_open

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def write_many(self, samples: Sequence[Sample]) -> None:
        raise NotImplementedError

    async def write_records(
        self, records: Sequence[Record], *, checkpoint: Checkpoint | None = None
    ) -> None:
        raise NotImplementedError

    async def read_checkpoint(self, stream: str) -> int:
        """At-least-once sinks keep no checkpoint: always 0."""
        self._require_open()
        return 0

    async def probe_records(self, records: Sequence[Record]) -> None:
        """Write ``records`` and roll back: raises what a real write would raise."""
        raise NotImplementedError

    def _require_open(self) -> None:
        if not self._is_open:
            raise ServomexSinkError(f"{self.kind} sink is not open", context={"sink": self.kind})

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
