"""JSON from elsewhere (a server's answer, a caller's body, a file others may write), read
so that any text which is not a usable JSON value fails as ``ValueError``.

``json.loads`` already raises ``ValueError`` for malformed text and for an integer of more
digits than Python converts, but a value nested a few thousand levels deep (``[[[[...``, a
few kilobytes) raises ``RecursionError``, which no ``except ValueError`` around a parse
catches: a broken proxy's answer or a caller's body then escaped every typed error.
"""

from __future__ import annotations

import json
from typing import Any

from ._redact import printable

__all__ = ["NotTextError", "loads", "loads_answer", "loads_text"]


def loads(text: str | bytes | bytearray) -> Any:
    """``json.loads``, but a value nested too deeply is a ``ValueError`` too."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None


class NotTextError(ValueError):
    """JSON whose strings hold a lone surrogate: valid JSON, but no text."""


def _may_hold_surrogates(text: str | bytes | bytearray) -> bool:
    """Only a ``\\udxxx`` escape makes a lone surrogate: UTF-8 decoding never does."""
    if isinstance(text, str):
        return "\\ud" in text or "\\uD" in text
    return b"\\ud" in text or b"\\uD" in text  # no lower-case copy of a large answer


def loads_text(text: str | bytes | bytearray) -> Any:
    """:func:`loads`, and a string holding a lone surrogate (a ``\\ud800`` escape: valid
    JSON, but no text UTF-8 can carry) is a :class:`NotTextError`: echoed in an answer or a
    record, it would fail that answer's own encoding."""
    value = loads(text)
    if _may_hold_surrogates(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise NotTextError("JSON holds a \\ud800-\\udfff escape that is not text") from None
    return value


def loads_answer(text: str | bytes | bytearray) -> Any:
    """:func:`loads` for a server's answer, whose strings end up in messages and models: a
    lone surrogate (a ``\\ud800`` escape) is kept as that escape's text, so that printing or
    logging what the answer said never fails to encode."""
    value = loads(text)
    if not _may_hold_surrogates(text):
        return value
    try:
        return _printable(value)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None


def _printable(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list):
        return [_printable(item) for item in value]
    if isinstance(value, dict):
        return {printable(key): _printable(item) for key, item in value.items()}
    return value
