"""Durable destinations for samples.

``from servomexd.sinks import ...``: the published sinks API (``SampleSink``,
``sample_to_row``, ``pipe``, the six sinks, ``PostgresConfig``) plus what the
daemon needs for exactly-once delivery (``RecordSink``: ``write_records`` with
an atomic checkpoint, ``read_checkpoint``). Optional drivers (asyncpg, pyarrow)
are imported only when their sink opens.
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
