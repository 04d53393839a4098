"""``servomexd spool ...``: the operator's view of the spool, safe while the daemon runs.

* ``status``: pending batches and samples, oldest age, bytes, the quarantine (read-only);
* ``export [--quarantine] --format jsonl|csv``: the pending rows, or the quarantined
  ones with their error, to stdout (read-only);
* ``retry-quarantine``: marks every quarantined row for delivery; the running daemon
  moves them back into a new batch within seconds (or the next start does);
* ``drop-quarantine --yes``: deletes the quarantined rows for good.

The spool is SQLite in WAL mode: readers never block the daemon's writes, and the
daemon never sees a half-done change (each command is one transaction). The path is the
``[spool] path`` of the same configuration file the daemon reads; a file that is not a
servomexd spool is refused without being changed (or created).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

EXIT_NOT_A_SPOOL = 1
EXIT_USAGE = 2


def add_spool_parser(commands: Any, config_help: str) -> None:
    """Register ``spool`` and its sub-commands on the main parser's sub-parsers."""
    spool = commands.add_parser("spool", help="inspect, export or requeue the spool")
    spool.add_argument("--config", help=config_help)
    actions = spool.add_subparsers(dest="spool_command", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="pending samples, oldest age, bytes, quarantine")
    export = actions.add_parser("export", help="pending (or quarantined) rows to stdout")
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    export.add_argument(
        "--quarantine", action="store_true", help="the quarantined rows, with their error"
    )
    retry = actions.add_parser(
        "retry-quarantine", help="deliver the quarantined rows again (after fixing the cause)"
    )
    drop = actions.add_parser("drop-quarantine", help="delete the quarantined rows for good")
    drop.add_argument("--yes", action="store_true", help="confirm the deletion")
    for action in (status, export, retry, drop):  # --config after the action works too
        action.add_argument("--config", help=config_help, default=argparse.SUPPRESS)


class NotASpool(Exception):
    """The configured path holds no servomexd spool."""


def run_spool(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``servomexd spool ACTION``: returns the exit status."""
    out = out if out is not None else sys.stdout
    from servomexd.config import EX_CONFIG, ConfigInvalid, load_settings
    from servomexd.errors import ServomexConfigError
    from servomexd.spool import SPOOL_FILENAME

    try:
        settings = load_settings(args.config)
    except ConfigInvalid as exc:
        for line in exc.lines():
            print(f"servomexd: {line}", file=sys.stderr)
        return EX_CONFIG
    except ServomexConfigError as exc:
        print(f"servomexd: {exc.message}", file=sys.stderr)
        return EX_CONFIG
    path = Path(settings.spool.path) / SPOOL_FILENAME
    action: str = args.spool_command
    if action == "drop-quarantine" and not args.yes:
        print(
            "servomexd: drop-quarantine deletes the quarantined rows for good; "
            "export them first (servomexd spool export --quarantine), then add --yes",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        with _open(path, write=action in ("retry-quarantine", "drop-quarantine")) as conn:
            if action == "status":
                _status(conn, path, out)
            elif action == "export":
                _export(conn, out, fmt=args.format, quarantine=args.quarantine)
            elif action == "retry-quarantine":
                marked = conn.execute("UPDATE quarantine SET retry = 1 WHERE retry = 0").rowcount
                print(
                    f"{marked} quarantined samples marked for delivery; a running daemon "
                    "moves them back into the spool within seconds (event "
                    "spool.quarantine_requeued), otherwise the next start does",
                    file=out,
                )
            else:
                dropped = conn.execute("DELETE FROM quarantine").rowcount
                print(f"{dropped} quarantined samples deleted", file=out)
    except NotASpool as exc:
        print(f"servomexd: {exc} ([spool] path in the configuration)", file=sys.stderr)
        return EXIT_NOT_A_SPOOL
    except sqlite3.Error as exc:
        print(f"servomexd: cannot use the spool {path}: {exc}", file=sys.stderr)
        return EXIT_NOT_A_SPOOL
    return 0


@contextlib.contextmanager
def _open(path: Path, *, write: bool) -> Iterator[sqlite3.Connection]:
    """A connection to an existing spool: read-only unless ``write`` (never created)."""
    if not path.is_file():
        raise NotASpool(f"no spool at {path}")
    query = "mode=rw" if write else "mode=ro"
    if not write and not path.with_name(path.name + "-shm").exists():
        # No connection has it open (no daemon): read it as it is, creating no -wal or
        # -shm file (owned by whoever runs this, they could lock the daemon out later).
        query += "&immutable=1"
    conn = sqlite3.connect(f"file:{path}?{query}", uri=True, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        try:
            tables = {
                row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        except sqlite3.DatabaseError as exc:
            raise NotASpool(f"{path} is not a servomexd spool ({exc})") from None
        if not {"meta", "batches"} <= tables:
            raise NotASpool(f"{path} is not a servomexd spool (no meta/batches tables)")
        if "quarantine" not in tables:
            if write:  # a spool from before the quarantine: the daemon adds it at start
                from servomexd.spool import _SCHEMA

                conn.executescript(_SCHEMA)
            else:
                conn.execute(
                    "CREATE TEMP VIEW quarantine AS SELECT 0 AS id, 0 AS seq, "
                    "0.0 AS quarantined_at, '' AS error, x'' AS payload, 0 AS retry WHERE 0"
                )
        if write:
            conn.execute("BEGIN IMMEDIATE")
        yield conn
        if write:
            conn.execute("COMMIT")
    finally:
        conn.close()


def _status(conn: sqlite3.Connection, path: Path, out: TextIO) -> None:
    stream = conn.execute("SELECT value FROM meta WHERE key = 'stream_id'").fetchone()
    batches, samples, nbytes, oldest, last = conn.execute(
        "SELECT count(*), coalesce(sum(samples), 0), coalesce(sum(length(payload)), 0), "
        "min(created_at), max(seq) FROM batches"
    ).fetchone()
    q_samples, q_bytes, q_retry, q_oldest = conn.execute(
        "SELECT count(*), coalesce(sum(length(payload)), 0), coalesce(sum(retry), 0), "
        "min(quarantined_at) FROM quarantine"
    ).fetchone()
    age = 0.0 if oldest is None else max(0.0, time.time() - oldest)
    lines = [
        ("path", str(path)),
        ("stream_id", stream[0] if stream else "-"),
        ("pending_batches", batches),
        ("pending_samples", samples),
        ("pending_bytes", nbytes),
        ("oldest_age_s", round(age, 1)),
        ("newest_seq", last or 0),
        ("quarantined_samples", q_samples),
        ("quarantine_bytes", q_bytes),
        ("quarantine_marked_for_retry", q_retry),
        ("oldest_quarantined_at", "-" if q_oldest is None else _iso(q_oldest)),
    ]
    for key, value in lines:
        print(f"{key}: {value}", file=out)


def _export(conn: sqlite3.Connection, out: TextIO, *, fmt: str, quarantine: bool) -> None:
    from servomexd.rows import ROW_COLUMNS
    from servomexd.spool import decode_records

    head = ["id", "seq", "quarantined_at", "sink_error"] if quarantine else ["seq"]
    columns = [*head, *ROW_COLUMNS]
    writer = csv.writer(out) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(columns)
    query = (
        "SELECT id, seq, quarantined_at, error, payload FROM quarantine ORDER BY id"
        if quarantine
        else "SELECT seq, payload FROM batches ORDER BY seq"
    )
    for row in conn.execute(query):
        prefix: Sequence[Any] = (
            (row[0], row[1], _iso(row[2]), row[3]) if quarantine else (row[0],)
        )
        for record in decode_records(row[-1]):
            values = [*prefix, *(_plain(v) for v in record)]
            if writer is not None:
                writer.writerow(["" if v is None else v for v in values])
            else:
                out.write(json.dumps(dict(zip(columns, values, strict=True))) + "\n")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value
