"""The two clients: :class:`PhotoroomClient` (``httpx.Client``) and
:class:`AsyncPhotoroomClient` (``httpx.AsyncClient``), twins with the same methods."""

from __future__ import annotations

import asyncio
import datetime
import functools
import ssl
import time
import weakref
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import httpx

from . import _threads, _wire
from ._base_client import (
    DEFAULT_MAX_RETRIES,
    NOT_GIVEN,
    BaseClient,
    NotGiven,
    Prepared,
    RequestSpec,
    Timeout,
    _has_request,
)
from ._deadline import answer_deadline, attempt, bound_answer, end_attempt, install_sync
from ._images import ImageInput
from ._numbers import sleep_seconds
from ._perloop import PerLoop
from ._pool import (
    DEFAULT_LIMITS,
    PROXY_ERRORS,
    ShardedTransport,
    proxy_mounts,
    proxy_problem,
    tls_context,
)
from ._retry import RetryPolicy, is_retryable
from .errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    ConfigurationError,
    PhotoroomBGError,
    PhotoroomError,
    ValidationError,
)
from .models import Account, Credits, ImageResult
from .options import EditOptions, SegmentOptions

__all__ = ["AsyncPhotoroomClient", "PhotoroomClient"]

_S = TypeVar("_S", bound="PhotoroomClient")
_A = TypeVar("_A", bound="AsyncPhotoroomClient")
T = TypeVar("T")


#: The pools the async client built itself, and their transports. A request on one of them
#: goes straight to the transport: ``httpx.AsyncClient.send`` adds auth and redirect flows,
#: event hooks, cookie jars and transport mounts, which such a pool never has (measured:
#: about 0.15 ms of CPU per request on a small VM, a tenth of a batch's CPU per image). A pool
#: passed in as ``http_client`` always goes through ``send``, its hooks and auth honoured.
_OWN_TRANSPORTS: weakref.WeakKeyDictionary[httpx.AsyncClient, httpx.AsyncBaseTransport] = (
    weakref.WeakKeyDictionary()
)


def _cause(exc: BaseException) -> Exception | None:
    """What to raise ``exc`` from again: its own cause, kept."""
    return exc.__cause__ if isinstance(exc.__cause__, Exception) else None


def _undecodable(
    response: httpx.Response, exc: httpx.DecodingError, billable: bool
) -> APIResponseValidationError:
    """A body httpx could not decode (a broken gzip stream, say): an answer spoiled on the
    way, retried like one, not an httpx error outside the SDK's tree."""
    encoding = response.headers.get("content-encoding", "none")
    billing = "; the call may have been billed" if billable else ""
    error = APIResponseValidationError(
        f"the answer's body could not be decoded (Content-Encoding {encoding}: {exc}){billing}",
        status_code=response.status_code,
        response=response,
        possibly_billed=billable,
    )
    error.__cause__ = exc
    return error


#: What a pool passed in as ``http_client`` may raise that the client handles itself: a
#: connection's failure (retried or not as such), a body it cannot decode, the SDK's own.
_PASSED_ON = (httpx.TransportError, httpx.DecodingError, PhotoroomBGError)


def _hooked(exc: Exception, request: httpx.Request, billable: bool) -> httpx.Response:
    """The error status a response hook of a pool passed in raised on
    (``response.raise_for_status()``, a common hook), as an answer whose status the client
    handles as usual (a 429 retried, a 402 an :class:`~photoroom_bg.errors.OutOfCreditsError`);
    the hook closed its body, so it comes without one. Anything else such a pool raised (a
    hook or an auth flow of the caller's that fails, too many redirects) is an
    :class:`~photoroom_bg.errors.APIConnectionError`, never retried: a hook that fails on an
    answer would fail on the next one too, and each might be billed."""
    if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code >= 400:
        headers = exc.response.headers.copy()
        for name in ("content-length", "content-encoding", "transfer-encoding"):
            headers.pop(name, None)  # of the body left unread
        return httpx.Response(
            exc.response.status_code, headers=headers, content=b"", request=request
        )
    billing = "; the request may have been sent, and billed" if billable else ""
    error = APIConnectionError(
        f"the http_client passed in raised {type(exc).__name__} (from its event hooks, auth "
        f"or transport: see this error's __cause__){billing}",
        request=request,
        possibly_billed=billable,
    )
    raise error from exc


async def _close_pool(pool: httpx.AsyncClient) -> None:
    await pool.aclose()


async def _send_direct(
    transport: httpx.AsyncBaseTransport,
    request: httpx.Request,
    deadline: float | None,
    billable: bool,
) -> httpx.Response:
    """What ``AsyncClient.send`` does for a pool of :data:`_OWN_TRANSPORTS`: the response,
    read in full within ``deadline`` (and closed, its connection back in the pool, whatever
    happens)."""
    started = time.perf_counter()
    begun = time.monotonic()
    token = attempt(deadline)  # every read and write ends by then (see _deadline)
    try:
        try:
            response = await transport.handle_async_request(request)
        except httpx.RequestError as exc:
            if not _has_request(exc):  # as httpx's client does, for the error's message
                exc.request = request
            raise
        response.request = request
        await _read_whole(response, begun, deadline, billable)
    finally:
        end_attempt(token)
    # as httpx's client sets it (an error's response is public: its elapsed may be read)
    response.elapsed = datetime.timedelta(seconds=time.perf_counter() - started)
    return response


async def _send_async(
    http: httpx.AsyncClient,
    request: httpx.Request,
    started: float,
    deadline: float | None,
    billable: bool,
) -> httpx.Response:
    """``request`` sent through ``http`` and its response read in full within ``deadline``
    of ``started`` (``time.monotonic()``), or closed."""
    token = attempt(deadline)  # the reads and writes of the SDK's own pools end by then
    try:
        try:
            response = await http.send(request, stream=True)
        except _PASSED_ON:
            raise
        except Exception as exc:
            response = _hooked(exc, request, billable)
        await _read_whole(response, started, deadline, billable)
        return response
    finally:
        end_attempt(token)


def _send_sync(
    http: httpx.Client,
    request: httpx.Request,
    started: float,
    deadline: float | None,
    billable: bool,
) -> httpx.Response:
    """``request`` sent through ``http`` and its response read in full within ``deadline``
    of ``started`` (``time.monotonic()``), or closed; an undecodable body is a spoiled
    answer."""
    token = attempt(deadline)  # the reads and writes of the SDK's own pools end by then
    try:
        try:
            response = http.send(request, stream=True)
        except _PASSED_ON:
            raise
        except Exception as exc:
            response = _hooked(exc, request, billable)
        try:
            bound_answer(response, started, deadline, request)
            response.read()
        except httpx.DecodingError as exc:
            response.close()
            raise _undecodable(response, exc, billable) from exc
        except BaseException:
            response.close()
            raise
        return response
    finally:
        end_attempt(token)


async def _read_whole(
    response: httpx.Response, started: float, deadline: float | None, billable: bool
) -> None:
    """Read the body of ``response`` in full within ``deadline`` of ``started``, or close it
    (its connection back in the pool) and raise; an undecodable body is a spoiled answer."""
    try:
        bound_answer(response, started, deadline, response.request)
        await response.aread()
    except httpx.DecodingError as exc:
        await response.aclose()
        raise _undecodable(response, exc, billable) from exc
    except BaseException:
        await response.aclose()
        raise


def _tls() -> ssl.SSLContext:
    """The process's shared SSL context (see :func:`~photoroom_bg._pool.tls_context`)."""
    try:
        return tls_context()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            "the SSL settings of the environment (SSL_CERT_FILE, SSL_CERT_DIR, SSLKEYLOGFILE) "
            f"cannot be used: {exc}"
        ) from None


def _build_request(
    http: httpx.Client | httpx.AsyncClient,
    spec: RequestSpec,
    extra_headers: Mapping[str, str] | None,
    timeout: httpx.Timeout,
) -> httpx.Request:
    """The request, built once for every attempt. A multipart body is joined into one buffer
    here: streamed part by part, httpcore writes each of its pieces to the socket on its own
    (nine writes for one image and a few fields, where one does)."""
    headers = dict(spec.headers)
    if extra_headers:
        _wire.check_headers(extra_headers, "extra_headers", ValidationError)
        headers.update(extra_headers)
    if spec.files and not spec.params and http in _OWN_TRANSPORTS:
        request = _build_multipart(http, spec, headers, timeout)
        if request is not None:
            return request
    request = http.build_request(
        spec.method,
        spec.url,
        params=spec.params,
        data=spec.data,
        files=spec.files,
        headers=headers,
        timeout=timeout,
    )
    if spec.files or spec.data:
        request.read()
    return request


def _build_multipart(
    http: httpx.Client | httpx.AsyncClient,
    spec: RequestSpec,
    headers: dict[str, str],
    timeout: httpx.Timeout,
) -> httpx.Request | None:
    """What ``build_request`` makes of a multipart request on a pool of
    :data:`_OWN_TRANSPORTS`, made directly: the URL parsed once per process, not per
    request; the body encoded in one pass (:func:`~photoroom_bg._wire.multipart_body`); the
    headers (``Host``, the pool's defaults under the request's, the body's) normalized once,
    not three times. (Such a pool has no cookies, no default query and no base URL that
    applies: the SDK's URLs are absolute.) ``None`` when a part is of a kind only httpx
    encodes, the request names its own body headers, or the pool was given cookies or a
    default query."""
    named = {name.lower() for name in headers}
    if http.cookies or http.params or named & _BODY_HEADERS:
        return None
    body = _wire.multipart_body(spec.data or {}, spec.files or ())
    if body is None:
        return None
    content_type, content = body
    url = _url(spec.url)
    merged: list[tuple[Any, Any]] = [] if "host" in named else [(b"Host", url.netloc)]
    merged += [
        (name, value)
        for name, value in http.headers.raw
        if name.lower().decode("latin-1") not in named
    ]
    merged += headers.items()
    merged += (("Content-Length", str(len(content))), ("Content-Type", content_type))
    request = httpx.Request(
        spec.method,
        url,
        headers=merged,
        stream=httpx.ByteStream(content),
        extensions={"timeout": timeout.as_dict()},
    )
    request.read()  # the content itself (one part: no copy), as httpx has it for bytes
    return request


_BODY_HEADERS = frozenset({"content-type", "content-length", "transfer-encoding"})


@functools.lru_cache(maxsize=64)
def _url(url: str) -> httpx.URL:
    """``url`` parsed (httpx would parse it twice for every request: a few percent of the
    CPU a batch spends per image). An ``httpx.URL`` cannot be changed, so one is shared."""
    return httpx.URL(url)


class PhotoroomClient(BaseClient):
    """A synchronous Photoroom client over one pooled :class:`httpx.Client`.

    Args:
        api_key: the API key; defaults to ``$PHOTOROOM_API_KEY``. A missing key is reported
            at the first request, not here. ``sandbox_`` keys give watermarked results.
        base_url: one base URL for both Photoroom hosts (an emulator, a proxy); defaults to
            ``$PHOTOROOM_BASE_URL``. An empty string is refused (``None`` is the default).
        segment_base_url: base URL of ``/v1/segment``; defaults to ``base_url``, then
            ``$PHOTOROOM_SEGMENT_BASE_URL``, then ``$PHOTOROOM_BASE_URL``, then
            ``https://sdk.photoroom.com``.
        image_api_base_url: base URL of ``/v2/edit``, ``/v1/render`` and the account
            endpoints; defaults to ``base_url``, then ``$PHOTOROOM_IMAGE_API_BASE_URL``, then
            ``$PHOTOROOM_BASE_URL``, then ``https://image-api.photoroom.com``.
        timeout: seconds or an :class:`httpx.Timeout`; ``None`` (or ``float("inf")``) waits
            forever. By default 120 s, 10 s to connect
            (:data:`~photoroom_bg._base_client.DEFAULT_TIMEOUT`). An attempt also ends
            once it has taken the phases' timeouts together, however slowly the server
            reads the request or sends the answer, its head included.
        max_retries: retries of failures a retry may fix (connection errors, timeouts, 408,
            429, 5xx but 501/505); 0 disables them. Failures the server may have billed (see
            :attr:`~photoroom_bg.errors.PhotoroomError.possibly_billed`) are retried too
            unless ``retry_policy`` says ``retry_possibly_billed=False``.
        retry_policy: backoff delays and the ``Retry-After`` cap.
        default_headers: headers sent with every request.
        http_client: an :class:`httpx.Client` to use instead of creating one; it is not
            closed by :meth:`close`. Anything else raises
            :class:`~photoroom_bg.errors.ConfigurationError`. Its network is its own, so
            the attempt's deadline bounds the answer's body only: its head and the upload
            are bounded by its own timeouts, each read and write.

    The environment's proxies (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``)
    are used as httpx uses them; one httpx cannot use is a
    :class:`~photoroom_bg.errors.ConfigurationError`. Use it as a context manager, or call
    :meth:`close`.
    """

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
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            api_key=api_key,
            base_url=base_url,
            segment_base_url=segment_base_url,
            image_api_base_url=image_api_base_url,
            timeout=timeout,
            max_retries=max_retries,
            retry_policy=retry_policy,
            default_headers=default_headers,
        )
        self._check_http_client(http_client, httpx.Client)
        self._owns_http = http_client is None
        if http_client is None:
            try:  # httpx reads the environment's proxies here
                http_client = httpx.Client(
                    timeout=self.timeout, follow_redirects=False, verify=_tls()
                )
            except PROXY_ERRORS as exc:
                raise ConfigurationError(proxy_problem(exc)) from None
            install_sync(http_client)  # reads and writes end with the attempt's deadline
        self._http = http_client

    def with_options(
        self: _S,
        *,
        api_key: str | NotGiven = NOT_GIVEN,
        base_url: str | NotGiven = NOT_GIVEN,
        segment_base_url: str | NotGiven = NOT_GIVEN,
        image_api_base_url: str | NotGiven = NOT_GIVEN,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
        retry_policy: RetryPolicy | NotGiven = NOT_GIVEN,
        default_headers: Mapping[str, str] | NotGiven = NOT_GIVEN,
        http_client: httpx.Client | NotGiven = NOT_GIVEN,
    ) -> _S:
        """A copy with some settings changed; the others, and the connection pool, are shared.

        Every argument of the constructor can be changed. ``base_url`` sets both hosts
        (``segment_base_url`` / ``image_api_base_url`` given as well win for their host);
        ``default_headers`` are added to the current ones; ``timeout=None`` means no
        timeout; ``http_client`` gives the copy another pool (not closed by the copy).
        Closing the original closes the shared pool: the copy then raises
        :class:`~photoroom_bg.errors.ConfigurationError`.
        """
        kwargs = self._copy_kwargs(
            api_key=api_key,
            base_url=base_url,
            segment_base_url=segment_base_url,
            image_api_base_url=image_api_base_url,
            timeout=timeout,
            max_retries=max_retries,
            retry_policy=retry_policy,
            default_headers=default_headers,
        )
        pool = self._http if isinstance(http_client, NotGiven) else http_client
        return type(self)(http_client=pool, **kwargs)

    def remove_background(
        self,
        image: ImageInput,
        options: SegmentOptions | None = None,
        *,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
        extra_headers: Mapping[str, str] | None = None,
    ) -> ImageResult:
        """Remove the background of ``image`` with ``POST /v1/segment``.

        Args:
            image: a path, bytes or a binary file object (PNG, JPEG, WEBP or HEIC).
            options: :class:`SegmentOptions`; defaults give a full-size transparent PNG.
            timeout: per-call timeout (``None``: none); ``max_retries``: per-call retries.
            extra_headers: extra headers for this call.

        Raises:
            InvalidImageError: the image would be refused (nothing is sent).
            APIStatusError: a subclass per status (400, 401/403, 402, 404, 429, 5xx).
            APIConnectionError: no response (after retries).
        """
        prepared = self._prepare_segment(image, options)
        return self._send(
            self._build(prepared), timeout, max_retries, extra_headers, self._image_reader(prepared)
        )

    def edit(
        self,
        image: ImageInput | None,
        options: EditOptions | None = None,
        *,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
        extra_headers: Mapping[str, str] | None = None,
    ) -> ImageResult:
        """Edit ``image`` with ``/v2/edit``: GET with ``imageUrl`` for an http(s) URL (the
        scheme in any case), multipart POST with ``imageFile`` otherwise.

        Args:
            image: an ``http(s)://`` URL, a path, bytes or a binary file (PNG, JPEG, WEBP);
                ``None`` only with ``image_from_prompt_prompt``.
            options: :class:`EditOptions`.

        Raises:
            ValidationError: the request breaks a rule of the spec (nothing is sent).
            InvalidImageError, APIStatusError, APIConnectionError: as
                :meth:`remove_background`.
        """
        prepared = self._prepare_edit(image, options)
        return self._send(
            self._build(prepared), timeout, max_retries, extra_headers, self._image_reader(None)
        )

    def render(
        self,
        image: ImageInput,
        template_id: str,
        *,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
        extra_headers: Mapping[str, str] | None = None,
    ) -> ImageResult:
        """Render ``image`` into the Photoroom template ``template_id`` with the legacy
        ``/v1/render`` (GET with ``imageUrl`` for a URL, multipart POST otherwise).

        Photoroom deprecates this endpoint: ``edit(image, EditOptions(template_id=...))``
        does the same on ``/v2/edit``.
        """
        prepared = self._prepare_render(image, template_id)
        return self._send(
            self._build(prepared), timeout, max_retries, extra_headers, self._image_reader(None)
        )

    def account(
        self,
        *,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
    ) -> Account:
        """Images left and plan of the key, from ``GET /v2/account``."""
        return self._send(self._account_request(), timeout, max_retries, None, self._account)

    def credits(
        self,
        *,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
    ) -> Credits:
        """Credits left in the older credit view, from ``GET /v1/account``."""
        return self._send(self._credits_request(), timeout, max_retries, None, self._credits)

    @staticmethod
    def _build(prepared: Prepared[T]) -> RequestSpec:
        return prepared.build(prepared.load())

    def _send(
        self,
        spec: RequestSpec,
        timeout: Timeout | NotGiven,
        max_retries: int | NotGiven,
        extra_headers: Mapping[str, str] | None,
        read: Callable[[httpx.Response], T],
    ) -> T:
        retries = self._retries(max_retries)
        timeouts = self._timeout(timeout)
        request = _build_request(self._http, spec, extra_headers, timeouts)
        deadline = answer_deadline(timeouts)
        self._check_pool(self._http)
        delays = self.retry_policy.delays()
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            error: PhotoroomError
            cause: Exception | None = None
            try:
                response = _send_sync(self._http, request, started, deadline, spec.billable)
            except APIResponseValidationError as exc:
                error, cause = exc, _cause(exc)
                self._log(spec, "undecodable", attempt, time.monotonic() - started)
            except httpx.TransportError as exc:
                error, cause = self._transport_error(exc, spec), exc
                self._log(spec, type(exc).__name__, attempt, time.monotonic() - started)
            else:
                self._log(spec, response.status_code, attempt, time.monotonic() - started)
                try:  # a spoiled answer is retried like a dropped one
                    return self._answer(response, spec, read)
                except APIStatusError as exc:
                    error, cause = exc, _cause(exc)
            if attempt > retries or not is_retryable(error, self.retry_policy):
                raise error from cause
            self._sleep(self.retry_policy.delay_for(error, next(delays)))

    def _sleep(self, seconds: float) -> None:
        time.sleep(sleep_seconds(seconds))  # a Retry-After allowed to be huge

    def close(self) -> None:
        """Close the connection pool (unless it was passed in as ``http_client``)."""
        if not self._closed and self._owns_http:
            self._http.close()
        self._closed = True

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncPhotoroomClient(BaseClient):
    """The asynchronous twin of :class:`PhotoroomClient`, over one :class:`httpx.AsyncClient`
    per event loop (one ``asyncio.run()`` after another each get their own, closed as their
    loop ends; a pool passed in as ``http_client`` serves every loop).

    Same arguments and methods; methods are coroutines, and :meth:`aclose` closes it. Use it
    with ``async with``. It never blocks the event loop: reading an input file and checking
    an image larger than 64 KiB happen in a worker thread.
    """

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
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            api_key=api_key,
            base_url=base_url,
            segment_base_url=segment_base_url,
            image_api_base_url=image_api_base_url,
            timeout=timeout,
            max_retries=max_retries,
            retry_policy=retry_policy,
            default_headers=default_headers,
        )
        self._check_http_client(http_client, httpx.AsyncClient)
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else self._new_pool()
        # A pool's connections belong to the event loop that opened them: each loop that
        # calls (one asyncio.run() after another) gets a pool of its own, closed as that loop
        # ends or by aclose(). The first is the one just made; self._http is the latest.
        self._unused: httpx.AsyncClient | None = self._http if self._owns_http else None
        self._pools: PerLoop[httpx.AsyncClient] | None = (
            PerLoop(self._pool_for_loop, _close_pool) if self._owns_http else None
        )
        self._http_loop: asyncio.AbstractEventLoop | None = None  # self._http's

    def _new_pool(self) -> httpx.AsyncClient:
        context = _tls()
        # many small pools (see _pool.py), sharing one SSL context
        transport = ShardedTransport(DEFAULT_LIMITS, verify=context)
        try:  # the environment's proxies, which httpx reads only without a transport
            mounts = proxy_mounts(DEFAULT_LIMITS, verify=context)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        http_client = httpx.AsyncClient(
            timeout=self.timeout, follow_redirects=False, transport=transport, mounts=mounts
        )
        if not any(mounts.values()):  # through a proxy, send() picks the mount
            _OWN_TRANSPORTS[http_client] = transport
        return http_client

    async def _pool_for_loop(self) -> httpx.AsyncClient:
        pool, self._unused = self._unused, None
        return pool if pool is not None else self._new_pool()

    async def _current_pool(self) -> httpx.AsyncClient:
        """The pool of the running event loop (a pool passed in as ``http_client`` is the
        caller's, used as it is; so is the client's own under another event loop than
        asyncio's, which has no per-loop pools)."""
        if self._pools is None or self._closed:
            return self._http
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return self._http
        if loop is not self._http_loop:  # a loop that ended never runs again
            self._http, self._http_loop = await self._pools.get(), loop
        return self._http

    def with_options(
        self: _A,
        *,
        api_key: str | NotGiven = NOT_GIVEN,
        base_url: str | NotGiven = NOT_GIVEN,
        segment_base_url: str | NotGiven = NOT_GIVEN,
        image_api_base_url: str | NotGiven = NOT_GIVEN,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
        retry_policy: RetryPolicy | NotGiven = NOT_GIVEN,
        default_headers: Mapping[str, str] | NotGiven = NOT_GIVEN,
        http_client: httpx.AsyncClient | NotGiven = NOT_GIVEN,
    ) -> _A:
        """A copy with some settings changed; see :meth:`PhotoroomClient.with_options`."""
        kwargs = self._copy_kwargs(
            api_key=api_key,
            base_url=base_url,
            segment_base_url=segment_base_url,
            image_api_base_url=image_api_base_url,
            timeout=timeout,
            max_retries=max_retries,
            retry_policy=retry_policy,
            default_headers=default_headers,
        )
        pool = self._http if isinstance(http_client, NotGiven) else http_client
        return type(self)(http_client=pool, **kwargs)

    def _copy_with_own_pool(self: _A, **changes: Any) -> _A:
        """A copy with its own connection pool, for use on another event loop: pooled
        connections belong to the loop that opened them. A pool passed in as
        ``http_client`` is the caller's to manage, so it is shared as it is."""
        if not self._owns_http:
            return self.with_options(**changes)
        return type(self)(**self._copy_kwargs(**changes))

    async def remove_background(
        self,
        image: ImageInput,
        options: SegmentOptions | None = None,
        *,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
        extra_headers: Mapping[str, str] | None = None,
    ) -> ImageResult:
        """Remove the background of ``image``; see :meth:`PhotoroomClient.remove_background`."""
        prepared = self._prepare_segment(image, options)
        request = await self._build(prepared)
        reader = self._image_reader(prepared)
        return await self._send(request, timeout, max_retries, extra_headers, reader)

    async def edit(
        self,
        image: ImageInput | None,
        options: EditOptions | None = None,
        *,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
        extra_headers: Mapping[str, str] | None = None,
    ) -> ImageResult:
        """Edit ``image`` with ``/v2/edit``; see :meth:`PhotoroomClient.edit`."""
        prepared = self._prepare_edit(image, options)
        request = await self._build(prepared)
        reader = self._image_reader(None)
        return await self._send(request, timeout, max_retries, extra_headers, reader)

    async def render(
        self,
        image: ImageInput,
        template_id: str,
        *,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
        extra_headers: Mapping[str, str] | None = None,
    ) -> ImageResult:
        """Render into a template with the legacy ``/v1/render``; see
        :meth:`PhotoroomClient.render`."""
        prepared = self._prepare_render(image, template_id)
        request = await self._build(prepared)
        reader = self._image_reader(None)
        return await self._send(request, timeout, max_retries, extra_headers, reader)

    async def account(
        self,
        *,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
    ) -> Account:
        """Images left and plan of the key, from ``GET /v2/account``."""
        return await self._send(self._account_request(), timeout, max_retries, None, self._account)

    async def credits(
        self,
        *,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
    ) -> Credits:
        """Credits left in the older credit view, from ``GET /v1/account``."""
        return await self._send(self._credits_request(), timeout, max_retries, None, self._credits)

    @staticmethod
    async def _build(prepared: Prepared[T]) -> RequestSpec:
        # reading files and decoding large images in a worker thread; building (and any
        # warning) back on the loop, so warnings point at the caller's line
        loaded = await _threads.run_sync(prepared.load) if prepared.heavy else prepared.load()
        return prepared.build(loaded)

    async def _send(
        self,
        spec: RequestSpec,
        timeout: Timeout | NotGiven,
        max_retries: int | NotGiven,
        extra_headers: Mapping[str, str] | None,
        read: Callable[[httpx.Response], T],
    ) -> T:
        retries = self._retries(max_retries)
        timeouts = self._timeout(timeout)
        http = await self._current_pool()
        request = _build_request(http, spec, extra_headers, timeouts)
        deadline = answer_deadline(timeouts)
        self._check_pool(http)
        direct = _OWN_TRANSPORTS.get(http)
        delays = self.retry_policy.delays()
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            error: PhotoroomError
            cause: Exception | None = None
            try:
                if direct is not None:
                    response = await _send_direct(direct, request, deadline, spec.billable)
                else:
                    response = await _send_async(http, request, started, deadline, spec.billable)
            except APIResponseValidationError as exc:
                error, cause = exc, _cause(exc)
                self._log(spec, "undecodable", attempt, time.monotonic() - started)
            except httpx.TransportError as exc:
                error, cause = self._transport_error(exc, spec), exc
                self._log(spec, type(exc).__name__, attempt, time.monotonic() - started)
            else:
                self._log(spec, response.status_code, attempt, time.monotonic() - started)
                try:  # a spoiled answer is retried like a dropped one
                    return self._answer(response, spec, read)
                except APIStatusError as exc:
                    error, cause = exc, _cause(exc)
            if attempt > retries or not is_retryable(error, self.retry_policy):
                raise error from cause
            await self._sleep(self.retry_policy.delay_for(error, next(delays)))

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def aclose(self) -> None:
        """Close the connection pools (unless the pool was passed in as ``http_client``):
        each event loop's on that loop; those of loops already ended closed as they ended."""
        if not self._closed and self._owns_http:
            self._closed = True
            unused, self._unused = self._unused, None
            if unused is not None:
                await unused.aclose()
            if self._pools is not None:
                await self._pools.aclose()
        self._closed = True

    async def __aenter__(self: _A) -> _A:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
