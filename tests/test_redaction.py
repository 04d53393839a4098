"""servomexd/redaction.py: one mask, one list of secret words, for logs, check-config and errors."""

from __future__ import annotations

import pytest

from servomexd.errors import ServomexError
from servomexd.redaction import MASK, is_secret_name, mask_text, register_secret


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://u:hunter2@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://u:hun@ter2@h/db", "postgresql://u:***@h/db"),
        (
            "postgresql://h/db?password=hunter2&sslmode=require",
            "postgresql://h/db?password=***&sslmode=require",
        ),
        ("host=h user=u password=hunter2 dbname=d", "host=h user=u password=*** dbname=d"),
        ("?sslpassword='hunter 2'&x=1", "?sslpassword=***&x=1"),
        ("pg_password: hunter2", "pg_password: ***"),
        ("passwords=a,b", "passwords=***,b"),
        # Not secrets: a word that only starts like one, a password *file* path.
        ("tokenizer=ws expected=13", "tokenizer=ws expected=13"),
        ("pg.password_file: cannot read /x", "pg.password_file: cannot read /x"),
    ],
)
def test_mask_text(text: str, expected: str) -> None:
    assert mask_text(text) == expected


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("password", True),
        ("pg_password", True),
        ("sslpassword", True),
        ("sink.postgres.dsn", True),
        ("sink.postgres.password_file", True),
        ("API_KEY", True),
        ("token", True),
        ("CREDENTIALS_DIRECTORY", True),
        ("passwords", True),
        ("tokenizer", False),
        ("port", False),
        ("target", False),
    ],
)
def test_secret_names(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_known_secrets_masked_in_any_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    from servomexd import redaction

    monkeypatch.setattr(redaction, "_KNOWN_SECRETS", set())
    register_secret("Bare-Pw-4417")
    register_secret("abc")  # too short to mask safely: ignored
    text = "server said: bad credential 'Bare-Pw-4417' for abc"
    assert mask_text(text) == f"server said: bad credential '{MASK}' for abc"
    assert mask_text("a longer-one b", known=["longer-one", None]) == f"a {MASK} b"


def test_error_context_masks_secret_keys() -> None:
    error = ServomexError("connect failed", context={"password": "hunter2", "port": 5432})
    assert str(error) == f"connect failed [password={MASK}, port=5432]"
