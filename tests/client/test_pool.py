"""ShardedTransport: one connection budget over several httpx pools, against a loopback server
that counts the TCP connections it accepts."""

from __future__ import annotations

import asyncio
import gc
import io
import ssl
import warnings
from collections.abc import AsyncIterator
from typing import Any

import certifi
import httpx
import pytest
from PIL import Image

from photoroom_bg import AsyncPhotoroomClient, PhotoroomClient, SegmentOptions, _pool
from photoroom_bg._pool import ShardedTransport, split_budget
from photoroom_bg.errors import (
    APIConnectionError,
    APITimeoutError,
    ConfigurationError,
    OutOfCreditsError,
    ServerError,
)
from photoroom_bg.sources import SourceReader
from photoroom_bg.testing import PhotoroomEmulator

from ..loopback import KeepAliveServer


def sharded(connections: int, shards: int) -> ShardedTransport:
    """A sharded pool of ``connections``, each of them kept alive when idle."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return ShardedTransport(limits, shards=shards)


@pytest.fixture
async def server() -> AsyncIterator[KeepAliveServer]:
    """Answers ``ok`` to every request once :attr:`~KeepAliveServer.release` is set."""
    async with KeepAliveServer(held=True) as running:
        yield running


def test_the_budget_is_split_into_shares_differing_by_at_most_one() -> None:
    assert split_budget(7, 3) == [3, 2, 2]
    assert split_budget(256, 32) == [8] * 32
    assert split_budget(None, 2) == [None, None]
    assert sum(split_budget(255, 32)) == 255


def test_there_are_never_more_shards_than_connections() -> None:
    transport = ShardedTransport(httpx.Limits(max_connections=3), shards=8)
    assert len(transport.load) == 3
    assert len(ShardedTransport().load) == 64  # 256 connections, 4 per shard
    with pytest.raises(ValueError, match="at least 1"):
        ShardedTransport(shards=0)


async def test_concurrent_requests_spread_over_the_shards_in_order(server: KeepAliveServer) -> None:
    transport = sharded(6, shards=3)
    async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
        sent = [asyncio.create_task(client.get("/")) for _ in range(2)]
        await server.wait_for(lambda: server.in_flight == 2)
        assert transport.load == (1, 1, 0)
        sent += [asyncio.create_task(client.get("/")) for _ in range(4)]
        await server.wait_for(lambda: server.in_flight == 6)
        assert transport.load == (2, 2, 2)
        server.release.set()
        responses = await asyncio.gather(*sent)
    assert [r.text for r in responses] == ["ok"] * 6
    assert transport.load == (0, 0, 0)


async def test_requests_one_after_another_reuse_one_connection(server: KeepAliveServer) -> None:
    # spread over the shards in turn, each request opened a connection of a shard of its own
    # (and at a pace slower than the keep-alive expiry, every request a new one)
    server.release.set()
    transport = ShardedTransport()
    async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
        for _ in range(20):
            assert (await client.get("/")).text == "ok"
    assert server.accepted == 1
    await server.wait_for(lambda: server.closed == server.accepted)


async def test_a_few_requests_at_a_time_keep_reusing_the_same_connections(
    server: KeepAliveServer,
) -> None:
    transport = sharded(32, shards=8)
    async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
        for _ in range(5):  # five rounds of three requests at once
            server.release = asyncio.Event()
            sent = [asyncio.create_task(client.get("/")) for _ in range(3)]
            await server.wait_for(lambda: server.in_flight == 3)
            server.release.set()
            assert [r.text for r in await asyncio.gather(*sent)] == ["ok"] * 3
    assert server.accepted == 3


async def test_the_async_clients_calls_one_after_another_reuse_one_connection(
    server: KeepAliveServer,
) -> None:
    server.answer = _json_answer("200 OK", b'{"credits": {"available": 7, "subscription": 3}}')
    server.release.set()
    async with AsyncPhotoroomClient(api_key="k", base_url=server.url, max_retries=0) as client:
        for _ in range(10):
            assert (await client.credits()).available == 7
    assert server.accepted == 1


async def test_the_pool_never_opens_more_connections_than_its_budget_and_closes_them_all(
    server: KeepAliveServer,
) -> None:
    budget = 7
    transport = sharded(budget, shards=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        client = httpx.AsyncClient(transport=transport, base_url=server.url)
        sent = [asyncio.create_task(client.post("/", content=b"x" * 100)) for _ in range(60)]
        # every connection of the budget is busy before any answer is given
        await server.wait_for(lambda: server.in_flight == budget)
        assert server.open == budget
        server.release.set()
        responses = await asyncio.gather(*sent)
        assert all(r.status_code == 200 for r in responses)
        assert server.peak_open == budget
        assert server.peak_in_flight == budget
        assert server.accepted == budget  # kept alive, never reopened
        await client.aclose()
        await server.wait_for(lambda: server.closed == server.accepted)
        assert server.open == 0
        del client, transport, responses, sent
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


async def test_failed_and_cancelled_requests_give_their_connection_back(
    server: KeepAliveServer,
) -> None:
    transport = sharded(2, shards=2)
    async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
        waiting = asyncio.create_task(client.get("/"))
        await server.wait_for(lambda: server.in_flight == 1)
        assert sorted(transport.load) == [0, 1]
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert transport.load == (0, 0)
        with pytest.raises(httpx.ConnectError):
            await client.get("http://127.0.0.1:1/")  # nothing listens on port 1
        assert transport.load == (0, 0)
        server.release.set()
        async with client.stream("GET", "/") as streamed:
            assert sorted(transport.load) == [0, 1]  # busy until the body is closed
            await streamed.aread()
        assert transport.load == (0, 0)


async def test_the_async_client_sends_through_a_sharded_pool() -> None:
    async with AsyncPhotoroomClient(api_key="k", base_url="http://127.0.0.1:1") as client:
        transport = client._http._transport
        assert isinstance(transport, ShardedTransport)
        assert len(transport.load) > 1


def _json_answer(status: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


async def _refuse(*args: object, **kwargs: object) -> httpx.Response:
    raise AssertionError("httpx.AsyncClient.send was called")


async def test_the_clients_own_pool_is_used_without_the_httpx_client_layers(
    server: KeepAliveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # auth and redirect flows, hooks, cookies, mounts: a pool the client built has none of them
    monkeypatch.setattr(httpx.AsyncClient, "send", _refuse)
    server.answer = _json_answer("200 OK", b'{"credits": {"available": 7, "subscription": 3}}')
    server.release.set()
    async with AsyncPhotoroomClient(api_key="k", base_url=server.url, max_retries=0) as client:
        transport = client._http._transport
        assert isinstance(transport, ShardedTransport)
        answers = await asyncio.gather(*(client.credits() for _ in range(6)))
        assert [a.available for a in answers] == [7] * 6
        assert not any(transport.load)  # every connection back in the pool
        # a copy made with with_options() shares the pool, and its short cut
        copy = client.with_options(max_retries=0)
        assert (await copy.credits()).available == 7
        server.answer = _json_answer("500 Internal Server Error", b'{"detail": "down"}')
        with pytest.raises(ServerError, match="down") as caught:
            await client.credits()
        assert not any(transport.load)
        # the error's response is whole, as httpx's client would have made it
        response = caught.value.response
        assert response is not None
        assert response.url == f"{server.url}/v1/account"
        assert response.json() == {"detail": "down"}
        assert response.elapsed.total_seconds() >= 0
        assert response.is_closed
    await server.wait_for(lambda: server.closed == server.accepted)


async def test_a_call_on_the_clients_own_pool_cut_short_gives_its_connection_back(
    server: KeepAliveServer,
) -> None:
    async with AsyncPhotoroomClient(api_key="k", base_url=server.url, max_retries=0) as client:
        transport = client._http._transport
        assert isinstance(transport, ShardedTransport)
        waiting = asyncio.create_task(client.credits())
        await server.wait_for(lambda: server.in_flight == 1)
        assert sum(transport.load) == 1
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert not any(transport.load)
        with pytest.raises(APITimeoutError, match="GET /v1/account"):
            await client.credits(timeout=httpx.Timeout(5, read=0.05))
        assert not any(transport.load)
    assert server.in_flight == 2  # both still held by the server; the client gave up on them
    server.release.set()
    await server.wait_for(lambda: server.closed == server.accepted)


async def test_a_body_that_stops_coming_on_the_clients_own_pool_gives_its_connection_back(
    server: KeepAliveServer,
) -> None:
    # the head and the first byte of the body arrive, the rest never does
    server.answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 99\r\n\r\n{"
    )
    server.release.set()
    async with AsyncPhotoroomClient(api_key="k", base_url=server.url, max_retries=0) as client:
        transport = client._http._transport
        assert isinstance(transport, ShardedTransport)
        with pytest.raises(APITimeoutError, match="GET /v1/account"):
            await client.credits(timeout=httpx.Timeout(5, read=0.05))
        assert not any(transport.load)
    await server.wait_for(lambda: server.closed == server.accepted)


async def test_a_pool_passed_in_goes_through_its_hooks_and_auth() -> None:
    seen: list[str] = []

    async def on_request(request: httpx.Request) -> None:
        seen.append(f"request {request.headers.get('x-trace')}")

    async def on_response(response: httpx.Response) -> None:
        seen.append(f"response {response.status_code}")

    def trace(request: httpx.Request) -> httpx.Request:
        request.headers["x-trace"] = "t-1"
        return request

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["x-trace"] == "t-1"
        return httpx.Response(200, json={"credits": {"available": 2, "subscription": 0}})

    hooks = {"request": [on_request], "response": [on_response]}
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(answer), event_hooks=hooks, auth=trace
    ) as http:
        client = AsyncPhotoroomClient(api_key="k", base_url="http://127.0.0.1:9", http_client=http)
        assert (await client.credits()).available == 2
    assert seen == ["request t-1", "response 200"]


class _Answers:
    """A mock API for a pool passed in: the statuses to answer, in turn, and the calls."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        status = self.statuses.pop(0)
        if status == 200:
            return httpx.Response(200, content=_png(), headers={"content-type": "image/png"})
        headers = {"retry-after": "0"} if status == 429 else {}
        return httpx.Response(status, json={"detail": "nope"}, headers=headers)


def _call_through(kind: str, answers: _Answers, hook: Any) -> Any:
    """remove_background through a pool of the caller's with ``hook`` on its responses."""
    transport = httpx.MockTransport(answers)
    if kind == "sync":
        with httpx.Client(transport=transport, event_hooks={"response": [hook]}) as http:
            client = PhotoroomClient(
                api_key="k", base_url="http://127.0.0.1:9", http_client=http, max_retries=2
            )
            client._sleep = lambda seconds: None  # type: ignore[method-assign]
            return client.remove_background(_png())

    async def main() -> Any:
        async def async_hook(response: httpx.Response) -> None:
            hook(response)

        hooks = {"response": [async_hook]}
        async with httpx.AsyncClient(transport=transport, event_hooks=hooks) as http:
            client = AsyncPhotoroomClient(
                api_key="k", base_url="http://127.0.0.1:9", http_client=http, max_retries=2
            )

            async def no_wait(seconds: float) -> None:
                pass

            client._sleep = no_wait  # type: ignore[method-assign]
            return await client.remove_background(_png())

    return asyncio.run(main())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_raise_for_status_hook_keeps_the_errors_typed_and_the_retries(kind: str) -> None:
    # a pool whose response hook is raise_for_status (a common setting) made every error
    # status a raw httpx.HTTPStatusError: a 429 was never retried, a 402 not an SDK error
    def raise_for_status(response: httpx.Response) -> None:
        response.raise_for_status()

    answers = _Answers(429, 503, 200)
    assert _call_through(kind, answers, raise_for_status).content == _png()
    assert answers.calls == 3
    answers = _Answers(402)
    with pytest.raises(OutOfCreditsError) as caught:
        _call_through(kind, answers, raise_for_status)
    error = caught.value
    assert (error.status_code, error.possibly_billed, answers.calls) == (402, False, 1)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_hook_that_fails_on_an_answer_is_a_typed_error_never_paid_for_twice(kind: str) -> None:
    # a response hook with a bug raised out of the client raw; had it been retried as a
    # dropped connection, each attempt would have been billed again
    def broken(response: httpx.Response) -> None:
        raise KeyError("x-request-id")

    answers = _Answers(200, 200, 200)
    with pytest.raises(APIConnectionError, match="raised KeyError") as caught:
        _call_through(kind, answers, broken)
    assert caught.value.possibly_billed
    assert isinstance(caught.value.__cause__, KeyError)
    assert answers.calls == 1


class _Writes(httpx.AsyncBaseTransport):
    """Records how many pieces each request body arrives in; the first answer is a 503."""

    def __init__(self) -> None:
        self.pieces: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.pieces.append(len([chunk async for chunk in request.stream]))  # type: ignore[union-attr]
        if len(self.pieces) == 1:
            return httpx.Response(503, json={"detail": "busy"}, headers={"retry-after": "0"})
        return httpx.Response(200, content=_png(), headers={"content-type": "image/png"})


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (8, 8)).save(out, "PNG")
    return out.getvalue()


def test_a_multipart_body_goes_out_in_one_piece_on_every_attempt() -> None:
    # streamed part by part, httpcore writes each piece of a form to the socket on its own
    writes = _Writes()

    async def main() -> None:
        http = httpx.AsyncClient(transport=writes)
        async with AsyncPhotoroomClient(
            api_key="k", base_url="http://127.0.0.1:9", http_client=http, max_retries=1
        ) as client:
            await client.remove_background(_png(), SegmentOptions(size="medium"))
        await http.aclose()

    asyncio.run(main())
    assert writes.pieces == [1, 1]


def test_clients_load_the_ca_certificates_once_per_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # loading the CA bundle costs 25-30 ms of CPU: every batch run made a client, and paid it
    made: list[object] = []
    real = httpx.create_ssl_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        made.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(httpx, "create_ssl_context", counting)
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "SSLKEYLOGFILE"):
        monkeypatch.delenv(name, raising=False)
    _pool._tls_context.cache_clear()
    clients = [AsyncPhotoroomClient(api_key="k") for _ in range(3)]
    clients.append(clients[0]._copy_with_own_pool(max_retries=0))  # a batch's, per loop
    sync = [PhotoroomClient(api_key="k") for _ in range(2)]
    assert len(made) == 1

    async def download_pool() -> None:  # what a reader makes for the URLs of a batch
        await SourceReader()._http_client().aclose()

    asyncio.run(download_pool())
    asyncio.run(download_pool())
    assert len(made) == 2  # without SSL_CERT_FILE & co: the reader ignores the environment
    for client in sync:
        client.close()
    for each in clients:
        asyncio.run(each.aclose())
    # a bundle named by the environment is honoured: a new context for it
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    asyncio.run(AsyncPhotoroomClient(api_key="k").aclose())
    assert len(made) == 3


@pytest.mark.parametrize("kind", [AsyncPhotoroomClient, PhotoroomClient])
def test_ca_certificates_that_cannot_be_read_are_a_configuration_error(
    kind: type[AsyncPhotoroomClient] | type[PhotoroomClient],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigurationError, match="SSL_CERT_FILE"):
        kind(api_key="k")
    (tmp_path / "garbage.pem").write_text("not a certificate\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "garbage.pem"))
    with pytest.raises(ConfigurationError, match="SSL_CERT_FILE"):
        kind(api_key="k")
    monkeypatch.delenv("SSL_CERT_FILE")
    monkeypatch.setenv("SSLKEYLOGFILE", str(tmp_path / "no such folder" / "keys.log"))
    with pytest.raises(ConfigurationError, match="SSLKEYLOGFILE"):
        kind(api_key="k")


def test_one_async_client_serves_one_asyncio_run_after_another() -> None:
    # its pool's connections belonged to the first event loop: a call from a second
    # asyncio.run() waited out the whole timeout, then raised a bare RuntimeError("Event loop
    # is closed"), outside the SDK's errors
    emulator = PhotoroomEmulator(image_work=False)
    with emulator.serve() as url:
        client = AsyncPhotoroomClient(
            api_key=emulator.api_key, base_url=url, max_retries=0, timeout=5
        )

        async def call() -> httpx.AsyncClient:
            assert (await client.account()).images_available > 0
            assert (await client.remove_background(_png())).content.startswith(b"\x89PNG")
            return client._http

        pools = [asyncio.run(call()) for _ in range(3)]
        assert len(set(map(id, pools))) == 3  # a pool per loop...
        assert all(pool.is_closed for pool in pools)  # ...closed as its loop ended
        asyncio.run(client.aclose())
