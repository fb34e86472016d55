"""Fault injection for the emulator: latency, error statuses, resets, truncation, stalls."""

from __future__ import annotations

import random
import re
import sys
import threading
from collections import deque
from collections.abc import Iterable, Mapping

import attrs

from .._numbers import shown

__all__ = ["BILLED_FAULTS", "FAULTS", "Faults", "parse_duration"]

#: Faults that make and bill the image, then lose the answer: the ambiguous failures a client
#: cannot tell from unbilled ones (it must count them as possibly billed).
BILLED_FAULTS = (
    "bill-reset",
    "bill-stall",
    "bill-truncate",
    "bill-garble",
    "bill-500",
    "bill-502",
)
#: Every fault the emulator can inject.
FAULTS = ("429", "500", "502", "503", "reset", "truncate", "garble", "stall", *BILLED_FAULTS)


def parse_duration(text: str | float) -> float:
    """``"300ms"``, ``"1.5s"``, ``"2"`` (seconds) or a number -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*", text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 300ms or 1.5s)")
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "ms" else value


def _check_rates(_: object, __: object, rates: Mapping[str, float]) -> None:
    for name, rate in rates.items():
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; use {', '.join(FAULTS)}")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ValueError(f"fault probability {name}={rate!r} is not within 0..1")
    if sum(rates.values()) > 1:
        raise ValueError("fault probabilities add up to more than 1")


def _check_paths(_: object, __: object, paths: tuple[str, ...] | None) -> None:
    given: object = paths  # what a caller may really pass
    if given is None:
        return
    if not isinstance(given, (tuple, list)) or not all(isinstance(p, str) for p in given):
        raise ValueError(f"paths must be a tuple of paths such as ('/v1/segment',), not {paths!r}")


def _seconds(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be seconds, not {value!r}")
    if not 0 <= value <= sys.float_info.max:  # NaN and inf too, and an int no float holds
        raise ValueError(f"{name} must be finite seconds >= 0, not {shown(value)}")


def _check_latency(_: object, __: object, latency: float | tuple[float, float]) -> None:
    if isinstance(latency, tuple):
        if len(latency) != 2:
            raise ValueError(f"latency must be seconds or (low, high), not {latency!r}")
        for value in latency:
            _seconds("latency", value)
        if latency[0] > latency[1]:
            raise ValueError(f"latency (low, high) must have low <= high, not {latency!r}")
    else:
        _seconds("latency", latency)


def _check_seconds(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    _seconds(attribute.name, value)


@attrs.frozen(kw_only=True)
class Faults:
    """What goes wrong, and how often. Deterministic for a given ``seed``.

    Attributes:
        latency: seconds added to every request, or ``(low, high)`` for a uniform draw;
            a POST's upload is read first, so a client gone meanwhile is still billed.
        rates: probability of each fault per request, e.g. ``{"429": 0.1, "reset": 0.05}``;
            faults: ``429``, ``500``, ``502``, ``503``, ``reset`` (connection dropped after
            the headers), ``truncate`` (body shorter than its Content-Length), ``garble`` (a
            200 whose image is cut short, with a Content-Length that matches the cut),
            ``stall`` (no answer for ``stall_seconds``), none of them billed; and
            ``bill-reset``, ``bill-stall``, ``bill-truncate``, ``bill-garble``, ``bill-500``,
            ``bill-502``, which make and bill
            the image first and then fail the same way (a request that would not have been
            billed, such as a 402, is answered normally).
        retry_after: the ``Retry-After`` seconds sent with injected 429s and 503s.
        stall_seconds: how long a stall lasts (set it past the client's timeout).
        paths: only requests to these paths get random faults (``None``: all).
        seed: the random seed.
    """

    latency: float | tuple[float, float] = attrs.field(default=0.0, validator=_check_latency)
    rates: Mapping[str, float] = attrs.field(factory=dict, validator=_check_rates)
    retry_after: float = attrs.field(default=1.0, validator=_check_seconds)
    stall_seconds: float = attrs.field(default=30.0, validator=_check_seconds)
    paths: tuple[str, ...] | None = attrs.field(default=None, validator=_check_paths)
    seed: int = 0


class FaultPicker:
    """Draws faults: a queued one first, then the request header, then chance."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._random = random.Random(faults.seed)
        self._queue: deque[str | None] = deque()
        self._lock = threading.Lock()

    def enqueue(self, faults: Iterable[str | None]) -> None:
        """Give the next requests these faults, in order (``None``: no fault)."""
        given = list(faults)
        for fault in given:  # all checked first: a bad one queues none of them
            if fault is not None and fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; use {', '.join(FAULTS)}")
        with self._lock:
            self._queue.extend(given)

    def latency(self) -> float:
        """This request's added latency in seconds."""
        value = self.faults.latency
        if isinstance(value, tuple):
            with self._lock:
                return self._random.uniform(*value)
        return value

    def pick(self, path: str, header: str | None) -> str | None:
        """The fault for one request, or ``None``."""
        with self._lock:
            if self._queue:
                return self._queue.popleft()
            if header:
                fault = header.strip().lower()
                return fault if fault in FAULTS else None
            if not self.faults.rates or (self.faults.paths and path not in self.faults.paths):
                return None
            draw = self._random.random()
        for name, rate in self.faults.rates.items():
            if draw < rate:
                return name
            draw -= rate
        return None
