"""The environment's proxies (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY), honoured by both
clients as httpx honours them, against loopback servers that record what reaches them."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from photoroom_bg import AsyncPhotoroomClient
from photoroom_bg.errors import APITimeoutError, ConfigurationError

from .conftest import make_twin, png
from .test_errors_retries import dripped_head

CREDITS = {"credits": {"available": 5, "subscription": 1}}
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class Recorder:
    """A loopback HTTP server answering every GET with the account's credits, recording each
    request line (a proxy is sent ``GET http://host/path``, a server ``GET /path``)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.lines.append(self.requestline)
                body = json.dumps(CREDITS).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def __enter__(self) -> Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment with no proxy variable, whatever the machine running the tests sets."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


@pytest.fixture
def proxy() -> Iterator[Recorder]:
    with Recorder() as running:
        yield running


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_both_clients_send_through_the_proxy_the_environment_names(
    kind: str, proxy: Recorder, no_proxies: pytest.MonkeyPatch
) -> None:
    no_proxies.setenv("HTTP_PROXY", proxy.url)
    # nothing listens on port 9: only a request through the proxy gets an answer
    twin = make_twin(kind, base_url="http://127.0.0.1:9", max_retries=0)
    try:
        credits = await twin.call("credits")
    finally:
        await twin.close()
    assert credits.available == 5
    assert proxy.lines == ["GET http://127.0.0.1:9/v1/account HTTP/1.1"]


async def test_a_batchs_own_pool_on_another_loop_goes_through_the_proxy_too(
    proxy: Recorder, no_proxies: pytest.MonkeyPatch
) -> None:
    no_proxies.setenv("ALL_PROXY", proxy.url)
    async with AsyncPhotoroomClient(api_key="k", base_url="http://127.0.0.1:9") as client:
        copy = client._copy_with_own_pool(max_retries=0)  # what a batch does on its loop
        try:
            assert (await copy.credits()).available == 5
        finally:
            await copy.aclose()
    assert proxy.lines == ["GET http://127.0.0.1:9/v1/account HTTP/1.1"]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_no_proxy_hosts_go_straight_to_the_server(
    kind: str, proxy: Recorder, no_proxies: pytest.MonkeyPatch
) -> None:
    no_proxies.setenv("HTTP_PROXY", proxy.url)
    no_proxies.setenv("NO_PROXY", "example.invalid, 127.0.0.1")
    with Recorder() as server:
        twin = make_twin(kind, base_url=server.url, max_retries=0)
        try:
            assert (await twin.call("credits")).available == 5
        finally:
            await twin.close()
    assert server.lines == ["GET /v1/account HTTP/1.1"]
    assert proxy.lines == []


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize(
    "url", ["ftp://proxy-user:hunter2@127.0.0.1:1", "gopher://proxy-user:hunter2@127.0.0.1:1"]
)
def test_a_proxy_httpx_cannot_use_is_refused_without_its_credentials(
    kind: str, url: str, no_proxies: pytest.MonkeyPatch
) -> None:
    no_proxies.setenv("HTTPS_PROXY", url)
    with pytest.raises(ConfigurationError, match="HTTPS_PROXY") as caught:
        make_twin(kind, base_url="http://127.0.0.1:9")
    assert "hunter2" not in str(caught.value)
    assert "proxy-user" not in str(caught.value)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_an_attempt_through_a_proxy_ends_at_the_timeouts_deadline(
    kind: str, no_proxies: pytest.MonkeyPatch
) -> None:
    # through a proxy the pool uses httpcore's own network, whose reads waited each for the
    # read timeout only: a proxy dripping the answer's head held the call for as long
    with dripped_head() as dripping:
        no_proxies.setenv("HTTP_PROXY", dripping.url)
        twin = make_twin(kind, base_url="http://127.0.0.1:9", timeout=0.25, max_retries=0)
        try:
            with pytest.raises(APITimeoutError, match="still arriving after 1 s"):
                await asyncio.wait_for(twin.call("remove_background", png()), 30)
        finally:
            await twin.close()
    assert dripping.answered == 1
