"""The exception tree of photoroom_bg.

Every error the SDK raises derives from :class:`PhotoroomBGError`, split by cause::

    PhotoroomBGError
    ├── PhotoroomError                  something went wrong talking to Photoroom
    │   ├── APIConnectionError          no usable response (DNS, refused, reset, bad TLS)
    │   │   └── APITimeoutError         the request timed out
    │   └── APIStatusError              Photoroom answered with a non-2xx status
    │       ├── BadRequestError         400 (and other 4xx without a class of their own)
    │       ├── AuthenticationError     401 / 403: missing, invalid or unauthorised key
    │       ├── OutOfCreditsError       402: the account has no images/credits left
    │       ├── NotFoundError           404
    │       ├── RateLimitError          429 (``retry_after`` in seconds when given)
    │       ├── ServerError             5xx
    │       └── APIResponseValidationError  a 2xx whose body is not the image or JSON
    │                                   the API documents (empty, HTML, cut short)
    ├── ValidationError                 a value was rejected locally, before any request
    │   └── InvalidImageError           the input image itself is unusable (empty, too big,
    │                                   wrong format, too many pixels, corrupt)
    ├── ConfigurationError              missing API key, client used after close, bad setup
    ├── SourceError                     an input could not be read or fetched
    │   ├── UnsafeURLError              URL refused by the SSRF guard (scheme, address, redirect)
    │   ├── InvalidSourceError          malformed URL; a FIFO, device or socket instead of a file
    │   ├── SourceTimeoutError          the fetch overran its deadline or went too slowly
    │   ├── SourceTooLargeError         the source exceeds the byte cap
    │   └── SourceNotFoundError         404 / missing file / missing object
    ├── StorageError                    a sink could not store or read an object
    │   ├── StorageAuthError            wrong credentials or access denied
    │   ├── BucketNotFoundError         the bucket does not exist (and was not to be created)
    │   ├── ObjectNotFoundError         no object under that key
    │   ├── UnsafeKeyError              the key would escape the sink's root
    │   ├── StorageFullError            no space left / size cap reached
    │   └── StorageUnavailableError     the storage server cannot be reached right now
    └── UnexpectedError                 a job met an exception that is none of the above

No message produced by this module ever contains an API key or a storage secret: messages are
built from status codes, server-provided text and caller-visible names only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

__all__ = [
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BucketNotFoundError",
    "ConfigurationError",
    "InvalidImageError",
    "InvalidSourceError",
    "NotFoundError",
    "ObjectNotFoundError",
    "OutOfCreditsError",
    "PhotoroomBGError",
    "PhotoroomError",
    "RateLimitError",
    "ServerError",
    "SourceError",
    "SourceNotFoundError",
    "SourceTimeoutError",
    "SourceTooLargeError",
    "StorageAuthError",
    "StorageError",
    "StorageFullError",
    "StorageUnavailableError",
    "UnexpectedError",
    "UnsafeKeyError",
    "UnsafeURLError",
    "ValidationError",
]


class PhotoroomBGError(Exception):
    """Base class of every exception raised by photoroom_bg.

    Every error pickles and unpickles with its attributes (a batch's results can cross a
    process boundary). A pickled :class:`APIStatusError` keeps its response, with the API key
    removed from the request headers it carries.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickles as cls(*args): keyword-only arguments (status_code...) would be lost
        state = {name: _without_key(value) for name, value in self.__dict__.items()}
        return (_rebuild, (type(self), self.message), state)


def _rebuild(cls: type[PhotoroomBGError], message: str) -> PhotoroomBGError:
    error = cls.__new__(cls)
    PhotoroomBGError.__init__(error, message)
    return error


_KEY_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization"})


def _without_key(value: object) -> object:
    """A copy of an httpx request or response whose request headers hold no credential."""
    import httpx

    if isinstance(value, httpx.Request):
        headers = [
            (k, "[redacted]" if k.lower() in _KEY_HEADERS else v)
            for k, v in value.headers.multi_items()
        ]
        return httpx.Request(value.method, value.url, headers=headers)
    if isinstance(value, httpx.Response):
        try:
            request: object = _without_key(value.request)
        except RuntimeError:  # a response built by hand may have no request
            request = None
        try:
            content = value.content
        except httpx.ResponseNotRead:
            content = b""
        # the body is kept decoded, so the headers that describe its encoding go
        headers = [
            (k, v)
            for k, v in value.headers.multi_items()
            if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        copy = httpx.Response(value.status_code, headers=headers, content=content)
        if isinstance(request, httpx.Request):
            copy.request = request
        return copy
    return value


class PhotoroomError(PhotoroomBGError):
    """A call to the Photoroom API failed.

    Attributes:
        possibly_billed: ``True`` when the server may have processed (and billed) the request
            although no usable answer came back: a timeout or a dropped connection after the
            request was sent, a truncated body, a 5xx other than 503. ``False`` when it
            certainly was not: the request never left, or the server refused it (4xx, 429,
            503), or the call costs nothing (reading the balance:
            :meth:`~photoroom_bg.PhotoroomClient.account`,
            :meth:`~photoroom_bg.PhotoroomClient.credits`). Photoroom bills only calls that
            succeed, but only the server knows whether one did.
    """

    possibly_billed: bool = False


class APIConnectionError(PhotoroomError):
    """No usable HTTP response was received (connection refused, reset, DNS, protocol error).

    ``possibly_billed`` tells a failure before the request was sent (refused, DNS, connect
    timeout: certainly not billed) from one after it (read timeout, connection dropped, a
    truncated answer: the server may have made and billed the image).
    """

    def __init__(
        self,
        message: str = "Connection error.",
        *,
        request: httpx.Request | None = None,
        possibly_billed: bool = False,
    ) -> None:
        super().__init__(message)
        self.request = request
        self.possibly_billed = possibly_billed


class APITimeoutError(APIConnectionError):
    """The request timed out; raise the timeout for large images or AI features (the
    client's ``timeout``, the command's ``--timeout``, or ``PHOTOROOM_TIMEOUT`` in the
    environment of a service or a worker).

    A timeout while waiting for the answer is ``possibly_billed``: the server may still have
    finished the image.
    """

    def __init__(
        self,
        message: str = "Request timed out.",
        *,
        request: httpx.Request | None = None,
        possibly_billed: bool = False,
    ) -> None:
        super().__init__(message, request=request, possibly_billed=possibly_billed)


class APIStatusError(PhotoroomError):
    """Photoroom answered with an error status.

    Attributes:
        message: the server's explanation (``detail`` or ``error.message``, its first 300
            characters: the whole answer is in ``body``), or a generic text.
        status_code: the HTTP status.
        error_type: the machine-readable ``type`` of the flat ``/v1/segment`` envelope, if any.
        response: the :class:`httpx.Response` (its request headers hold the key: never log them).
        body: the decoded JSON body, or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        response: httpx.Response | None = None,
        error_type: str | None = None,
        body: object = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.response = response
        self.error_type = error_type
        self.body = body
        # 503 (unavailable), 429 and 4xx are refusals; any other 5xx may come after the work
        self.possibly_billed = status_code >= 500 and status_code != 503

    def __str__(self) -> str:
        kind = f" [{self.error_type}]" if self.error_type else ""
        return f"{self.status_code}{kind}: {self.message}"


class BadRequestError(APIStatusError):
    """400: the request was invalid (bad parameter, missing image, conflicting options)."""


class AuthenticationError(APIStatusError):
    """401/403: the API key is missing, invalid, or not allowed to call this endpoint."""


class OutOfCreditsError(APIStatusError):
    """402: the account has no images/credits left. Retrying will not help."""


class NotFoundError(APIStatusError):
    """404: the endpoint (or a URL Photoroom was asked to fetch) does not exist."""


class RateLimitError(APIStatusError):
    """429: too many requests. ``retry_after`` is the server's advice in seconds, if any."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 429,
        response: httpx.Response | None = None,
        error_type: str | None = None,
        body: object = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            message, status_code=status_code, response=response, error_type=error_type, body=body
        )
        self.retry_after = retry_after


class ServerError(APIStatusError):
    """5xx: Photoroom (or a gateway in front of it) failed; retried. Photoroom documents that
    failed calls are not billed, but a gateway's 502/504 or a 500 may come after the image was
    made, so those count as ``possibly_billed``; a 503 is a refusal and never does."""


class APIResponseValidationError(APIStatusError):
    """Photoroom answered with a success status, but not with what the API documents: an
    empty body, a page that is not an image (a proxy's HTML, say), an image cut short on the
    way, or JSON that is not the expected shape.

    For an image call the server may have made, and billed, the image before its answer was
    spoiled, so the error is ``possibly_billed``; like a dropped answer it is retried (see
    :class:`~photoroom_bg.RetryPolicy`), since a retry may get the whole image. A batch never
    stores such an answer as a cut-out.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 200,
        response: httpx.Response | None = None,
        body: object = None,
        possibly_billed: bool = True,
    ) -> None:
        super().__init__(message, status_code=status_code, response=response, body=body)
        self.possibly_billed = possibly_billed


class ValidationError(PhotoroomBGError, ValueError):
    """A value was rejected locally; no request was sent and no credit spent.

    Attributes:
        parameter: the option at fault as you wrote it (``background_blur_radius``,
            ``extra_params['shadow.mode']``), when one is.
        rule: the id of the broken rule (``background.blur.radius:range``), listed with every
            rule in the client guide; ``type`` for a value of the wrong Python type.
    """

    def __init__(
        self, message: str, *, parameter: str | None = None, rule: str | None = None
    ) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.rule = rule


class InvalidImageError(ValidationError):
    """The input image is unusable: empty, too large, wrong format, too many pixels, corrupt."""


class ConfigurationError(PhotoroomBGError):
    """The SDK is not set up to make this call (no API key, closed client, bad argument)."""


class UnexpectedError(PhotoroomBGError):
    """A batch job met an exception outside this tree (a bug, or an unforeseen library
    error). Only that job fails; the original exception is the ``__cause__``."""


class SourceError(PhotoroomBGError):
    """An input source could not be opened or fetched."""


class UnsafeURLError(SourceError):
    """A URL was refused: not http(s), or it resolves to a private/loopback/link-local address."""


class InvalidSourceError(SourceError):
    """A source cannot be used as given: a malformed URL (bad address, port out of range), or
    a path naming a FIFO, device or socket rather than a file (refused before any read)."""


class SourceTimeoutError(SourceError):
    """Fetching a source overran its total deadline, its server went silent for longer than
    the reader's ``timeout`` (to connect, or between two reads), or its body arrived more
    slowly than the minimum transfer rate."""


class SourceTooLargeError(SourceError):
    """A source is larger than the configured byte cap."""


class SourceNotFoundError(SourceError):
    """A source does not exist (missing file, HTTP 404, missing object)."""


class StorageError(PhotoroomBGError):
    """A sink failed to store, read or describe an object."""


class StorageAuthError(StorageError):
    """The storage backend refused the credentials or denied access."""


class BucketNotFoundError(StorageError):
    """The bucket does not exist (pass ``create_bucket=True`` to create it), or a
    :class:`~photoroom_bg.FileSystemSink`'s folder cannot be one (a file, or a link to
    nothing, is in its place)."""


class ObjectNotFoundError(StorageError, KeyError):
    """No object is stored under the requested key."""

    def __str__(self) -> str:
        return self.message


class UnsafeKeyError(StorageError, ValueError):
    """The key is not acceptable for this sink (escapes its root, NUL byte, backslash...)."""


class StorageFullError(StorageError):
    """No space is left on the device, or the sink's size cap was reached."""


class StorageUnavailableError(StorageError):
    """The storage server cannot be reached right now (connection refused or reset, DNS,
    timeout): an outage, worth waiting out, not a verdict on the object."""
