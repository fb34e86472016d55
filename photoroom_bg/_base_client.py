"""Everything the two clients share that does no I/O: configuration, request building,
response parsing and error mapping."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import attrs
import httpx

from . import _wire
from ._images import ImageInput, load_image, validate_image
from ._retry import RetryPolicy, parse_retry_after
from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    InvalidImageError,
    NotFoundError,
    OutOfCreditsError,
    RateLimitError,
    ServerError,
    ValidationError,
)
from .models import Account, ImageResult
from .options import EditOptions, SegmentOptions

__all__ = ["NOT_GIVEN", "BaseClient", "NotGiven", "PhotoroomWarning", "RequestSpec"]

logger = logging.getLogger("photoroom_bg")

SEGMENT_BASE_URL = "https://sdk.photoroom.com"
IMAGE_API_BASE_URL = "https://image-api.photoroom.com"
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0)
DEFAULT_MAX_RETRIES = 2
USER_AGENT = "photoroom-bg/0.1.0"


class PhotoroomWarning(UserWarning):
    """Photoroom accepted a call but said something worth knowing (ignored parameters...)."""


class NotGiven:
    """Sentinel type: "use the client's default" for a per-call argument."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN = NotGiven()

Host = Literal["sdk", "image-api"]


@attrs.frozen
class RequestSpec:
    """One HTTP request, built once and sent (possibly several times) by a client."""

    method: str
    url: str
    host: Host
    params: dict[str, str] | None = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str | None, bytes, str | None]] | None = None
    headers: dict[str, str] = attrs.field(factory=dict)
    endpoint: str = ""


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


def parse_error_body(body: Any) -> tuple[str | None, str | None]:
    """Return ``(message, error_type)`` from either Photoroom error envelope."""
    if not isinstance(body, Mapping):
        return None, None
    nested = body.get("error")
    if isinstance(nested, Mapping):
        message = nested.get("message") or nested.get("detail")
        return (str(message) if message else None), None
    if isinstance(nested, str):
        return nested, None
    detail = body.get("detail") or body.get("message")
    if isinstance(detail, list):  # validation error lists
        detail = "; ".join(str(item.get("msg", item)) for item in detail if item)
    kind = body.get("type")
    return (str(detail) if detail else None), (str(kind) if kind else None)


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
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_policy: RetryPolicy | None = None,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        if max_retries < 0:
            raise ConfigurationError("max_retries must be >= 0")
        self._api_key = api_key if api_key is not None else os.environ.get("PHOTOROOM_API_KEY")
        env_base = os.environ.get("PHOTOROOM_BASE_URL")
        self.segment_base_url = (
            segment_base_url or base_url or env_base or SEGMENT_BASE_URL
        ).rstrip("/")
        self.image_api_base_url = (
            image_api_base_url or base_url or env_base or IMAGE_API_BASE_URL
        ).rstrip("/")
        self.timeout = self._as_timeout(timeout)
        self.max_retries = max_retries
        self.retry_policy = retry_policy or RetryPolicy()
        self.default_headers = dict(default_headers or {})
        self._closed = False

    @staticmethod
    def _as_timeout(timeout: float | httpx.Timeout | None) -> httpx.Timeout:
        if timeout is None:
            return DEFAULT_TIMEOUT
        if isinstance(timeout, httpx.Timeout):
            return timeout
        return httpx.Timeout(float(timeout), connect=min(10.0, float(timeout)))

    @property
    def is_sandbox(self) -> bool:
        """True when the key is a sandbox key (``sandbox_`` prefix): results are watermarked."""
        return bool(self._api_key and self._api_key.startswith("sandbox_"))

    def __repr__(self) -> str:
        key = "sandbox" if self.is_sandbox else ("set" if self._api_key else "missing")
        return (
            f"{type(self).__name__}(segment_base_url={self.segment_base_url!r}, "
            f"image_api_base_url={self.image_api_base_url!r}, api_key=<{key}>, "
            f"max_retries={self.max_retries})"
        )

    def _copy_kwargs(self) -> dict[str, Any]:
        return {
            "api_key": self._api_key,
            "segment_base_url": self.segment_base_url,
            "image_api_base_url": self.image_api_base_url,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "retry_policy": self.retry_policy,
            "default_headers": self.default_headers,
        }

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

    def _segment_request(
        self, image: ImageInput, options: SegmentOptions | None
    ) -> tuple[RequestSpec, bool]:
        options = options or SegmentOptions()
        if not isinstance(options, SegmentOptions):
            raise ValidationError(
                "remove_background() takes SegmentOptions; use edit() for EditOptions"
            )
        headers = self._auth_headers()
        data, name = load_image(image)
        mime = validate_image(data, "segment", name=name)
        fields, extra = _wire.segment_fields(options)
        headers.update(extra)
        spec = RequestSpec(
            method="POST",
            url=f"{self.segment_base_url}/v1/segment",
            host="sdk",
            data=fields,
            files={"image_file": (name, data, mime)},
            headers=headers,
            endpoint="segment",
        )
        return spec, options.base64

    def _edit_request(self, image: ImageInput | None, options: EditOptions | None) -> RequestSpec:
        options = options or EditOptions()
        if not isinstance(options, EditOptions):
            raise ValidationError(
                "edit() takes EditOptions; use remove_background() for SegmentOptions"
            )
        headers = self._auth_headers()
        texts, file_fields, extra = _wire.edit_fields(options)
        headers.update(extra)
        url = f"{self.image_api_base_url}/v2/edit"
        if isinstance(image, str) and image.startswith(("http://", "https://")):
            if file_fields:
                raise ValidationError(
                    f"{', '.join(sorted(file_fields))} are image files: they can only be sent "
                    "with a local input image (POST), not with an image URL"
                )
            return RequestSpec(
                method="GET",
                url=url,
                host="image-api",
                params={"imageUrl": image, **texts},
                headers=headers,
                endpoint="edit",
            )
        files: dict[str, tuple[str | None, bytes, str | None]] = {}
        if image is not None:
            data, name = load_image(image)
            files["imageFile"] = (name, data, validate_image(data, "edit", name=name))
        elif "imageFromPrompt.prompt" not in texts:
            raise InvalidImageError("edit() needs an image (path, bytes, file or URL)")
        for field, blob in file_fields.items():
            files[field] = (field, blob, validate_image(blob, "edit", name=field))
        if not files:  # still multipart: the API reads form-data, never urlencoded bodies
            files = {name: (None, value.encode(), None) for name, value in texts.items()}
            texts = {}
        return RequestSpec(
            method="POST",
            url=url,
            host="image-api",
            data=texts,
            files=files or None,
            headers=headers,
            endpoint="edit",
        )

    def _account_request(self) -> RequestSpec:
        return RequestSpec(
            method="GET",
            url=f"{self.image_api_base_url}/v2/account",
            host="image-api",
            headers=self._auth_headers(),
            endpoint="account",
        )

    def _retries(self, max_retries: int | NotGiven) -> int:
        value = self.max_retries if isinstance(max_retries, NotGiven) else max_retries
        if value < 0:
            raise ConfigurationError("max_retries must be >= 0")
        return value

    def _timeout(self, timeout: float | httpx.Timeout | NotGiven | None) -> httpx.Timeout:
        return self.timeout if isinstance(timeout, NotGiven) else self._as_timeout(timeout)

    # -- response handling -----------------------------------------------------------------

    @staticmethod
    def _transport_error(exc: httpx.TransportError, spec: RequestSpec) -> APIConnectionError:
        where = f"{spec.method} {httpx.URL(spec.url).path}"
        request = exc.request if _has_request(exc) else None
        # after the request went out (reading the answer), the server may have done the work
        sent = isinstance(exc, (httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError))
        billing = " (the server may have processed and billed it)" if sent else ""
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(
                f"{where} timed out ({type(exc).__name__}){billing}; raise the client's "
                "timeout for large images or AI features",
                request=request,
                possibly_billed=sent,
            )
        return APIConnectionError(
            f"{where} failed: {type(exc).__name__}: {exc}{billing}",
            request=request,
            possibly_billed=sent,
        )

    @staticmethod
    def _status_error(response: httpx.Response) -> APIStatusError:
        status = response.status_code
        body: Any = None
        try:
            body = response.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        message, kind = parse_error_body(body)
        if not message:
            text = response.text.strip() if body is None else ""
            message = text[:300] if text else (response.reason_phrase or f"HTTP {status}")
        if status == 402:
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

    def _image_result(self, response: httpx.Response, base64: bool) -> ImageResult:
        headers = response.headers
        content = response.content
        content_type = headers.get("content-type", "application/octet-stream").split(";")[0]
        if base64 or content_type == "application/json":
            content = _wire.decode_base64_image(content)
            kind = _sniff_mime(content)
            content_type = kind or content_type
        unsupported = _split_unsupported(headers.get("pr-unsupported-attributes"))
        if unsupported:
            warnings.warn(
                f"Photoroom ignored unsupported parameters: {', '.join(unsupported)}",
                PhotoroomWarning,
                stacklevel=4,
            )
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
    def _account(response: httpx.Response) -> Account:
        try:
            return _wire.converter.structure(response.json(), Account)
        except (ValueError, TypeError, KeyError) as exc:
            raise APIStatusError(
                f"unexpected /v2/account body: {exc}",
                status_code=response.status_code,
                response=response,
            ) from None

    @staticmethod
    def _log(spec: RequestSpec, status: int | str, attempt: int, elapsed: float) -> None:
        logger.debug(
            "%s %s -> %s (attempt %d, %.3fs)",
            spec.method,
            httpx.URL(spec.url).path,
            status,
            attempt,
            elapsed,
        )


def _has_request(exc: httpx.TransportError) -> bool:
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
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None
