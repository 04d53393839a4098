"""``servomexd decode``: a Continuous-ASCII capture (file or stdin) to long-format rows.

One row per channel reading, one error row per rejected line (noise, truncated or
corrupt frame), in the exact ``servomexd.rows.ROW_COLUMNS`` order: jsonl (one JSON
object per line) or csv (header first; CRLF row endings like the CSV sink, empty
fields for nulls). ``received_at`` is the time of decoding, since a capture carries
no host timestamps. A capture whose last line lacks its terminator is still decoded.

A missing or unreadable input is a one-line message on stderr and exit status 2.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any

from servomexd.model import AcquisitionEvent, Rejection
from servomexd.protocol.continuous import ContinuousFramer
from servomexd.rows import ROW_COLUMNS, sample_to_row

__all__ = ["decode_rows", "run_decode"]

_CHUNK = 64 * 1024
EXIT_INPUT = 2
EXIT_BROKEN_PIPE = 141  # what a shell reports for a writer killed by SIGPIPE


def _rows(events: Iterable[AcquisitionEvent], device: str) -> Iterator[dict[str, Any]]:
    for event in events:
        if isinstance(event, Rejection):
            yield sample_to_row(event.as_sample(device))
        else:
            for sample in event.as_samples(device):
                yield sample_to_row(sample)


def decode_rows(chunks: Iterable[bytes], *, device: str) -> Iterator[dict[str, Any]]:
    """Rows decoded from a capture given as chunks of bytes (memory stays flat)."""
    framer = ContinuousFramer()
    for chunk in chunks:
        yield from _rows(framer.feed(chunk), device)
    if framer.buffered:
        yield from _rows(framer.feed(b"\n"), device)  # last line without a terminator


class _InputError(Exception):
    """Reading the capture failed (as opposed to writing the rows)."""


def _read_chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while True:
        try:
            chunk = stream.read(_CHUNK)
        except OSError as error:
            raise _InputError(error.strerror or str(error)) from error
        if not chunk:
            return
        yield chunk


def run_decode(source: str, *, fmt: str, device: str) -> int:
    if fmt not in ("jsonl", "csv"):
        print(f"servomexd decode: unknown format {fmt!r} (jsonl or csv)", file=sys.stderr)
        return EXIT_INPUT
    try:
        stream: IO[bytes] = sys.stdin.buffer if source == "-" else open(source, "rb")  # noqa: SIM115 - closed below
    except OSError as error:
        print(f"servomexd decode: cannot read {source}: {error.strerror or error}", file=sys.stderr)
        return EXIT_INPUT
    out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="", write_through=False)
    try:
        if fmt == "csv":
            writer = csv.writer(out)
            writer.writerow(ROW_COLUMNS)
            for row in decode_rows(_read_chunks(stream), device=device):
                writer.writerow(row.values())
        else:
            dumps = json.dumps
            for row in decode_rows(_read_chunks(stream), device=device):
                out.write(dumps(row, ensure_ascii=False))
                out.write("\n")
        out.flush()
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, and keep the interpreter from
        # complaining about the closed stdout on exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    except _InputError as error:
        print(f"servomexd decode: cannot read {source}: {error}", file=sys.stderr)
        return EXIT_INPUT
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
        with contextlib.suppress(ValueError, OSError):
            out.detach()
    return 0
