"""Everything the two clients share that does no I/O: configuration, request building,
response parsing and error mapping.

A request is prepared in two steps so the async client can keep the event loop free: a
blocking ``load`` (reading the input file, decoding its header with Pillow) that the async
client runs in a worker thread when it may take time, and a pure ``build`` that checks the
request against the spec's rules and assembles it, on the caller's thread (so warnings point
at the caller's line).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import attrs
import httpx

from . import _jsonsafe, _rules, _wire
from ._deadline import overrun
from ._images import ImageInput, answer_problem, load_image, validate_image
from ._logs import get_logger
from ._numbers import check_given, check_number, check_server_url, check_type, wait_limit
from ._redact import install_log_redaction, printable, redact_text, redact_url
from ._retry import RetryPolicy, parse_retry_after
from ._warnings import PhotoroomWarning, warn_paid
from ._wire import check_headers
from .errors import (
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
    RateLimitError,
    ServerError,
    ValidationError,
)
from .models import Account, Credits, ImageResult
from .options import EditOptions, SegmentOptions

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "NOT_GIVEN",
    "BaseClient",
    "NotGiven",
    "PhotoroomWarning",
    "Prepared",
    "RequestSpec",
    "parse_error_body",
]

logger = get_logger("photoroom_bg")

SEGMENT_BASE_URL = "https://sdk.photoroom.com"
IMAGE_API_BASE_URL = "https://image-api.photoroom.com"
#: 120 s overall (AI features and large images are slow), 10 s to connect.
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0)
#: Retries of a failure a retry may fix, per call.
DEFAULT_MAX_RETRIES = 2
USER_AGENT = "photoroom-bg/0.1.0"
#: Inputs up to this size are checked on the event loop; larger ones, and every file read,
#: in a worker thread.
INLINE_BYTES = 64 * 1024

ENV_API_KEY = "PHOTOROOM_API_KEY"
ENV_BASE_URL = "PHOTOROOM_BASE_URL"
ENV_SEGMENT_BASE_URL = "PHOTOROOM_SEGMENT_BASE_URL"
ENV_IMAGE_API_BASE_URL = "PHOTOROOM_IMAGE_API_BASE_URL"
ENV_TIMEOUT = "PHOTOROOM_TIMEOUT"


class NotGiven:
    """Sentinel type: "use the client's default" for an argument where ``None`` means
    something (``timeout=None`` is no timeout)."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN = NotGiven()

Timeout = float | httpx.Timeout | None
FileParts = list[tuple[str, tuple[str | None, bytes, str | None]]]
T = TypeVar("T")


@attrs.frozen
class RequestSpec:
    """One HTTP request, built once and sent (possibly several times) by a client."""

    method: str
    url: str
    params: dict[str, str | list[str]] | None = None
    data: dict[str, str | list[str]] | None = None
    files: FileParts | None = None
    headers: dict[str, str] = attrs.field(factory=dict)
    # False for reads that cost nothing (the balance): a failure of one is never money at
    # risk, so it is never ``possibly_billed`` (and a strict retry policy still retries it)
    billable: bool = True


@attrs.frozen
class Prepared(Generic[T]):
    """A request whose inputs are still to be read: ``load()`` may block (file I/O, Pillow),
    ``build(loaded)`` does not. ``heavy`` says whether ``load`` is worth a worker thread."""

    load: Callable[[], T]
    build: Callable[[T], RequestSpec]
    heavy: bool
    base64: bool = False


def _status_error_class(status: int) -> type[APIStatusError]:
    if status in (401, 403):
        return AuthenticationError
    if status == 402:
        return OutOfCreditsError
    if status == 404:
        return NotFoundError
    if status == 429:
        return RateLimitError
    if status >= 500:
        return ServerError
    if 400 <= status < 500:
        return BadRequestError
    return APIStatusError


# the longest server message an error shows, and the longest error type, in characters
_MESSAGE_CHARS = 300
_TYPE_CHARS = 100


def _text_of(value: Any, depth: int = 0) -> str | None:
    """Readable text from a piece of an error body, whatever its shape; never raises."""
    if value is None or value == "" or depth > 4:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return str(value)
    if isinstance(value, Mapping):
        for key in ("message", "detail", "msg", "error", "title"):
            text = _text_of(value.get(key), depth + 1)
            if text:
                location = value.get("loc")
                if isinstance(location, list) and location:
                    return f"{'.'.join(str(p) for p in location)}: {text}"
                return text
        return json.dumps(value, default=str)[:300] if value else None
    if isinstance(value, (list, tuple)):
        parts = [t for t in (_text_of(item, depth + 1) for item in value) if t]
        return "; ".join(parts) or None
    return str(value)


def parse_error_body(body: Any) -> tuple[str | None, str | None]:
    """Return ``(message, error_type)`` from either Photoroom error envelope.

    Never raises: a body of another shape (a ``detail`` list, a bare string or list, an
    empty object) gives whatever text it holds, or ``None``.
    """
    if isinstance(body, Mapping):
        nested = body.get("error")
        if nested is not None:
            return _text_of(nested), None
        kind = body.get("type")
        message = _text_of(body.get("detail")) or _text_of(body.get("message"))
        return message, (kind if isinstance(kind, str) and kind else None)
    return _text_of(body), None


def _is_url(image: object) -> bool:
    return isinstance(image, str) and image[:8].lower().startswith(("http://", "https://"))


def _image_url(image: str) -> str:
    """``image``, an http(s) URL sent on as ``imageUrl``, once it is known to be a URL at all:
    one that cannot be parsed or encoded (a NUL byte, a lone surrogate, no host, a port out of
    range) is refused here, as a batch refuses it as a source, not sent for Photoroom to fail."""
    try:
        url = httpx.URL(image)
        host, port = url.host, url.port  # the host decoded from IDNA may fail too
        image.encode("utf-8")
    except (httpx.InvalidURL, ValueError, TypeError) as exc:  # UnicodeError is a ValueError
        problem = redact_text(printable(str(exc)))
    else:
        if host and (port is None or 0 < port < 65536):
            return image
        problem = "no host" if not host else f"port {port} is out of range"
    raise InvalidSourceError(f"{printable(redact_url(image))} is not a valid URL ({problem})")


def _heavy(image: object, blobs: list[bytes]) -> bool:
    if image is not None and not isinstance(image, (bytes, bytearray, memoryview)):
        return True  # a path or a file object: reading it is I/O
    size = (len(image) if image is not None else 0) + sum(len(b) for b in blobs)
    return size > INLINE_BYTES


def _check_call(
    rules: tuple[_rules.Rule, ...], encoded: _wire.Encoded, request: _rules.WireRequest
) -> None:
    found = list(_rules.violations(rules, request, per_call=True))
    no_input = any(rule.id == "input:required" for rule, _ in found)
    error = InvalidImageError if no_input else ValidationError
    _wire.raise_or_warn(
        sorted(found, key=lambda f: f[0].id != "input:required"), encoded, request, error=error
    )


def checked_api_key(key: object) -> str:
    """The API key with the spaces and line breaks around it dropped (a key pasted or read
    from a file often has some). A key an HTTP header cannot carry is refused without being
    shown: httpx's own error would quote it whole."""
    if not isinstance(key, str):
        raise ConfigurationError(f"the API key must be a string, not {type(key).__name__}")
    key = key.strip(" \t\r\n")
    for position, char in enumerate(key, 1):
        if not "\x21" <= char <= "\x7e":
            kind = "a space" if char == " " else "a non-ASCII character"
            if char < " " or char == "\x7f":
                kind = "a control character"
            raise ConfigurationError(
                f"the API key cannot be sent: it holds {kind} at position {position} (was it "
                "copied whole, without quotes or a line break?)"
            )
    return key


class BaseClient:
    """Configuration and I/O-free logic shared by both clients."""

    _api_key: str | None

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        segment_base_url: str | None = None,
        image_api_base_url: str | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_policy: RetryPolicy | None = None,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise ConfigurationError("max_retries must be an integer >= 0")
        # httpx logs every request's URL: a GET /v2/edit carries the image URL (perhaps
        # presigned) in its query string
        install_log_redaction()
        for name, url in (
            ("base_url", base_url),
            ("segment_base_url", segment_base_url),
            ("image_api_base_url", image_api_base_url),
        ):
            check_given(name, url)
            check_type(name, url, str, "a URL (a str) or None")
        check_type("retry_policy", retry_policy, RetryPolicy, "a RetryPolicy or None")
        key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
        self._api_key = None if key is None else checked_api_key(key)
        env = os.environ
        self.segment_base_url = _base_url(
            ("segment_base_url", segment_base_url),
            ("base_url", base_url),
            (ENV_SEGMENT_BASE_URL, env.get(ENV_SEGMENT_BASE_URL)),
            (ENV_BASE_URL, env.get(ENV_BASE_URL)),
            default=SEGMENT_BASE_URL,
        )
        self.image_api_base_url = _base_url(
            ("image_api_base_url", image_api_base_url),
            ("base_url", base_url),
            (ENV_IMAGE_API_BASE_URL, env.get(ENV_IMAGE_API_BASE_URL)),
            (ENV_BASE_URL, env.get(ENV_BASE_URL)),
            default=IMAGE_API_BASE_URL,
        )
        given = _env_timeout() if isinstance(timeout, NotGiven) else timeout
        self.timeout = self._as_timeout(given)
        self.max_retries = max_retries
        self.retry_policy = retry_policy or RetryPolicy()
        self.default_headers = dict(default_headers or {})
        check_headers(self.default_headers, "default_headers", ConfigurationError)
        self._closed = False

    @staticmethod
    def _as_timeout(timeout: Timeout | NotGiven) -> httpx.Timeout:
        if isinstance(timeout, NotGiven):
            return DEFAULT_TIMEOUT
        if timeout is None:
            return httpx.Timeout(None)
        if isinstance(timeout, httpx.Timeout):
            # each phase checked as a number is; one too long for a socket means no limit
            phases = ("connect", "read", "write", "pool")
            checked = {name: _phase(f"timeout.{name}", getattr(timeout, name)) for name in phases}
            return httpx.Timeout(**checked)
        seconds = _phase("timeout", timeout)
        if seconds is None:  # inf: no limit at all, as None (and PHOTOROOM_TIMEOUT=inf) says
            return httpx.Timeout(None)
        return httpx.Timeout(seconds, connect=min(10.0, seconds))

    @property
    def is_sandbox(self) -> bool:
        """True when the key is a sandbox key (``sandbox_`` prefix): results are watermarked."""
        return bool(self._api_key and self._api_key.startswith("sandbox_"))

    def __repr__(self) -> str:
        key = "sandbox" if self.is_sandbox else ("set" if self._api_key else "missing")
        return (
            f"{type(self).__name__}(segment_base_url={redact_url(self.segment_base_url)!r}, "
            f"image_api_base_url={redact_url(self.image_api_base_url)!r}, api_key=<{key}>, "
            f"max_retries={self.max_retries})"
        )

    def _copy_kwargs(self, **changes: Any) -> dict[str, Any]:
        """This client's settings with ``changes`` (``NOT_GIVEN`` values ignored) applied."""
        given = {k: v for k, v in changes.items() if not isinstance(v, NotGiven)}
        kwargs: dict[str, Any] = {
            "api_key": self._api_key,
            "segment_base_url": self.segment_base_url,
            "image_api_base_url": self.image_api_base_url,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "retry_policy": self.retry_policy,
            "default_headers": self.default_headers,
        }
        base_url = given.pop("base_url", None)
        if base_url is not None:  # one URL for both hosts, unless a host is named as well
            kwargs["segment_base_url"] = kwargs["image_api_base_url"] = base_url
        if "default_headers" in given:
            given["default_headers"] = {**self.default_headers, **given["default_headers"]}
        kwargs.update(given)
        return kwargs

    # -- request building ------------------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        if self._closed:
            raise ConfigurationError(f"this {type(self).__name__} is closed; create a new one")
        if not self._api_key:
            raise ConfigurationError(
                "no Photoroom API key: pass api_key=... or set the PHOTOROOM_API_KEY "
                "environment variable"
            )
        return {"x-api-key": self._api_key, "user-agent": USER_AGENT, **self.default_headers}

    def _prepare_segment(
        self, image: ImageInput, options: SegmentOptions | None
    ) -> Prepared[tuple[bytes, str, str]]:
        options = SegmentOptions() if options is None else options
        if not isinstance(options, SegmentOptions):
            raise ValidationError(
                "remove_background() takes SegmentOptions; use edit() for EditOptions",
                parameter="options",
                rule="type",
            )
        headers = self._auth_headers()
        fields, files, extra = _wire.segment_fields(options)
        headers.update(extra)
        blobs: FileParts = [(field, (field, blob, None)) for field, blob in files.items()]

        def load() -> tuple[bytes, str, str]:
            data, name = load_image(image)
            return data, name, validate_image(data, "segment", name=name)

        def build(loaded: tuple[bytes, str, str]) -> RequestSpec:
            data, name, mime = loaded
            return RequestSpec(
                method="POST",
                url=f"{self.segment_base_url}/v1/segment",
                data=dict(fields),
                files=[("image_file", (name, data, mime)), *blobs],
                headers=headers,
            )

        return Prepared(load, build, _heavy(image, []), options.base64)

    def _prepare_edit(
        self, image: ImageInput | None, options: EditOptions | None
    ) -> Prepared[FileParts]:
        options = EditOptions() if options is None else options
        if not isinstance(options, EditOptions):
            raise ValidationError(
                "edit() takes EditOptions; use remove_background() for SegmentOptions",
                parameter="options",
                rule="type",
            )
        headers = self._auth_headers()
        encoded = _wire.encode(options)
        encoded.origins.update(imageUrl="image", imageFile="image")
        headers.update(encoded.headers)
        url = f"{self.image_api_base_url}/v2/edit"
        if _is_url(image):
            image_url = _image_url(str(image))

            def build_get(_: FileParts) -> RequestSpec:
                _check_call(
                    _rules.EDIT_RULES,
                    encoded,
                    encoded.request(method="GET", texts={"imageUrl": image_url}),
                )
                return RequestSpec(
                    "GET", url, params={"imageUrl": image_url, **encoded.texts}, headers=headers
                )

            return Prepared(list, build_get, heavy=False)

        def load() -> FileParts:
            files: FileParts = []
            if image is not None:
                data, name = load_image(image)
                files.append(("imageFile", (name, data, validate_image(data, "edit", name=name))))
            for field, blob in encoded.files.items():
                files.append((field, (field, blob, validate_image(blob, "edit", name=field))))
            return files

        def build_post(files: FileParts) -> RequestSpec:
            _check_call(
                _rules.EDIT_RULES,
                encoded,
                encoded.request(method="POST", files=["imageFile"] if image is not None else []),
            )
            texts: dict[str, str | list[str]] = dict(encoded.texts)
            if not files:  # still multipart: the API reads form-data, never urlencoded bodies
                files = [
                    (name, (None, value.encode(), None))
                    for name, values in texts.items()
                    for value in ([values] if isinstance(values, str) else values)
                ]
                texts = {}
            return RequestSpec("POST", url, data=texts, files=files, headers=headers)

        return Prepared(load, build_post, _heavy(image, list(encoded.files.values())))

    def _prepare_render(self, image: ImageInput | None, template_id: str) -> Prepared[FileParts]:
        if template_id is not None and not isinstance(template_id, str):
            raise ValidationError(
                f"template_id must be a string, got {type(template_id).__name__}",
                parameter="template_id",
                rule="type",
            )
        headers = self._auth_headers()
        url = f"{self.image_api_base_url}/v1/render"
        texts: dict[str, str | list[str]] = (
            {} if template_id is None else {"templateId": template_id}
        )
        encoded = _wire.Encoded(
            texts=texts,
            origins={"templateId": "template_id", "imageUrl": "image", "imageFile": "image"},
        )

        def check(request: _rules.WireRequest) -> None:
            _wire.raise_or_warn(_rules.violations(_rules.RENDER_RULES, request), encoded, request)

        if _is_url(image):
            image_url = _image_url(str(image))

            def build_get(_: FileParts) -> RequestSpec:
                check(encoded.request(method="GET", texts={"imageUrl": image_url}))
                return RequestSpec(
                    "GET", url, params={**texts, "imageUrl": image_url}, headers=headers
                )

            return Prepared(list, build_get, heavy=False)

        def load() -> FileParts:
            if image is None:
                return []
            data, name = load_image(image)
            return [("imageFile", (name, data, validate_image(data, "edit", name=name)))]

        def build_post(files: FileParts) -> RequestSpec:
            check(encoded.request(method="POST", files=[name for name, _ in files]))
            return RequestSpec("POST", url, data=texts, files=files, headers=headers)

        return Prepared(load, build_post, _heavy(image, []))

    def _account_request(self) -> RequestSpec:
        return RequestSpec(
            "GET",
            f"{self.image_api_base_url}/v2/account",
            headers=self._auth_headers(),
            billable=False,
        )

    def _credits_request(self) -> RequestSpec:
        return RequestSpec(
            "GET",
            f"{self.image_api_base_url}/v1/account",
            headers=self._auth_headers(),
            billable=False,
        )

    def _retries(self, max_retries: int | NotGiven) -> int:
        value = self.max_retries if isinstance(max_retries, NotGiven) else max_retries
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigurationError("max_retries must be an integer >= 0")
        return value

    def _timeout(self, timeout: Timeout | NotGiven) -> httpx.Timeout:
        return self.timeout if isinstance(timeout, NotGiven) else self._as_timeout(timeout)

    @staticmethod
    def _check_http_client(http_client: object, expected: type) -> None:
        if http_client is not None and not isinstance(http_client, expected):
            raise ConfigurationError(
                f"http_client must be an {expected.__module__}.{expected.__qualname__}, not "
                f"{type(http_client).__name__}"
            )

    def _check_pool(self, http: httpx.Client | httpx.AsyncClient) -> None:
        if http.is_closed and not self._closed:
            raise ConfigurationError(
                f"the connection pool of this {type(self).__name__} was closed (by the client it "
                "was copied from with with_options(), or by its owner)"
            )

    # -- response handling -----------------------------------------------------------------

    @staticmethod
    def _transport_error(exc: httpx.TransportError, spec: RequestSpec) -> APIConnectionError:
        where = f"{spec.method} {httpx.URL(spec.url).path}"
        request = exc.request if _has_request(exc) else None
        # after the request went out (reading the answer), the server may have done the work
        sent = isinstance(exc, (httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError))
        sent = sent and spec.billable
        billing = " (the server may have processed and billed it)" if sent else ""
        if isinstance(exc, httpx.TimeoutException):
            why = overrun(exc) or type(exc).__name__
            return APITimeoutError(
                f"{where} timed out ({why}){billing}; {TIMEOUT_ADVICE}",
                request=request,
                possibly_billed=sent,
            )
        detail = str(exc)
        if "header value" in detail:  # h11 quotes the value, which may be a credential
            detail = "a header value HTTP does not allow (not shown)"
        return APIConnectionError(
            f"{where} failed: {type(exc).__name__}: {detail}{billing}",
            request=request,
            possibly_billed=sent,
        )

    @staticmethod
    def _status_error(response: httpx.Response, spec: RequestSpec | None = None) -> APIStatusError:
        error = BaseClient._status_error_of(response)
        if spec is not None and not spec.billable:  # a 5xx on a free read risks no money
            error.possibly_billed = False
        return error

    @staticmethod
    def _status_error_of(response: httpx.Response) -> APIStatusError:
        status = response.status_code
        body: Any = None
        try:  # not JSON (HTML from a proxy, an empty body, nested too deeply), or not UTF-8
            body = _jsonsafe.loads_answer(response.content)
        except ValueError:
            body = None
        message, kind = parse_error_body(body)
        # cut as a text body is: the whole answer stays in the error's body
        message, kind = message and message[:_MESSAGE_CHARS], kind and kind[:_TYPE_CHARS]
        if not message:
            text = response.text.strip() if body is None else ""
            message = (
                text[:_MESSAGE_CHARS] if text else (response.reason_phrase or f"HTTP {status}")
            )
        if 300 <= status < 400:
            location = response.headers.get("location")
            where = f" to {redact_url(location)[:200]}" if location else ""
            message += (
                f" (a redirect{where}: redirects are not followed, the key would go along; "
                "check base_url)"
            )
        elif status == 402:
            message += " (the account is out of images/credits; retrying will not help)"
        elif status in (401, 403):
            message += " (check the API key and that its plan may call this endpoint)"
        cls = _status_error_class(status)
        if cls is RateLimitError:
            return RateLimitError(
                message,
                status_code=status,
                response=response,
                error_type=kind,
                body=body,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        return cls(message, status_code=status, response=response, error_type=kind, body=body)

    def _answer(
        self, response: httpx.Response, spec: RequestSpec, read: Callable[[httpx.Response], T]
    ) -> T:
        """The call's result: ``read(response)`` for a success; raises the status error
        otherwise, or :class:`APIResponseValidationError` for a spoiled success."""
        if not response.is_success:
            raise self._status_error(response, spec)
        return read(response)

    def _image_reader(
        self, prepared: Prepared[Any] | None
    ) -> Callable[[httpx.Response], ImageResult]:
        """What reads the answer of a call that makes an image (base64 JSON when the prepared
        request asked for it)."""
        base64 = prepared is not None and prepared.base64
        return lambda response: self._image_result(response, base64)

    def _image_result(self, response: httpx.Response, base64: bool) -> ImageResult:
        headers = response.headers
        content = response.content
        content_type = headers.get("content-type", "application/octet-stream").split(";")[0]
        if base64 or (content_type == "application/json" and _sniff_mime(content) is None):
            content = _wire.decode_base64_image(content, response)
            kind = _sniff_mime(content)
            content_type = kind or content_type
        problem = answer_problem(content, content_type)
        # the bytes say what the image is: the spec lists image/png whatever export.format
        content_type = _sniff_mime(content) or content_type
        if problem is not None:
            raise APIResponseValidationError(
                f"no usable image in the answer: {problem}; the call may have been billed",
                status_code=response.status_code,
                response=response,
            )
        unsupported = _split_unsupported(headers.get("pr-unsupported-attributes"))
        if unsupported:
            warn_paid(f"Photoroom ignored unsupported parameters: {', '.join(unsupported)}")
        return ImageResult(
            content=content,
            content_type=content_type,
            uncertainty_score=_float(headers.get("x-uncertainty-score")),
            ai_background_seed=_int(headers.get("pr-ai-background-seed")),
            texts_detected=_int(headers.get("pr-texts-detected")),
            edit_further_url=headers.get("pr-edit-further-url"),
            unsupported_attributes=unsupported,
            watermarked=self.is_sandbox,
        )

    @staticmethod
    def _structure(response: httpx.Response, cls: type[T]) -> T:
        try:
            return _wire.converter.structure(_jsonsafe.loads_answer(response.content), cls)
        except (ValueError, TypeError, KeyError) as exc:
            raise APIResponseValidationError(
                f"unexpected {cls.__name__.lower()} body: {exc}",
                status_code=response.status_code,
                response=response,
                possibly_billed=False,  # a read of the account costs nothing
            ) from exc

    @classmethod
    def _account(cls, response: httpx.Response) -> Account:
        return cls._structure(response, Account)

    @classmethod
    def _credits(cls, response: httpx.Response) -> Credits:
        return cls._structure(response, Credits)

    @staticmethod
    def _log(spec: RequestSpec, status: int | str, attempt: int, elapsed: float) -> None:
        if not logger.isEnabledFor(logging.DEBUG):
            return  # the URL is parsed only for a line that someone reads
        logger.debug(
            "%s %s -> %s (attempt %d, %.3fs)",
            spec.method,
            httpx.URL(spec.url).path,
            status,
            attempt,
            elapsed,
        )


def _base_url(*candidates: tuple[str, str | None], default: str) -> str:
    """The first URL given among ``(name, url)`` candidates, else ``default``; checked as a
    server's URL (a URL without its scheme, say, would fail only at the first call)."""
    for name, url in candidates:
        if url:
            check_server_url(name, url, "https://sdk.photoroom.com, or the emulator's URL")
            return url.rstrip("/")
    return default


def _has_request(exc: httpx.RequestError) -> bool:
    try:
        exc.request  # noqa: B018
    except RuntimeError:
        return False
    return True


def _sniff_mime(data: bytes) -> str | None:
    from ._images import sniff_format

    kind = sniff_format(data)
    return f"image/{kind}" if kind else None


def _split_unsupported(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    if ":" in value:
        value = value.split(":", 1)[1]
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _float(value: str | None) -> float | None:
    """A header's number, or ``None``: read after the call was billed, so never raising."""
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _int(value: str | None) -> int | None:
    """A header's whole number, read exactly (``float()`` turns 9007199254740993 into
    9007199254740992); a decimal one (``3.0``) through :func:`_float`. Never raises."""
    if value is not None and _WHOLE.fullmatch(value.strip()):
        with contextlib.suppress(ValueError):  # more digits than Python converts
            return int(value)
    number = _float(value)
    return int(number) if number is not None else None


_WHOLE = re.compile(r"[-+]?[0-9]+")


#: What a timed-out call advises, naming the setting of each way of calling Photoroom: a
#: command-line user has no ``timeout=``, a worker or a service no flag.
TIMEOUT_ADVICE = (
    "for large images or AI features raise the timeout: timeout= in Python, call_timeout= "
    f"for a Prefect job, --timeout on the command line, or {ENV_TIMEOUT}=<seconds> in the "
    "environment of the process that calls Photoroom (a service, a worker)"
)


def _env_timeout() -> Timeout | NotGiven:
    """The default timeout from ``$PHOTOROOM_TIMEOUT``: seconds, or ``none`` for no limit;
    unset or empty, the built-in :data:`DEFAULT_TIMEOUT`."""
    raw = os.environ.get(ENV_TIMEOUT, "").strip()
    if not raw:
        return NOT_GIVEN
    if raw.lower() in ("none", "inf", "infinity"):
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not seconds > 0:  # NaN too
        raise ConfigurationError(
            f"{ENV_TIMEOUT}={raw!r} is not a timeout: give seconds > 0, or 'none' for no limit"
        )
    return seconds


def _phase(name: str, seconds: object) -> float | None:
    """A timeout in seconds: ``None`` or a number > 0 (``inf``, or one longer than a socket
    can wait, means no limit)."""
    if seconds is None:
        return None
    return wait_limit(name, check_number(name, seconds, positive=True))
