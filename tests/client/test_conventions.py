"""The conventions of httpx and the OpenAI SDK: with_options honours every setting,
timeout=None means none, errors keep their cause and pickle, odd error bodies never crash,
warnings point at the caller's line, the async client keeps the event loop free."""

from __future__ import annotations

import inspect
import json
import pickle
import random
import threading
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from photoroom_bg import (
    AsyncPhotoroomClient,
    Credits,
    EditOptions,
    JobResult,
    JobStatus,
    PhotoroomClient,
    PhotoroomWarning,
    _base_client,
)
from photoroom_bg._base_client import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, parse_error_body
from photoroom_bg.errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    BadRequestError,
    ConfigurationError,
    InvalidImageError,
    OutOfCreditsError,
    PhotoroomBGError,
    RateLimitError,
    ServerError,
    ValidationError,
)
from photoroom_bg.sinks import StoredObject

from .conftest import (
    ACCOUNT,
    API_KEY,
    CUTOUT,
    EDIT,
    SEGMENT,
    Twin,
    make_twin,
    multipart_fields,
    png,
)

RENDER = "https://image-api.photoroom.com/v1/render"
CREDITS = "https://image-api.photoroom.com/v1/account"
OK_IMAGE = {"content": CUTOUT, "headers": {"content-type": "image/png"}}


@pytest.fixture
def respx_mock() -> respx.MockRouter:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield router


# -- with_options ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_with_options_base_url_moves_both_hosts(
    kind: str, respx_mock: respx.MockRouter
) -> None:
    twin = make_twin(kind)
    proxy = Twin(twin.client.with_options(base_url="http://127.0.0.1:9/"))
    segment = respx_mock.post("http://127.0.0.1:9/v1/segment").respond(200, **OK_IMAGE)
    account = respx_mock.get("http://127.0.0.1:9/v2/account").respond(
        200, json={"images": {"available": 1, "subscription": 2}, "plan": "basic"}
    )
    await proxy.call("remove_background", png())
    await proxy.call("account")
    assert segment.called
    assert account.called
    assert proxy.client._http is twin.client._http  # the pool is shared
    split = twin.client.with_options(
        base_url="http://127.0.0.1:9", segment_base_url="http://127.0.0.1:8"
    )
    assert (split.segment_base_url, split.image_api_base_url) == (
        "http://127.0.0.1:8",
        "http://127.0.0.1:9",
    )
    await twin.close()


async def test_with_options_honours_every_constructor_argument() -> None:
    client = PhotoroomClient(api_key=API_KEY, default_headers={"x-a": "1"})
    signature = inspect.signature(PhotoroomClient.__init__).parameters
    changed = client.with_options(
        api_key="other",
        timeout=None,
        max_retries=7,
        default_headers={"x-b": "2"},
        retry_policy=client.retry_policy,
    )
    assert set(inspect.signature(PhotoroomClient.with_options).parameters) - {"self"} == (
        set(signature) - {"self"}
    )
    assert set(inspect.signature(AsyncPhotoroomClient.with_options).parameters) == set(
        inspect.signature(PhotoroomClient.with_options).parameters
    )
    assert changed._api_key == "other"
    assert changed.timeout == httpx.Timeout(None)
    assert changed.max_retries == 7
    assert changed.default_headers == {"x-a": "1", "x-b": "2"}
    assert client.with_options().timeout == DEFAULT_TIMEOUT
    client.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_with_options_accepts_another_pool_and_refuses_the_wrong_kind(
    kind: str, respx_mock: respx.MockRouter
) -> None:
    respx_mock.get(ACCOUNT).respond(200, json={"images": {"available": 1, "subscription": 2}})
    twin = make_twin(kind)
    own: Any = httpx.AsyncClient() if twin.is_async else httpx.Client()
    wrong: Any = httpx.Client() if twin.is_async else httpx.AsyncClient()
    copy = Twin(twin.client.with_options(http_client=own))
    assert copy.client._http is own
    await copy.call("account")
    await copy.close()
    assert not own.is_closed  # the copy does not own what it was given
    with pytest.raises(ConfigurationError, match="http_client must be an httpx"):
        twin.client.with_options(http_client=wrong)
    with pytest.raises(ConfigurationError, match="http_client must be an httpx"):
        type(twin.client)(api_key=API_KEY, http_client=wrong)
    for pool in (own, wrong):
        if isinstance(pool, httpx.AsyncClient):
            await pool.aclose()
        else:
            pool.close()
    await twin.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_copy_whose_shared_pool_was_closed_says_so(
    kind: str, respx_mock: respx.MockRouter
) -> None:
    twin = make_twin(kind)
    copy = Twin(twin.client.with_options(max_retries=0))
    await twin.close()
    with pytest.raises(ConfigurationError, match=r"connection pool .* was closed"):
        await copy.call("account")


# -- timeouts -------------------------------------------------------------------------------


def _timeouts(request: httpx.Request) -> dict[str, float | None]:
    return dict(request.extensions["timeout"])


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_timeout_none_means_no_timeout_and_the_default_stays_explicit(
    kind: str, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.get(ACCOUNT).respond(
        200, json={"images": {"available": 1, "subscription": 2}}
    )
    default = make_twin(kind)
    await default.call("account")
    assert _timeouts(route.calls.last.request) == {
        "connect": 10.0,
        "read": 120.0,
        "write": 120.0,
        "pool": 120.0,
    }
    await default.call("account", timeout=None)
    assert set(_timeouts(route.calls.last.request).values()) == {None}
    unlimited = make_twin(kind, timeout=None)
    await unlimited.call("account")
    assert set(_timeouts(route.calls.last.request).values()) == {None}
    await unlimited.call("account", timeout=3)
    assert _timeouts(route.calls.last.request)["read"] == 3.0
    with pytest.raises(ConfigurationError, match="timeout must be"):
        make_twin(kind, timeout=-1)
    await default.close()
    await unlimited.close()


def test_the_default_retries_are_one_named_constant() -> None:
    for cls in (PhotoroomClient, AsyncPhotoroomClient):
        assert inspect.signature(cls).parameters["max_retries"].default == DEFAULT_MAX_RETRIES
    assert not hasattr(_base_client, "RETRYABLE_STATUS")
    assert [f.name for f in _base_client.RequestSpec.__attrs_attrs__] == [
        "method",
        "url",
        "params",
        "data",
        "files",
        "headers",
        "billable",
    ]


# -- configuration from the environment --------------------------------------------------------


def test_base_urls_come_from_the_environment_per_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHOTOROOM_BASE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("PHOTOROOM_SEGMENT_BASE_URL", "http://127.0.0.1:2/")
    with PhotoroomClient(api_key=API_KEY) as client:
        assert client.segment_base_url == "http://127.0.0.1:2"
        assert client.image_api_base_url == "http://127.0.0.1:1"
    monkeypatch.setenv("PHOTOROOM_IMAGE_API_BASE_URL", "http://127.0.0.1:3")
    with PhotoroomClient(api_key=API_KEY, base_url="http://127.0.0.1:4") as client:
        # an argument beats the environment
        assert (client.segment_base_url, client.image_api_base_url) == (
            "http://127.0.0.1:4",
            "http://127.0.0.1:4",
        )
    with PhotoroomClient(api_key=API_KEY) as client:
        assert client.image_api_base_url == "http://127.0.0.1:3"


@pytest.mark.parametrize("cls", [PhotoroomClient, AsyncPhotoroomClient])
def test_the_default_timeout_comes_from_the_environment(
    cls: type[PhotoroomClient] | type[AsyncPhotoroomClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a command-line user, a service or a worker has no timeout= to pass: the variable is
    # the setting a timed-out call's advice names for them
    monkeypatch.setenv("PHOTOROOM_TIMEOUT", "300")
    client = cls(api_key=API_KEY)
    assert (client.timeout.read, client.timeout.connect) == (300.0, 10.0)
    assert client.with_options(max_retries=0).timeout.read == 300.0
    assert cls(api_key=API_KEY, timeout=5).timeout.read == 5.0  # an argument beats it
    monkeypatch.setenv("PHOTOROOM_TIMEOUT", "none")
    assert cls(api_key=API_KEY).timeout.read is None
    monkeypatch.setenv("PHOTOROOM_TIMEOUT", "")
    assert cls(api_key=API_KEY).timeout == DEFAULT_TIMEOUT
    for bad in ("0", "-3", "nan", "2 minutes"):
        monkeypatch.setenv("PHOTOROOM_TIMEOUT", bad)
        with pytest.raises(ConfigurationError, match=f"PHOTOROOM_TIMEOUT='{bad}'.*seconds > 0"):
            cls(api_key=API_KEY)


async def test_a_timeout_names_the_setting_of_each_way_of_calling(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(SEGMENT).mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(APITimeoutError) as caught:
        await twin.call("remove_background", png(), max_retries=0)
    message = str(caught.value)
    for setting in ("timeout=", "call_timeout=", "--timeout", "PHOTOROOM_TIMEOUT=<seconds>"):
        assert setting in message
    assert "may have processed and billed it" in message


# -- endpoints ------------------------------------------------------------------------------


async def test_an_upper_case_scheme_is_a_url(twin: Twin, respx_mock: respx.MockRouter) -> None:
    route = respx_mock.get(EDIT).respond(200, **OK_IMAGE)
    await twin.call("edit", "HTTPS://example.com/shoe.jpg", EditOptions(padding=0.1))
    assert route.calls.last.request.url.params["imageUrl"] == "HTTPS://example.com/shoe.jpg"


async def test_credits_reads_v1_account(twin: Twin, respx_mock: respx.MockRouter) -> None:
    route = respx_mock.get(CREDITS).respond(
        200, json={"credits": {"available": 8.2, "subscription": 10}}
    )
    assert await twin.call("credits") == Credits(available=8.2, subscription=10)
    assert route.calls.last.request.headers["x-api-key"] == API_KEY


async def test_render_sends_the_template_by_get_or_post(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    get = respx_mock.get(RENDER).respond(200, **OK_IMAGE)
    post = respx_mock.post(RENDER).respond(200, **OK_IMAGE)
    template = "592dd982-4a1b-4cd9-ab11-21481d5a0064"
    await twin.call("render", "https://example.com/shoe.jpg", template)
    assert dict(get.calls.last.request.url.params) == {
        "templateId": template,
        "imageUrl": "https://example.com/shoe.jpg",
    }
    assert "apiKey" not in str(get.calls.last.request.url)  # the key stays in the header
    assert not post.called
    with pytest.raises(ValidationError) as refused:
        await twin.call("render", None, template)
    assert refused.value.rule == "render:needs-image"
    assert refused.value.parameter == "image"


async def test_render_posts_the_file_and_template(twin: Twin, respx_mock: respx.MockRouter) -> None:
    post = respx_mock.post(RENDER).respond(200, **OK_IMAGE)
    template = "592dd982-4a1b-4cd9-ab11-21481d5a0064"
    await twin.call("render", png(), template)
    fields = multipart_fields(post.calls.last.request)
    assert fields["templateId"] == (None, template.encode())
    assert fields["imageFile"] == ("image", png())


# -- errors: cause, pickling, odd bodies --------------------------------------------------------


async def test_a_connection_error_keeps_the_httpx_exception_as_its_cause(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(SEGMENT).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(APIConnectionError) as caught:
        await twin.call("remove_background", png(), max_retries=0)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    respx_mock.get(ACCOUNT).respond(200, json=["not", "an", "account"])
    with pytest.raises(APIStatusError, match="unexpected account body") as odd:
        await twin.call("account")
    assert isinstance(odd.value.__cause__, TypeError)


def _all_error_instances() -> list[PhotoroomBGError]:
    from photoroom_bg import errors

    request = httpx.Request(
        "POST", "https://sdk.photoroom.com/v1/segment", headers={"x-api-key": API_KEY}
    )
    made: list[PhotoroomBGError] = []
    for status in (400, 401, 402, 403, 404, 408, 422, 429, 500, 502, 503):
        response = httpx.Response(
            status,
            json={"detail": "no", "status_code": status, "type": "t"},
            headers={"retry-after": "3"},
            request=request,
        )
        made.append(_base_client.BaseClient._status_error(response))
    spoiled = httpx.Response(
        200, json={"detail": "no"}, headers={"retry-after": "3"}, request=request
    )
    made.append(APIResponseValidationError("no image", response=spoiled, body=spoiled.json()))
    made.append(APIConnectionError("reset", request=request, possibly_billed=True))
    made.append(APITimeoutError("slow", request=request, possibly_billed=True))
    made.append(ValidationError("bad", parameter="padding", rule="padding:spacing"))
    made.append(InvalidImageError("empty", parameter="image", rule="input:required"))
    for name in errors.__all__:
        cls = getattr(errors, name)
        if not any(type(e) is cls for e in made):
            try:
                made.append(cls("plain message"))
            except TypeError:  # needs keyword arguments: covered above
                assert issubclass(cls, APIStatusError)
    return made


@pytest.mark.parametrize("error", _all_error_instances(), ids=lambda e: type(e).__name__)
def test_every_error_pickles_with_its_attributes_and_without_the_key(
    error: PhotoroomBGError,
) -> None:
    data = pickle.dumps(error)
    assert API_KEY.encode() not in data
    copy = pickle.loads(data)  # noqa: S301 - our own bytes
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    for name, value in vars(error).items():
        if isinstance(value, (httpx.Response, httpx.Request)):
            continue
        assert getattr(copy, name) == value, name
    if isinstance(error, APIStatusError):
        assert copy.response is not None
        assert copy.response.status_code == error.status_code
        assert copy.response.json() == error.body
        assert copy.response.headers["retry-after"] == "3"
        assert copy.response.request.headers["x-api-key"] == "[redacted]"
        assert copy.possibly_billed == error.possibly_billed
    if isinstance(error, RateLimitError):
        assert copy.retry_after == 3.0


def test_pickling_keeps_possibly_billed_and_rule() -> None:
    billed = pickle.loads(pickle.dumps(ServerError("x", status_code=502)))  # noqa: S301
    assert billed.possibly_billed is True
    refused = pickle.loads(pickle.dumps(OutOfCreditsError("x", status_code=402)))  # noqa: S301
    assert refused.possibly_billed is False
    timeout = pickle.loads(pickle.dumps(APITimeoutError("x", possibly_billed=True)))  # noqa: S301
    assert timeout.possibly_billed is True
    invalid = pickle.loads(pickle.dumps(ValidationError("m", parameter="p", rule="r")))  # noqa: S301
    assert (invalid.parameter, invalid.rule) == ("p", "r")


def test_a_job_result_holding_an_api_error_pickles() -> None:
    request = httpx.Request("POST", SEGMENT, headers={"x-api-key": API_KEY})
    error = BadRequestError(
        "Please provide an image.",
        status_code=400,
        response=httpx.Response(400, json={"detail": "x"}, request=request),
        error_type="missing_image",
        body={"detail": "x"},
    )
    job = JobResult(
        index=3,
        source="shoe.jpg",
        name="shoe",
        status=JobStatus.FAILED,
        key="shoe-abc.png",
        output=StoredObject("k", 1, "image/png", "sha256:00", "memory://k", "memory://k"),
        error=error,
        attempts=2,
    )
    data = pickle.dumps(job)
    assert API_KEY.encode() not in data
    copy = pickle.loads(data)  # noqa: S301 - our own bytes
    assert copy.status is JobStatus.FAILED
    assert copy.error_type == "BadRequestError"
    assert isinstance(copy.error, BadRequestError)
    assert (copy.error.status_code, copy.error.error_type) == (400, "missing_image")
    assert copy.output == job.output


ODD_BODIES: list[tuple[Any, str | None, str | None]] = [
    (
        {"detail": ["field required", "image_file: missing"]},
        "field required; image_file: missing",
        None,
    ),
    (
        {"detail": [{"loc": ["body", "image_file"], "msg": "field required"}]},
        "body.image_file: field required",
        None,
    ),
    ({"detail": {"reason": "x"}}, '{"reason": "x"}', None),
    ({"error": {"message": ["a", "b"]}}, "a; b", None),
    ({"error": {"detail": "API credits exhausted"}}, "API credits exhausted", None),
    ({"error": "plain"}, "plain", None),
    ({"error": None, "message": "top"}, "top", None),
    ({"detail": "d", "type": 42}, "d", None),
    ({}, None, None),
    ([], None, None),
    (["a", 1, None], "a; 1", None),
    ("Rate limited", "Rate limited", None),
    (42, "42", None),
    (None, None, None),
    (True, "True", None),
]


@pytest.mark.parametrize(("body", "message", "kind"), ODD_BODIES)
def test_parse_error_body_reads_odd_bodies(
    body: Any, message: str | None, kind: str | None
) -> None:
    assert parse_error_body(body) == (message, kind)


def test_parse_error_body_never_raises_on_any_json() -> None:
    rng = random.Random(13)

    def value(depth: int = 0) -> Any:
        kinds = ["str", "int", "float", "none", "bool"] + (["list", "dict"] if depth < 4 else [])
        kind = rng.choice(kinds)
        if kind == "list":
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        if kind == "dict":
            keys = ["error", "detail", "message", "msg", "type", "loc", "x"]
            return {rng.choice(keys): value(depth + 1) for _ in range(rng.randint(0, 3))}
        return {"str": "s", "int": 1, "float": 1.5, "none": None, "bool": False}[kind]

    for _ in range(2000):
        message, kind = parse_error_body(value())
        assert message is None or isinstance(message, str)
        assert kind is None or isinstance(kind, str)


@pytest.mark.parametrize(
    ("content", "headers", "expected"),
    [
        (b"<html><body>502 Bad Gateway</body></html>", {"content-type": "text/html"}, "502 Bad"),
        (b"", {}, "Bad Gateway"),
        (b"\xff\xfe\x00garbage", {"content-type": "application/json"}, "garbage"),
        (b'"just a string"', {"content-type": "application/json"}, "just a string"),
        (b"[1, 2]", {"content-type": "application/json"}, "1; 2"),
    ],
)
async def test_odd_error_bodies_still_give_a_typed_error(
    twin: Twin, respx_mock: respx.MockRouter, content: bytes, headers: dict[str, str], expected: str
) -> None:
    respx_mock.get(ACCOUNT).respond(502, content=content, headers=headers)
    with pytest.raises(ServerError) as caught:
        await twin.call("account", max_retries=0)
    assert expected in caught.value.message


# -- warnings point at the caller --------------------------------------------------------------


def _ignored(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(EDIT).respond(
        200,
        content=CUTOUT,
        headers={"content-type": "image/png", "pr-unsupported-attributes": "Unsupported: x.y"},
    )


def _line(marker: str) -> int:
    """The line of this file that carries ``marker`` (a comment), so no test counts lines."""
    lines = Path(__file__).read_text().splitlines()
    (number,) = [n for n, text in enumerate(lines, 1) if text.endswith(marker)]
    return number


async def test_warnings_point_at_the_callers_line(twin: Twin, respx_mock: respx.MockRouter) -> None:
    _ignored(respx_mock)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        options = EditOptions(ai_background_model_version="9")  # type: ignore[arg-type] # <built>
        if twin.is_async:
            await twin.client.edit(png(), options)  # type: ignore[union-attr] # <async call>
        else:
            twin.client.edit(png(), options)  # type: ignore[union-attr] # <sync call>
    found = [(w.filename, w.lineno) for w in caught if w.category is PhotoroomWarning]
    call = _line("# <async call>") if twin.is_async else _line("# <sync call>")
    assert found == [(__file__, _line("# <built>")), (__file__, call)]


async def _helper_of_the_user(client: PhotoroomClient | AsyncPhotoroomClient) -> None:
    if isinstance(client, AsyncPhotoroomClient):
        await client.edit(png(), EditOptions(padding=0.1))  # <helper, async>
    else:
        client.edit(png(), EditOptions(padding=0.1))  # <helper, sync>


async def test_warnings_point_at_the_callers_line_through_a_helper(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    _ignored(respx_mock)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await _helper_of_the_user(twin.client)
    (found,) = [w for w in caught if w.category is PhotoroomWarning]
    marker = "# <helper, async>" if twin.is_async else "# <helper, sync>"
    assert (found.filename, found.lineno) == (__file__, _line(marker))


# -- the async client keeps the event loop free ---------------------------------------------------


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the thread each input is read and checked on."""
    seen: list[str] = []
    load, validate = _base_client.load_image, _base_client.validate_image

    def recording_load(image: Any) -> Any:
        seen.append(f"load:{threading.current_thread().name}")
        return load(image)

    def recording_validate(data: bytes, endpoint: Any, *, name: str = "image") -> str:
        seen.append(f"check:{threading.current_thread().name}")
        return validate(data, endpoint, name=name)

    monkeypatch.setattr(_base_client, "load_image", recording_load)
    monkeypatch.setattr(_base_client, "validate_image", recording_validate)
    return seen


async def test_the_async_client_reads_files_and_checks_large_images_off_the_loop(
    threads: list[str], respx_mock: respx.MockRouter, tmp_path: Path
) -> None:
    respx_mock.post(SEGMENT).respond(200, **OK_IMAGE)
    respx_mock.post(EDIT).respond(200, **OK_IMAGE)
    loop_thread = threading.current_thread().name
    photo = tmp_path / "shoe.png"
    photo.write_bytes(png())
    large = png(600, 600) + b"\x00" * (_base_client.INLINE_BYTES)
    async with AsyncPhotoroomClient(api_key=API_KEY) as client:
        await client.remove_background(photo)  # a path: file I/O
        assert len(threads) == 2
        assert all(loop_thread not in t for t in threads)
        threads.clear()
        await client.edit(large, EditOptions(background_image_file=large))
        assert len(threads) == 3
        assert all(loop_thread not in t for t in threads)
        threads.clear()
        await client.remove_background(png())  # a small image: not worth a thread
        assert all(t.endswith(loop_thread) for t in threads)
    with PhotoroomClient(api_key=API_KEY) as sync:
        threads.clear()
        sync.remove_background(photo)
        assert all(t.endswith(loop_thread) for t in threads)


async def test_a_warning_from_a_threaded_call_still_points_at_the_caller(
    respx_mock: respx.MockRouter, tmp_path: Path
) -> None:
    _ignored(respx_mock)
    photo = tmp_path / "shoe.png"
    photo.write_bytes(png())
    async with AsyncPhotoroomClient(api_key=API_KEY) as client:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            options = EditOptions(background_image_url="https://x/b.png")
            await client.edit(photo, options)  # <threaded call>
    found = {(w.filename, w.lineno) for w in caught if w.category is PhotoroomWarning}
    assert found == {(__file__, _line("# <threaded call>"))}
    assert len([w for w in caught if "[rule urls:get-only]" in str(w.message)]) == 1


def test_odd_bodies_reach_the_message_not_a_crash() -> None:
    response = httpx.Response(400, content=json.dumps({"detail": [1, {"msg": "m"}]}).encode())
    error = _base_client.BaseClient._status_error(response)
    assert isinstance(error, BadRequestError)
    assert error.message == "1; m"


def test_a_hand_made_or_unread_response_still_pickles() -> None:
    bare = ServerError("x", status_code=500, response=httpx.Response(500, content=b"oops"))
    copy = pickle.loads(pickle.dumps(bare))  # noqa: S301 - our own bytes
    assert copy.response.content == b"oops"
    streamed = httpx.Response(
        502,
        stream=httpx.ByteStream(b"never read"),
        request=httpx.Request("GET", ACCOUNT, headers={"x-api-key": API_KEY}),
    )
    unread = ServerError("x", status_code=502, response=streamed)
    data = pickle.dumps(unread)
    assert API_KEY.encode() not in data
    assert pickle.loads(data).response.content == b""  # noqa: S301


def test_the_clients_keep_signed_image_urls_out_of_httpx_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    signed = "https://bucket.example/shoe.jpg?X-Amz-Signature=s3cr3tsig&X-Amz-Credential=AKID"
    with respx.mock(assert_all_called=True) as router:
        router.get("https://image-api.photoroom.com/v2/edit").respond(200, content=CUTOUT)
        with caplog.at_level("DEBUG"), PhotoroomClient(api_key="sk_live_0123") as client:
            client.edit(signed, EditOptions(background_color="FFFFFF"))
    lines = [record.getMessage() for record in caplog.records]
    assert any("HTTP Request: GET" in line for line in lines)  # httpx did log the call
    assert all("s3cr3tsig" not in line and "AKID" not in line for line in lines)
    assert all("sk_live_0123" not in line for line in lines)


def test_a_request_line_is_only_built_when_debug_logging_is_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from photoroom_bg._base_client import BaseClient, RequestSpec

    spec = RequestSpec("POST", "http://host:notaport/v1/segment")  # parsing it would raise
    with caplog.at_level("INFO", logger="photoroom_bg"):
        BaseClient._log(spec, 200, 1, 0.01)  # per request: no URL parsed for nothing
    assert caplog.records == []
    good = RequestSpec("POST", "https://sdk.photoroom.com/v1/segment?x=1")
    with caplog.at_level("DEBUG", logger="photoroom_bg"):
        BaseClient._log(good, 200, 1, 0.01)
    assert [r.getMessage() for r in caplog.records] == [
        "POST /v1/segment -> 200 (attempt 1, 0.010s)"
    ]
