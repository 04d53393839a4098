"""Durable destinations for samples.

``from servomexd.sinks import ...``: the published sinks API (``SampleSink``,
``sample_to_row``, ``pipe``, the six sinks, ``PostgresConfig``) plus what the
daemon needs for exactly-once delivery (``RecordSink``: ``write_records`` with
an atomic checkpoint, ``read_checkpoint``). Optional drivers (asyncpg, pyarrow)
are imported only when their sink opens.

Failure contract (what the daemon's writer relies on):

* ``ServomexSinkWriteError``: the batch was not stored (rolled back as a whole),
  the driver error is chained as ``__cause__``. ``open()`` raises it too when the
  store is unreachable. Its ``failure`` (``servomexd.errors.SinkFailure``) says what
  to do: TRANSIENT (retry later; ``retryable`` is True), OPERATOR
  (``ServomexSinkFault``: ``fault`` names the reason, ``fix`` the remedy) or DATA
  (``ServomexSinkDataError``: these rows are refused; ``probe_records`` finds which).
* ``ServomexSinkSchemaError``: the destination table is missing or a column type
  cannot hold the data (``open()``); fix the configuration.
* ``ServomexSinkDependencyError``: the optional driver is not installed.
* A write whose outcome is unknown (cancelled, or the connection died during
  COMMIT) is resolved with ``read_checkpoint`` on the sinks that support it.
"""

from servomexd.rows import sample_to_row
from servomexd.sinks.base import RecordSink, SampleSink, validate_identifier
from servomexd.sinks.files import CsvSink, JsonlSink
from servomexd.sinks.memory import InMemorySink
from servomexd.sinks.parquet import ParquetSink
from servomexd.sinks.pipe import AcquisitionSummary, pipe
from servomexd.sinks.postgres import PostgresSink
from servomexd.sinks.postgres_config import PostgresConfig
from servomexd.sinks.sqlite import SqliteSink

__all__ = [
    "AcquisitionSummary",
    "CsvSink",
    "InMemorySink",
    "JsonlSink",
    "ParquetSink",
    "PostgresConfig",
    "PostgresSink",
    "RecordSink",
    "SampleSink",
    "SqliteSink",
    "pipe",
    "sample_to_row",
    "validate_identifier",
]
