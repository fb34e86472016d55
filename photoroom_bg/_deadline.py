"""A deadline for a whole answer: httpx's timeouts are per phase and per read, so a server
that sends its answer a byte at a time, each byte inside the read timeout, could hold a call
(and a batch's job) for as long as it liked."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import httpx

__all__ = ["AnswerOverrun", "answer_deadline", "bound_answer"]


class AnswerOverrun(httpx.ReadTimeout):
    """The answer was still arriving when the attempt's deadline passed."""

    def __init__(self, seconds: float, *, request: httpx.Request) -> None:
        super().__init__(
            f"the answer was still arriving after {seconds:g} s, the timeout's phases "
            "together (a server sending it a little at a time)",
            request=request,
        )
        self.seconds = seconds


def answer_deadline(timeout: httpx.Timeout) -> float | None:
    """The longest an attempt may take, answer included: its phases' timeouts together
    (connect, pool, write and read), or ``None`` when a phase has no limit."""
    phases = (timeout.connect, timeout.pool, timeout.write, timeout.read)
    if any(phase is None for phase in phases):
        return None
    return sum(phase for phase in phases if phase is not None)


class _Bounded(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body that fails with :class:`AnswerOverrun` once a chunk arrives after
    ``ends`` (a ``time.monotonic()`` moment). A chunk arrives within the read timeout, so
    the whole answer takes at most the deadline and one read timeout."""

    def __init__(
        self,
        stream: httpx.SyncByteStream | httpx.AsyncByteStream,
        ends: float,
        seconds: float,
        request: httpx.Request,
    ) -> None:
        self._stream = stream
        self._ends = ends
        self._seconds = seconds
        self._request = request

    def _check(self) -> None:
        if time.monotonic() > self._ends:
            raise AnswerOverrun(self._seconds, request=self._request)

    def __iter__(self) -> Iterator[bytes]:
        assert isinstance(self._stream, httpx.SyncByteStream)
        for chunk in self._stream:
            self._check()
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        assert isinstance(self._stream, httpx.AsyncByteStream)
        async for chunk in self._stream:
            self._check()
            yield chunk

    def close(self) -> None:
        assert isinstance(self._stream, httpx.SyncByteStream)
        self._stream.close()

    async def aclose(self) -> None:
        assert isinstance(self._stream, httpx.AsyncByteStream)
        await self._stream.aclose()


def bound_answer(
    response: httpx.Response, started: float, seconds: float | None, request: httpx.Request
) -> None:
    """Make the unread body of ``response`` fail once ``seconds`` have passed since
    ``started`` (``time.monotonic()``); ``None``: no deadline."""
    if seconds is None:
        return
    stream = response.stream
    assert isinstance(stream, (httpx.SyncByteStream, httpx.AsyncByteStream))
    response.stream = _Bounded(stream, started + seconds, seconds, request)
