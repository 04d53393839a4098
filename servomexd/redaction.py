"""How a secret is hidden: one mask, one list of secret words, one masking function.

Logs (``logs.redact_secrets``), ``check-config`` (``config.effective_config`` and its
error lines), the error hierarchy (``ServomexError.__str__``) and the Postgres sink's
driver messages (``PostgresConfig.scrub``) all mask through here, so a secret hidden
in one place is hidden the same way in every other.

Three nets, widest last: the exact values the configuration holds
(``register_secret``), the password of any ``scheme://user:PASSWORD@host`` URL, and
the value after any secret word followed by ``=`` or ``:`` (``password=...``,
``sslpassword: ...``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"

SECRET_WORDS = (
    "password",
    "passwd",
    "sslpassword",
    "pwd",
    "secret",
    "token",
    "dsn",
    "credential",
    "apikey",
    "api_key",
)
"""A name holding one of these as a word, singular or plural (``pg_password``,
``sink.postgres.dsn``, ``api_keys``; not ``tokenizer``), names a secret."""

_WORD = "|".join(SECRET_WORDS)
_SECRET_NAME = re.compile(rf"(?i)(?<![a-z])(?:{_WORD})s?(?![a-z])")
_URL_PASSWORD = re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^:/@\s]*:)([^\s/?#]+)(@)")
_KEY_VALUE = re.compile(
    rf"(?i)((?<![a-z])(?:{_WORD})s?\s*[=:]\s*)('[^']*'|\"[^\"]*\"|[^\s&,;]+)"
)

_KNOWN_SECRETS: set[str] = set()
_MIN_SECRET_LENGTH = 4  # a 1-3 character "password" would mask ordinary words


def is_secret_name(name: str) -> bool:
    """True when a key, field or dotted location names a secret."""
    return _SECRET_NAME.search(name) is not None


def register_secret(secret: str | None) -> None:
    """Mask this exact value wherever it appears (a configured password).

    The patterns catch secrets by their shape; this catches the known ones in any
    shape, for instance quoted bare in a driver's error message.
    """
    if secret and len(secret) >= _MIN_SECRET_LENGTH:
        _KNOWN_SECRETS.add(secret)


def mask_text(text: str, known: Iterable[str | None] = ()) -> str:
    """``text`` with registered and ``known`` secrets, URL passwords and ``word=value``
    secrets replaced by ``MASK``; user and host names are kept for debugging."""
    secrets = _KNOWN_SECRETS.union(s for s in known if s) if known else _KNOWN_SECRETS
    for secret in sorted(secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\g<1>{MASK}\g<3>", text)
    if _SECRET_NAME.search(text):
        text = _KEY_VALUE.sub(rf"\g<1>{MASK}", text)
    return text


__all__ = ["MASK", "SECRET_WORDS", "is_secret_name", "mask_text", "register_secret"]
