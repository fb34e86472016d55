"""An httpcore network backend on asyncio's own transports.

httpcore runs on anyio under asyncio, and anyio's socket stream costs more than the HTTP it
carries: every read resumes the transport's reading and pauses it again (two ``epoll_ctl``
system calls), every write yields to the event loop once more, and httpcore wraps each read
and write in a cancel scope for its timeout. :class:`AsyncioBackend` reads and writes through
an :class:`asyncio.Protocol` instead: the event loop reads whatever arrives into a queue (held
back past :data:`READ_AHEAD` bytes), a read takes from that queue, waiting on one future when
it is empty, and a timeout is one timer on the loop. Connecting and the TLS handshake, once
per connection, still go through anyio's cancel scopes, as httpcore's own backend does.

Under any other event loop (trio), httpcore's own backend is used.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import itertools
import select
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import anyio
import httpcore
import sniffio
from httpcore._backends.base import SOCKET_OPTION

from . import _deadline

__all__ = ["READ_AHEAD", "AsyncioBackend", "install", "is_address"]

#: Bytes read ahead of the reader before the connection stops reading (until it drains).
READ_AHEAD = 1 << 20


class _Protocol(asyncio.Protocol):
    """What the event loop has read from one connection, and whether it may write."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.start = 0  # how much of the first chunk was already taken
        self.buffered = 0
        self.eof = False
        self.lost = False
        self.error: BaseException | None = None
        self.reading_paused = False
        self.writing_paused = False
        # a read and a write (HTTP/2 does both at once) each wait on a future of their own
        self.waiters: dict[str, asyncio.Future[bool]] = {}

    # -- the event loop's side ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > READ_AHEAD and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self.eof = True
        self._wake()
        return None  # the transport closes itself

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.error = exc
        self.writing_paused = False
        self._wake()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake()

    def failure(self) -> BaseException | None:
        """What broke the connection, if it was lost to an error."""
        return self.error if self.lost else None

    def _wake(self) -> None:
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_result(True)

    # -- the reader's and writer's side ------------------------------------------------------

    async def wait(self, side: str, timeout: float | None) -> bool:  # noqa: ASYNC109
        """Wait for something to happen on the connection; False if ``timeout`` ran out."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self.waiters[side] = waiter
        timer = None if timeout is None else loop.call_later(timeout, _time_out, waiter)
        try:
            return await waiter
        finally:
            del self.waiters[side]
            if timer is not None:
                timer.cancel()

    def take(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of what was read (small chunks joined). A chunk larger than
        that is handed out a piece at a time from :attr:`start`: what is left of it stays
        where it is, so each byte is copied once, not once per piece before it."""
        chunks = self.chunks
        head, start = chunks[0], self.start
        left = len(head) - start
        if left > max_bytes:
            self.start = end = start + max_bytes
            chunk = head[start:end]
        else:
            chunks.popleft()
            self.start = 0
            chunk = head[start:] if start else head
            if chunks and left + len(chunks[0]) <= max_bytes:
                parts = [chunk]
                size = left
                while chunks and size + len(chunks[0]) <= max_bytes:
                    part = chunks.popleft()
                    parts.append(part)
                    size += len(part)
                chunk = b"".join(parts)
        self.buffered -= len(chunk)
        if self.reading_paused and self.buffered <= READ_AHEAD // 2 and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        return chunk


def _time_out(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class _Stream(httpcore.AsyncNetworkStream):
    """One connection, plain or TLS, as httpcore reads and writes it."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    # httpcore's interface: its timeouts are arguments
    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        protocol = self._protocol
        while not protocol.chunks:
            if protocol.eof or protocol.lost:
                error = protocol.failure()
                if error is not None:
                    raise httpcore.ReadError(_reason(error)) from error
                return b""  # the other end closed the connection
            if self._transport.is_closing():
                raise httpcore.ReadError("the connection is closed")
            if not await protocol.wait("read", _deadline.capped(timeout)):
                _deadline.check()  # the attempt's deadline, not the read's own timeout
                raise httpcore.ReadTimeout("timed out reading")
        return protocol.take(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        protocol = self._protocol
        if protocol.lost or self._transport.is_closing():
            error = protocol.failure()
            raise httpcore.WriteError(_reason(error) if error else "the connection is closed")
        self._transport.write(buffer)
        while protocol.writing_paused:  # the kernel's buffer is full: wait for it to drain
            if not await protocol.wait("write", _deadline.capped(timeout, writing=True)):
                _deadline.check(writing=True)
                raise httpcore.WriteTimeout("timed out writing")
        error = protocol.failure()
        if error is not None:  # the connection broke while the write waited
            raise httpcore.WriteError(_reason(error)) from error

    async def aclose(self) -> None:
        # as anyio's stream closes: no TLS close_notify exchange, and one turn of the event
        # loop, in which the transport closes its socket
        self._transport.abort()
        await asyncio.sleep(0)

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            with anyio.fail_after(timeout):
                transport = await loop.start_tls(
                    self._transport,
                    self._protocol,
                    ssl_context,
                    server_hostname=server_hostname,
                    ssl_handshake_timeout=None,
                )
        except TimeoutError as exc:
            self._transport.abort()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from exc
        except OSError as exc:  # ssl.SSLError is one
            self._transport.abort()
            raise httpcore.ConnectError(_reason(exc)) from exc
        if transport is None:  # pragma: no cover - only for a closing transport
            raise httpcore.ConnectError("the connection closed before the TLS handshake")
        assert isinstance(transport, asyncio.Transport)
        self._protocol.transport = transport  # reading is paused and resumed above the TLS
        return _Stream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        transport = self._transport
        if info == "is_readable":  # asked of an idle connection: did the server end it?
            protocol = self._protocol
            if protocol.chunks or protocol.eof or protocol.lost:
                return True
            # the event loop may not have looked since: ask the kernel, as httpcore does
            return _readable(transport.get_extra_info("socket"))
        if info == "ssl_object":
            return transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return transport.get_extra_info("sockname")
        if info == "server_addr":
            return transport.get_extra_info("peername")
        if info == "socket":
            return transport.get_extra_info("socket")
        return None


def _readable(sock: socket.socket | None) -> bool:
    """True if reading ``sock`` would not block (data, an end, an error, or it is closed)."""
    if sock is None:
        return False
    fd = sock.fileno()
    if fd == -1:
        return True
    if not hasattr(select, "poll"):  # pragma: no cover - Windows
        return bool(select.select([fd], [], [], 0)[0])
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return bool(poll.poll(0))


def is_address(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address (one address: nothing to resolve)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network on asyncio transports (see the module); under trio, httpcore's own."""

    def __init__(self) -> None:
        self._other: httpcore.AsyncNetworkBackend | None = None

    def _fallback(self) -> httpcore.AsyncNetworkBackend | None:
        if sniffio.current_async_library() == "asyncio":
            return None
        if self._other is None:
            from httpcore._backends.auto import AutoBackend

            self._other = _deadline.wrap_async(AutoBackend())
        return self._other

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        other = self._fallback()
        if other is not None:
            return await other.connect_tcp(host, port, timeout, local_address, socket_options)
        local = None if local_address is None else (local_address, 0)
        try:
            with anyio.fail_after(timeout):
                transport, protocol = await _open(host, port, local)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"timed out connecting to {host}:{port}") from exc
        except OSError as exc:
            raise httpcore.ConnectError(_reason(exc)) from exc
        return _connected(transport, protocol, socket_options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        other = self._fallback()
        if other is not None:
            return await other.connect_unix_socket(path, timeout, socket_options)
        loop = asyncio.get_running_loop()
        try:
            with anyio.fail_after(timeout):
                transport, protocol = await loop.create_unix_connection(_Protocol, path)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"timed out connecting to {path}") from exc
        except OSError as exc:
            raise httpcore.ConnectError(_reason(exc)) from exc
        return _connected(transport, protocol, socket_options)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


#: How long an attempt to connect to one of a name's addresses has before the next one starts
#: beside it (RFC 8305's "Connection Attempt Delay", as asyncio and anyio use it).
HAPPY_EYEBALLS_DELAY = 0.25

_Connection = tuple[asyncio.Transport, asyncio.BaseProtocol]


async def _open(host: str, port: int, local: tuple[str, int] | None) -> _Connection:
    """A connection to ``host``: to its one address, or to whichever of its addresses answers
    first, the next attempt starting when one fails or after :data:`HAPPY_EYEBALLS_DELAY`.

    Not asyncio's own race (``happy_eyeballs_delay``): on Python 3.10 and 3.11 it drops the
    socket that won when the connect is cancelled just as it connects, an open socket nobody
    closes. Each attempt here connects to one address, which asyncio does without a race and
    closes on a cancel; the race keeps what it won until it is handed over, and closes it on
    any way out."""
    loop = asyncio.get_running_loop()

    async def connect(address: str) -> _Connection:  # one address: asyncio races nothing
        return await loop.create_connection(_Protocol, address, port, local_addr=local)

    if is_address(host):
        return await connect(host)
    found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = _interleaved([(family, str(address[0])) for family, *_, address in found])
    if not addresses:
        raise OSError(f"no address found for {host}")
    if len(addresses) == 1:
        return await connect(addresses[0])
    won: list[_Connection] = []
    errors: list[Exception] = []

    async def attempt(address: str, failed: anyio.Event, scope: anyio.CancelScope) -> None:
        try:
            connection = await connect(address)
        except Exception as exc:  # each attempt's error is reported below
            errors.append(exc)
            failed.set()
            return
        won.append(connection)
        scope.cancel()  # the attempts still under way, and the wait to start the next one

    try:
        async with anyio.create_task_group() as group:
            for address in addresses:
                failed = anyio.Event()
                group.start_soon(attempt, address, failed, group.cancel_scope)
                with anyio.move_on_after(HAPPY_EYEBALLS_DELAY):
                    await failed.wait()
    except BaseException:
        for transport, _ in won:
            transport.abort()
        raise
    for transport, _ in won[1:]:  # two may connect before either is seen
        transport.abort()
    if won:
        return won[0]
    reasons = list(dict.fromkeys(_reason(exc) for exc in errors))
    if len(reasons) == 1:
        raise errors[0]
    raise OSError(f"every address of {host} failed: {'; '.join(reasons)}")


def _interleaved(addresses: list[tuple[int, str]]) -> list[str]:
    """The addresses in the order RFC 8305 tries them: one of the first family, one of the
    other, and so on (duplicates dropped)."""
    by_family: dict[int, list[str]] = {}
    for family, address in dict.fromkeys(addresses):
        by_family.setdefault(family, []).append(address)
    lists = list(by_family.values())
    return [a for group in itertools.zip_longest(*lists) for a in group if a is not None]


def _connected(
    transport: asyncio.BaseTransport,
    protocol: asyncio.BaseProtocol,
    socket_options: Iterable[SOCKET_OPTION] | None,
) -> _Stream:
    assert isinstance(transport, asyncio.Transport)
    assert isinstance(protocol, _Protocol)
    if socket_options:
        sock: socket.socket = transport.get_extra_info("socket")
        try:
            for option in socket_options:
                sock.setsockopt(*option)
        except OSError as exc:
            transport.abort()
            raise httpcore.ConnectError(_reason(exc)) from exc
    return _Stream(transport, protocol)


_BACKEND = AsyncioBackend()


def install(transport: Any) -> None:
    """Make ``transport`` (an :class:`httpx.AsyncHTTPTransport`) use :class:`AsyncioBackend`,
    unless it goes through a proxy: there TLS may run inside TLS, which asyncio's
    ``start_tls`` cannot do on every Python supported, so httpcore's network stays, its
    reads and writes ending with the attempt under way (see :mod:`~photoroom_bg._deadline`),
    as :class:`AsyncioBackend`'s do."""
    pool = transport._pool
    if not hasattr(pool, "_network_backend"):  # pragma: no cover - a future httpcore
        return
    if type(pool) is not httpcore.AsyncConnectionPool:  # an HTTP or SOCKS proxy
        # httpcore's own network, its reads and writes ending with the attempt under way
        pool._network_backend = _deadline.wrap_async(pool._network_backend)
        return
    pool._network_backend = _BACKEND
