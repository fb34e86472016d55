"""HTTPS downloads: each one verified against its own host name, against a real TLS server."""

from __future__ import annotations

import asyncio
import gc
import ssl
import warnings
from collections.abc import AsyncIterator

import pytest
import trustme

from photoroom_bg import sources
from photoroom_bg.errors import SourceError
from photoroom_bg.sources import ImageSource, SourceReader

from ..loopback import KeepAliveServer
from .conftest import png_bytes


class TlsServer(KeepAliveServer):
    """An HTTPS server on loopback with a certificate for ``names`` only: answers every
    request with a PNG and records its Host header."""

    def __init__(self, ca: trustme.CA, *names: str) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*names).configure_cert(context)
        super().__init__(tls=context)
        body = png_bytes()
        head = b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: %d\r\n\r\n"
        self.answer = head % len(body) + body
        self.hosts: list[str] = []

    def seen(self, head: list[tuple[str, str]]) -> None:
        self.hosts += [value.rsplit(":", 1)[0] for name, value in head if name == "host"]


@pytest.fixture
def ca(monkeypatch: pytest.MonkeyPatch) -> trustme.CA:
    """A test CA that the reader's own pool trusts (and nothing else does)."""
    authority = trustme.CA()
    context = ssl.create_default_context()
    authority.configure_trust(context)
    monkeypatch.setattr(sources, "tls_context", lambda **kwargs: context)
    return authority


@pytest.fixture
async def server(ca: trustme.CA) -> AsyncIterator[TlsServer]:
    async with TlsServer(ca, "a.example.test") as running:
        yield running


def reader() -> SourceReader:
    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]  # every name here is the one loopback server

    return SourceReader(allow_networks=["127.0.0.1/32"], resolver=resolver)


def url(host: str, port: int) -> ImageSource:
    return ImageSource("url", f"https://{host}:{port}/x.png", "x")


async def test_downloads_from_one_host_reuse_one_verified_connection(server: TlsServer) -> None:
    async with reader() as r:
        for _ in range(5):
            assert await r.read(url("a.example.test", server.port)) == png_bytes()
    assert server.hosts == ["a.example.test"] * 5
    assert server.accepted == 1


async def test_a_host_the_certificate_does_not_name_is_refused(server: TlsServer) -> None:
    async with reader() as r:
        with pytest.raises(SourceError, match="ConnectError"):
            await r.read(url("b.example.test", server.port))
    assert server.hosts == []


async def test_a_connection_verified_for_one_name_is_never_used_for_another(
    server: TlsServer,
) -> None:
    # Both names lead to one address. Pooled by address, the connection made (and verified)
    # for the first name carried the second name's request too: fetched over TLS without
    # ever checking that the server may answer for that name.
    async with reader() as r:
        assert await r.read(url("a.example.test", server.port)) == png_bytes()
        with pytest.raises(SourceError, match="ConnectError"):
            await r.read(url("b.example.test", server.port))
        assert await r.read(url("a.example.test", server.port)) == png_bytes()
    assert server.hosts == ["a.example.test"] * 2  # no request for b ever reached it
    assert server.accepted == 1  # a's, kept for a (b's never got past its handshake)


async def test_a_second_name_at_one_address_keeps_a_pool_of_its_own(ca: trustme.CA) -> None:
    async with TlsServer(ca, "a.example.test", "b.example.test") as shared:
        async with reader() as r:
            hosts = ["a.example.test", "b.example.test", "a.example.test"] + ["b.example.test"] * 3
            for host in hosts:
                assert await r.read(url(host, shared.port)) == png_bytes()
        await shared.wait_for(lambda: shared.open == 0)  # all closed with the reader
    assert shared.hosts == hosts
    assert shared.accepted == 2  # one connection for each name, each verified for it


async def test_past_the_named_pools_each_download_has_a_connection_of_its_own(
    ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "_NAMED_POOLS", 1)
    names = ["a.example.test", "b.example.test", "c.example.test"]
    async with TlsServer(ca, *names) as shared:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            async with reader() as r:
                hosts = [*names, "c.example.test", "b.example.test"]
                for host in hosts:
                    assert await r.read(url(host, shared.port)) == png_bytes()
                assert shared.accepted == 4  # a and b pooled; c twice, a connection each
                # one of them cancelled half-way: its connection is closed too
                cut_short = asyncio.create_task(r.read(url("c.example.test", shared.port)))
                await asyncio.sleep(0)  # one turn of the loop: the request is under way
                cut_short.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await cut_short
            await shared.wait_for(lambda: shared.open == 0)
            gc.collect()
        assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert shared.hosts[:5] == hosts


async def test_the_readers_pool_keeps_at_most_twenty_connections_alive(server: TlsServer) -> None:
    async with reader() as r:
        server.release.clear()
        downloads = [
            asyncio.create_task(r.read(url("a.example.test", server.port))) for _ in range(30)
        ]
        await server.wait_for(lambda: server.in_flight == 30)  # 30 connections at once
        server.release.set()
        assert await asyncio.gather(*downloads) == [png_bytes()] * 30
        await server.wait_for(lambda: server.open <= 20)  # the rest closed as they came back
        assert server.open == 20
        assert await r.read(url("a.example.test", server.port)) == png_bytes()
        assert server.accepted == 30  # reused, not a new one
