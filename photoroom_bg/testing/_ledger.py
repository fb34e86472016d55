"""Accounting for the emulator: credits per key, billed calls per image, a rate limit."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque

import attrs

__all__ = ["KeyAccount", "Ledger"]

COSTS = {  # images spent per successful call, by plan (API.md: Basic vs Plus billing)
    "basic": {"segment": 1.0, "edit": 5.0},
    "plus": {"segment": 0.2, "edit": 1.0},
}


@attrs.define
class KeyAccount:
    """One API key's account."""

    credits: float
    subscription: float
    plan: str = "basic"
    billed: float = 0.0
    calls: int = 0
    sandbox_calls: int = 0


class Ledger:
    """Credits, billed calls and the per-key rate limit; safe to read from any thread.

    Args:
        keys: ``{api_key: credits}``; a ``sandbox_`` prefix on a known key is accepted too.
        plan: ``"basic"`` or ``"plus"`` (what each call costs).
        requests_per_minute: per-key limit (``None``: unlimited); sandbox calls count too.
    """

    def __init__(
        self,
        keys: dict[str, float],
        *,
        plan: str = "basic",
        requests_per_minute: int | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self.accounts = {
            k: KeyAccount(credits=v, subscription=v, plan=plan) for k, v in keys.items()
        }
        self.requests_per_minute = requests_per_minute
        self._windows: dict[str, deque[float]] = {}
        self._by_image: Counter[str] = Counter()

    def base_key(self, key: str) -> str:
        """The account key behind a (possibly ``sandbox_``) key: the key itself when it is
        an account's (``--key sandbox_test`` makes one), else without ``sandbox_``."""
        if key in self.accounts or not key.startswith("sandbox_"):
            return key
        return key[len("sandbox_") :]

    def known(self, key: str | None) -> bool:
        """True for a known key or its sandbox form."""
        return bool(key) and self.base_key(key or "") in self.accounts

    def cost(self, key: str, endpoint: str) -> float:
        """What a successful call costs this key (sandbox calls are free)."""
        if key.startswith("sandbox_"):
            return 0.0
        return COSTS.get(self.accounts[self.base_key(key)].plan, COSTS["basic"])[endpoint]

    def can_afford(self, key: str, endpoint: str) -> bool:
        """True when the key has the credits for one more call."""
        with self._lock:
            account = self.accounts[self.base_key(key)]
            return account.credits + 1e-9 >= self.cost(key, endpoint)

    def charge(self, key: str, endpoint: str, image_digest: str | None) -> None:
        """Bill one successful call."""
        with self._lock:
            account = self.accounts[self.base_key(key)]
            cost = self.cost(key, endpoint)
            account.credits -= cost
            account.billed += cost
            if key.startswith("sandbox_"):
                account.sandbox_calls += 1
            else:
                account.calls += 1
                if image_digest is not None:
                    self._by_image[image_digest] += 1

    def admit(self, key: str, now: float | None = None) -> float | None:
        """Count a request against the rate limit; return seconds to wait if over it."""
        if self.requests_per_minute is None:
            return None
        now = time.monotonic() if now is None else now
        with self._lock:
            window = self._windows.setdefault(self.base_key(key), deque())
            while window and window[0] <= now - 60:
                window.popleft()
            if len(window) >= self.requests_per_minute:
                return max(1.0, math.ceil(window[0] + 60 - now))
            window.append(now)
            return None

    def billed(self, key: str | None = None) -> float:
        """Images billed, for one key or all keys."""
        with self._lock:
            accounts = [self.accounts[self.base_key(key)]] if key else list(self.accounts.values())
            return sum(a.billed for a in accounts)

    def calls(self, key: str | None = None) -> int:
        """Billed (non-sandbox) calls, for one key or all keys."""
        with self._lock:
            accounts = [self.accounts[self.base_key(key)]] if key else list(self.accounts.values())
            return sum(a.calls for a in accounts)

    def billed_per_image(self) -> dict[str, int]:
        """``{sha256 of input image: billed calls}``: each should be 1 after a clean batch."""
        with self._lock:
            return dict(self._by_image)

    def available(self, key: str) -> float:
        """Credits left for a key."""
        with self._lock:
            return self.accounts[self.base_key(key)].credits
