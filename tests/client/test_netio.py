"""The sharded pool's network backend on asyncio transports, over real loopback sockets: what
httpcore sees of reads, writes, timeouts, resets, closed connections, TLS and cancelling."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import ssl
import struct
import threading
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
import sniffio
import trustme

from photoroom_bg import _netio
from photoroom_bg._pool import ShardedTransport
from photoroom_bg.sources import SourceReader

from ..loopback import KeepAliveServer, closed_port, until

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n"


def client(url: str, timeout: float | httpx.Timeout = 30.0, **kwargs: Any) -> httpx.AsyncClient:
    """A client on a sharded pool of 2 connections, each kept alive."""
    limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
    transport = ShardedTransport(limits, shards=1, **kwargs)
    return httpx.AsyncClient(transport=transport, base_url=url, timeout=timeout)


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    """``handler`` answering each connection on a loopback port; yields the base URL."""

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def request_head(reader: asyncio.StreamReader) -> dict[str, str]:
    """Read one request's head; its header fields, names in lower case."""
    text = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    fields = (line.partition(":") for line in text.split("\r\n")[1:] if line)
    return {name.strip().lower(): value.strip() for name, _, value in fields}


def stream_of(response: httpx.Response) -> Any:
    return response.extensions["network_stream"]


async def test_requests_go_through_asyncio_transports_and_reuse_one_connection() -> None:
    async with KeepAliveServer() as server, client(server.url) as http:
        streams = []
        for _ in range(5):
            response = await http.get("/")
            assert response.text == "ok"
            streams.append(stream_of(response))
        assert server.accepted == 1
        stream = streams[0]
        assert isinstance(stream, _netio._Stream)
        assert stream.get_extra_info("server_addr") == ("127.0.0.1", server.port)
        assert stream.get_extra_info("client_addr")[0] == "127.0.0.1"
        assert stream.get_extra_info("ssl_object") is None
        assert stream.get_extra_info("something else") is None


async def test_a_body_larger_than_the_read_ahead_reaches_a_slow_reader_whole() -> None:
    body = os.urandom(3 * _netio.READ_AHEAD + 12345)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_head(reader)
        writer.write(HEAD % len(body) + body)
        await writer.drain()
        await reader.read()  # until the client closes

    async with serving(answer) as url, client(url) as http:
        async with http.stream("GET", "/") as response:
            protocol = stream_of(response)._protocol
            await until(lambda: protocol.reading_paused)  # it stopped reading ahead
            assert protocol.buffered <= 2 * _netio.READ_AHEAD
            received = bytearray()
            async for chunk in response.aiter_raw():
                assert len(chunk) <= 64 * 1024
                received += chunk
                await asyncio.sleep(0)  # a reader that lets the loop read meanwhile
                assert protocol.buffered <= 2 * _netio.READ_AHEAD
        assert bytes(received) == body


async def test_a_server_that_never_answers_times_the_read_out_and_the_connection_closes() -> None:
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_head(reader)
        assert await reader.read() == b""  # nothing comes until the client gives up
        closed.set()

    async with serving(silent) as url, client(url, timeout=0.2) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/")
        await asyncio.wait_for(closed.wait(), 10)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset rather than an orderly end."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_a_reset_in_the_middle_of_a_body_is_a_read_error() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_head(reader)
        writer.write(HEAD % 1000 + b"x" * 10)
        await writer.drain()
        reset(writer)

    async with serving(cut) as url, client(url) as http:
        with pytest.raises(httpx.ReadError):
            await http.get("/")


async def test_a_body_cut_short_by_an_orderly_close_is_a_protocol_error() -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_head(reader)
        writer.write(HEAD % 1000 + b"x" * 10)
        await writer.drain()

    async with serving(short) as url, client(url) as http:
        with pytest.raises(httpx.RemoteProtocolError, match=r"incomplete|closed"):
            await http.get("/")


class ClosingServer:
    """In a thread of its own: answers one request per connection, then ends it (without
    saying so in the answer) once :attr:`end` is set, and sets :attr:`ended` when it has."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.end = threading.Event()  # set: end each connection once it has answered
        self.ended = threading.Event()
        self.accepted = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ClosingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping = True
        self.end.set()
        socket.create_connection(self.listener.getsockname()).close()  # wakes accept()
        self.thread.join(10)
        self.listener.close()
        assert not self.thread.is_alive(), "a connection was left open"

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                if self.stopping:
                    conn.close()
                    return
                self.accepted += 1
                with conn:
                    received = b""
                    while b"\r\n\r\n" not in received:
                        received += conn.recv(4096)
                    conn.sendall(HEAD % 2 + b"ok")
                    self.end.wait(10)
                    conn.shutdown(socket.SHUT_WR)
                    self.ended.set()
                    while conn.recv(4096):  # until the client closes its end
                        pass


async def test_a_kept_connection_the_server_has_closed_is_not_used_again() -> None:
    with ClosingServer() as server:
        async with client(server.url) as http:
            assert (await http.get("/")).text == "ok"
            # ended, and waited for, while the event loop does not run until the next
            # request: only the kernel knows that the server has ended the connection
            server.end.set()
            assert server.ended.wait(10)
            first = server.accepted
            assert (await http.get("/")).text == "ok"
            assert server.accepted == first + 1


async def test_an_upload_waits_while_the_server_takes_nothing() -> None:
    body = os.urandom(32 << 20)  # far more than the kernel's buffers hold
    reading = asyncio.Event()
    got: list[int] = []

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await request_head(reader)
        await reading.wait()
        got.append(len(await reader.readexactly(int(head["content-length"]))))
        writer.write(HEAD % 2 + b"ok")
        await writer.drain()
        await reader.read()

    async with serving(slow) as url, client(url) as http:
        sent = asyncio.create_task(http.post("/", content=body))
        streams: list[Any] = []

        def blocked() -> bool:
            pools = http._transport._shards[0]._pool.connections  # type: ignore[attr-defined]
            streams[:] = [c._connection._network_stream for c in pools if c._connection]
            return bool(streams) and streams[0]._protocol.writing_paused

        await until(blocked)  # the write waits for the kernel's buffer to drain
        assert not sent.done()
        reading.set()
        response = await sent
        assert response.text == "ok"
        assert got == [len(body)]


async def test_an_upload_nobody_reads_times_the_write_out() -> None:
    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_head(reader)
        await asyncio.Event().wait()  # never reads the body (cancelled with the server)

    timeout = httpx.Timeout(30, write=0.2)
    async with serving(deaf) as url, client(url, timeout=timeout) as http:
        with pytest.raises(httpx.WriteTimeout):
            await http.post("/", content=os.urandom(64 << 20))


async def test_a_refused_connection_is_a_connect_error() -> None:
    async with client(f"http://127.0.0.1:{closed_port()}") as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/")


async def test_socket_options_are_set_on_each_connection() -> None:
    keepalive = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    async with KeepAliveServer() as server, client(server.url, socket_options=keepalive) as http:
        sock = stream_of(await http.get("/")).get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0


async def test_a_cancelled_request_closes_its_connection_and_leaks_nothing() -> None:
    async with KeepAliveServer(held=True) as server, client(server.url) as http:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sent = asyncio.create_task(http.get("/"))
            await server.wait_for(lambda: server.in_flight == 1)
            sent.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sent
            server.release.set()  # its answer now meets a closed connection
            await server.wait_for(lambda: server.closed == 1)
            del sent
            gc.collect()
        assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
        assert (await http.get("/")).text == "ok"
        assert server.accepted == 2


async def test_requests_reach_a_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s")

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_head(reader)
        writer.write(HEAD % 2 + b"ok")
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_unix_server(answer, path)
    try:
        async with client("http://local", uds=path) as http:
            response = await http.get("/")
            assert response.text == "ok"
            assert isinstance(stream_of(response), _netio._Stream)
    finally:
        server.close()
        await server.wait_closed()


# -- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
async def tls_server(ca: trustme.CA) -> AsyncIterator[KeepAliveServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    async with KeepAliveServer(tls=context) as running:
        yield running


async def test_https_runs_over_the_same_transports(
    tls_server: KeepAliveServer, trusting: ssl.SSLContext
) -> None:
    async with client(tls_server.url, verify=trusting) as http:
        for _ in range(3):
            response = await http.get("/")
            assert response.text == "ok"
        stream = stream_of(response)
        assert isinstance(stream, _netio._Stream)
        assert stream.get_extra_info("ssl_object").version().startswith("TLS")
    assert tls_server.accepted == 1


async def test_a_large_body_over_https_is_held_back_above_the_tls_and_arrives_whole(
    tls_server: KeepAliveServer, trusting: ssl.SSLContext
) -> None:
    body = os.urandom(3 * _netio.READ_AHEAD)
    tls_server.answer = HEAD % len(body) + body
    async with client(tls_server.url, verify=trusting) as http:
        async with http.stream("GET", "/") as response:
            stream = stream_of(response)
            protocol = stream._protocol
            await until(lambda: protocol.reading_paused)
            assert protocol.transport is stream._transport  # the TLS transport was paused
            received = b"".join([chunk async for chunk in response.aiter_raw()])
        assert received == body


async def test_a_certificate_for_another_name_is_a_connect_error(
    tls_server: KeepAliveServer, trusting: ssl.SSLContext
) -> None:
    url = tls_server.url.replace("127.0.0.1", "localhost")  # the certificate names the address
    async with client(url, verify=trusting) as http:
        with pytest.raises(httpx.ConnectError, match=r"certificate|hostname"):
            await http.get("/")


async def test_a_server_that_never_answers_the_handshake_times_the_connect_out(
    trusting: ssl.SSLContext,
) -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with serving(mute) as url:
        https = url.replace("http://", "https://")
        async with client(https, timeout=httpx.Timeout(30, connect=0.2), verify=trusting) as http:
            with pytest.raises(httpx.ConnectTimeout):
                await http.get("/")


# -- other event loops -------------------------------------------------------------------


async def test_under_another_async_library_httpcores_own_backend_connects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[tuple[str, int]] = []
    theirs: Any = object()

    class Other(httpcore.AsyncNetworkBackend):
        async def connect_tcp(self, host: str, port: int, *args: Any) -> Any:
            made.append((host, port))
            return theirs

    backend = _netio.AsyncioBackend()
    backend._other = Other()
    monkeypatch.setattr(sniffio, "current_async_library", lambda: "trio")
    assert await backend.connect_tcp("127.0.0.1", 9) is theirs
    assert made == [("127.0.0.1", 9)]


def test_a_transport_through_a_proxy_keeps_httpcores_backend() -> None:
    proxied = ShardedTransport(proxy="http://127.0.0.1:9")
    direct = ShardedTransport()
    pools: Iterator[Any] = (shard._pool for shard in proxied._shards)
    assert not any(isinstance(p._network_backend, _netio.AsyncioBackend) for p in pools)
    assert all(
        isinstance(shard._pool._network_backend, _netio.AsyncioBackend) for shard in direct._shards
    )


async def test_the_download_pool_uses_asyncio_transports_too() -> None:
    async with SourceReader()._http_client() as pool:
        assert isinstance(pool._transport._pool._network_backend, _netio.AsyncioBackend)  # type: ignore[attr-defined]


def test_a_large_chunk_is_read_in_pieces_without_copying_what_is_left_of_it() -> None:
    # the event loop hands over up to 256 KiB at once and httpcore reads 64 KiB at a time:
    # each read copies its own piece, never the rest of the chunk (copying the rest made an
    # answer cost its size squared over the read size in copies)
    protocol = _netio._Protocol()
    large = os.urandom(256 * 1024 + 5)
    sent = [large, b"a" * 10, b"b" * 20, os.urandom(70_000)]
    for data in sent:
        protocol.data_received(data)
    left = sum(map(len, sent))
    pieces: list[bytes] = []
    while protocol.chunks:
        if 0 < len(pieces) < 4:
            assert protocol.chunks[0] is large  # what is left of it is where it was
        pieces.append(protocol.take(64 * 1024))
        left -= len(pieces[-1])
        assert protocol.buffered == left
    assert [len(piece) for piece in pieces] == [65536] * 4 + [35, 65536, 70_000 - 65536]
    assert b"".join(pieces) == b"".join(sent)


def _resolve_as(monkeypatch: pytest.MonkeyPatch, name: str, addresses: list[str]) -> None:
    """Make the running loop resolve ``name`` to ``addresses`` (loopback ones), in that order
    (asyncio's own connect resolves through the same method)."""
    loop = asyncio.get_running_loop()
    resolve = loop.getaddrinfo

    async def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        if host != name:
            return await resolve(host, port, **kwargs)
        family = socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)


def _servers_on(addresses: list[str]) -> tuple[list[socket.socket], int]:
    """Listening sockets on the same free port of each loopback address."""
    for _ in range(20):
        first = socket.create_server((addresses[0], 0))
        servers, port = [first], first.getsockname()[1]
        try:
            servers += [socket.create_server((a, port)) for a in addresses[1:]]
        except OSError:  # that port is taken on another address: draw another
            for server in servers:
                server.close()
            continue
        for server in servers:
            server.setblocking(False)
        return servers, port
    raise AssertionError("no port free on every address")


@pytest.mark.parametrize(
    ("name", "addresses"),
    [
        ("127.0.0.1", []),
        ("localhost", ["127.0.0.1"]),
        ("localhost", ["127.0.0.1", "127.0.0.2"]),
    ],
    ids=["an address", "a name with one address", "a name with two"],
)
async def test_a_connect_cancelled_at_any_turn_of_the_loop_leaves_no_socket_open(
    monkeypatch: pytest.MonkeyPatch, name: str, addresses: list[str]
) -> None:
    """asyncio's happy-eyeballs race (Python 3.10 and 3.11) drops the socket that won when
    the connect is cancelled just after it connected: a batch cancelled mid-connect left
    open sockets, collected later as ResourceWarnings in whatever ran then. A name (one
    address or several) connects through our own race, which closes what it won."""
    unraisable: list[str] = []
    monkeypatch.setattr("sys.unraisablehook", lambda u: unraisable.append(repr(u.exc_value)))
    _resolve_as(monkeypatch, name, addresses)
    backend = _netio.AsyncioBackend()
    servers, port = _servers_on(addresses or [name])
    try:
        accepted: list[socket.socket] = []
        for turns in range(60):
            connecting = asyncio.ensure_future(backend.connect_tcp(name, port, timeout=5))
            for _ in range(turns):
                await asyncio.sleep(0)
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await (await connecting).aclose()
            for server in servers:
                with contextlib.suppress(BlockingIOError):
                    while True:
                        accepted.append(server.accept()[0])
        for peer in accepted:
            peer.close()
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            gc.collect()
    finally:
        for server in servers:
            server.close()
    assert unraisable == []


async def test_a_name_connects_to_the_address_that_answers_and_closes_the_attempt_that_hangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first address takes no connection (its listener's queue is full, so the kernel
    drops the handshake): the next address starts after the delay and wins, and the attempt
    left hanging is closed, not leaked."""
    unraisable: list[str] = []
    monkeypatch.setattr("sys.unraisablehook", lambda u: unraisable.append(repr(u.exc_value)))
    monkeypatch.setattr(_netio, "HAPPY_EYEBALLS_DELAY", 0.05)
    _resolve_as(monkeypatch, "two-addresses.test", ["127.0.0.2", "127.0.0.1"])
    (full, good), port = _servers_on(["127.0.0.2", "127.0.0.1"])
    full.listen(0)
    fillers: list[socket.socket] = []
    try:
        for _ in range(4):  # fill the queue: connects that are never accepted
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.2", port))
        stream = await _netio.AsyncioBackend().connect_tcp("two-addresses.test", port, timeout=5)
        try:
            assert stream.get_extra_info("server_addr") == ("127.0.0.1", port)
        finally:
            await stream.aclose()
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            gc.collect()
    finally:
        for sock in [full, good, *fillers]:
            sock.close()
    assert unraisable == []


async def test_a_name_whose_first_address_refuses_connects_to_the_next_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refusal starts the next attempt without waiting for the delay (set here to longer
    than the test's timeout); when every address refuses, the error names each reason."""
    monkeypatch.setattr(_netio, "HAPPY_EYEBALLS_DELAY", 60)
    (good,), port = _servers_on(["127.0.0.1"])
    _resolve_as(monkeypatch, "two-addresses.test", ["127.0.0.2", "127.0.0.1"])
    with good:
        stream = await _netio.AsyncioBackend().connect_tcp("two-addresses.test", port, timeout=5)
        await stream.aclose()
    _resolve_as(monkeypatch, "refusing.test", ["127.0.0.2", "127.0.0.3"])
    with pytest.raises(httpcore.ConnectError) as raised:
        await _netio.AsyncioBackend().connect_tcp("refusing.test", port, timeout=5)
    message = str(raised.value)
    assert "every address of refusing.test failed" in message
    assert "127.0.0.2" in message
    assert "127.0.0.3" in message
