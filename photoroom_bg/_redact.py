"""Keeping credentials out of what is shown: URLs, names, and the log lines of our libraries.

A presigned URL carries its signature in the query string (``X-Amz-Signature=...``) and a URL
may carry a password (``https://user:secret@host/``). :func:`redact_url` shows such a URL
without them; :func:`install_log_redaction` puts a filter on the loggers of the libraries the
SDK drives (httpx, httpcore, botocore, aiobotocore) and its own, so their records show URLs
without query string or credentials and ``Authorization``-like headers without their values.
"""

from __future__ import annotations

import logging
import re
import threading

__all__ = [
    "RedactingFilter",
    "install_log_redaction",
    "is_url",
    "printable",
    "redact_text",
    "redact_url",
]

#: The loggers whose records are filtered, with every child logger that exists at install time.
REDACTED_LOGGERS = ("httpx", "httpcore", "botocore", "aiobotocore", "photoroom_bg")

# scheme://[userinfo@]rest[?query][#fragment]; the greedy userinfo stops at the last "@"
# before the path, so a password containing "@" is removed whole. A "'" is part of a URL
# (``it's.png``) unless what follows ends it, as where a quoted URL is closed
_IN = r"(?:[^\s?#'\"<>]|'(?=[^\s'\"<>,;:)\]}]))"
_URL = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)"
    r"(?P<userinfo>[^\s/?#'\"<>@]*(?:@[^\s/?#'\"<>@]*)*@)?"
    rf"(?P<rest>{_IN}*)"
    rf"(?P<query>\?(?:{_IN}|\?)*)?"
    rf"(?P<fragment>#(?:{_IN}|[?#])*)?"
)
_SECRET_HEADER = re.compile(
    r"(?P<name>\b(?:authorization|proxy-authorization|x-api-key|x-amz-security-token|"
    r"cookie|set-cookie)['\"]?\s*[:=,]\s*b?['\"]?)(?P<value>[^'\"\r\n,})\]]+)",
    re.IGNORECASE,
)
_SIGNATURE = re.compile(r"(?P<name>\bsignature\s*[:=]\s*)(?P<value>[0-9a-fA-F]{16,})", re.I)
REDACTED = "[redacted]"


def lone_surrogate(text: str) -> int | None:
    """Where ``text`` holds its first character UTF-8 cannot carry (a lone surrogate, as
    ``os.fsdecode`` makes of a byte that is not UTF-8, or a ``\\ud800`` JSON escape), or
    ``None`` when it has none."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def printable(text: str) -> str:
    """``text`` with lone surrogates (undecodable file-name bytes) shown as ``\\xNN`` escapes.

    ``os.listdir`` returns names that are not valid UTF-8 with their bytes smuggled in as
    surrogates; such a string cannot be written to a UTF-8 file or terminal.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "backslashreplace")
        return raw.decode("utf-8", "backslashreplace")
    return text


def is_url(text: str) -> bool:
    """Whether ``text`` starts as a URL does: a scheme and ``://`` (a path such as
    ``shoes/a.png`` or ``C:\\a.png`` has none)."""
    return _URL.match(text) is not None


def redact_url(url: str) -> str:
    """``url`` without credentials, query string or fragment; never raises.

    A ``data:`` URL is shown by its media type only.
    """
    text = printable(str(url))
    if text[:5].lower() == "data:":
        return text.split(",", 1)[0] + ",..."
    match = _URL.match(text)
    if match is None:
        return text.split("?", 1)[0].split("#", 1)[0]
    return match.group("scheme") + match.group("rest")


def _strip_url(match: re.Match[str]) -> str:
    return match.group("scheme") + match.group("rest")


def redact_text(text: str) -> str:
    """Every URL in ``text`` without credentials, query or fragment; secret header values hidden."""
    text = _URL.sub(_strip_url, text)
    text = _SECRET_HEADER.sub(lambda m: m.group("name") + REDACTED, text)
    return _SIGNATURE.sub(lambda m: m.group("name") + REDACTED, text)


class RedactingFilter(logging.Filter):
    """Rewrites a log record so it shows no URL credentials, query strings or secret headers.

    The record is formatted once (arguments such as :class:`httpx.URL` included) and replaced
    by its redacted text; records without anything to hide are left alone.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; never drops it."""
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the logging module's to report
            return True
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact_text(formatted)
        return True


_FILTER = RedactingFilter()
_lock = threading.Lock()


def install_log_redaction() -> None:
    """Put the redacting filter on :data:`REDACTED_LOGGERS` and their children (idempotent).

    A logger's filters do not apply to its children's records, so each existing child
    (``httpcore.http11``, ``botocore.endpoint``...) gets the filter too; call this again after
    importing a library that creates more loggers (it is cheap).
    """
    manager = logging.Logger.manager
    with _lock:
        names = [
            name for name in list(manager.loggerDict) if name.split(".", 1)[0] in REDACTED_LOGGERS
        ]
        for name in dict.fromkeys([*REDACTED_LOGGERS, *names]):
            logger = logging.getLogger(name)
            if not any(isinstance(f, RedactingFilter) for f in logger.filters):
                logger.addFilter(_FILTER)
