"""Seconds a caller gives the SDK to wait, made safe for the blocking calls that take them.

The standard library's blocking waits (``Future.result``, ``Condition.wait``, ``time.sleep``,
a socket's timeout) raise ``OverflowError`` past about 292 years; ``float("inf")`` is the
usual way to say "no limit", so a wait that long or longer means no limit here.
"""

from __future__ import annotations

import math
import threading

from .errors import ConfigurationError

__all__ = ["LONGEST_WAIT", "sleep_seconds", "wait_limit"]

#: The longest wait the platform's blocking calls take, in seconds.
LONGEST_WAIT = float(threading.TIMEOUT_MAX)


def wait_limit(name: str, timeout: float | None) -> float | None:
    """``timeout`` for a blocking wait: ``None`` (no limit) for ``None``, ``inf`` or more than
    :data:`LONGEST_WAIT`; a NaN or something other than a number is refused, naming ``name``."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or math.isnan(timeout):
        raise ConfigurationError(f"{name} must be seconds or None, not {timeout!r}")
    return None if timeout >= LONGEST_WAIT else float(timeout)


def sleep_seconds(seconds: float) -> float:
    """``seconds`` for ``time.sleep``: at most :data:`LONGEST_WAIT`."""
    return min(seconds, LONGEST_WAIT)
