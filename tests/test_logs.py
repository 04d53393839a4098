"""servomexd/logs.py: formats, syslog prefix, no frame locals, secret redaction."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from servomexd.logs import configure_logging, redact_secrets, resolve_format
from servomexd.redaction import mask_text


@pytest.fixture(autouse=True)
def _reset(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)


def _fail_with_secret_local() -> None:
    password = "hunter2-local"
    raise RuntimeError(f"connect failed for user x ({len(password)} chars)")


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_journald_one_line_with_priority() -> None:
    out = io.StringIO()
    assert configure_logging("info", "journald", out) == "journald"
    log = structlog.get_logger("t")
    log.info("device.link_up", device="stack-1", channels=5)
    log.warning("sink.down", error="multi\nline")
    log.debug("hidden")
    got = lines(out)
    assert len(got) == 2
    assert got[0].startswith("<6>event=device.link_up ")
    assert "device=stack-1" in got[0] and "channels=5" in got[0]
    assert got[1].startswith("<4>event=sink.down") and "\\n" in got[1]


def test_exception_rendered_without_locals_on_one_line() -> None:
    out = io.StringIO()
    configure_logging("info", "journald", out)
    try:
        _fail_with_secret_local()
    except RuntimeError:
        structlog.get_logger("t").exception("boom")
    (line,) = lines(out)
    assert line.startswith("<3>event=boom")
    assert "Traceback" in line and "RuntimeError" in line
    assert "hunter2-local" not in line


def test_json_dict_tracebacks_without_locals(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    try:
        _fail_with_secret_local()
    except RuntimeError:
        structlog.get_logger("t").exception("boom", dsn="postgresql://u:pw@h/db")
    (line,) = lines(out)
    data = json.loads(line)
    assert data["event"] == "boom" and data["level"] == "error"
    assert data["dsn"] == "***"
    assert "hunter2-local" not in line
    frames = data["exception"][0]["frames"]
    assert all("locals" not in frame or not frame["locals"] for frame in frames)
    # under journald the JSON line gets the priority prefix too
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    out = io.StringIO()
    configure_logging("info", "json", out)
    structlog.get_logger("t").error("e")
    assert lines(out)[0].startswith('<3>{"')


def test_console_format() -> None:
    out = io.StringIO()
    configure_logging("debug", "console", out)
    try:
        _fail_with_secret_local()
    except RuntimeError:
        structlog.get_logger("t").exception("boom", password="s3cret")
    text = out.getvalue()
    assert "boom" in text and "RuntimeError" in text
    assert "s3cret" not in text and "hunter2-local" not in text


def test_auto_format(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_format("auto", io.StringIO()) == "journald"  # not a TTY

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert resolve_format("auto", Tty()) == "console"
    monkeypatch.setenv("JOURNAL_STREAM", "8:1")
    assert resolve_format("auto", Tty()) == "journald"
    assert resolve_format("json", Tty()) == "json"


def test_redaction_processor_with_capture_logs() -> None:
    structlog.configure(processors=[redact_secrets])
    with capture_logs() as logs:
        # capture_logs replaces the processors; apply ours explicitly to its events
        structlog.get_logger().info(
            "x", password="p1", pg_password="p2", token="t", api_key="k",
            target="postgresql://svc:p3@db/plant", note="password=p4 host=h",
            nested={"secret": "p5", "url": "postgres://a:p6@h"},
        )
    (event,) = logs
    cleaned = redact_secrets(None, "info", dict(event))
    text = json.dumps(cleaned)
    for secret in ("p1", "p2", '"t"', '"k"', "p3", "p4", "p5", "p6"):
        assert secret not in text, secret
    assert "postgresql://svc:***@db/plant" in text


def test_stdlib_loggers_rendered_and_redacted() -> None:
    out = io.StringIO()
    configure_logging("info", "journald", out)
    logging.getLogger("servomexd.link").warning("open failed for postgresql://u:pw9@h/x")
    logging.getLogger("pymodbus").info("chatty")  # quieted to WARNING
    got = lines(out)
    assert len(got) == 1
    assert got[0].startswith("<4>") and "pw9" not in got[0] and "servomexd.link" in got[0]


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("postgresql://user:hunter2@db:5432/plant", "hunter2"),
        ("host=db password=hunter2 user=x", "hunter2"),
        ("dsn: postgres://u:p%40ss@h/db?x=1", "p%40ss"),
        ("?sslmode=require&password=hunter2", "hunter2"),
    ],
)
def test_redact_text(text: str, hidden: str) -> None:
    assert hidden not in mask_text(text)


@pytest.mark.parametrize("fmt", ["journald", "json", "console"])
def test_registered_secret_masked_in_any_shape(fmt: str) -> None:
    """A known password quoted bare in an exception (no URL, no key=) is masked too."""
    from servomexd import redaction

    redaction.register_secret("Bare-Pw-4417")
    redaction.register_secret("abc")  # too short to mask safely: ignored
    try:
        out = io.StringIO()
        configure_logging("info", fmt, out)
        try:
            raise ConnectionError("server said: bad credential 'Bare-Pw-4417' for abc")
        except ConnectionError:
            structlog.get_logger("t").exception("sink.down", note="Bare-Pw-4417 again")
        logging.getLogger("asyncpg").error("retrying with Bare-Pw-4417")
        text = out.getvalue()
        assert "Bare-Pw-4417" not in text
        assert text.count("***") >= 3 and "abc" in text  # masked, and only the secret
    finally:
        redaction._KNOWN_SECRETS.clear()


def test_early_line_carries_the_priority_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before logging is configured (an invalid configuration at start) journald must
    still get the priority, or ``journalctl -p err`` hides why the unit failed."""
    from servomexd.logs import early_line

    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    out = io.StringIO()
    early_line("servomexd: a.toml: log.levle: unknown key\nsecond", stream=out)
    assert out.getvalue() == "<3>servomexd: a.toml: log.levle: unknown key\n<3>second\n"


def test_early_line_plain_on_a_terminal_unless_under_systemd(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from servomexd.logs import early_line

    master, slave = os.openpty()
    try:
        with os.fdopen(os.dup(slave), "w") as tty, os.fdopen(os.dup(master), "rb") as reader:
            monkeypatch.delenv("JOURNAL_STREAM", raising=False)
            early_line("plain", 4, stream=tty)
            monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
            early_line("journal", 4, stream=tty)
            expected = b"plain\n<4>journal\n"
            got = b""
            # A pty may hand the two lines over in two reads.
            while len(got.replace(b"\r", b"")) < len(expected):
                got += os.read(reader.fileno(), 100)
            assert got.replace(b"\r", b"") == expected
    finally:
        os.close(master)
        os.close(slave)
