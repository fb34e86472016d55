"""Safe URL fetching: the SSRF guard, redirects, caps and sniffing, against a real server."""

from __future__ import annotations

import httpx
import pytest

from photoroom_bg.errors import (
    InvalidImageError,
    SourceError,
    SourceNotFoundError,
    SourceTooLargeError,
    UnsafeURLError,
)
from photoroom_bg.sources import ImageSource, SourceReader

from .conftest import ImageServer, png_bytes


def url(text: str) -> ImageSource:
    return ImageSource("url", text, "x")


def loopback_reader(**kwargs: object) -> SourceReader:
    return SourceReader(allow_networks=["127.0.0.1/32"], **kwargs)  # type: ignore[arg-type]


class Recorder:
    """An httpx transport that records every request it is asked to send."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def client(self) -> httpx.AsyncClient:
        def handle(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return httpx.Response(200, content=png_bytes())

        return httpx.AsyncClient(transport=httpx.MockTransport(handle))


async def test_an_allowed_server_is_fetched(image_server: ImageServer) -> None:
    async with loopback_reader() as reader:
        assert await reader.read(url(f"{image_server.url}/img.png")) == png_bytes()


async def test_the_connection_is_pinned_and_keeps_the_host_name(image_server: ImageServer) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        assert host == "images.example.test"
        return ["127.0.0.1"]

    async with loopback_reader(resolver=resolver) as reader:
        data = await reader.read(url(f"http://images.example.test:{image_server.port}/img.png"))
    assert data == png_bytes()
    assert image_server.requests[-1] == ("/img.png", f"images.example.test:{image_server.port}")


REFUSED = [
    "http://127.0.0.1/x.png",
    "http://localhost/x.png",
    "http://[::1]/x.png",
    "http://10.0.0.1/x.png",
    "http://172.16.5.4/x.png",
    "http://192.168.1.1/x.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://0.0.0.0/x.png",
    "http://[::ffff:127.0.0.1]/x.png",
    "http://100.64.0.1/x.png",
    "http://[fe80::1]/x.png",
    "http://224.0.0.1/x.png",
]


@pytest.mark.parametrize("target", REFUSED)
async def test_non_public_addresses_are_refused_without_connecting(target: str) -> None:
    recorder = Recorder()
    async with recorder.client() as http, SourceReader(http_client=http) as reader:
        with pytest.raises(UnsafeURLError, match="refused"):
            await reader.read(url(target))
    assert recorder.requests == []


async def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.1.2.3"]  # one bad address is enough to refuse

    recorder = Recorder()
    async with recorder.client() as http, SourceReader(resolver=resolver, http_client=http) as r:
        with pytest.raises(UnsafeURLError, match=r"10\.1\.2\.3, a private address"):
            await r.read(url("http://minio.internal/bucket/x.png"))
    assert recorder.requests == []


@pytest.mark.parametrize(
    "target",
    ["file:///etc/passwd", "ftp://example.com/x.png", "gopher://example.com/", "data:,hello"],
)
async def test_only_http_and_https_are_fetched(target: str) -> None:
    async with SourceReader() as reader:
        with pytest.raises(UnsafeURLError, match="only http and https"):
            await reader.read(url(target))


@pytest.mark.parametrize(
    "target", ["http://169.254.169.254/latest/", "http://10.0.0.1/x.png", "http://127.0.0.2/x"]
)
async def test_redirects_are_rechecked(image_server: ImageServer, target: str) -> None:
    before = len(image_server.requests)
    async with loopback_reader() as reader:
        with pytest.raises(UnsafeURLError, match="refused"):
            await reader.read(url(f"{image_server.url}/redirect?to={target}"))
    assert [path for path, _ in image_server.requests[before:]] == [f"/redirect?to={target}"]


async def test_an_allowed_redirect_is_followed(image_server: ImageServer) -> None:
    async with loopback_reader() as reader:
        data = await reader.read(url(f"{image_server.url}/redirect?to=/img.png"))
    assert data == png_bytes()


async def test_redirect_loops_stop_after_the_limit(image_server: ImageServer) -> None:
    before = len(image_server.requests)
    async with loopback_reader(max_redirects=5) as reader:
        with pytest.raises(SourceError, match="more than 5 redirects"):
            await reader.read(url(f"{image_server.url}/loop"))
    assert len(image_server.requests) - before == 6


async def test_content_length_over_the_cap_is_refused(image_server: ImageServer) -> None:
    async with loopback_reader(max_bytes=100_000) as reader:
        with pytest.raises(SourceTooLargeError, match="10,000,000 bytes"):
            await reader.read(url(f"{image_server.url}/big"))


async def test_a_chunked_body_is_capped_while_reading(image_server: ImageServer) -> None:
    async with loopback_reader(max_bytes=50_000) as reader:
        with pytest.raises(SourceTooLargeError, match="limit is 50,000"):
            await reader.read(url(f"{image_server.url}/chunked"))


async def test_non_image_content_is_refused(image_server: ImageServer) -> None:
    async with loopback_reader() as reader:
        with pytest.raises(InvalidImageError, match="not an image"):
            await reader.read(url(f"{image_server.url}/text"))


async def test_http_errors_are_typed(image_server: ImageServer) -> None:
    async with loopback_reader() as reader:
        with pytest.raises(SourceNotFoundError, match="404"):
            await reader.read(url(f"{image_server.url}/missing.png"))
        with pytest.raises(SourceError, match="HTTP 500"):
            await reader.read(url(f"{image_server.url}/boom"))


async def test_private_networks_can_be_allowed_explicitly(image_server: ImageServer) -> None:
    async with SourceReader(allow_private_networks=True) as reader:
        assert await reader.read(url(f"{image_server.url}/img.png")) == png_bytes()
    async with SourceReader(allow_private_networks=True) as reader:
        with pytest.raises(UnsafeURLError, match="non-unicast"):
            await reader.read(url("http://0.0.0.0/x.png"))
