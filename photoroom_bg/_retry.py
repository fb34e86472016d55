"""Which failures are retried, and how long to wait: ``Retry-After`` first, else backoff.

Photoroom does not bill failed calls, so connection errors, timeouts, 408, 429 and 5xx are
safe to retry. Every other 4xx is final: retrying a 400/402/403 can never succeed.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator

import attrs
import backoff

from .errors import APIConnectionError, APIStatusError, PhotoroomError, RateLimitError

__all__ = ["RetryPolicy", "is_retryable", "parse_retry_after"]

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How retries wait.

    Attributes:
        initial_delay: first backoff delay in seconds (doubled each attempt, with full jitter).
        max_delay: the longest backoff delay.
        max_retry_after: a server's ``Retry-After`` is honoured up to this many seconds.
    """

    initial_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 60.0

    def delays(self) -> Iterator[float]:
        """Backoff delays for successive retries (exponential, full jitter, capped)."""
        base = backoff.expo(base=2, factor=self.initial_delay, max_value=self.max_delay)
        next(base)  # backoff's generators are primed with a first send()
        for value in base:
            yield backoff.full_jitter(float(value))

    def delay_for(self, error: PhotoroomError, fallback: float) -> float:
        """The wait before retrying after ``error``: ``Retry-After`` (capped), else ``fallback``."""
        if isinstance(error, RateLimitError) and error.retry_after is not None:
            return min(max(error.retry_after, 0.0), self.max_retry_after)
        if isinstance(error, APIStatusError) and error.response is not None:
            after = parse_retry_after(error.response.headers.get("retry-after"))
            if after is not None:
                return min(after, self.max_retry_after)
        return fallback


def is_retryable(error: BaseException) -> bool:
    """True for failures that were not billed and may succeed later."""
    if isinstance(error, APIStatusError):
        return error.status_code in RETRYABLE_STATUS or error.status_code >= 500
    return isinstance(error, APIConnectionError)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` header: delta-seconds or an HTTP-date. ``None`` if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    current = time.time() if now is None else now
    return max(moment.timestamp() - current, 0.0)
