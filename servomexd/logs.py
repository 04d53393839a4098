"""structlog configuration: journald, JSON or console output, secrets redacted.

* **journald** (stdout is not a TTY, or ``$JOURNAL_STREAM`` is set): one line per event,
  logfmt (``event=sink.down sink=postgres error="..."``), prefixed with the syslog
  priority ``<N>`` so journald keeps the level (``journalctl -p warning`` works).
  Newlines inside values are escaped, so a traceback stays on its event's line.
* **json**: one JSON object per line (``<N>``-prefixed under journald too).
* **console**: structlog's readable, coloured format on a terminal.

Exceptions are rendered as plain traceback text (journald, console) or structlog's
dict tracebacks with ``show_locals=False`` (json): frame locals are never rendered,
because a local variable may hold a password. A redaction processor replaces the value
of any key that names a secret and masks passwords inside URLs/DSNs in every string,
including exception text (``servomexd.redaction``: the same mask and secret words as
check-config and error messages). Standard-library loggers (pyserial, pymodbus, asyncpg) go
through the same renderer.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from servomexd.redaction import MASK, is_secret_name, mask_text

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
SYSLOG_PRIORITY = {
    "debug": 7,
    "info": 6,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
}
# Chatty third-party libraries stay at WARNING even with level = "debug".
_QUIET_LIBRARIES = ("pymodbus", "asyncpg", "asyncio", "serial", "serial_asyncio_fast")


def _redact_value(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if depth > 6:
        return value
    if isinstance(value, Mapping):
        return {
            k: MASK if isinstance(k, str) and is_secret_name(k) else _redact_value(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v, depth + 1) for v in value)
    return value


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Drop the value of secret-looking keys; mask passwords inside any string value."""
    for key in list(event_dict):
        value = event_dict[key]
        if is_secret_name(key):
            event_dict[key] = MASK
        elif isinstance(value, str | Mapping | list | tuple):
            event_dict[key] = _redact_value(value)
        elif isinstance(value, BaseException):
            event_dict[key] = mask_text(f"{type(value).__name__}: {value}")
    return event_dict


class SyslogPrefixed:
    """Wrap a renderer: ``<N>`` + its one-line output, N from the event's level."""

    def __init__(self, renderer: Processor) -> None:
        self.renderer = renderer

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        level = str(event_dict.get("level", name)).lower()
        priority = SYSLOG_PRIORITY.get(level, 6)
        rendered = self.renderer(logger, name, event_dict)
        text = rendered if isinstance(rendered, str) else str(rendered)
        return f"<{priority}>" + text.replace("\n", "\\n")


def resolve_format(fmt: str, stream: TextIO | None = None) -> str:
    """``auto`` -> journald when under journald or not on a terminal, else console."""
    if fmt != "auto":
        return fmt
    if os.environ.get("JOURNAL_STREAM"):
        return "journald"
    return "console" if _isatty(stream if stream is not None else sys.stdout) else "journald"


def early_line(text: str, priority: int = 3, stream: TextIO | None = None) -> None:
    """Print one line before (or without) ``configure_logging``, with its priority.

    Startup errors (an invalid configuration) happen before the configured format is
    known; under journald they must still carry ``<N>`` or journald files them at info
    and ``journalctl -p err`` hides why the unit failed. On a terminal no prefix is added.
    """
    out = stream if stream is not None else sys.stderr
    prefixed = resolve_format("auto", out) == "journald"
    for line in text.splitlines() or [""]:
        out.write(f"<{priority}>{line}\n" if prefixed else f"{line}\n")
    out.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _processors(
    fmt: str, *, under_journald: bool, colors: bool
) -> tuple[list[Processor], Processor]:
    """(pre-chain, final renderer) for a resolved format."""
    pre: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    if not under_journald:
        # journald stamps every line itself; elsewhere (docker logs, a file) we need it.
        pre.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    renderer: Processor
    if fmt == "json":
        pre.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
        pre.append(redact_secrets)
        json_renderer = structlog.processors.JSONRenderer(default=str, ensure_ascii=False)
        renderer = SyslogPrefixed(json_renderer) if under_journald else json_renderer
    elif fmt == "console":
        pre.append(redact_secrets)
        renderer = structlog.dev.ConsoleRenderer(
            colors=colors,
            exception_formatter=_plain_traceback_redacted,
        )
    else:  # journald
        pre.append(structlog.processors.format_exc_info)
        pre.append(redact_secrets)
        renderer = SyslogPrefixed(
            structlog.processors.LogfmtRenderer(
                key_order=["event", "timestamp"], drop_missing=True, bool_as_flag=False
            )
        )
    return pre, renderer


def _plain_traceback_redacted(sio: TextIO, exc_info: Any) -> None:
    import io

    buffer = io.StringIO()
    structlog.dev.plain_traceback(buffer, exc_info)
    sio.write(mask_text(buffer.getvalue()))


def configure_logging(
    level: str = "info", fmt: str = "auto", stream: TextIO | None = None
) -> str:
    """Configure structlog and the stdlib root logger; returns the resolved format."""
    resolved = resolve_format(fmt, stream)
    out = stream if stream is not None else sys.stdout
    under_journald = bool(os.environ.get("JOURNAL_STREAM"))
    pre, renderer = _processors(resolved, under_journald=under_journald, colors=_isatty(out))
    numeric = LEVELS.get(level.lower(), logging.INFO)
    structlog.configure(
        processors=[*pre, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    # Foreign (stdlib) records through the same processors and renderer.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *pre],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    return resolved
