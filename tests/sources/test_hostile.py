"""URL sources against a hostile server: SSRF through every IPv4-in-IPv6 form, metadata
addresses, redirects a caller's client would follow, drips, endless and lying bodies, bombs.

Addresses beyond loopback are never contacted: the session's connection guard fails any test
whose code tries, so each refusal here is also proof that no connection was attempted.
"""

from __future__ import annotations

import asyncio
import socket
import tracemalloc
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest

from photoroom_bg.errors import (
    InvalidSourceError,
    SourceError,
    SourceTimeoutError,
    SourceTooLargeError,
    UnsafeURLError,
)
from photoroom_bg.sources import ImageSource, SourceReader

from .conftest import png_bytes
from .hostile import BOMB_SIZE, HostileServer


def url(text: str) -> ImageSource:
    return ImageSource("url", text, "x")


def loopback_reader(**kwargs: object) -> SourceReader:
    return SourceReader(allow_networks=["127.0.0.1/32"], **kwargs)  # type: ignore[arg-type]


async def wait_for(event: object, seconds: float = 30.0) -> None:
    """Poll a threading.Event from async code, failing after ``seconds``."""
    with anyio.fail_after(seconds):
        while not event.is_set():  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)


# Each carries a non-public IPv4 address (10.0.0.1 unless noted) inside an IPv6 address.
EMBEDDED_FORMS = {
    "NAT64": "http://[64:ff9b::a00:1]/x.png",
    "local-use NAT64 /96": "http://[64:ff9b:1::a00:1]/x.png",
    "local-use NAT64 /48": "http://[64:ff9b:1:a00:0:100::]/x.png",
    "6to4": "http://[2002:a00:1::1]/x.png",
    "IPv4-compatible": "http://[::a00:1]/x.png",
    "SIIT": "http://[::ffff:0:a00:1]/x.png",
    "IPv4-mapped": "http://[::ffff:a00:1]/x.png",
    "Teredo": "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/x.png",
}
METADATA_FORMS = {
    "AWS/GCP/Azure": "http://169.254.169.254/latest/meta-data/",
    "AWS IPv6": "http://[fd00:ec2::254]/latest/meta-data/",
    "ECS credentials": "http://169.254.170.2/v2/credentials",
    "Alibaba": "http://100.100.100.200/latest/meta-data/",
    "Oracle": "http://192.0.0.192/opc/v1/instance/",
    "Azure WireServer": "http://168.63.129.16/machine",
    "mapped metadata": "http://[::ffff:a9fe:a9fe]/latest/",
    "NAT64 metadata": "http://[64:ff9b::a9fe:a9fe]/latest/",
    "6to4 metadata": "http://[2002:a9fe:a9fe::1]/latest/",
}


def through(server: HostileServer, target: str) -> ImageSource:
    return url(f"{server.url}/to?u={quote(target, safe='')}")


@pytest.mark.parametrize("form", sorted(EMBEDDED_FORMS))
async def test_a_redirect_to_an_ipv4_embedded_in_ipv6_is_refused_before_connecting(
    hostile: HostileServer, form: str
) -> None:
    before = len(hostile.requests)
    async with loopback_reader() as reader:
        with pytest.raises(UnsafeURLError, match="refused"):
            await reader.read(through(hostile, EMBEDDED_FORMS[form]))
    assert len(hostile.requests) - before == 1  # the redirect itself, nothing after it


@pytest.mark.parametrize("form", sorted(EMBEDDED_FORMS))
async def test_an_ipv4_embedded_in_ipv6_is_refused_as_a_literal(form: str) -> None:
    async with SourceReader() as reader:
        with pytest.raises(UnsafeURLError, match="refused"):
            await reader.read(url(EMBEDDED_FORMS[form]))


@pytest.mark.parametrize("form", sorted(METADATA_FORMS))
async def test_metadata_addresses_stay_refused_with_private_networks_allowed(
    hostile: HostileServer, form: str
) -> None:
    async with SourceReader(allow_private_networks=True) as reader:
        assert await reader.read(url(f"{hostile.url}/img.png")) == png_bytes()  # private: ok
        with pytest.raises(UnsafeURLError, match="refused"):
            await reader.read(through(hostile, METADATA_FORMS[form]))
        with pytest.raises(UnsafeURLError, match="refused"):
            await reader.read(url(METADATA_FORMS[form]))


@pytest.mark.parametrize("target", ["http://10.0.0.1./x.png", "http://169.254.169.254./"])
async def test_an_address_written_with_a_final_dot_is_refused_without_a_lookup(
    hostile: HostileServer, target: str
) -> None:
    # "10.0.0.1." was checked as an address, then handed to the resolver as a name: a DNS
    # query left the machine (the guard fails any lookup of a name not on loopback)
    async with SourceReader() as reader:  # the system resolver
        with pytest.raises(UnsafeURLError, match="refused"):
            await reader.read(url(target))
    async with loopback_reader() as reader:
        with pytest.raises(UnsafeURLError, match="refused"):
            await reader.read(through(hostile, target))


async def test_a_name_resolving_to_a_wrapped_private_address_is_refused() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["2606:4700::1111", "64:ff9b::a9fe:a9fe"]  # one public, one metadata via NAT64

    async with SourceReader(resolver=resolver, allow_private_networks=True) as reader:
        with pytest.raises(UnsafeURLError, match=r"NAT64 for 169\.254\.169\.254.*metadata"):
            await reader.read(url("http://rebind.example.test/x.png"))


async def test_a_callers_client_that_follows_redirects_does_not_follow_them_for_the_reader(
    hostile: HostileServer,
) -> None:
    before = len(hostile.requests)
    async with (
        httpx.AsyncClient(follow_redirects=True) as http,
        loopback_reader(http_client=http) as reader,
    ):
        with pytest.raises(UnsafeURLError, match=r"10\.0\.0\.1"):
            await reader.read(through(hostile, "http://10.0.0.1/x.png"))
        # and a redirect it may follow is still followed, by the reader
        assert await reader.read(through(hostile, f"{hostile.url}/img.png")) == png_bytes()
    assert len(hostile.requests) - before == 3


async def test_a_drip_is_stopped_by_the_total_deadline(hostile: HostileServer) -> None:
    async with loopback_reader(deadline=0.5, min_transfer_rate=0) as reader:
        with anyio.fail_after(30), pytest.raises(SourceTimeoutError, match=r"0\.5 s deadline"):
            await reader.read(url(f"{hostile.url}/drip?id=deadline&every=0.05"))


async def test_a_drip_is_stopped_by_the_minimum_transfer_rate(hostile: HostileServer) -> None:
    reader = loopback_reader(deadline=None, min_transfer_rate=1000, transfer_grace=0.2)
    async with reader:
        with anyio.fail_after(30), pytest.raises(SourceTimeoutError, match="too slow"):
            await reader.read(url(f"{hostile.url}/drip?id=rate&every=0.05"))


@pytest.mark.parametrize("where", ["answer", "body"])
async def test_a_server_that_stops_answering_is_a_source_timeout(
    hostile: HostileServer, where: str
) -> None:
    # the reader's timeout gave a plain SourceError("...: timed out"), which the service
    # reports as an unreadable image, not as the timeout the docs promise for too slow
    silent = socket.create_server(("127.0.0.1", 0))  # connections wait in its backlog
    port = silent.getsockname()[1]
    targets = {
        "answer": f"http://127.0.0.1:{port}/x.png",  # connected, never answered
        "body": f"{hostile.url}/drip?id=stall&every=30",  # a byte, then nothing
    }
    with silent:
        async with loopback_reader(timeout=0.2, deadline=None, min_transfer_rate=0) as reader:
            with anyio.fail_after(30), pytest.raises(SourceTimeoutError, match=r"0\.2 s timeout"):
                await reader.read(url(targets[where]))


async def test_cancelling_a_fetch_stops_it_at_once_and_drops_the_connection(
    hostile: HostileServer,
) -> None:
    started, client_left = hostile.drip("cancel")
    async with loopback_reader() as reader:
        task = asyncio.create_task(reader.read(url(f"{hostile.url}/drip?id=cancel&every=0.02")))
        await wait_for(started)
        assert not task.done()
        task.cancel()
        with anyio.fail_after(5):
            await asyncio.wait([task])
        assert task.cancelled()
        await wait_for(client_left)  # the server saw the connection go


async def test_an_endless_body_is_cut_at_the_cap(hostile: HostileServer) -> None:
    async with loopback_reader(max_bytes=300_000) as reader:
        with pytest.raises(SourceTooLargeError, match="limit is 300,000"):
            await reader.read(url(f"{hostile.url}/endless"))


async def test_a_body_shorter_than_its_content_length_fails(hostile: HostileServer) -> None:
    async with loopback_reader() as reader:
        with pytest.raises(SourceError, match="download failed"):
            await reader.read(url(f"{hostile.url}/short"))


async def test_a_body_longer_than_its_content_length_is_not_read_past_it(
    hostile: HostileServer,
) -> None:
    async with loopback_reader() as reader:
        data = await reader.read(url(f"{hostile.url}/long"))
    assert data == (png_bytes() + b"\x00" * 100)[:100]


@pytest.mark.parametrize("route", ["/gzip-bomb", "/deflate-bomb"])
async def test_a_compression_bomb_is_capped_on_decoded_bytes_without_inflating_it(
    hostile: HostileServer, route: str
) -> None:
    hostile.bomb(route.strip("/").split("-")[0])  # build it outside the measured window
    async with loopback_reader(max_bytes=1_000_000) as reader:
        tracemalloc.start()
        try:
            with pytest.raises(SourceTooLargeError, match="limit is 1,000,000"):
                await reader.read(url(f"{hostile.url}{route}"))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 8 * 1024 * 1024 < BOMB_SIZE  # never decoded whole


async def test_a_compressed_image_is_decoded(hostile: HostileServer) -> None:
    async with loopback_reader() as reader:
        assert await reader.read(url(f"{hostile.url}/img.png.gz")) == png_bytes()


async def test_an_encoding_the_reader_cannot_bound_is_refused(hostile: HostileServer) -> None:
    async with loopback_reader() as reader:
        with pytest.raises(SourceError, match="unsupported Content-Encoding br"):
            await reader.read(url(f"{hostile.url}/brotli"))


MALFORMED = [
    "http://999.1.1.1/x.png",
    "http://h:99999/x.png",
    "http://h:0/x.png",
    "http://[::1/x.png",
    "http://2130706433/x.png",
    "http://0x7f.1/x.png",
    "http://127.1/x.png",
    "http://010.0.0.1/x.png",
    "http://a b/x.png",
    "http://exa%41mple.com/x.png",
    "http:///x.png",
    # an A-label that is no punycode: httpx's URL.host raised idna's IDNAError, a
    # UnicodeError outside the SDK's tree, and the batch filed the job as unexpected
    "http://xn--a.com/x.png",
]


@pytest.mark.parametrize("target", MALFORMED)
async def test_a_malformed_url_is_a_typed_error_for_its_job_without_any_lookup(
    target: str,
) -> None:
    source = url(target)
    assert source.display  # showing it never raises
    assert repr(source)
    async with SourceReader() as reader:  # the system resolver: the guard sees any lookup
        with pytest.raises(InvalidSourceError):
            await reader.read(source)


# "http:10.0.0.1/x.png" (no "//"): httpx raised its InvalidURL, outside its HTTPError tree
# and the SDK's, and the job was filed as unexpected (a 500 from the service)
@pytest.mark.parametrize(
    "target",
    # "http:///x.png" as a Location is a path on the same server (as httpx resolves it)
    [*(t for t in MALFORMED if t != "http:///x.png"), "http:10.0.0.1/x.png", "https:x.png"],
)
async def test_a_redirect_to_a_malformed_url_is_a_typed_error(
    hostile: HostileServer, target: str
) -> None:
    async with loopback_reader() as reader:
        with pytest.raises(InvalidSourceError):
            await reader.read(through(hostile, target))


def test_fetches_are_bounded_by_default_and_bad_bounds_are_refused() -> None:
    from photoroom_bg.errors import ConfigurationError

    reader = SourceReader()
    assert (reader.deadline, reader.min_transfer_rate, reader.transfer_grace) == (60.0, 4096, 10)
    with pytest.raises(ConfigurationError, match="deadline"):
        SourceReader(deadline=0)
    with pytest.raises(ConfigurationError, match="min_transfer_rate"):
        SourceReader(min_transfer_rate=-1)


@pytest.mark.parametrize(
    "setting",
    [
        {"max_bytes": -1},  # every image "too large"
        {"max_bytes": 0},
        {"max_bytes": 1.5},
        {"max_bytes": True},
        {"max_redirects": -1},  # no request at all, "more than -1 redirects"
        {"max_redirects": 2.5},
        {"timeout": float("nan")},  # each fetch failed with a ValueError
        {"timeout": -1},
        {"timeout": 0},
        {"deadline": float("nan")},
        {"min_transfer_rate": float("nan")},  # a transfer never counted as too slow
        {"min_transfer_rate": float("inf")},  # every transfer too slow
        {"transfer_grace": float("nan")},
    ],
    ids=repr,
)
def test_nonsense_reader_settings_are_refused_naming_the_setting(setting: dict[str, Any]) -> None:
    from photoroom_bg.errors import ConfigurationError

    (name,) = setting
    with pytest.raises(ConfigurationError, match=name):
        SourceReader(**setting)
