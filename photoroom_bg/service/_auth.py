"""Bearer tokens, compared in constant time, and the service's own per-caller rate limit."""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time
from collections import deque

from ._problems import Problem

__all__ = ["ANONYMOUS", "RateLimiter", "TokenAuth", "token_owner"]

#: the owner of jobs made without a token (a service without tokens, on loopback)
ANONYMOUS = "anonymous"


def token_owner(token: str) -> str:
    """The owner id recorded with a job: a SHA-256 of the token, never the token itself."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


class TokenAuth:
    """Checks ``Authorization: Bearer <token>`` against the configured tokens.

    Every configured token is compared (``hmac.compare_digest`` on SHA-256 digests), so the
    time taken tells nothing about which token, or how much of one, matched.
    """

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._digests = [hashlib.sha256(t.encode()).digest() for t in tokens]

    def __repr__(self) -> str:
        return f"TokenAuth(tokens={len(self._digests)})"

    @property
    def required(self) -> bool:
        """False when no token is configured (everyone is :data:`ANONYMOUS`)."""
        return bool(self._digests)

    def owner(self, authorization: str | None) -> str:
        """The caller's owner id; raise a 401 :class:`Problem` for a missing or wrong token."""
        if not self._digests:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("send 'Authorization: Bearer <token>'")
        given = hashlib.sha256(token.encode()).digest()
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(given, digest)
        if not matched:
            raise _unauthorized("the token is not valid")
        return token_owner(token)


def _unauthorized(detail: str) -> Problem:
    return Problem(
        401,
        "unauthorized",
        "Authentication required",
        detail,
        headers={"WWW-Authenticate": 'Bearer realm="photoroom-bg"'},
    )


class RateLimiter:
    """A sliding one-minute window of requests per caller; beyond it, 429 + ``Retry-After``."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._windows: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, caller: str, now: float | None = None) -> None:
        """Count one request; raise a 429 :class:`Problem` when over the limit."""
        now = time.monotonic() if now is None else now
        with self._lock:
            window = self._windows.setdefault(caller, deque())
            while window and window[0] <= now - 60:
                window.popleft()
            if len(window) >= self.per_minute:
                wait = max(1, math.ceil(window[0] + 60 - now))
                raise Problem(
                    429,
                    "rate_limited",
                    "Too many requests",
                    f"at most {self.per_minute} requests per minute per token",
                    headers={"Retry-After": str(wait)},
                )
            window.append(now)
