"""A minimal HTTP/1.1 keep-alive server on loopback (plain or TLS) that counts connections,
a way to wait, without polling, until a count reaches a value, and small loopback helpers,
among them the way the tests' child servers (S3, the service, Prefect) get their ports."""

from __future__ import annotations

import asyncio
import socket
import socketserver
import ssl
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

__all__ = [
    "START_ATTEMPTS",
    "Changes",
    "KeepAliveServer",
    "PortTaken",
    "QuietHangUps",
    "closed_port",
    "read_request_head",
    "start_on_free_ports",
    "taken_first",
    "until",
]

T = TypeVar("T")

#: Start-ups tried when a child server exits because a port chosen for it was taken.
START_ATTEMPTS = 3


def read_request_head(sock: socket.socket) -> bytes | None:
    """Read from ``sock`` until a request's head has come in whole; return what came (the
    head, and any of the body sent with it), or ``None`` when the peer hung up first."""
    received = b""
    while b"\r\n\r\n" not in received:
        data = sock.recv(65536)
        if not data:
            return None
        received += data
    return received


class QuietHangUps(socketserver.BaseServer):
    """Mix into a threaded test server: a client that hangs up early (a reader refusing a
    body, a cancelled download) is no error worth a traceback on stderr."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PortTaken(RuntimeError):
    """A child server exited at start-up: a port chosen for it was in use.

    A free port is chosen by binding port 0 and closing the socket; the child binds it later,
    and another process (an outgoing connection of another test, say) may take it between.
    """


def start_on_free_ports(start: Callable[[], T], attempts: int = START_ATTEMPTS) -> T:
    """``start()``, which chooses free ports and starts a child on them, called again while it
    raises :class:`PortTaken`."""
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except PortTaken:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


@contextmanager
def taken_first(
    choose: Callable[[], int], below: int = 65536
) -> Iterator[tuple[Callable[[], int], list[int]]]:
    """A port chooser whose first port is one something already listens on (then those of
    ``choose``), and the list of what it handed out: a port taken between choice and bind.
    ``below``: the taken port is lower (weed puts a server's gRPC port at its port + 10000)."""
    chosen: list[int] = []
    with ExitStack() as held:
        while True:  # the ephemeral range reaches 60999: most ports are below any bound
            squatter = held.enter_context(socket.socket())
            squatter.bind(("127.0.0.1", 0))
            if squatter.getsockname()[1] < below:
                break
        squatter.listen()

        def chooser() -> int:
            chosen.append(choose() if chosen else int(squatter.getsockname()[1]))
            return chosen[-1]

        yield chooser, chosen


async def until(condition: Callable[[], bool], deadline: float = 10.0) -> None:
    """Give the event loop turns until ``condition()`` holds (failing after ``deadline`` s)."""

    async def turns() -> None:
        while not condition():
            await asyncio.sleep(0)

    await asyncio.wait_for(turns(), deadline)


class Changes:
    """Woken at every :meth:`notify`; :meth:`wait_for` waits for a condition to hold."""

    def __init__(self, deadline: float = 30.0) -> None:
        self.deadline = deadline  # generous: only something broken gets anywhere near it
        self._changed = asyncio.Event()

    def notify(self) -> None:
        """Something changed: wake whoever waits."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, failing after the deadline."""

        async def until() -> None:
            while not predicate():
                await self._changed.wait()

        await asyncio.wait_for(until(), self.deadline)


class KeepAliveServer:
    """Answers every request with :attr:`answer` on a kept-alive connection, each answer held
    while :attr:`release` is clear; counts connections (those past the TLS handshake, with
    ``tls``) and requests in flight. Subclasses look at each request's head in :meth:`seen`."""

    def __init__(self, *, tls: ssl.SSLContext | None = None, held: bool = False) -> None:
        self.tls = tls
        self.accepted = 0
        self.closed = 0
        self.open = 0
        self.peak_open = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.release = asyncio.Event()
        if not held:
            self.release.set()
        self.answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        self.changes = Changes()
        self.wait_for = self.changes.wait_for
        self.port = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> KeepAliveServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def seen(self, head: list[tuple[str, str]]) -> None:
        """Called with each request's header lines (name in lower case, value)."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        self.changes.notify()
        try:
            while True:
                text = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                fields = (line.partition(":") for line in text.split("\r\n")[1:])
                head = [(name.strip().lower(), value.strip()) for name, _, value in fields]
                self.seen(head)
                await reader.readexactly(int(dict(head).get("content-length", 0)))
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                self.changes.notify()
                await self.release.wait()
                self.in_flight -= 1
                writer.write(self.answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # the client closed the connection
        finally:
            self.open -= 1
            self.closed += 1
            self.changes.notify()
            writer.close()
