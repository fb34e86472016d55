"""Numbers a caller gives the SDK (counts, seconds, budgets), its flags and the URLs of the
servers it names, checked where they are given.

A NaN compares false with everything, so ``value <= 0`` checks let it through, to fail
later outside the SDK's errors or to mean "no limit" by accident; a bool is an ``int`` to
Python but not a count. These checks refuse both with a
:class:`~photoroom_bg.errors.ConfigurationError` naming the setting.

The standard library's blocking waits (``Future.result``, ``Condition.wait``, ``time.sleep``,
a socket's timeout) raise ``OverflowError`` past about 292 years; ``float("inf")`` is the
usual way to say "no limit", so a wait that long or longer means no limit
(:func:`wait_limit`).
"""

from __future__ import annotations

import inspect
import math
import sys
import threading
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ._redact import redact_url
from .errors import ConfigurationError

T = TypeVar("T")

__all__ = [
    "LONGEST_WAIT",
    "check_callback",
    "check_count",
    "check_flag",
    "check_float_range",
    "check_given",
    "check_number",
    "check_server_url",
    "check_type",
    "flag_validator",
    "shown",
    "sleep_seconds",
    "wait_limit",
]

#: The longest wait the platform's blocking calls take, in seconds.
LONGEST_WAIT = float(threading.TIMEOUT_MAX)


def check_given(name: str, value: T) -> T:
    """``value``, unless it is an empty string: a setting given as ``""`` (most often an unset
    variable) must not fall back to the default, which for a URL is Photoroom or AWS itself,
    and for a path the current folder."""
    if isinstance(value, str) and not value.strip():
        raise ConfigurationError(
            f"{name} is an empty string (an unset variable?): give a value, or None for the default"
        )
    return value


def check_server_url(name: str, url: str, example: str, *, credentials: str | None = None) -> str:
    """``url``, the http(s) URL of a server (``example`` shows one) with no query string or
    fragment in it, nor credentials when ``credentials`` says where they go instead: a URL
    without a scheme, or with a query, fails only at the first call, as something else.
    It is shown without its credentials or query."""
    shown = repr(redact_url(url))
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # "http://[::1" and the like
        host = None
    if host is None or parts.scheme.lower() not in ("http", "https"):
        raise ConfigurationError(f"{name} {shown} is not the http(s) URL of a server ({example})")
    if credentials is not None and (parts.username is not None or parts.password is not None):
        raise ConfigurationError(f"{name} {shown} takes no credentials: {credentials}")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ConfigurationError(f"{name} {shown} takes no query string or fragment")
    return url


def check_flag(name: str, value: object) -> bool:
    """``True`` or ``False``, nothing else: a string from an environment variable or a file
    is truthy whatever it says (``"false"`` included), and ``None`` or ``0`` mean a mistake
    more often than "off"."""
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, not {shown(value)}")
    return value


def flag_validator(_: object, attribute: Any, value: object) -> None:
    """:func:`check_flag` as an attrs validator, naming the field."""
    check_flag(attribute.name, value)


def check_type(
    name: str,
    value: T,
    types: type | tuple[type, ...],
    what: str,
    *,
    optional: bool = True,
) -> T:
    """``value`` when it is one of ``types`` (or ``None``, when ``optional``); else a
    :class:`~photoroom_bg.errors.ConfigurationError` saying ``name`` must be ``what`` (the
    value itself is not shown: it may be a secret given in the wrong place). A bool is no
    number here, though Python counts it as an ``int``."""
    if optional and value is None:
        return value
    kinds = types if isinstance(types, tuple) else (types,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise ConfigurationError(f"{name} must be {what}, not {type(value).__name__}")
    return value


def check_callback(name: str, value: T, *, plain: bool = False) -> T:
    """``value`` when it is ``None`` or callable (with ``plain``, not an ``async def``: its
    coroutine would never be awaited); else a ``ConfigurationError``."""
    if value is not None and not callable(value):
        raise ConfigurationError(f"{name} must be a function or None, not {type(value).__name__}")
    if plain and (
        inspect.iscoroutinefunction(value)
        or inspect.iscoroutinefunction(getattr(value, "__call__", None))  # noqa: B004
    ):
        raise ConfigurationError(
            f"{name} must be a plain function (def), not an async def: it is called, not "
            "awaited, so its body would never run; do the async work after the batch, or "
            "hand it to your event loop from the function (loop.call_soon_threadsafe)"
        )
    return value


def shown(value: object) -> str:
    """``repr(value)`` for a message, which an integer of more digits than Python prints
    (4,300 by default) makes raise ``ValueError``: that one is described instead."""
    try:
        return repr(value)
    except ValueError:
        limit = getattr(sys, "get_int_max_str_digits", lambda: 4300)()
        sign = "-" if isinstance(value, int) and value < 0 else ""
        return f"an integer of {sign}more than {limit:,} digits"


def check_count(name: str, value: object, least: int, *, most: int | None = sys.maxsize) -> int:
    """A whole number ``>= least`` (not a bool, not a float) and, unless ``most`` is
    ``None``, ``<= most`` (no container holds more than ``sys.maxsize`` items); return it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigurationError(f"{name} must be a whole number >= {least}, not {shown(value)}")
    if most is not None and value > most:
        raise ConfigurationError(
            f"{name} must be a whole number from {least} to {most:,}, not {shown(value)}"
        )
    return value


def check_float_range(name: str, value: object) -> None:
    """Refuse an integer past what a float holds (about 1.8e308): every wait and rate takes
    a number as a float, and ``float()`` of it raises ``OverflowError``."""
    if isinstance(value, int) and abs(value) > sys.float_info.max:
        raise ConfigurationError(
            f"{name} must be a number a float holds (float('inf') for no limit), not {shown(value)}"
        )


def check_number(
    name: str, value: object, *, positive: bool = False, finite: bool = False
) -> float:
    """A number (seconds, requests...): not NaN, not negative (not 0 when ``positive``, not
    infinite when ``finite``), and not an integer past what a float holds (``math.isnan``
    and every wait raise ``OverflowError`` on it; ``float("inf")`` says "no limit");
    return it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number, not {shown(value)}")
    check_float_range(name, value)
    if math.isnan(value):
        raise ConfigurationError(f"{name} must be a number, not {value!r}")
    if value < 0 or (positive and value == 0):
        least = "greater than 0" if positive else ">= 0"
        raise ConfigurationError(f"{name} must be {least}, not {value!r}")
    if finite and math.isinf(value):
        raise ConfigurationError(f"{name} must be finite, not {value!r}")
    return value


def wait_limit(name: str, timeout: float | None) -> float | None:
    """``timeout`` for a blocking wait: ``None`` (no limit) for ``None``, ``inf`` or more than
    :data:`LONGEST_WAIT`, 0 for a negative one; a NaN or something other than a number is
    refused, naming ``name``."""
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or (isinstance(timeout, float) and math.isnan(timeout))
    ):
        raise ConfigurationError(f"{name} must be seconds or None, not {shown(timeout)}")
    # an integer past what a float holds is compared as it is (float() of it would raise);
    # a negative wait is no wait
    return None if timeout >= LONGEST_WAIT else float(max(timeout, 0))


def sleep_seconds(seconds: float) -> float:
    """``seconds`` for ``time.sleep``: at most :data:`LONGEST_WAIT`."""
    return min(seconds, LONGEST_WAIT)
