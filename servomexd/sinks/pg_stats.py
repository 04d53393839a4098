"""Partition and retention figures of the Postgres sinks in this process, for /metrics.

The sink is built by the daemon's destination without a handle on the metrics
registry, so it publishes its figures here and ``servomexd.metrics`` reads them at
scrape time. Keyed by ``schema.table``: the DEFAULT partition's row count is a fact of
the table, shared by every sink writing it. No driver import: metrics.py loads this.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass


@dataclass
class TableStats:
    default_rows: float = math.nan
    """Rows in the table's DEFAULT partition at the last maintenance (NaN: unknown)."""
    partitions_created: int = 0
    partitions_dropped: int = 0
    rows_dropped_estimate: int = 0
    rows_to_default: int = 0
    """Rows this process wrote outside every partition's range (they went to DEFAULT)."""
    maintenance_failures: int = 0


_LOCK = threading.Lock()
_TABLES: dict[str, TableStats] = {}


def table_stats(table: str) -> TableStats:
    with _LOCK:
        stats = _TABLES.get(table)
        if stats is None:
            stats = _TABLES[table] = TableStats()
        return stats


def snapshot() -> dict[str, TableStats]:
    """A copy of every table's figures (read by the metrics collector at scrape time)."""
    with _LOCK:
        return {name: TableStats(**vars(stats)) for name, stats in _TABLES.items()}
