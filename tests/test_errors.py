"""The error hierarchy: labels, readable messages, pickling."""

from __future__ import annotations

import copy
import pickle

import pytest

from servomexd.errors import (
    ServomexChecksumError,
    ServomexConfigError,
    ServomexConnectionError,
    ServomexError,
    ServomexFrameError,
    ServomexModbusError,
    ServomexParseError,
    ServomexProtocolError,
    ServomexSinkDependencyError,
    ServomexSinkError,
    ServomexSinkSchemaError,
    ServomexSinkWriteError,
    ServomexTimeoutError,
    ServomexTransportError,
    ServomexValidationError,
)


@pytest.mark.parametrize(
    ("cls", "parent", "reason"),
    [
        (ServomexTimeoutError, ServomexTransportError, "timeout"),
        (ServomexConnectionError, ServomexTransportError, "connection"),
        (ServomexParseError, ServomexProtocolError, "parse"),
        (ServomexFrameError, ServomexProtocolError, "parse"),
        (ServomexChecksumError, ServomexProtocolError, "checksum"),
        (ServomexModbusError, ServomexProtocolError, "modbus_exception"),
        (ServomexConfigError, ServomexError, "config"),
        (ServomexValidationError, ValueError, "validation"),
        (ServomexSinkSchemaError, ServomexSinkError, "sink_schema"),
        (ServomexSinkWriteError, ServomexSinkError, "sink_write"),
        (ServomexSinkDependencyError, ServomexSinkError, "sink_dependency"),
    ],
)
def test_hierarchy_and_reason_labels(cls: type[ServomexError], parent: type, reason: str) -> None:
    error = cls("boom")
    assert isinstance(error, ServomexError) and isinstance(error, parent)
    assert error.reason == reason
    assert cls("boom", reason="noise").reason == "noise"  # per-instance override
    assert cls.reason == reason  # the override did not leak to the class


def test_sink_dependency_error_is_also_a_config_error() -> None:
    # As in the published library: `except ServomexConfigError` around open() catches it.
    assert issubclass(ServomexSinkDependencyError, ServomexConfigError)
    assert issubclass(ServomexSinkDependencyError, ServomexSinkError)
    with pytest.raises(ServomexConfigError) as caught:
        raise ServomexSinkDependencyError("needs pyarrow", context={"extra": "parquet"})
    assert caught.value.reason == "sink_dependency"
    assert str(caught.value) == "needs pyarrow [extra=parquet]"
    copied = pickle.loads(pickle.dumps(caught.value))
    assert isinstance(copied, ServomexConfigError) and copied.context == {"extra": "parquet"}


def test_message_renders_context_and_raw() -> None:
    error = ServomexFrameError("bad frame", raw=b" 06-10;", context={"port": "/dev/ttyUSB0"})
    assert str(error) == "bad frame [port=/dev/ttyUSB0, raw=b' 06-10;']"
    assert str(ServomexError("plain")) == "plain"
    assert error.raw == b" 06-10;" and error.context == {"port": "/dev/ttyUSB0"}


def test_long_raw_is_shortened_in_the_message_but_kept_whole() -> None:
    raw = bytes(range(200))
    error = ServomexParseError("x", raw=raw)
    assert error.raw == raw
    assert str(error).endswith("...(+136 bytes)]")
    assert len(str(error)) < 400


def test_checksum_error_carries_both_values() -> None:
    error = ServomexChecksumError("checksum mismatch", expected=0x2A1E, received=0x2A1D)
    assert (error.expected, error.received) == (0x2A1E, 0x2A1D)
    assert "computed=2A1E" in str(error) and "received=2A1D" in str(error)


def test_modbus_error_code() -> None:
    error = ServomexModbusError("illegal address", exception_code=2, context={"address": 30})
    assert error.exception_code == 2
    assert str(error) == "illegal address [address=30, exception_code=2]"


@pytest.mark.parametrize(
    "error",
    [
        ServomexChecksumError("c", expected=1, received=2, raw=b"raw", context={"port": "p"}),
        ServomexModbusError("m", exception_code=1),
        ServomexFrameError("noise line", raw=b"\xff", reason="noise"),
        ServomexValidationError("v", context={"field": "baudrate"}),
    ],
    ids=["checksum", "modbus", "frame", "validation"],
)
def test_pickle_and_copy_keep_everything(error: ServomexError) -> None:
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
        assert type(clone) is type(error)
        assert str(clone) == str(error)
        assert (clone.raw, clone.context, clone.reason) == (error.raw, error.context, error.reason)
        for name, value in vars(error).items():  # expected/received, exception_code...
            assert getattr(clone, name) == value, name
