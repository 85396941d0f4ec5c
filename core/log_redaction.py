"""Keeping credentials out of the logs, whatever a library or a client puts in a message.

The code never logs credentials on purpose; this is the net under it. Every handler
the project configures (Django's LOGGING, Celery's workers and beat) formats through
`RedactingFormatter`, which blanks device tokens, provisioning keys, Authorization
values, session and CSRF cookies and password fields in the finished line, the
traceback included.
"""

import logging
import re

REDACTED = "[redacted]"
_PATTERNS = [
    # "Authorization: Bearer x", "Token x", "Basic x": the value after the scheme.
    (re.compile(r"(?i)\b(bearer|token|basic)(\s+)[^\s'\",;]+"), rf"\1\2{REDACTED}"),
    # A device token: key id, a dot, a long URL-safe secret.
    (re.compile(r"\b[A-Za-z0-9_-]{1,32}\.[A-Za-z0-9_-]{40,}"), REDACTED),
    # A fleet provisioning key.
    (re.compile(r"\bfleet_[A-Za-z0-9_-]{16,}"), f"fleet_{REDACTED}"),
    # name=value pairs in cookies, query strings and form bodies.
    (
        re.compile(
            r"(?i)\b(sessionid|csrftoken|csrfmiddlewaretoken|password\d?|passwd|secret|token"
            r"|provisioning_key)=([^&\s;'\",]+)"
        ),
        rf"\1={REDACTED}",
    ),
    # "password": "..." in JSON or a repr.
    (
        re.compile(
            r"""(?i)(["'](?:password\d?|token|secret|provisioning_key)["']\s*:\s*)(["'])[^"']*\2"""
        ),
        rf"\1\2{REDACTED}\2",
    ),
]


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFormatter(logging.Formatter):
    """A formatter whose finished lines carry no credentials.

    Wraps another formatter (Celery's colour one, say) or formats as
    logging.Formatter itself when given a format string.
    """

    def __init__(self, *args, wrapped: logging.Formatter | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.wrapped = wrapped

    def format(self, record: logging.LogRecord) -> str:
        text = self.wrapped.format(record) if self.wrapped else super().format(record)
        return redact(text)


def redact_handlers(logger: logging.Logger) -> None:
    """Make every handler of `logger` format through RedactingFormatter (idempotent)."""
    for handler in logger.handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(
                RedactingFormatter(wrapped=handler.formatter or logging.Formatter())
            )
