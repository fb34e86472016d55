"""Image sources: what a batch reads, expanded lazily and fetched safely.

A source spec is a path, a directory (walked recursively for image files), a glob, ``bytes``,
a binary file object, an ``http(s)://`` URL, an ``s3://bucket/key`` URI (``s3://bucket/prefix/``
lists the images under the prefix), or any iterable or async iterable of these.
:func:`iter_sources` turns a spec into :class:`ImageSource` items one at a time, so a generator
of a million URLs never sits in memory. A :class:`SourceReader` reads one source into bytes:

- URLs are fetched through one pooled :class:`httpx.AsyncClient`, guarded against
  server-side request forgery: http/https only; every resolved address checked
  (:class:`~photoroom_bg._netguard.NetworkPolicy`); the connection pinned to the checked
  address; redirects followed by hand (at most ``max_redirects``), each re-checked; the body
  capped by ``Content-Length`` and by bytes read; the first bytes sniffed as an image before
  the rest is downloaded.
- ``s3://`` objects are read with aiobotocore (the ``s3`` extra), with the same byte cap.
"""

from __future__ import annotations

import asyncio
import glob
import os
import stat
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

import attrs
import httpx

from ._images import sniff_format
from ._netguard import NetworkPolicy, Resolver, default_resolver
from ._perloop import PerLoop
from ._s3client import close_s3_client, open_s3_client
from .errors import (
    ConfigurationError,
    InvalidImageError,
    SourceError,
    SourceNotFoundError,
    SourceTooLargeError,
    UnsafeURLError,
)

__all__ = ["IMAGE_EXTENSIONS", "ImageSource", "SourceReader", "SourceSpec", "iter_sources"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".heic", ".heif"})
_IMAGE_KINDS = frozenset({"png", "jpeg", "webp", "heic", "avif", "gif"})
_WALK_CHUNK = 256
SourceKind = Literal["path", "bytes", "file", "url", "s3"]


@attrs.frozen(repr=False)
class ImageSource:
    """One input image.

    Attributes:
        kind: ``path``, ``bytes``, ``file``, ``url`` or ``s3``.
        location: where it comes from: a path, a URL, an ``s3://`` URI, or a placeholder
            such as ``<bytes #3>`` for in-memory data.
        name: a display name and the stem used for output keys (no directory, no query
            string, no credentials).
        data: the bytes of an in-memory source.
    """

    kind: SourceKind
    location: str
    name: str
    data: bytes | None = attrs.field(default=None, eq=False)

    @property
    def display(self) -> str:
        """``location`` without query string or credentials: safe to log and store."""
        if self.kind == "url":
            url = httpx.URL(self.location)
            return str(url.copy_with(query=None, fragment=None, userinfo=b""))
        return self.location

    def __repr__(self) -> str:
        return f"ImageSource(kind={self.kind!r}, location={self.display!r})"


#: One source: a path, folder, glob, URL or ``s3://`` URI, ``bytes``, a binary file object, or
#: an :class:`ImageSource`.
SourceItem = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | ImageSource
#: What ``submit()`` and :func:`iter_sources` accept: a source, or any (async) iterable of
#: sources, nested as deep as you like.
SourceSpec = SourceItem | Iterable["SourceSpec"] | AsyncIterable["SourceSpec"]
SourceSpec.__doc__ = """What ``submit()`` and :func:`iter_sources` accept: a path, folder, glob,
URL, ``s3://`` URI, ``bytes``, binary file object or :class:`ImageSource`, or any (async)
iterable of these, nested as deep as you like. ``submit(42)`` is a type error."""


def _stem(text: str) -> str:
    base = text.rstrip("/").rsplit("/", 1)[-1]
    stem = os.path.splitext(base)[0]
    return stem or "image"


def _url_source(text: str) -> ImageSource:
    try:
        path = httpx.URL(text).path
    except httpx.InvalidURL:
        path = text
    return ImageSource("url", text, _stem(path))


def _is_image_path(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _walk(root: str) -> Iterator[str]:
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if _is_image_path(name):
                yield os.path.join(folder, name)


def _path_shape(text: str) -> str:
    if os.path.isdir(text):
        return "dir"
    if glob.has_magic(text) and not os.path.exists(text):
        return "glob"
    return "path"


def _glob(pattern: str) -> Iterator[str]:
    for path in glob.iglob(pattern, recursive=True):
        if os.path.isfile(path) and _is_image_path(path):
            yield path


async def _paths_off_loop(paths: Iterator[str]) -> AsyncIterator[ImageSource]:
    """Pull paths from a blocking iterator in chunks, in a worker thread."""

    def chunk() -> list[str]:
        return [p for _, p in zip(range(_WALK_CHUNK), paths, strict=False)]

    while True:
        batch = await asyncio.to_thread(chunk)
        for path in batch:
            yield ImageSource("path", path, _stem(path))
        if len(batch) < _WALK_CHUNK:
            return


async def iter_sources(
    spec: SourceSpec, *, reader: SourceReader | None = None
) -> AsyncIterator[ImageSource]:
    """Expand ``spec`` into :class:`ImageSource` items, lazily.

    Args:
        spec: a source or an iterable / async iterable of sources (see the module docs).
        reader: used to list ``s3://bucket/prefix/`` URIs (its S3 settings).
    """
    counter = 0

    async def expand(item: Any) -> AsyncIterator[ImageSource]:
        nonlocal counter
        if isinstance(item, ImageSource):
            yield item
        elif isinstance(item, (bytes, bytearray, memoryview)):
            counter += 1
            yield ImageSource("bytes", f"<bytes #{counter}>", f"image-{counter}", bytes(item))
        elif isinstance(item, (str, os.PathLike)):
            text = os.fspath(item)
            if text.startswith("s3://"):
                if text.endswith("/"):
                    if reader is None:
                        raise ConfigurationError("listing s3:// prefixes needs a SourceReader")
                    async for source in reader.list_s3(text):
                        yield source
                else:
                    yield ImageSource("s3", text, _stem(text))
            elif "://" in text or text.startswith("data:"):
                yield _url_source(text)
            else:
                shape = await asyncio.to_thread(_path_shape, text)
                if shape == "dir":
                    async for source in _paths_off_loop(_walk(text)):
                        yield source
                elif shape == "glob":
                    async for source in _paths_off_loop(_glob(text)):
                        yield source
                else:
                    yield ImageSource("path", text, _stem(text))
        elif hasattr(item, "read"):
            counter += 1
            name = str(getattr(item, "name", "") or f"file-{counter}")
            data = await asyncio.to_thread(item.read)
            if isinstance(data, str):
                raise InvalidImageError(f"{name}: file opened in text mode; open it with 'rb'")
            yield ImageSource("file", name, _stem(name), bytes(data))
        elif isinstance(item, AsyncIterable):
            async for inner in item:
                async for source in expand(inner):
                    yield source
        elif isinstance(item, Iterable):
            for inner in item:
                async for source in expand(inner):
                    yield source
        else:
            raise SourceError(f"not an image source: {type(item).__name__}")

    async for source in expand(spec):
        yield source


class SourceReader:
    """Reads :class:`ImageSource` items into bytes, safely and with a byte cap.

    Args:
        max_bytes: the largest source accepted (default 50 MB, Photoroom's own cap).
        allow_private_networks: let URLs reach loopback/private/link-local addresses.
        allow_networks: networks allowed although not public (e.g. ``["10.1.2.0/24"]``).
        max_redirects: redirects followed, each re-checked (default 5).
        timeout: seconds per HTTP request.
        resolver: ``async (host, port) -> [addresses]``; defaults to the system resolver.
        s3_options: keyword arguments for the S3 client (``endpoint_url``, ``region_name``,
            ``aws_access_key_id``, ``aws_secret_access_key``...) used for ``s3://`` sources.
        http_client: an :class:`httpx.AsyncClient` to use (not closed by :meth:`aclose`).
    """

    def __init__(
        self,
        *,
        max_bytes: int = 50 * 1024 * 1024,
        allow_private_networks: bool = False,
        allow_networks: Iterable[str] = (),
        max_redirects: int = 5,
        timeout: float = 30.0,
        resolver: Resolver | None = None,
        s3_options: Mapping[str, Any] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.policy = NetworkPolicy(allow_private_networks, tuple(allow_networks))
        self.max_redirects = max_redirects
        self._resolve = resolver or default_resolver
        self._s3_options = dict(s3_options or {})
        self._timeout = timeout
        # pools and S3 clients belong to one event loop each: see photoroom_bg._perloop
        self._s3_clients: PerLoop[tuple[Any, Any]] = PerLoop(self._open_s3, close_s3_client)
        self._given_http = http_client
        self._https: PerLoop[httpx.AsyncClient] = PerLoop(self._open_http, _close_http)

    def __repr__(self) -> str:
        return (
            f"SourceReader(max_bytes={self.max_bytes}, policy={self.policy!r}, "
            f"s3_endpoint={self._s3_options.get('endpoint_url')!r})"
        )

    async def read(self, source: ImageSource) -> bytes:
        """Return the bytes of ``source``; raise a :class:`~photoroom_bg.errors.SourceError`."""
        if source.data is not None:
            self._check_size(len(source.data), source)
            return source.data
        if source.kind == "path":
            return await asyncio.to_thread(self._read_path, source)
        if source.kind == "url":
            return await self._fetch(source)
        if source.kind == "s3":
            return await self._read_s3(source)
        raise SourceError(f"{source.display}: nothing to read")

    def _check_size(self, size: int, source: ImageSource) -> None:
        if size > self.max_bytes:
            raise SourceTooLargeError(
                f"{source.display} is {size:,} bytes; the limit is {self.max_bytes:,}"
            )

    def _read_path(self, source: ImageSource) -> bytes:
        path = Path(source.location)
        try:
            info = path.stat()
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError
            self._check_size(info.st_size, source)
            return path.read_bytes()
        except FileNotFoundError:
            raise SourceNotFoundError(f"{source.display}: no such file") from None
        except IsADirectoryError:
            raise SourceError(f"{source.display} is a directory") from None
        except OSError as exc:
            raise SourceError(f"{source.display}: {exc.strerror or exc}") from None

    async def _fetch(self, source: ImageSource) -> bytes:
        url = source.location
        for _ in range(self.max_redirects + 1):
            parsed = self._parse(url, source)
            response = await self._send_pinned(parsed, source)
            try:
                if response.is_redirect:
                    location = response.headers.get("location")
                    if not location:
                        raise SourceError(f"{source.display}: redirect without a Location")
                    url = str(parsed.join(location))
                    continue
                return await self._read_body(response, source)
            finally:
                await response.aclose()
        raise SourceError(f"{source.display}: more than {self.max_redirects} redirects")

    @staticmethod
    def _parse(url: str, source: ImageSource) -> httpx.URL:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise UnsafeURLError(f"{source.display}: invalid URL ({exc})") from None
        if parsed.scheme not in ("http", "https"):
            raise UnsafeURLError(
                f"{source.display}: only http and https URLs are fetched, not "
                f"{parsed.scheme or 'this'}:"
            )
        if not parsed.host:
            raise UnsafeURLError(f"{source.display}: URL has no host")
        return parsed

    async def _send_pinned(self, url: httpx.URL, source: ImageSource) -> httpx.Response:
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = await self._resolve(url.host, port)
        except OSError as exc:
            raise SourceError(f"{source.display}: cannot resolve {url.host} ({exc})") from None
        if not addresses:
            raise SourceError(f"{source.display}: {url.host} has no address")
        checked = [self.policy.check(a, host=url.host) for a in addresses]  # all must pass
        pinned = url.copy_with(host=str(checked[0]))
        host_header = url.host if url.port is None else f"{url.host}:{url.port}"
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        http = self._given_http or await self._https.get()
        request = http.build_request(
            "GET",
            pinned,
            headers={"host": host_header, "accept": "image/*"},
            extensions=extensions,
        )
        try:
            return await http.send(request, stream=True)
        except httpx.TimeoutException:
            raise SourceError(f"{source.display}: timed out") from None
        except httpx.HTTPError as exc:
            raise SourceError(f"{source.display}: {type(exc).__name__}") from None

    async def _read_body(self, response: httpx.Response, source: ImageSource) -> bytes:
        if response.status_code == 404:
            raise SourceNotFoundError(f"{source.display}: 404 Not Found")
        if response.status_code >= 400:
            raise SourceError(f"{source.display}: HTTP {response.status_code}")
        declared = response.headers.get("content-length")
        if declared and declared.isdigit():
            self._check_size(int(declared), source)
        body = bytearray()
        sniffed = False
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                self._check_size(len(body), source)
                if not sniffed and len(body) >= 16:
                    self._sniff(bytes(body), source)
                    sniffed = True
        except httpx.HTTPError as exc:
            raise SourceError(f"{source.display}: download failed ({type(exc).__name__})") from None
        if not sniffed:
            self._sniff(bytes(body), source)
        return bytes(body)

    @staticmethod
    def _sniff(head: bytes, source: ImageSource) -> None:
        if not head:
            raise InvalidImageError(f"{source.display}: empty body")
        if sniff_format(head) not in _IMAGE_KINDS:
            raise InvalidImageError(f"{source.display}: the content is not an image")

    async def _s3(self) -> Any:
        return (await self._s3_clients.get())[1]

    async def _open_s3(self) -> tuple[Any, Any]:
        options = dict(self._s3_options)
        path_style = options.get("endpoint_url") and "config" not in options
        config = {"s3": {"addressing_style": "path"}} if path_style else None
        return await open_s3_client("s3:// sources need", config, **options)

    async def _open_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self._timeout), follow_redirects=False, trust_env=False
        )

    @staticmethod
    def _split_s3(uri: str) -> tuple[str, str]:
        bucket, _, key = uri[len("s3://") :].partition("/")
        return bucket, key

    async def _read_s3(self, source: ImageSource) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = self._split_s3(source.location)
        client = await self._s3()
        try:
            response = await client.get_object(Bucket=bucket, Key=key)
            self._check_size(int(response.get("ContentLength", 0)), source)
            async with response["Body"] as stream:
                data = await stream.read()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NoSuchBucket"):
                raise SourceNotFoundError(f"{source.display}: no such object") from None
            raise SourceError(f"{source.display}: S3 error {code}") from None
        except BotoCoreError as exc:
            raise SourceError(f"{source.display}: {type(exc).__name__}") from None
        self._check_size(len(data), source)
        self._sniff(bytes(data[:32]), source)
        return bytes(data)

    async def list_s3(self, prefix_uri: str) -> AsyncIterator[ImageSource]:
        """Yield the image objects under ``s3://bucket/prefix/``, page by page."""
        bucket, prefix = self._split_s3(prefix_uri)
        client = await self._s3()
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = str(item["Key"])
                if _is_image_path(key):
                    yield ImageSource("s3", f"s3://{bucket}/{key}", _stem(key))

    async def aclose(self) -> None:
        """Close the HTTP pools and S3 clients it made (not a ``http_client`` passed in)."""
        await self._https.aclose()
        await self._s3_clients.aclose()

    async def __aenter__(self) -> SourceReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _close_http(client: httpx.AsyncClient) -> None:
    await client.aclose()
