"""How a request is built: on the client's own pool, in one pass, as httpx would build it."""

from __future__ import annotations

import asyncio
import os
import traceback
from typing import Any

import httpx
import pytest
import respx

from photoroom_bg import AsyncPhotoroomClient, SegmentOptions, _wire
from photoroom_bg._base_client import RequestSpec
from photoroom_bg._client import _build_request

from .conftest import CUTOUT, SEGMENT, png

BOUNDARY = b"0123456789abcdef0123456789abcdef"
URL = "http://127.0.0.1:9/v1/segment"

FORMS: list[tuple[dict[str, Any], list[tuple[str, tuple[str | None, bytes, str | None]]]]] = [
    ({"size": "hd", "crop": "true"}, [("image_file", ("shoe.jpg", b"\xff\xd8jpeg", "image/jpeg"))]),
    ({}, [("image_file", ("photo.png", b"png", None))]),  # the type guessed from the name
    ({}, [("blob", ("blob", b"x", None))]),  # an unknown kind: application/octet-stream
    ({}, [("blob", (None, b"x", None)), ("other", ("", b"y", "text/plain"))]),  # no name
    ({"tags": ["a", "b", ""]}, [("f", ("a.webp", b"", "image/webp"))]),  # repeated, empty
    (
        {'we"ird\\name': 'quote " back \\ é ✓ \x00\x01\x1b\x1f\x7f line\r\nbreak'},
        [('fi"le\\', ('na"me\\\x1b\x0a\r é.png', b"\x00" * 3, "image/png; x=é"))],
    ),
]


@pytest.mark.parametrize(("data", "files"), FORMS)
def test_the_multipart_body_is_byte_for_byte_what_httpx_encodes(
    data: dict[str, Any], files: list[tuple[str, tuple[str | None, bytes, str | None]]]
) -> None:
    stream = httpx._multipart.MultipartStream(data, files, boundary=BOUNDARY)
    encoded = _wire.multipart_body(data, files, boundary=BOUNDARY)
    assert encoded == (stream.content_type, b"".join(stream.iter_chunks()))
    assert _wire.multipart_body(data, files) != _wire.multipart_body(data, files)  # boundary


@pytest.mark.parametrize(
    ("data", "files"),
    [
        ({"n": 3}, []),  # a number: httpx's own text form for it
        ({"t": ("a", "b")}, []),
        ({}, [("f", ("f.png", bytearray(b"x"), None))]),
    ],
)
def test_what_the_encoder_does_not_take_is_left_to_httpx(data: Any, files: Any) -> None:
    assert _wire.multipart_body(data, files) is None


@pytest.fixture
def same_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both encoders draw the same boundary (from ``os.urandom``)."""
    monkeypatch.setattr(os, "urandom", lambda size: bytes(range(size)))


def _both(http: httpx.AsyncClient, spec: RequestSpec, extra: Any) -> tuple[Any, Any]:
    timeout = httpx.Timeout(12.5, connect=3)
    made = _build_request(http, spec, extra, timeout)
    headers = {**spec.headers, **(extra or {})}
    expected = http.build_request(
        spec.method, spec.url, data=spec.data, files=spec.files, headers=headers, timeout=timeout
    )
    expected.read()
    return made, expected


def _same(made: httpx.Request, expected: httpx.Request) -> None:
    assert (made.method, made.url) == (expected.method, expected.url)
    assert made.headers.raw == expected.headers.raw  # names, values, case and order
    assert made.content == expected.content
    assert made.extensions == expected.extensions


EXTRAS = [
    None,
    {"Accept": "image/png", "X-Trace": "7", "USER-AGENT": "mine"},
    {"Host": "images.example.test"},
    {"Content-Type": "multipart/form-data; boundary=given"},  # left to httpx
]


@pytest.mark.usefixtures("same_boundary")
@pytest.mark.parametrize("extra", EXTRAS)
async def test_a_request_on_the_own_pool_is_the_one_httpx_builds(extra: Any) -> None:
    async with AsyncPhotoroomClient(api_key="k", base_url="http://127.0.0.1:9") as client:
        spec = RequestSpec(
            "POST",
            URL,
            data={"size": "hd"},
            files=[("image_file", ("a.png", png(), "image/png"))],
            headers={"x-api-key": "k", "user-agent": "photoroom-bg"},
        )
        _same(*_both(client._http, spec, extra))


@pytest.mark.usefixtures("same_boundary")
async def test_a_pool_given_cookies_or_parts_httpx_encodes_builds_through_httpx() -> None:
    async with AsyncPhotoroomClient(api_key="k", base_url="http://127.0.0.1:9") as client:
        http = client._http
        spec = RequestSpec("POST", URL, data={"n": 3}, files=[("f", ("f.png", b"x", None))])  # type: ignore[dict-item]
        made, expected = _both(http, spec, None)
        _same(made, expected)
        assert b'name="n"\r\n\r\n3\r\n' in made.content
        http.cookies.set("lb", "node-2")
        spec = RequestSpec("POST", URL, files=[("f", ("f.png", b"x", None))])
        made, expected = _both(http, spec, None)
        _same(made, expected)
        assert made.headers["cookie"] == "lb=node-2"


def test_a_segment_call_on_the_own_pool_parses_its_url_once_and_makes_no_form_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # httpx parsed the URL twice for every request and built its form as a stream of field
    # objects joined in a second pass: about 25 microseconds of CPU per image, done again
    # for every image of a batch
    parsed: list[str] = []
    streams: list[object] = []
    real_parse = httpx._urls.urlparse
    real_stream = httpx._multipart.MultipartStream.__init__

    def parse(url: str = "", **kwargs: Any) -> Any:
        files = [frame.filename for frame in traceback.extract_stack()]
        if any("photoroom_bg" in name for name in files) and not any(
            "respx" in name for name in files
        ):
            parsed.append(url)  # (respx, standing in for the pool, parses it to match it)
        return real_parse(url, **kwargs)

    def stream(self: Any, *args: Any, **kwargs: Any) -> None:
        streams.append(self)
        real_stream(self, *args, **kwargs)

    monkeypatch.setattr(httpx._urls, "urlparse", parse)
    monkeypatch.setattr(httpx._multipart.MultipartStream, "__init__", stream)

    async def main() -> list[bytes]:
        async with AsyncPhotoroomClient(api_key="k") as client:
            with respx.mock(assert_all_mocked=True) as router:
                route = router.post(SEGMENT).respond(
                    200, content=CUTOUT, headers={"content-type": "image/png"}
                )
                for size in ("preview", "medium", "hd", "full"):
                    await client.remove_background(png(), SegmentOptions(size=size))
                return [call.request.content for call in route.calls]

    parsed.clear()
    bodies = asyncio.run(main())
    assert len(bodies) == 4
    assert all(b'name="image_file"' in body for body in bodies)
    assert streams == []
    assert parsed.count(SEGMENT) <= 1
