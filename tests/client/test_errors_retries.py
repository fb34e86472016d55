"""Error envelopes, retries, local validation and secrets (respx, both twins)."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import io
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from PIL import Image

from photoroom_bg import (
    AsyncPhotoroomClient,
    EditOptions,
    PhotoroomClient,
    SegmentOptions,
    _base_client,
)
from photoroom_bg._numbers import LONGEST_WAIT
from photoroom_bg._retry import RetryPolicy, is_retryable, parse_retry_after
from photoroom_bg.errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    InvalidImageError,
    InvalidSourceError,
    NotFoundError,
    OutOfCreditsError,
    PhotoroomError,
    RateLimitError,
    ServerError,
    SourceNotFoundError,
    ValidationError,
)
from photoroom_bg.testing import PhotoroomEmulator

from ..loopback import closed_port, read_request_head
from .conftest import ACCOUNT, API_KEY, CUTOUT, EDIT, SEGMENT, Twin, make_twin, png


@pytest.fixture
def respx_mock() -> respx.MockRouter:
    with respx.mock(assert_all_called=False) as router:
        yield router


STATUS_CLASSES = [
    (400, BadRequestError),
    (401, AuthenticationError),
    (402, OutOfCreditsError),
    (403, AuthenticationError),
    (404, NotFoundError),
    (422, BadRequestError),
    (429, RateLimitError),
    (500, ServerError),
    (503, ServerError),
]


@pytest.mark.parametrize(("status", "cls"), STATUS_CLASSES)
async def test_flat_envelope_on_the_sdk_host(
    twin: Twin, respx_mock: respx.MockRouter, status: int, cls: type[APIStatusError]
) -> None:
    respx_mock.post(SEGMENT).respond(
        status,
        json={"detail": "Please provide an image.", "status_code": status, "type": "missing_image"},
    )
    with pytest.raises(cls) as caught:
        await twin.call("remove_background", png(), max_retries=0)
    error = caught.value
    assert error.status_code == status
    assert error.message.startswith("Please provide an image.")
    assert error.error_type == "missing_image"
    assert error.response is not None
    assert error.response.status_code == status
    assert str(error).startswith(f"{status} [missing_image]: Please provide an image.")


@pytest.mark.parametrize(("status", "cls"), STATUS_CLASSES)
async def test_nested_envelope_on_the_image_api_host(
    twin: Twin, respx_mock: respx.MockRouter, status: int, cls: type[APIStatusError]
) -> None:
    key = "detail" if status == 402 else "message"
    respx_mock.post(EDIT).respond(status, json={"error": {key: "Something precise"}})
    with pytest.raises(cls) as caught:
        await twin.call("edit", png(), EditOptions(padding=0.1), max_retries=0)
    assert caught.value.message.startswith("Something precise")
    assert caught.value.error_type is None
    assert caught.value.status_code == status


async def test_out_of_credits_message_is_actionable(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(SEGMENT).respond(
        402,
        json={"detail": "API credits exhausted.", "status_code": 402, "type": "unknown_error"},
    )
    with pytest.raises(OutOfCreditsError, match="out of images/credits; retrying will not help"):
        await twin.call("remove_background", png())


async def test_non_json_error_body_is_kept_as_text(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(ACCOUNT).respond(502, text="<html>Bad gateway</html>")
    with pytest.raises(ServerError, match="Bad gateway") as caught:
        await twin.call("account", max_retries=0)
    assert caught.value.body is None


@pytest.mark.parametrize(
    "body",
    [
        {"detail": "x" * 5_000_000, "status_code": 400, "type": "t" * 5_000},
        {"error": {"message": "y" * 5_000_000}},
        {"detail": [{"loc": ["body", "z" * 5_000], "msg": "m" * 5_000}] * 100},
    ],
    ids=["flat", "nested", "list"],
)
async def test_a_huge_json_error_message_is_cut_as_a_text_body_is(
    twin: Twin, respx_mock: respx.MockRouter, body: dict[str, Any]
) -> None:
    # a text body was cut to 300 characters, a JSON one was not: a 5 MB detail ended up
    # whole in str(error), and so in every log line and job record that showed it
    respx_mock.post(SEGMENT).respond(400, json=body)
    with pytest.raises(BadRequestError) as caught:
        await twin.call("remove_background", png(), max_retries=0)
    assert len(str(caught.value)) < 500
    assert caught.value.body == body  # the whole answer stays at hand


async def test_429_retry_after_seconds_is_honoured(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.post(SEGMENT)
    route.side_effect = [
        httpx.Response(429, headers={"retry-after": "3"}, json={"detail": "slow down"}),
        httpx.Response(200, content=CUTOUT, headers={"content-type": "image/png"}),
    ]
    result = await twin.call("remove_background", png())
    assert result.content == CUTOUT
    assert route.call_count == 2
    assert twin.sleeps == [3.0]


async def test_retry_after_http_date_is_honoured_and_capped(
    respx_mock: respx.MockRouter,
) -> None:
    when = email.utils.formatdate(time.time() + 3600, usegmt=True)
    twin = make_twin("async", retry_policy=RetryPolicy(initial_delay=0.01, max_retry_after=5))
    route = respx_mock.post(SEGMENT)
    route.side_effect = [
        httpx.Response(503, headers={"retry-after": when}),
        httpx.Response(200, content=CUTOUT, headers={"content-type": "image/png"}),
    ]
    await twin.call("remove_background", png())
    assert twin.sleeps == [5.0]
    await twin.close()


@pytest.mark.parametrize("header", ["nan", "inf", "1e3", "-3"])
async def test_a_retry_after_that_is_not_delta_seconds_falls_back_to_the_backoff(
    header: str, respx_mock: respx.MockRouter
) -> None:
    # "nan" once reached the sleep (a ValueError outside the SDK's errors); "inf" and "1e3"
    # waited the longest Retry-After allowed
    twin = make_twin("async", retry_policy=RetryPolicy(initial_delay=0.01, max_delay=0.01))
    route = respx_mock.post(SEGMENT)
    route.side_effect = [
        httpx.Response(429, headers={"retry-after": header}, json={"detail": "slow down"}),
        httpx.Response(200, content=CUTOUT, headers={"content-type": "image/png"}),
    ]
    result = await twin.call("remove_background", png())
    assert result.content == CUTOUT
    assert len(twin.sleeps) == 1
    assert 0 <= twin.sleeps[0] <= 0.01
    await twin.close()


@pytest.mark.parametrize(
    "setting",
    [
        {"initial_delay": -1},
        {"max_delay": float("nan")},
        {"max_retry_after": -5},
        {"initial_delay": "1"},
        {"initial_delay": float("inf")},  # every retry would wait forever
    ],
)
def test_a_retry_policy_with_nonsense_delays_is_refused(setting: dict[str, Any]) -> None:
    (name,) = setting
    with pytest.raises(ConfigurationError, match=name):
        RetryPolicy(**setting)


def test_a_nan_timeout_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        AsyncPhotoroomClient(api_key=API_KEY, timeout=float("nan"))
    with pytest.raises(ConfigurationError, match="timeout"):
        PhotoroomClient(api_key=API_KEY, timeout=float("nan"))


@pytest.mark.parametrize(
    ("timeout", "phase"),
    [
        (httpx.Timeout(5.0, read=float("nan")), "timeout.read"),
        (httpx.Timeout(5.0, connect=-1.0), "timeout.connect"),
        (httpx.Timeout(5.0, write=-0.5), "timeout.write"),
    ],
)
def test_an_httpx_timeout_with_a_nonsense_phase_is_refused(
    timeout: httpx.Timeout, phase: str
) -> None:
    # taken as given before: each request then failed with a ValueError (outside the SDK's
    # errors) or, async with a negative connect timeout, an instant ConnectTimeout
    for cls in (PhotoroomClient, AsyncPhotoroomClient):
        with pytest.raises(ConfigurationError, match=phase):
            cls(api_key=API_KEY, timeout=timeout)


@pytest.mark.parametrize(
    "timeout", [float("inf"), 1e12, httpx.Timeout(5.0, read=float("inf"))], ids=repr
)
def test_a_timeout_longer_than_a_socket_can_wait_means_no_limit(timeout: Any) -> None:
    # it reached the socket as given: the sync client's first request raised OverflowError
    emulator = PhotoroomEmulator(image_work=False)
    with emulator.serve() as url:
        with PhotoroomClient(api_key=emulator.api_key, base_url=url, timeout=timeout) as client:
            assert client.timeout.read is None
            if not isinstance(timeout, httpx.Timeout):  # no limit in any phase, as None
                # (a 10 s connect limit was kept, where PHOTOROOM_TIMEOUT=inf kept none)
                assert client.timeout == httpx.Timeout(None)
            assert client.account().images_available > 0
            assert client.remove_background(png()).content.startswith(b"\x89PNG")

        async def run() -> float:
            async with AsyncPhotoroomClient(
                api_key=emulator.api_key, base_url=url, timeout=timeout
            ) as client:
                return (await client.account()).images_available

        assert asyncio.run(run()) > 0


def test_a_huge_retry_after_allowed_by_the_policy_is_slept_within_what_the_platform_can(
    respx_mock: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # max_retry_after=inf honours any Retry-After; 10^11 s went to time.sleep as is, which
    # raises OverflowError there
    slept: list[float] = []
    monkeypatch.setattr("photoroom_bg._client.time.sleep", slept.append)
    route = respx_mock.post(SEGMENT)
    route.side_effect = [
        httpx.Response(429, headers={"retry-after": "100000000000"}, json={"detail": "later"}),
        httpx.Response(200, content=CUTOUT, headers={"content-type": "image/png"}),
    ]
    policy = RetryPolicy(max_retry_after=float("inf"))
    with PhotoroomClient(api_key=API_KEY, retry_policy=policy) as client:
        assert client.remove_background(png()).content == CUTOUT
    assert slept == [LONGEST_WAIT]


async def test_retries_exhaust_with_the_last_error(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.post(SEGMENT).respond(500, json={"detail": "boom"})
    with pytest.raises(ServerError, match="boom"):
        await twin.call("remove_background", png(), max_retries=3)
    assert route.call_count == 4
    assert len(twin.sleeps) == 3
    assert all(0 <= delay <= 0.05 for delay in twin.sleeps)


@pytest.mark.parametrize("status", [400, 402, 403, 404, 422])
async def test_final_4xx_are_never_retried(
    twin: Twin, respx_mock: respx.MockRouter, status: int
) -> None:
    route = respx_mock.post(SEGMENT).respond(status, json={"detail": "no"})
    with pytest.raises(APIStatusError):
        await twin.call("remove_background", png(), max_retries=5)
    assert route.call_count == 1
    assert twin.sleeps == []


async def test_408_and_connection_errors_are_retried(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.post(SEGMENT)
    route.side_effect = [
        httpx.ConnectError("refused"),
        httpx.Response(408),
        httpx.ReadTimeout("slow"),
        httpx.Response(200, content=CUTOUT, headers={"content-type": "image/png"}),
    ]
    result = await twin.call("remove_background", png(), max_retries=3)
    assert result.content == CUTOUT
    assert route.call_count == 4


async def test_timeouts_and_connection_errors_are_typed(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(SEGMENT).mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(APITimeoutError, match="timed out"):
        await twin.call("remove_background", png(), max_retries=0)
    respx_mock.post(EDIT).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(APIConnectionError, match="ConnectError") as caught:
        await twin.call("edit", png(), max_retries=0)
    assert not isinstance(caught.value, APITimeoutError)


async def test_max_retries_zero_on_the_client_disables_retries(
    respx_mock: respx.MockRouter,
) -> None:
    twin = make_twin("sync", max_retries=0)
    route = respx_mock.post(SEGMENT).respond(503)
    with pytest.raises(ServerError):
        await twin.call("remove_background", png())
    assert route.call_count == 1
    await twin.close()


def _big_png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("1", (width, height)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"GIF89a" + b"\x00" * 20, "GIF; /v1/segment accepts PNG, JPEG, WEBP, HEIC"),
        (b"hello world, not an image", "not a recognised image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "corrupt or truncated"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * (50 * 1024 * 1024), "at most 50 MB"),
    ],
)
async def test_segment_local_validation_sends_nothing(
    twin: Twin, respx_mock: respx.MockRouter, data: bytes, message: str
) -> None:
    route = respx_mock.post(SEGMENT)
    with pytest.raises(InvalidImageError, match=message):
        await twin.call("remove_background", data)
    assert not route.called


def _jpeg(progressive: bool = False, size: tuple[int, int] = (96, 64)) -> bytes:
    image = Image.new("RGB", size)
    image.putdata(
        [(x * 5 % 256, y * 7 % 256, (x * y) % 256) for y in range(size[1]) for x in range(size[0])]
    )
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90, progressive=progressive)
    return out.getvalue()


def _with_thumbnail(jpeg: bytes) -> bytes:
    """``jpeg`` with a whole small JPEG (a scan and an end marker of its own) in an APP15
    segment after its start marker, as cameras put a thumbnail in the EXIF segment."""
    thumbnail = _jpeg(size=(8, 8))
    segment = b"\xff\xef" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail
    return jpeg[:2] + segment + jpeg[2:]


@pytest.mark.parametrize(
    "data",
    [
        _jpeg()[: len(_jpeg()) // 2],
        _jpeg(progressive=True)[: len(_jpeg(progressive=True)) // 2],
        _jpeg()[:-2],  # everything but the end marker
        _with_thumbnail(_jpeg())[: len(_with_thumbnail(_jpeg())) * 2 // 3],
    ],
    ids=["half", "progressive-half", "no-end-marker", "thumbnail-inside"],
)
async def test_a_cut_off_jpeg_is_refused_before_sending(
    twin: Twin, respx_mock: respx.MockRouter, data: bytes
) -> None:
    # Pillow's header check passes these; a server might bill a half-grey cut-out
    route = respx_mock.post(SEGMENT)
    with pytest.raises(InvalidImageError, match="is truncated: the JPEG stops before the end"):
        await twin.call("remove_background", data)
    assert not route.called


@pytest.mark.parametrize(
    "data",
    [_jpeg(), _jpeg(progressive=True), _with_thumbnail(_jpeg()), _jpeg() + b"trailing data"],
    ids=["whole", "progressive", "thumbnail-inside", "trailing-data"],
)
async def test_a_whole_jpeg_is_sent(twin: Twin, respx_mock: respx.MockRouter, data: bytes) -> None:
    route = respx_mock.post(SEGMENT).respond(
        200, content=png(), headers={"content-type": "image/png"}
    )
    await twin.call("remove_background", data)
    assert route.called


async def test_longest_side_over_6000_px_is_refused(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.post(SEGMENT)
    with pytest.raises(InvalidImageError, match="6001x2 px"):
        await twin.call("remove_background", _big_png(6001, 2))
    assert not route.called


async def test_edit_refuses_heic_and_over_30_mb(twin: Twin, respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(EDIT)
    heic = b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40
    with pytest.raises(InvalidImageError, match="HEIC; /v2/edit accepts PNG, JPEG, WEBP"):
        await twin.call("edit", heic)
    with pytest.raises(InvalidImageError, match="at most 30 MB"):
        await twin.call("edit", b"\x89PNG\r\n\x1a\n" + b"\x00" * (30 * 1024 * 1024))
    assert not route.called


async def test_segment_accepts_heic_unchecked_by_pillow(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.post(SEGMENT).respond(
        200, content=CUTOUT, headers={"content-type": "image/png"}
    )
    await twin.call("remove_background", b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40)
    assert route.called


async def test_missing_file_is_a_typed_error(twin: Twin, respx_mock: respx.MockRouter) -> None:
    with pytest.raises(SourceNotFoundError, match="not found"):
        await twin.call("remove_background", "/nonexistent/shoe.jpg")


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("remove_background", "http://user:pw@127.0.0.1:9/shoe.jpg?token=s3cret"),
        ("remove_background", "s3://bucket/shoe.jpg"),
        ("edit", "s3://bucket/shoe.jpg"),  # edit() fetches only http(s) URLs (imageUrl)
    ],
)
async def test_a_url_given_where_a_path_goes_says_what_the_call_takes(
    twin: Twin, respx_mock: respx.MockRouter, method: str, url: str
) -> None:
    # "image file not found: http:/127.0.0.1:9/shoe.jpg": the URL was taken for a path
    with pytest.raises(InvalidSourceError, match="is a URL, not a path") as caught:
        await twin.call(method, url)
    assert "edit() takes an http(s) URL" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert "pw" not in str(caught.value)


@pytest.mark.parametrize("method", ["remove_background", "edit"])
@pytest.mark.parametrize(
    ("image", "shown"),
    [
        ("shoe\x00.jpg", "shoe\x00\\.jpg: not a usable path"),  # a NUL byte: no file system
        (Path("shoe\x00.jpg"), "shoe\x00\\.jpg: not a usable path"),
        ("shoe\ud800.jpg", r"shoe\\ud800\.jpg: not a usable path"),  # a lone surrogate
        ("s3://bucket/shoe\x00.jpg", "is a URL, not a path"),
    ],
)
async def test_a_path_no_file_system_takes_is_a_typed_error(
    twin: Twin, respx_mock: respx.MockRouter, method: str, image: str | Path, shown: str
) -> None:
    # os.stat raised ValueError (embedded null byte) or UnicodeEncodeError out of the call,
    # where a BatchRemover fails that job with InvalidSourceError
    with pytest.raises(InvalidSourceError, match=shown):
        await twin.call(method, image)
    assert not respx_mock.calls
    if method == "remove_background":  # edit() sends an http(s) URL on: see below
        with pytest.raises(InvalidSourceError, match="is a URL, not a path"):
            await twin.call(method, "http://127.0.0.1:9/shoe\x00.jpg")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/shoe\x00.jpg",
        "https://127.0.0.1:9/\ud800.jpg",
        "http://",
        "https://[::1/shoe.jpg",
        "http://127.0.0.1:99999/shoe.jpg",
    ],
)
async def test_edit_refuses_an_image_url_that_is_no_url_before_sending(
    twin: Twin, respx_mock: respx.MockRouter, url: str
) -> None:
    # sent on as imageUrl (httpx percent-encodes a NUL in a query), or UnicodeEncodeError
    # out of the call; the batch refuses the same URLs as sources
    with pytest.raises(InvalidSourceError, match="not a valid URL"):
        await twin.call("edit", url)
    assert not respx_mock.calls


async def test_wrong_options_type_is_refused(twin: Twin) -> None:
    from photoroom_bg.errors import ValidationError

    with pytest.raises(ValidationError, match="takes SegmentOptions"):
        await twin.call("remove_background", png(), EditOptions())
    with pytest.raises(ValidationError, match="takes EditOptions"):
        await twin.call("edit", png(), SegmentOptions())


@pytest.mark.parametrize("cls", [PhotoroomClient, AsyncPhotoroomClient])
async def test_missing_key_is_reported_at_the_first_request(
    cls: type[PhotoroomClient] | type[AsyncPhotoroomClient],
    monkeypatch: pytest.MonkeyPatch,
    respx_mock: respx.MockRouter,
) -> None:
    monkeypatch.delenv("PHOTOROOM_API_KEY", raising=False)
    client = cls()  # no error here
    route = respx_mock.post(SEGMENT)
    twin = Twin(client)
    with pytest.raises(ConfigurationError, match="PHOTOROOM_API_KEY"):
        await twin.call("remove_background", png())
    assert not route.called
    await twin.close()


async def test_key_from_environment(
    monkeypatch: pytest.MonkeyPatch, respx_mock: respx.MockRouter
) -> None:
    monkeypatch.setenv("PHOTOROOM_API_KEY", "env_key_123")
    route = respx_mock.get(ACCOUNT).respond(
        200, json={"images": {"available": 1, "subscription": 2}}
    )
    with PhotoroomClient() as client:
        client.account()
    assert route.calls.last.request.headers["x-api-key"] == "env_key_123"


async def test_use_after_close_is_a_clear_error(twin: Twin, respx_mock: respx.MockRouter) -> None:
    await twin.close()
    with pytest.raises(ConfigurationError, match="is closed"):
        await twin.call("account")


async def test_with_options_shares_the_pool_and_overrides(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(SEGMENT).respond(503)
    client = PhotoroomClient(api_key=API_KEY, max_retries=4)
    fast = client.with_options(max_retries=0, timeout=5)
    assert fast._http is client._http
    assert fast.max_retries == 0
    assert fast.timeout.read == 5
    with pytest.raises(ServerError):
        fast.remove_background(png())
    assert route.call_count == 1
    fast.close()
    assert not client._http.is_closed  # the copy does not own the pool
    client.close()
    assert client._http.is_closed


async def test_injected_http_client_is_used_and_not_closed(respx_mock: respx.MockRouter) -> None:
    respx_mock.get(ACCOUNT).respond(200, json={"images": {"available": 1, "subscription": 2}})
    http = httpx.AsyncClient()
    async with AsyncPhotoroomClient(api_key=API_KEY, http_client=http) as client:
        await client.account()
    assert not http.is_closed
    await http.aclose()


async def test_base_url_overrides_both_hosts(respx_mock: respx.MockRouter) -> None:
    seg = respx_mock.post("http://127.0.0.1:9/v1/segment").respond(
        200, content=CUTOUT, headers={"content-type": "image/png"}
    )
    acc = respx_mock.get("http://127.0.0.1:9/v2/account").respond(
        200, json={"credits": {"available": 3, "subscription": 10}}
    )
    with PhotoroomClient(api_key=API_KEY, base_url="http://127.0.0.1:9/") as client:
        client.remove_background(png())
        account = client.account()
    assert seg.called
    assert acc.called
    assert account.images_available == 3


async def test_the_key_never_appears_in_repr_errors_or_logs(
    twin: Twin, respx_mock: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    respx_mock.post(SEGMENT).respond(
        403, json={"detail": "Forbidden", "status_code": 403, "type": "x"}
    )
    respx_mock.get(ACCOUNT).mock(side_effect=httpx.ConnectError("refused"))
    errors: list[PhotoroomError] = []
    with pytest.raises(AuthenticationError) as first:
        await twin.call("remove_background", png())
    errors.append(first.value)
    with pytest.raises(APIConnectionError) as second:
        await twin.call("account", max_retries=1)
    errors.append(second.value)
    texts = [repr(twin.client), str(twin.client), caplog.text]
    texts += [str(e) for e in errors] + [repr(e) for e in errors] + [e.message for e in errors]
    assert any("POST /v1/segment -> 403" in t for t in texts)  # logging does happen
    for text in texts:
        assert API_KEY not in text


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"base_url": "127.0.0.1:8000"}, "is not the http(s) URL of a server"),
        ({"base_url": "ftp://127.0.0.1:8000"}, "is not the http(s) URL of a server"),
        ({"segment_base_url": "http://127.0.0.1:8000/?x=1"}, "takes no query string"),
        ({"image_api_base_url": "http://[::1"}, "is not the http(s) URL of a server"),
        ({"env": "localhost:8000"}, "PHOTOROOM_BASE_URL 'localhost:8000' is not the http(s)"),
    ],
)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_base_url_that_is_no_server_url_is_refused_when_the_client_is_made(
    kind: str, given: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each was taken, and every call then failed: "Request URL is missing an 'http://'
    # protocol" (a batch stopped as if the API were down), or a 404 for a query's path
    from .conftest import make_twin

    arguments = dict(given)
    if "env" in arguments:
        monkeypatch.setenv("PHOTOROOM_BASE_URL", arguments.pop("env"))
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        make_twin(kind, **arguments)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_base_url_with_credentials_is_shown_without_them(kind: str) -> None:
    # repr() showed the user and password of a gateway's URL given as base_url
    from .conftest import make_twin

    twin = make_twin(kind, base_url="http://gateway:s3cret-pw@127.0.0.1:9/photoroom")
    shown = repr(twin.client)
    assert "http://127.0.0.1:9/photoroom" in shown
    assert "s3cret-pw" not in shown


def test_retry_after_parsing() -> None:
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("-3") is None  # not delta-seconds: the backoff applies
    for text in ("nan", "inf", "1e3", "\uff11\uff12", "1_0"):  # float() takes every one
        assert parse_retry_after(text) is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("not a date") is None
    date = email.utils.formatdate(1_000_060, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == pytest.approx(60)


def test_backoff_delays_grow_and_are_capped() -> None:
    policy = RetryPolicy(initial_delay=1, max_delay=8)
    delays = policy.delays()
    samples = [next(delays) for _ in range(50)]
    assert all(0 <= d <= 8 for d in samples)
    assert max(samples[5:]) > 1  # grows past the initial delay


def test_is_retryable_matrix() -> None:
    def status(code: int) -> APIStatusError:
        return APIStatusError("x", status_code=code)

    assert [is_retryable(status(c)) for c in (408, 429, 500, 502, 599)] == [True] * 5
    assert [is_retryable(status(c)) for c in (400, 401, 402, 403, 404, 409)] == [False] * 6
    assert [is_retryable(status(c)) for c in (501, 505)] == [False] * 2  # answers, not accidents
    assert is_retryable(APIConnectionError())
    assert is_retryable(APITimeoutError())
    assert not is_retryable(ValueError())


def test_possibly_billed_marks_failures_after_the_request_went_out() -> None:
    def status(code: int) -> APIStatusError:
        return APIStatusError("x", status_code=code)

    assert [status(c).possibly_billed for c in (500, 502, 504)] == [True] * 3
    assert [status(c).possibly_billed for c in (400, 402, 408, 429, 503)] == [False] * 5
    assert not APIConnectionError().possibly_billed
    assert APITimeoutError(possibly_billed=True).possibly_billed
    strict = RetryPolicy(retry_possibly_billed=False)
    assert not is_retryable(status(502), strict)
    assert not is_retryable(APITimeoutError(possibly_billed=True), strict)
    assert is_retryable(status(503), strict)
    assert is_retryable(APIConnectionError(), strict)
    assert is_retryable(status(502), RetryPolicy())


BILLING_CASES = [
    (httpx.ConnectError("refused"), APIConnectionError, False),
    (httpx.ConnectTimeout("slow connect"), APITimeoutError, False),
    (httpx.WriteError("broken pipe"), APIConnectionError, False),
    (httpx.ReadTimeout("no answer"), APITimeoutError, True),
    (httpx.ReadError("reset"), APIConnectionError, True),
    (httpx.RemoteProtocolError("peer closed connection"), APIConnectionError, True),
]


@pytest.mark.parametrize(("raised", "cls", "billed"), BILLING_CASES)
async def test_transport_failures_say_whether_the_server_may_have_billed(
    twin: Twin,
    respx_mock: respx.MockRouter,
    raised: Exception,
    cls: type[APIConnectionError],
    billed: bool,
) -> None:
    respx_mock.post(SEGMENT).mock(side_effect=raised)
    with pytest.raises(cls) as caught:
        await twin.call("remove_background", png(), max_retries=0)
    assert caught.value.possibly_billed is billed
    assert ("may have processed and billed" in str(caught.value)) is billed


ACCOUNT_FAILURES = [
    httpx.ReadTimeout("no answer"),
    httpx.ReadError("reset"),
    httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
    httpx.Response(500, json={"error": {"message": "An unexpected error occurred"}}),
    httpx.Response(502, text="Bad Gateway"),
]


@pytest.mark.parametrize("failure", ACCOUNT_FAILURES, ids=lambda f: type(f).__name__)
@pytest.mark.parametrize("method", ["account", "credits"])
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_balance_reads_are_never_called_possibly_billed(
    respx_mock: respx.MockRouter, kind: str, method: str, failure: Any
) -> None:
    # reading the balance costs nothing: a lost answer is not money at risk, and is retried
    # even by a policy that will not retry what the server may have billed
    url = ACCOUNT if method == "account" else ACCOUNT.replace("/v2/", "/v1/")
    body = {"images": {"available": 7, "subscription": 10}, "plan": "basic"}
    if method == "credits":
        body = {"credits": {"available": 7, "subscription": 10}}
    ok = httpx.Response(200, json=body)
    route = respx_mock.get(url)
    route.side_effect = [failure, ok]
    strict = make_twin(kind, retry_policy=RetryPolicy(initial_delay=0, retry_possibly_billed=False))
    try:
        read = await strict.call(method)
        assert (read.available if method == "credits" else read.images_available) == 7
        assert route.call_count == 2
        route.side_effect = [failure]
        with pytest.raises(PhotoroomError) as caught:
            await strict.call(method, max_retries=0)
    finally:
        await strict.close()
    assert caught.value.possibly_billed is False
    assert "billed" not in str(caught.value)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_retry_possibly_billed_off_fails_ambiguous_calls_at_once(
    respx_mock: respx.MockRouter, kind: str
) -> None:
    route = respx_mock.post(SEGMENT)
    route.side_effect = [httpx.ReadTimeout("no answer"), httpx.Response(200, content=png())]
    strict = make_twin(
        kind, retry_policy=RetryPolicy(initial_delay=0.01, retry_possibly_billed=False)
    )
    try:
        with pytest.raises(APITimeoutError):
            await strict.call("remove_background", png(), max_retries=3)
        assert route.call_count == 1  # not retried: it may already have been billed
        route.side_effect = [httpx.ConnectError("refused"), httpx.Response(200, content=png())]
        await strict.call("remove_background", png(), max_retries=3)  # never sent: retried
        assert route.call_count == 3
    finally:
        await strict.close()


def _webp() -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (24, 16), (0, 0, 0, 0)).save(out, format="WEBP")
    return out.getvalue()


_BIG_PNG = png(64, 48, (9, 99, 199))

SPOILED_ANSWERS = {
    "empty": httpx.Response(200, content=b"", headers={"content-type": "image/png"}),
    "no-content": httpx.Response(204),
    "html": httpx.Response(200, text="<html>Log in to the Wi-Fi</html>"),
    "json-error-with-200": httpx.Response(200, json={"status": "error"}),
    "png-cut-short": httpx.Response(200, content=_BIG_PNG[: len(_BIG_PNG) // 2]),
    "jpeg-cut-short": httpx.Response(200, content=_jpeg()[: len(_jpeg()) // 2]),
    "webp-cut-short": httpx.Response(200, content=_webp()[:-10]),
}


@pytest.mark.parametrize("answer", SPOILED_ANSWERS, ids=list(SPOILED_ANSWERS))
@pytest.mark.parametrize("method", ["remove_background", "edit"])
async def test_a_success_status_without_a_whole_image_is_a_possibly_billed_error(
    twin: Twin, respx_mock: respx.MockRouter, answer: str, method: str
) -> None:
    # such an answer came back as a result, which a batch stored as the cut-out and every
    # later run skipped as made
    route = respx_mock.post(SEGMENT if method == "remove_background" else EDIT)
    route.mock(return_value=SPOILED_ANSWERS[answer])
    with pytest.raises(APIResponseValidationError, match="no usable image") as caught:
        await twin.call(method, png(), max_retries=2)
    error = caught.value
    assert error.possibly_billed is True
    assert error.status_code == SPOILED_ANSWERS[answer].status_code
    assert route.call_count == 3  # a retry may get the whole image
    assert len(twin.sleeps) == 2


async def test_a_spoiled_answer_is_not_retried_when_billed_failures_are_not(
    respx_mock: respx.MockRouter,
) -> None:
    route = respx_mock.post(SEGMENT)
    route.side_effect = [httpx.Response(200, content=b""), httpx.Response(200, content=CUTOUT)]
    strict = make_twin("async", retry_policy=RetryPolicy(retry_possibly_billed=False))
    try:
        with pytest.raises(APIResponseValidationError, match="its body is empty"):
            await strict.call("remove_background", png(), max_retries=3)
    finally:
        await strict.close()
    assert route.call_count == 1


async def test_a_spoiled_answer_then_a_whole_one_gives_the_whole_one(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.post(SEGMENT)
    route.side_effect = [
        httpx.Response(200, content=CUTOUT[:-12]),
        httpx.Response(200, content=CUTOUT),
    ]
    result = await twin.call("remove_background", png())
    assert result.content == CUTOUT
    assert route.call_count == 2


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (_BIG_PNG, "image/png"),
        (_BIG_PNG + b"\x00" * 16, "image/png"),  # padding after the end
        (_jpeg(), "image/jpeg"),
        (_jpeg(progressive=True), "image/jpeg"),
        (_webp(), "image/webp"),
        (_BIG_PNG, "application/json"),  # a mislabelled image is still the image
        (_BIG_PNG, "application/octet-stream"),
    ],
    ids=["png", "png-padded", "jpeg", "progressive", "webp", "mislabelled", "octet-stream"],
)
async def test_whole_images_of_every_format_photoroom_makes_are_results(
    twin: Twin, respx_mock: respx.MockRouter, content: bytes, content_type: str
) -> None:
    respx_mock.post(SEGMENT).respond(200, content=content, headers={"content-type": content_type})
    result = await twin.call("remove_background", png(), max_retries=0)
    assert result.content == content


async def test_an_unexpected_account_body_is_a_validation_error_that_risks_no_money(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(ACCOUNT).respond(200, text="<html>proxy</html>")
    with pytest.raises(APIResponseValidationError, match="unexpected account body") as caught:
        await twin.call("account", max_retries=0)
    assert caught.value.possibly_billed is False


@pytest.mark.parametrize(
    ("method", "body", "problem"),
    [
        ("account", b'{"images":{"available":' + b"9" * 400 + b',"subscription":1}}', "available"),
        ("account", b'{"images":{"available":true,"subscription":10}}', "available"),
        ("account", b'{"images":{"available":3,"subscription":"NaN"}}', "subscription"),
        ("account", b'{"images":{"available":3,"subscription":"10"}}', "subscription"),
        ("account", b'{"images":{"available":NaN,"subscription":10}}', "available"),
        ("account", b'{"images":{"available":3,"subscription":Infinity}}', "subscription"),
        ("account", b'{"images":{"available":3,"subscription":10},"plan":["x"]}', "plan"),
        ("account", b'{"images":{"available":3,"subscription":10},"plan":7}', "plan"),
        ("credits", b'{"credits":{"available":false,"subscription":10}}', "available"),
        ("credits", b'{"credits":{"available":3,"subscription":1e999}}', "subscription"),
        ("credits", b'{"credits":{"available":3,"subscription":null}}', "subscription"),
    ],
)
async def test_an_account_body_of_the_wrong_types_is_a_validation_error(
    twin: Twin, respx_mock: respx.MockRouter, method: str, body: bytes, problem: str
) -> None:
    # a number too big for a float raised a raw OverflowError; true, "NaN" and ["x"] were
    # read as 1.0, nan and "['x']", an account that does not exist
    url = ACCOUNT if method == "account" else ACCOUNT.replace("/v2/", "/v1/")
    respx_mock.get(url).respond(200, content=body, headers={"content-type": "application/json"})
    with pytest.raises(APIResponseValidationError, match=problem) as caught:
        await twin.call(method, max_retries=0)
    assert caught.value.possibly_billed is False


class RawAnswerServer:
    """On a loopback port, in a thread: answers every request with ``head``, then ``body``,
    all at once or one byte every ``interval`` seconds (each byte well inside a read
    timeout); the body, or with ``drip_head`` the head, the body then sent at once."""

    def __init__(
        self, head: bytes, body: bytes, interval: float = 0.0, drip_head: bool = False
    ) -> None:
        self.head, self.body, self.interval = head, body, interval
        self.drip_head = drip_head
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.answered = 0

    @classmethod
    def dripping(cls, length: int = 400, interval: float = 0.05) -> RawAnswerServer:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: %d\r\n\r\n"
        return cls(head % length, b"x" * length, interval)

    def __enter__(self) -> RawAnswerServer:
        accepting = threading.Thread(target=self._accept, daemon=True)
        accepting.start()
        self.threads.append(accepting)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        self.listener.close()
        for thread in self.threads:
            thread.join(10)

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            answering = threading.Thread(target=self._answer, args=(conn,), daemon=True)
            answering.start()
            self.threads.append(answering)

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            while True:  # every request of the connection
                received = read_request_head(conn)
                if received is None:
                    return
                head, _, body = received.partition(b"\r\n\r\n")
                declared = re.search(rb"content-length: *(\d+)", head, re.I)
                length = int(declared.group(1)) if declared else 0
                while len(body) < length:
                    body += conn.recv(65536)
                self.answered += 1
                dripped, after = (self.head, self.body) if self.drip_head else (b"", b"")
                if not self.drip_head:
                    conn.sendall(self.head)
                    dripped, after = (self.body, b"") if self.interval else (b"", self.body)
                try:
                    for byte in dripped:
                        if self.stop.wait(self.interval):
                            return
                        conn.sendall(bytes([byte]))
                    conn.sendall(after)
                except OSError:
                    return  # the client gave up


def dripped_head(pad: int = 160) -> RawAnswerServer:
    """A server that drips its answer's head (padded by a long header), one byte every
    0.05 s; the answer has no body, so nothing arrives after the head to be checked."""
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: 0\r\n"
        b"x-pad: %s\r\n\r\n" % (b"p" * pad)
    )
    return RawAnswerServer(head, b"", 0.05, drip_head=True)


@pytest.mark.parametrize("where", ["body", "head"])
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_an_answer_dripped_a_byte_at_a_time_ends_at_the_timeouts_deadline(
    kind: str, where: str
) -> None:
    # each byte came inside the read timeout, so the call (and a batch's job) waited as long
    # as the server went on dripping (here 20 s for the body, 10 s for the head, with a
    # 0.25 s timeout); the deadline covered the body only, and a head that had dripped in
    # was taken for the answer
    with RawAnswerServer.dripping() if where == "body" else dripped_head() as server:
        twin = make_twin(kind, base_url=server.url, timeout=0.25, max_retries=0)
        try:
            with pytest.raises(APITimeoutError, match="still arriving after 1 s") as caught:
                await asyncio.wait_for(twin.call("remove_background", png()), 30)
        finally:
            await twin.close()
    assert caught.value.possibly_billed is True
    assert server.answered == 1


class SlowReader(RawAnswerServer):
    """A :class:`RawAnswerServer` that reads each request's body 16 KiB at a time, one piece
    every 0.03 s (each well inside a write timeout; its receive buffer kept small), then
    answers 200 with no body."""

    def __init__(self) -> None:
        super().__init__(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", b"")
        # taken by the connections accepted from now on
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    def _answer(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            received = read_request_head(conn)
            if received is None:
                return
            self.answered += 1
            head, _, body = received.partition(b"\r\n\r\n")
            declared = re.search(rb"content-length: *(\d+)", head, re.I)
            left = (int(declared.group(1)) if declared else 0) - len(body)
            while left > 0 and not self.stop.wait(0.03):
                piece = conn.recv(16384)
                if not piece:
                    break
                left -= len(piece)
            conn.sendall(self.head)


def small_send_buffers(client: PhotoroomClient) -> None:
    """Give the connections ``client``'s pool opens a small kernel send buffer, so that its
    writes wait on a slow reader (on loopback the buffer grows to a few MB otherwise)."""
    client._http._transport._pool._socket_options = [  # type: ignore[attr-defined]
        (socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    ]


def test_an_upload_read_a_little_at_a_time_ends_at_the_timeouts_deadline() -> None:
    # the synchronous pool sends a large write in many sends, each under the write timeout:
    # a server reading the request slowly held the call as long as the upload took (here
    # about 20 s for 2.7 MB). (The asynchronous pool hands the body to the event loop in one
    # write, whose wait for the kernel to take it all is bounded by the write timeout.)
    noise = Image.frombytes("RGB", (1000, 900), os.urandom(1000 * 900 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG", compress_level=0)
    with SlowReader() as server:
        client = PhotoroomClient(api_key=API_KEY, base_url=server.url, timeout=0.25, max_retries=0)
        small_send_buffers(client)
        with client, pytest.raises(APITimeoutError, match="still being sent after 1 s") as caught:
            client.remove_background(buffer.getvalue())
    assert caught.value.possibly_billed is False  # the server never had the whole request
    assert server.answered == 1


@pytest.mark.parametrize("where", ["body", "head"])
def test_a_batch_against_a_dripping_api_fails_the_job_instead_of_holding_it(where: str) -> None:
    from photoroom_bg import BatchRemover, MemorySink, PhotoroomEngine

    with RawAnswerServer.dripping() if where == "body" else dripped_head() as server:
        client = AsyncPhotoroomClient(api_key=API_KEY, base_url=server.url, timeout=0.25)
        batch = BatchRemover(
            PhotoroomEngine(client), sink=MemorySink(), max_retries=1, track_credits=False,
            requests_per_minute=None, retry_policy=RetryPolicy(initial_delay=0.01),
        )  # fmt: skip
        report = batch.submit([png()]).wait(timeout=20)
    assert report.failure_counts == {"APITimeoutError": 1}
    assert report.possibly_billed_calls == 2


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_body_that_cannot_be_decoded_is_a_spoiled_answer_in_the_sdks_tree(
    kind: str, encoding: str
) -> None:
    # httpx's DecodingError is no TransportError: it left the client as an httpx error,
    # outside the SDK's tree, and a batch called it unexpected and never retried it
    body = b"not %s at all" % encoding.encode()
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-encoding: %s\r\n"
        b"content-length: %d\r\n\r\n" % (encoding.encode(), len(body))
    )
    with RawAnswerServer(head, body) as server:
        twin = make_twin(kind, base_url=server.url, max_retries=1)
        try:
            with pytest.raises(APIResponseValidationError, match="could not be decoded") as caught:
                await twin.call("remove_background", png())
        finally:
            await twin.close()
    assert f"Content-Encoding {encoding}" in str(caught.value)
    assert caught.value.possibly_billed is True
    assert caught.value.status_code == 200
    assert isinstance(caught.value.__cause__, httpx.DecodingError)
    assert server.answered == 2  # retried


async def test_an_undecodable_balance_read_risks_no_money() -> None:
    body = b"garbage"
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    )
    with RawAnswerServer(head, body) as server:
        async with AsyncPhotoroomClient(api_key=API_KEY, base_url=server.url) as client:
            with pytest.raises(APIResponseValidationError) as caught:
                await client.account(max_retries=0)
    assert caught.value.possibly_billed is False
    assert "billed" not in str(caught.value)


SECRET = "sk_live_0123456789secretpart"


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        (SECRET + "\nx", "a control character at position 29"),
        (SECRET[:5] + "\x00" + SECRET[5:], "a control character at position 6"),
        (SECRET[:8] + " " + SECRET[8:], "a space at position 9"),
        (SECRET + "\u2026", "a non-ASCII character at position 29"),  # a pasted "..."
        ("\u201c" + SECRET + "\u201d", "a non-ASCII character at position 1"),  # smart quotes
    ],
)
@pytest.mark.parametrize("kind_of_client", ["sync", "async"])
def test_a_key_no_header_can_carry_is_refused_without_being_shown(
    key: str, kind: str, kind_of_client: str
) -> None:
    # h11's refusal quoted the header's value: the whole key went into the exception message
    # (and from there into logs); a non-ASCII one raised a UnicodeEncodeError
    cls = AsyncPhotoroomClient if kind_of_client == "async" else PhotoroomClient
    with pytest.raises(ConfigurationError, match="the API key cannot be sent") as caught:
        cls(api_key=key, base_url=f"http://127.0.0.1:{closed_port()}")
    assert kind in str(caught.value)
    assert "secretpart" not in str(caught.value)


@pytest.mark.parametrize("key", [f" {SECRET}", f"{SECRET}\n", f"\t{SECRET}\r\n"])
async def test_spaces_and_line_breaks_around_a_key_are_dropped(
    key: str, respx_mock: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    route = respx_mock.get(ACCOUNT).respond(
        200, json={"images": {"available": 1, "subscription": 1}, "plan": "basic"}
    )
    monkeypatch.setenv("PHOTOROOM_API_KEY", key)  # as read from a file with its newline
    for client in (PhotoroomClient(), AsyncPhotoroomClient(api_key=key)):
        twin = Twin(client)
        await twin.call("account")
        await twin.close()
    assert [call.request.headers["x-api-key"] for call in route.calls] == [SECRET, SECRET]


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"x-trace": "caf\u00e9"}, "extra_headers['x-trace'] cannot be sent"),
        ({"x-trace": "a\r\nx-injected: 1"}, "extra_headers['x-trace'] cannot be sent"),
        ({"x-trace": " padded"}, "extra_headers['x-trace'] cannot be sent"),
        ({"x-trace": None}, "extra_headers['x-trace'] must be a string, not NoneType"),
        ({"x-trace": 5}, "must be a string, not int"),
        ({"x trace": "1"}, "'x trace' is not a header name"),
        ({"": "1"}, "'' is not a header name"),
        ({"Content-Length": "5"}, "extra_headers['Content-Length']: Content-Length is the"),
    ],
)
async def test_extra_headers_http_cannot_carry_are_a_validation_error_naming_the_header(
    twin: Twin, respx_mock: respx.MockRouter, headers: dict[str, Any], message: str
) -> None:
    route = respx_mock.post(SEGMENT)
    with pytest.raises(ValidationError, match=re.escape(message)) as caught:
        await twin.call("remove_background", png(), extra_headers=headers)
    assert not route.called
    assert "padded" not in str(caught.value)
    assert "injected" not in str(caught.value)


def test_default_headers_http_cannot_carry_are_refused_when_the_client_is_made() -> None:
    with pytest.raises(ConfigurationError, match=r"default_headers\['authorization'\]") as caught:
        PhotoroomClient(api_key=API_KEY, default_headers={"authorization": "Bearer t\u00f6ken"})
    assert "ken" not in str(caught.value)
    headers = {"x-trace": "shop 42", "x-tab": "a\tb"}  # spaces and tabs inside are fine
    PhotoroomClient(api_key=API_KEY, default_headers=headers).close()


async def test_the_api_key_is_refused_as_a_header_of_the_client_or_the_call(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    # a key given as a header replaced the client's own, silently: another account billed
    with pytest.raises(ConfigurationError, match="api_key=") as made:
        PhotoroomClient(api_key=API_KEY, default_headers={"X-Api-Key": "sk_live_s3cret"})
    assert "s3cret" not in str(made.value)
    route = respx_mock.post(SEGMENT)
    with pytest.raises(ValidationError, match="api_key=") as called:
        await twin.call("remove_background", png(), extra_headers={"x-api-key": "sk_s3cret"})
    assert "s3cret" not in str(called.value)
    assert not route.called


def test_a_header_value_refused_on_the_wire_is_not_quoted_in_the_error() -> None:
    request = httpx.Request("POST", "https://sdk.photoroom.com/v1/segment")
    refused = httpx.LocalProtocolError("Illegal header value b'sk_live_abc\\n'", request=request)
    spec = _base_client.RequestSpec("POST", "https://sdk.photoroom.com/v1/segment")
    error = _base_client.BaseClient._transport_error(refused, spec)
    assert "sk_live_abc" not in str(error)
    assert "header value HTTP does not allow" in str(error)


async def test_bytes_that_read_as_a_file_name_are_refused_with_a_hint(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    # os.fsencode() and a bytes glob() give names as bytes, which are taken as image data:
    # the message said only "not a recognised image"
    route = respx_mock.post(SEGMENT)
    with pytest.raises(InvalidImageError, match="bytes are taken as the image itself") as named:
        await twin.call("remove_background", os.fsencode("photos/shoe.jpg"))
    assert "these 15 bytes read 'photos/shoe.jpg'" in str(named.value)
    with pytest.raises(InvalidImageError) as binary:
        await twin.call("remove_background", b"\x00\x01\x02 not text \xff")
    assert "bytes are taken" not in str(binary.value)
    assert not route.called


async def test_a_file_of_text_named_as_an_image_is_refused_as_the_text_it_is(
    twin: Twin, respx_mock: respx.MockRouter, tmp_path: Path
) -> None:
    # a failed download saved as photo.jpg, given by its path: the only advice was to
    # "pass a file name or URL as a str or pathlib.Path", which the caller had done
    saved = tmp_path / "photo.jpg"
    saved.write_text("404: Not Found")
    route = respx_mock.post(SEGMENT)
    with pytest.raises(InvalidImageError, match="an error page saved under an image's name"):
        await twin.call("remove_background", saved)
    assert not route.called


async def test_a_redirect_says_where_it_led_without_following_it(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    # "302: Found" was all a user behind a misconfigured proxy or base_url was told
    moved = "https://login.example/sso?token=s3cr3t"
    route = respx_mock.post(SEGMENT).respond(302, headers={"location": moved})
    with pytest.raises(APIStatusError, match=r"a redirect to https://login\.example/sso") as caught:
        await twin.call("remove_background", png())
    assert "check base_url" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)
    assert route.call_count == 1  # neither followed nor retried


#: A JSON value nested deeper than Python's parser recurses: a few hundred kilobytes that a
#: broken proxy or server could answer with; ``json.loads`` raises ``RecursionError`` on it
DEEP_JSON = b"[" * 200_000 + b"]" * 200_000


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, ServerError), (402, OutOfCreditsError), (400, BadRequestError)],
)
async def test_an_error_body_nested_too_deeply_is_read_as_text_of_the_status_error(
    twin: Twin, respx_mock: respx.MockRouter, status: int, error: type[APIStatusError]
) -> None:
    # the parse's RecursionError left the client raw, outside the SDK's tree
    respx_mock.post(SEGMENT).respond(
        status, content=DEEP_JSON, headers={"content-type": "application/json"}
    )
    with pytest.raises(error) as caught:
        await twin.call("remove_background", png(), max_retries=0)
    assert caught.value.status_code == status
    assert caught.value.body is None
    assert caught.value.message.startswith("[[[")
    assert len(caught.value.message) < 1000


async def test_an_answer_or_account_body_nested_too_deeply_is_a_spoiled_answer(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(SEGMENT).respond(
        200,
        content=b'{"base64img": ' + DEEP_JSON + b"}",
        headers={"content-type": "application/json"},
    )
    respx_mock.get(ACCOUNT).respond(
        200, content=DEEP_JSON, headers={"content-type": "application/json"}
    )
    with pytest.raises(APIResponseValidationError, match="no usable image") as image:
        await twin.call("remove_background", png(), max_retries=0)
    assert image.value.possibly_billed is True
    with pytest.raises(APIResponseValidationError, match="unexpected account body") as account:
        await twin.call("account", max_retries=0)
    assert account.value.possibly_billed is False


@pytest.mark.parametrize("status", [400, 402, 500])
async def test_an_answer_whose_text_is_no_utf8_gives_messages_that_print(
    twin: Twin, respx_mock: respx.MockRouter, status: int
) -> None:
    # a \ud800 escape is valid JSON but no character: the error's message (and an account's
    # plan) held a lone surrogate, so printing or logging it raised UnicodeEncodeError
    respx_mock.post(SEGMENT).respond(
        status,
        content=b'{"detail": "bad \\ud800 input", "type": "\\udfff"}',
        headers={"content-type": "application/json"},
    )
    respx_mock.get(ACCOUNT).respond(
        200,
        content=b'{"credits": {"available": 1, "subscription": 2}, "plan": "pro \\udc00"}',
        headers={"content-type": "application/json"},
    )
    with pytest.raises(APIStatusError) as caught:
        await twin.call("remove_background", png(), max_retries=0)
    assert "bad \\ud800 input" in str(caught.value)
    str(caught.value).encode()
    caught.value.message.encode()
    account = await twin.call("account", max_retries=0)
    assert account.plan == "pro \\udc00"
