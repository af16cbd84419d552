"""Log redaction: no API key ever reaches a log handler through the ``vastai_async`` loggers.

A :class:`logging.Filter` on a logger only sees records created on that very logger, not those
propagated from its children, so the filter is attached to ``vastai_async`` *and* to every module
logger obtained through :func:`get_logger`. It rewrites ``Authorization: Bearer ...``,
``api_key=...`` (query strings, keyword reprs, JSON) and any secret registered with
:func:`register_secret` (the session registers its key), whatever the record's format.
"""

from __future__ import annotations

import logging
import re
import threading

__all__ = [
    "REDACTED",
    "RedactingFilter",
    "get_logger",
    "install_redaction",
    "redact",
    "register_secret",
]

REDACTED = "[REDACTED]"
ROOT_LOGGER_NAME = "vastai_async"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # "Authorization: Bearer abc", "'Authorization': 'Bearer abc'", "authorization=abc".
    (
        re.compile(r"(authorization['\"]?\s*[:=]\s*['\"]?)(bearer\s+)?[^\s'\",;&}]+", re.I),
        rf"\1\2{REDACTED}",
    ),
    (re.compile(r"(bearer\s+)[A-Za-z0-9._~+/=-]+", re.I), rf"\1{REDACTED}"),
    # "?api_key=abc&", "api_key='abc'", '"api_key": "abc"'.
    (
        re.compile(r"(api[_-]?key['\"]?\s*[:=]\s*['\"]?)[^\s'\",;&}]+", re.I),
        rf"\1{REDACTED}",
    ),
)

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(secret: str) -> None:
    """Redact this exact value from every ``vastai_async`` log record from now on.

    Args:
        secret: a key or password; values shorter than 6 characters are ignored (too likely to
            appear in ordinary text).
    """
    if len(secret) >= 6:
        with _secrets_lock:
            _secrets.add(secret)


def redact(text: str) -> str:
    """Return ``text`` with bearer tokens, ``api_key`` values and registered secrets masked."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrite a record's message (and pre-formatted traceback) with secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact in place; never drops a record."""
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not hide the record; logging reports it
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        if record.exc_info and not record.exc_text:
            # Formatters reuse a cached exc_text: fill it now so the traceback is redacted too.
            record.exc_text = _FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FORMATTER = logging.Formatter()
_FILTER = RedactingFilter()


def install_redaction(logger: logging.Logger) -> logging.Logger:
    """Attach the redaction filter to ``logger`` (idempotent) and return it."""
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


def get_logger(name: str) -> logging.Logger:
    """The module logger ``name`` (under ``vastai_async``) with the redaction filter attached.

    Args:
        name: usually ``__name__``.
    """
    install_redaction(logging.getLogger(ROOT_LOGGER_NAME))
    return install_redaction(logging.getLogger(name))
