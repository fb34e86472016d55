"""Which failures are retried, and how long to wait: ``Retry-After`` first, else backoff.

Retried: connection errors, timeouts, 408, 429, 5xx except 501/505 (which a retry cannot
fix), and a success status whose body is spoiled (empty, not an image, cut short). Every other
4xx is final: retrying a 400/402/403 can never succeed.

Photoroom bills only calls that succeed, but some failures are ambiguous: a read timeout, a
connection dropped after the request was sent, a truncated or spoiled answer or a gateway's
5xx may come after the server made (and billed) the image. Those carry
``possibly_billed=True``; they are retried by default (finishing the image costs what
re-running it would), and counted as possibly billed.
``RetryPolicy(retry_possibly_billed=False)`` fails them instead.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Iterator

import attrs
import backoff

from ._numbers import check_number, flag_validator
from .errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    PhotoroomError,
    RateLimitError,
)

__all__ = ["RetryPolicy", "is_retryable", "parse_retry_after"]

# 501 Not Implemented and 505 HTTP Version Not Supported are answers, not accidents
_FINAL_SERVER_STATUS = frozenset({501, 505})
# delta-seconds: digits (a fraction is tolerated); nothing float() would also take
_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)


def _seconds(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    # a negative or NaN delay would retry at once, in a loop, or fail at the first sleep
    check_number(attribute.name, value)


def _finite_seconds(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    # an endless first backoff: every retry would wait forever
    check_number(attribute.name, value, finite=True)


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How retries wait.

    Attributes:
        initial_delay: first backoff delay in seconds (doubled each attempt, with full
            jitter); finite.
        max_delay: the longest backoff delay.
        max_retry_after: a server's ``Retry-After`` is honoured up to this many seconds.
        retry_possibly_billed: retry failures the server may have billed (read timeouts,
            dropped connections, truncated or spoiled answers, 5xx other than 503). ``True`` by
            default: the retry may pay for the image a second time, which re-running the
            failed image would cost anyway; ``False`` fails such calls at once instead.
    """

    initial_delay: float = attrs.field(default=0.5, validator=_finite_seconds)
    max_delay: float = attrs.field(default=30.0, validator=_seconds)
    max_retry_after: float = attrs.field(default=60.0, validator=_seconds)
    retry_possibly_billed: bool = attrs.field(default=True, validator=flag_validator)

    def delays(self) -> Iterator[float]:
        """Backoff delays for successive retries (exponential, full jitter, capped)."""
        base = backoff.expo(base=2, factor=self.initial_delay, max_value=self.max_delay)
        next(base)  # backoff's generators are primed with a first send()
        for value in base:
            yield backoff.full_jitter(float(value))

    def delay_for(self, error: PhotoroomError, fallback: float) -> float:
        """The wait before retrying after ``error``: ``Retry-After`` (capped), else ``fallback``."""
        if isinstance(error, RateLimitError) and error.retry_after is not None:
            if not math.isfinite(error.retry_after):  # say, an engine's own RateLimitError
                return fallback
            return min(max(error.retry_after, 0.0), self.max_retry_after)
        if isinstance(error, APIStatusError) and error.response is not None:
            after = parse_retry_after(error.response.headers.get("retry-after"))
            if after is not None:
                return min(after, self.max_retry_after)
        return fallback


def is_retryable(error: BaseException, policy: RetryPolicy | None = None) -> bool:
    """True for failures a retry may fix: connection errors, timeouts, 408, 429, 5xx (but
    501/505) and spoiled answers. With ``policy.retry_possibly_billed`` off, not those the
    server may have billed (``error.possibly_billed``)."""
    if not isinstance(error, PhotoroomError):
        return False
    if error.possibly_billed and policy is not None and not policy.retry_possibly_billed:
        return False
    if isinstance(error, APIResponseValidationError):
        return True
    if isinstance(error, APIStatusError):
        status = error.status_code
        return status in (408, 429) or (status >= 500 and status not in _FINAL_SERVER_STATUS)
    return isinstance(error, APIConnectionError)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` header: delta-seconds or an HTTP-date. ``None`` if absent/invalid
    (``nan``, ``inf``, ``-5`` or ``1e3`` are not delta-seconds: the caller's backoff applies)."""
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    current = time.time() if now is None else now
    return max(moment.timestamp() - current, 0.0)
