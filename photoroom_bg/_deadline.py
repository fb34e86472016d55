"""A deadline for a whole attempt: httpx's timeouts are per phase and per read, so a server
that sends its answer (its headers too) a byte at a time, each byte inside the read timeout,
or reads the request as slowly, could hold a call (and a batch's job) for as long as it
liked.

An attempt runs inside :func:`attempt`, which notes when it must end in a context variable
(one per thread and per task, so concurrent attempts each see their own). The network
streams of the SDK's own pools (:mod:`~photoroom_bg._netio`, and :func:`install_sync` for
the synchronous pool) wait at most until then on every read and write, and the body of the
answer is checked as it arrives (:func:`bound_answer`), for pools passed in by the caller.
"""

from __future__ import annotations

import contextvars
import ssl
import time
import typing
from collections.abc import AsyncIterator, Iterable, Iterator

import httpcore
import httpx
from httpcore._backends.base import SOCKET_OPTION

__all__ = [
    "AnswerOverrun",
    "ReadOverrun",
    "WriteOverrun",
    "answer_deadline",
    "attempt",
    "bound_answer",
    "capped",
    "check",
    "end_attempt",
    "install_sync",
    "overrun",
    "wrap_async",
]

#: When the attempt under way in this thread or task must end (``time.monotonic()``), and
#: its deadline in seconds; ``None`` outside an attempt, or for an attempt without one.
_ENDS: contextvars.ContextVar[tuple[float, float] | None] = contextvars.ContextVar(
    "photoroom_bg_attempt_ends", default=None
)


def _still_arriving(seconds: float) -> str:
    return (
        f"the answer was still arriving after {seconds:g} s, the timeout's phases together "
        "(a server sending it a little at a time)"
    )


class ReadOverrun(httpcore.ReadTimeout):
    """httpcore's read timeout for a read the attempt's deadline cut short."""


class WriteOverrun(httpcore.WriteTimeout):
    """httpcore's write timeout for a write the attempt's deadline cut short."""


def attempt(seconds: float | None) -> contextvars.Token[tuple[float, float] | None]:
    """Start an attempt that must end within ``seconds`` (``None``: no deadline); pass the
    token to :func:`end_attempt` when it ends, whatever happens."""
    ends = None if seconds is None else (time.monotonic() + seconds, seconds)
    return _ENDS.set(ends)


def end_attempt(token: contextvars.Token[tuple[float, float] | None]) -> None:
    """End the attempt :func:`attempt` started."""
    _ENDS.reset(token)


def capped(timeout: float | None, writing: bool = False) -> float | None:
    """``timeout`` for one read (or write), shortened to what is left of the attempt under
    way; :class:`ReadOverrun` (:class:`WriteOverrun`) once nothing is left."""
    ends = _ENDS.get()
    if ends is None:
        return timeout
    left = ends[0] - time.monotonic()
    if left <= 0:
        raise _overrun(ends[1], writing)
    return left if timeout is None or left < timeout else timeout


def check(writing: bool = False) -> None:
    """After a read (or write) timed out: :class:`ReadOverrun` (:class:`WriteOverrun`) if it
    was the attempt's deadline that ended it; nothing if it was the phase's own timeout."""
    ends = _ENDS.get()
    if ends is not None and time.monotonic() >= ends[0] - _EARLY:
        raise _overrun(ends[1], writing)


#: How early a timer set for the deadline may fire and still count as the deadline's.
_EARLY = 0.001


def _overrun(seconds: float, writing: bool) -> httpcore.TimeoutException:
    if writing:
        return WriteOverrun(
            f"the request was still being sent after {seconds:g} s, the timeout's phases "
            "together (a server reading it a little at a time)"
        )
    return ReadOverrun(_still_arriving(seconds))


def overrun(exc: BaseException) -> str | None:
    """What to say of ``exc`` if the attempt's deadline ended it, else ``None``."""
    if isinstance(exc, AnswerOverrun):
        return str(exc)
    if isinstance(exc.__cause__, (ReadOverrun, WriteOverrun)):  # as httpx raises them
        return str(exc.__cause__)
    return None


class AnswerOverrun(httpx.ReadTimeout):
    """The answer was still arriving when the attempt's deadline passed."""

    def __init__(self, seconds: float, *, request: httpx.Request) -> None:
        super().__init__(_still_arriving(seconds), request=request)
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


#: The most a synchronous write sends under one timeout while an attempt is under way.
_PIECE = 1 << 16


class _CappedStream(httpcore.NetworkStream):
    """A synchronous connection whose reads and writes end with the attempt under way."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return self._stream.read(max_bytes, capped(timeout))
        except httpcore.ReadTimeout:
            check()
            raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # httpcore's timeout is for each send of a write, however many the write takes: a
        # large write goes in pieces, each ending with the attempt
        pieces = [buffer]
        if len(buffer) > _PIECE and _ENDS.get() is not None:
            view = memoryview(buffer)
            pieces = [
                typing.cast(bytes, view[start : start + _PIECE])
                for start in range(0, len(buffer), _PIECE)
            ]
        try:
            for piece in pieces:
                self._stream.write(piece, capped(timeout, writing=True))
        except httpcore.WriteTimeout:
            check(writing=True)
            raise

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _CappedStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


class _CappedBackend(httpcore.NetworkBackend):
    """A synchronous network backend whose connections are :class:`_CappedStream`."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return _CappedStream(
            self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        )

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return _CappedStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def install_sync(client: httpx.Client) -> None:
    """Make the pools of ``client`` (made by the SDK; its proxies' too) end every read and
    write with the attempt under way."""
    transports = [client._transport, *client._mounts.values()]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is None:  # pragma: no cover - another transport, a future httpcore
            continue
        if not isinstance(backend, _CappedBackend):
            pool._network_backend = _CappedBackend(backend)  # type: ignore[union-attr]


class _CappedAsyncStream(httpcore.AsyncNetworkStream):
    """An asynchronous connection whose reads and writes end with the attempt under way."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return await self._stream.read(max_bytes, capped(timeout))
        except httpcore.ReadTimeout:
            check()
            raise

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            await self._stream.write(buffer, capped(timeout, writing=True))
        except httpcore.WriteTimeout:
            check(writing=True)
            raise

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._stream.start_tls(ssl_context, server_hostname, timeout)
        return _CappedAsyncStream(stream)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


class _CappedAsyncBackend(httpcore.AsyncNetworkBackend):
    """An asynchronous network backend whose connections are :class:`_CappedAsyncStream`."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend) -> None:
        self._backend = backend

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return _CappedAsyncStream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._backend.connect_unix_socket(path, timeout, socket_options)
        return _CappedAsyncStream(stream)

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


def wrap_async(backend: httpcore.AsyncNetworkBackend) -> httpcore.AsyncNetworkBackend:
    """``backend``, its connections' reads and writes ending with the attempt under way."""
    return backend if isinstance(backend, _CappedAsyncBackend) else _CappedAsyncBackend(backend)
