"""The error hierarchy: every failure servomexd raises is a ``ServomexError``.

Errors are meant to be read in a journal line, so each carries the raw bytes it
choked on (shortened) and a small context mapping (port, device, field...), and
renders both in ``str()``, with the value of any context key that names a secret
masked (``servomexd.redaction``). ``reason`` is the short machine label used for the
``servomexd_frames_rejected_total{reason=...}`` metric.
"""

from __future__ import annotations

import enum
import ssl
from collections.abc import Mapping
from typing import Any, TypedDict, Unpack

from servomexd.redaction import MASK, is_secret_name

_RAW_PREVIEW_BYTES = 64


class ServomexError(Exception):
    """Root of every error raised by servomexd."""

    reason: str = "error"

    def __init__(
        self,
        message: str,
        *,
        raw: bytes | None = None,
        context: Mapping[str, Any] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.raw = raw
        self.context: dict[str, Any] = dict(context or {})
        if reason is not None:
            self.reason = reason

    def __str__(self) -> str:
        parts = [
            f"{key}={MASK if is_secret_name(key) else value}" for key, value in self.context.items()
        ]
        if self.raw is not None:
            preview = self.raw[:_RAW_PREVIEW_BYTES]
            suffix = f"...(+{len(self.raw) - _RAW_PREVIEW_BYTES} bytes)" if len(
                self.raw
            ) > _RAW_PREVIEW_BYTES else ""
            parts.append(f"raw={preview!r}{suffix}")
        if not parts:
            return self.message
        return f"{self.message} [{', '.join(parts)}]"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only state would be lost by the default Exception pickling; the
        # instance dict carries subclass attributes (expected/received, exception_code).
        return (
            _rebuild,
            (type(self), self.message, self.raw, self.context, self.reason),
            dict(self.__dict__),
        )


def _rebuild(
    cls: type[ServomexError],
    message: str,
    raw: bytes | None,
    context: dict[str, Any],
    reason: str,
) -> ServomexError:
    error = cls.__new__(cls)
    ServomexError.__init__(error, message, raw=raw, context=context, reason=reason)
    return error


class ErrorDetails(TypedDict, total=False):
    """The keyword arguments every ``ServomexError`` takes, passed on by subclasses."""

    raw: bytes | None
    context: Mapping[str, Any] | None
    reason: str | None


def _with_context(details: ErrorDetails, extra: Mapping[str, Any]) -> ErrorDetails:
    """``details`` with the given values added to its context (None values left out;
    a key the caller's context already has keeps the caller's value)."""
    merged = dict(details.get("context") or {})
    for key, value in extra.items():
        if value is not None:
            merged.setdefault(key, value)
    return {**details, "context": merged}


def short_cause(exc: BaseException) -> str:
    """What an OS or TLS failure says, without the errno and library noise around it
    (for "cannot read (No such file or directory)"-style messages)."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# --- transport: the serial line itself -------------------------------------------------


class ServomexTransportError(ServomexError):
    """The link to the analyser failed; the supervisor reconnects."""

    reason = "transport"


class ServomexTimeoutError(ServomexTransportError):
    """Nothing (valid) arrived within the allowed time."""

    reason = "timeout"


class ServomexConnectionError(ServomexTransportError):
    """The port could not be opened, or was lost (EOF, adapter unplugged, I/O error)."""

    reason = "connection"


# --- protocol: bytes that do not decode ------------------------------------------------


class ServomexProtocolError(ServomexError):
    """Bytes arrived but do not form a valid message."""

    reason = "parse"


class ServomexParseError(ServomexProtocolError):
    """A field could not be decoded (bad channel id, bad count, bad date...)."""

    reason = "parse"


class ServomexFrameError(ServomexProtocolError):
    """The frame structure is wrong: no start character, wrong token count, overlong line."""

    reason = "parse"


class ServomexChecksumError(ServomexProtocolError):
    """The transmitted checksum does not match the one computed over the frame."""

    reason = "checksum"

    def __init__(
        self,
        message: str,
        *,
        expected: int | None = None,
        received: int | None = None,
        **details: Unpack[ErrorDetails],
    ) -> None:
        shown = {
            "computed": None if expected is None else f"{expected:04X}",
            "received": None if received is None else f"{received:04X}",
        }
        super().__init__(message, **_with_context(details, shown))
        self.expected = expected
        self.received = received


class ServomexModbusError(ServomexProtocolError):
    """The slave answered with a Modbus exception response."""

    reason = "modbus_exception"

    def __init__(
        self, message: str, *, exception_code: int | None = None, **details: Unpack[ErrorDetails]
    ) -> None:
        super().__init__(message, **_with_context(details, {"exception_code": exception_code}))
        self.exception_code = exception_code


# --- configuration and validation ------------------------------------------------------


class ServomexConfigError(ServomexError):
    """The configuration is invalid; the daemon exits with EX_CONFIG (78)."""

    reason = "config"


class ServomexValidationError(ServomexError, ValueError):
    """A value passed to the API is out of range or otherwise not acceptable."""

    reason = "validation"


# --- sinks -----------------------------------------------------------------------------


class SinkFailure(enum.Enum):
    """What the delivery loop does about a sink error: the sink error classification.

    * ``TRANSIENT``: the store or the path to it is briefly unavailable (connection
      refused or reset, timeout, server restarting, disk full, lock contention): back
      off and retry; no operator needed.
    * ``OPERATOR``: it will not work until someone changes something (credentials,
      privileges, a missing database/schema/table, a read-only path, a missing driver, a
      certificate that fails verification): not ready, an error log with the fix at most
      every 5 minutes, ``servomexd_sink_fault{reason}``, keep spooling, retry slowly.
    * ``DATA``: the rows themselves are refused (a CHECK constraint, a value out of
      range for the column, a trigger that raises): isolate them, quarantine what fails
      alone.
    """

    TRANSIENT = "transient"
    OPERATOR = "operator"
    DATA = "data"


SINK_FAULT_REASONS = frozenset(
    {
        "authentication",
        "authorization",
        "missing_database",
        "missing_schema",
        "schema_mismatch",
        "read_only_path",
        "read_only_database",
        "missing_driver",
        "tls",
        "rejects_every_row",
        "other",
    }
)
"""The bounded ``reason`` label of ``servomexd_sink_fault`` (operator-needed faults)."""


class ServomexSinkError(ServomexError):
    """A sink could not store samples.

    ``failure`` (a ``SinkFailure``) decides what delivery does; ``fault`` is the bounded
    reason label of an operator-needed failure and ``fix`` the sentence telling the
    operator what to do. ``retryable`` is true only for a transient failure.
    """

    reason = "sink"
    failure: SinkFailure = SinkFailure.TRANSIENT
    fault: str | None = None
    fix: str | None = None

    def __init__(
        self,
        message: str,
        *,
        raw: bytes | None = None,
        context: Mapping[str, Any] | None = None,
        reason: str | None = None,
        failure: SinkFailure | None = None,
        fault: str | None = None,
        fix: str | None = None,
    ) -> None:
        super().__init__(message, raw=raw, context=context, reason=reason)
        if failure is not None:
            self.failure = failure
        if fault is not None:
            if fault not in SINK_FAULT_REASONS:
                raise ValueError(f"unknown sink fault reason {fault!r}")
            self.fault = fault
        if fix is not None:
            self.fix = fix
        if self.failure is SinkFailure.OPERATOR and self.fault is None:
            self.fault = "other"

    @property
    def retryable(self) -> bool:
        """A retry soon may succeed (the failure is transient)."""
        return self.failure is SinkFailure.TRANSIENT


def sink_failure(exc: BaseException) -> SinkFailure:
    """The classification of any exception a sink raised; unknown ones are transient
    (retried with backoff: an unclassified error must not lose or quarantine data)."""
    if isinstance(exc, ServomexSinkError):
        return exc.failure
    return SinkFailure.TRANSIENT


class ServomexSinkSchemaError(ServomexSinkError):
    """The destination table or file does not match, or does not exist."""

    reason = "sink_schema"
    failure = SinkFailure.OPERATOR
    fault = "schema_mismatch"


class ServomexSinkWriteError(ServomexSinkError):
    """Writing to the store failed; nothing of the failed batch counts as written."""

    reason = "sink_write"


class ServomexSinkCheckpointConflict(ServomexSinkWriteError):
    """The sink already holds (part of) this write: its checkpoint is at or past the
    write's first batch. Nothing was written; re-read the checkpoint and go on."""

    reason = "sink_checkpoint_conflict"


class ServomexSinkFault(ServomexSinkWriteError):
    """The sink cannot work until an operator fixes something (credentials, privileges,
    a missing database, a read-only path, a certificate that fails verification).
    Retrying soon will not help: the daemon reports not ready and retries slowly."""

    reason = "sink_fault"
    failure = SinkFailure.OPERATOR


class ServomexSinkDataError(ServomexSinkWriteError):
    """The store refused the rows themselves (a constraint, a value out of range, a
    trigger that raises): the same rows will fail again; they are isolated and the
    ones that fail alone are quarantined."""

    reason = "sink_data"
    failure = SinkFailure.DATA


READ_ONLY_PATH_FIX = (
    "make the directory writable by the service user: add it to ReadWritePaths= in the "
    "unit, or fix its owner (chown servomexd:servomexd)"
)


def path_error(action: str, path: object, exc: OSError) -> ServomexSinkWriteError:
    """A file sink's directory or file could not be created or written: permission
    denied or a read-only file system needs an operator; anything else (a full disk, an
    I/O error) is transient."""
    import errno

    message = f"{action} {path}: {exc.strerror or exc}"
    if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        return ServomexSinkFault(
            message, context={"path": str(path)}, fault="read_only_path", fix=READ_ONLY_PATH_FIX
        )
    return ServomexSinkWriteError(message, context={"path": str(path)})


class ServomexSinkDependencyError(ServomexSinkError, ServomexConfigError):
    """An optional dependency (an extra such as ``servomexd[postgres]``) is missing, or
    the sink cannot run here (``PostgresSink`` under trio: asyncpg is asyncio-only).

    Also a ``ServomexConfigError``, as in the published library: ``except
    ServomexConfigError`` around ``open()`` catches a missing extra.
    """

    reason = "sink_dependency"
    failure = SinkFailure.OPERATOR
    fault = "missing_driver"
