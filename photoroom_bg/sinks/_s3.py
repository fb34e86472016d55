"""S3Sink: AWS S3 and S3-compatible servers (MinIO, SeaweedFS) through aiobotocore."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any
from urllib.parse import quote

from .._numbers import check_flag, check_type
from .._perloop import PerLoop
from .._redact import redact_url
from .._s3client import (
    CREDENTIALS_ADVICE,
    check_endpoint,
    close_s3_client,
    error_code,
    open_s3_client,
)
from ..errors import (
    BucketNotFoundError,
    ConfigurationError,
    ObjectNotFoundError,
    StorageAuthError,
    StorageError,
    StorageUnavailableError,
    UnsafeKeyError,
)
from ._base import StoredObject
from ._common import check_key, seconds

__all__ = ["S3Sink", "parse_s3_uri"]

_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "403",
        "Forbidden",
    }
)
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# what _error() is asked about that writes: a bare 404 to one comes from no S3 server
_WRITES = frozenset({"store", "create the bucket"})
_BUCKET_EXISTS = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})
_CREATE_ATTEMPTS = 4
# the server is there but cannot serve now: an outage to wait out, like a refused connection
_UNAVAILABLE_CODES = frozenset(
    {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown"}
)
_CREATE_RACE_CODES = _UNAVAILABLE_CODES | {"NoSuchBucket", "OperationAborted", "404"}


#: Where an endpoint and a region are given instead of a URI's query string, in the words of
#: each way of using a bucket (a command-line user has no ``endpoint_url=``).
_ENDPOINT_ADVICE = (
    "give the endpoint as endpoint_url= in Python, --endpoint-url on the command line, "
    "PHOTOROOM_BG_S3_ENDPOINT_URL for the service or AWS_ENDPOINT_URL_S3 for a worker, and "
    "the region as region= or AWS_REGION"
)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix`` into ``(bucket, prefix)``; a prefix ends with ``/``."""
    shown = repr(redact_url(uri))  # never its credentials or query (a token, a secret)
    if not uri.startswith("s3://"):
        raise ConfigurationError(f"{shown} is not an s3:// URI")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if "@" in bucket:
        raise ConfigurationError(
            f"{shown}: an s3:// URI takes no credentials: {CREDENTIALS_ADVICE}"
        )
    if not bucket:
        raise ConfigurationError(f"{shown} names no bucket")
    odd = sorted(set(_NOT_IN_BUCKET_NAMES.findall(bucket)))
    if odd:
        raise ConfigurationError(
            f"{shown}: no bucket name has {', '.join(map(repr, odd))} (an s3:// URI takes no "
            f"query string: {_ENDPOINT_ADVICE})"
        )
    if prefix.startswith("/"):  # "s3://cut//b" was stored under "b/"
        raise ConfigurationError(f"{shown}: a prefix has no empty, '.' or '..' segments")
    prefix = prefix.rstrip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        # every key under it would be refused (see check_key), after the engine was paid
        raise ConfigurationError(f"{shown}: a prefix has no empty, '.' or '..' segments")
    if prefix:
        try:  # a prefix no key may hold makes every key refused, after the engine was paid
            check_key(prefix)
        except UnsafeKeyError as exc:
            raise ConfigurationError(f"{shown}: no key can start with this prefix: {exc}") from None
    return bucket, f"{prefix}/" if prefix else ""


#: What no bucket name holds: AWS allows lower-case letters, digits, '.' and '-' (old
#: us-east-1 buckets also upper case and '_').
_NOT_IN_BUCKET_NAMES = re.compile(r"[^A-Za-z0-9._-]")


#: The longest object key S3 takes, in bytes of UTF-8 (prefix included).
KEY_LIMIT = 1024


#: What S3 takes of user metadata: the bytes of every name and value together (AWS S3
#: refuses more with MetadataTooLarge; a HEAD of an object with far more has headers longer
#: than an HTTP client reads).
METADATA_LIMIT = 2048


def _ascii_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """S3 user metadata travels in HTTP headers: kept ASCII (the rest percent-encoded), and
    within :data:`METADATA_LIMIT`, the longest value cut short between two characters
    (ending ``...``)."""
    texts = {quote(str(k).lower(), safe="-_."): str(v) for k, v in (metadata or {}).items()}
    encoded = {name: _header_text(text) for name, text in texts.items()}
    over = sum(map(len, [*encoded, *encoded.values()])) - METADATA_LIMIT
    if over <= 0:
        return encoded
    name = max(encoded, key=lambda k: len(encoded[k]))
    room = len(encoded[name]) - over - len("...")  # cut to fit it, all the rest fits
    if room < 0:
        return encoded  # the names and other values alone are past the limit: S3 says so
    text, low, high = texts[name], 0, min(len(texts[name]), room)
    while low < high:  # the longest start of the text that fits in the room
        middle = (low + high + 1) // 2
        low, high = (
            (middle, high) if len(_header_text(text[:middle])) <= room else (low, middle - 1)
        )
    encoded[name] = _header_text(text[:low]) + "..."
    return encoded


def _header_text(text: str) -> str:
    return quote(text, safe=" -_.,:;/=+@()")


#: The packages whose errors an S3 call may raise: the storage's own, typed by the sink.
_STORAGE_PACKAGES = frozenset({"botocore", "aiobotocore", "aiohttp", "urllib3", "ssl", "yarl"})


def _from_storage(exc: BaseException) -> bool:
    """Whether ``exc`` is an error of the S3 client or of the network under it."""
    if isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError)):
        return True
    return any(cls.__module__.split(".")[0] in _STORAGE_PACKAGES for cls in type(exc).__mro__[:-2])


class S3Sink:
    """Stores objects in an S3 bucket, under an optional prefix.

    Args:
        uri: ``s3://bucket`` or ``s3://bucket/prefix``.
        endpoint_url: an S3-compatible server (``http://localhost:9000`` for MinIO); path-style
            addressing is used when it is given. ``None`` means AWS.
        region: the region (default ``$AWS_REGION`` / ``$AWS_DEFAULT_REGION`` or ``us-east-1``).
        aws_access_key_id, aws_secret_access_key, aws_session_token: credentials; when not
            given, the standard AWS chain is used (environment, ``~/.aws``, instance role).
        create_bucket: create the bucket on first use if it is missing (safe when many
            workers race for it).
        url_expires: lifetime of the presigned URLs in :attr:`StoredObject.url` (seconds or
            a timedelta, at most 7 days: S3 refuses a presigned URL that lives longer).

    The secret never appears in ``repr()``, logs or error messages. One aiobotocore client is
    created on first use and reused; close it with :meth:`aclose` or ``async with``.
    """

    def __init__(
        self,
        uri: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        create_bucket: bool = False,
        url_expires: float | timedelta = 3600,
    ) -> None:
        check_type("uri", uri, str, "an s3://bucket/prefix URI (a str)", optional=False)
        for name, value in (
            ("endpoint_url", endpoint_url),
            ("region", region),
            ("aws_access_key_id", aws_access_key_id),
            ("aws_secret_access_key", aws_secret_access_key),  # never shown: only its type
            ("aws_session_token", aws_session_token),
        ):
            check_type(name, value, str, "a str or None")
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.endpoint_url = check_endpoint("endpoint_url", endpoint_url)
        self.region = (
            region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        )
        self.create_bucket = check_flag("create_bucket", create_bucket)
        # what a missing bucket's error advises (the command line names its own flag)
        self._missing_bucket = "pass create_bucket=True to create it"
        self.url_expires = presign_seconds(url_expires, "url_expires")
        self.__credentials = {
            "aws_access_key_id": aws_access_key_id,
            "aws_secret_access_key": aws_secret_access_key,
            "aws_session_token": aws_session_token,
        }
        # one client per event loop: see photoroom_bg._perloop
        self._clients: PerLoop[tuple[Any, Any]] = PerLoop(self._open_client, close_s3_client)

    def __repr__(self) -> str:
        return (
            f"S3Sink('s3://{self.bucket}/{self.prefix}', endpoint_url={self.endpoint_url!r}, "
            f"region={self.region!r})"
        )

    def _object_key(self, key: str) -> str:
        full = self.prefix + check_key(key)
        size = len(full.encode())
        if size > KEY_LIMIT:  # S3 refuses it (KeyTooLongError), after the engine was paid
            raise UnsafeKeyError(
                f"key {key!r} is too long for S3: {size} bytes with the prefix, over {KEY_LIMIT:,}"
            )
        return full

    def uri(self, key: str) -> str:
        """``s3://bucket/prefix/key``."""
        return f"s3://{self.bucket}/{self._object_key(key)}"

    async def _s3(self) -> Any:
        return (await self._clients.get())[1]

    async def _open_client(self) -> tuple[Any, Any]:
        credentials = {k: v for k, v in self.__credentials.items() if v is not None}
        context, client = await open_s3_client(
            "S3Sink needs",
            config={
                "signature_version": "s3v4",
                "s3": {"addressing_style": "path" if self.endpoint_url else "auto"},
                "retries": {"max_attempts": 3, "mode": "standard"},
                "max_pool_connections": 64,
                "connect_timeout": 10,
            },
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            **credentials,
        )
        if self.create_bucket:
            try:
                await self._ensure_bucket(client)
            except BaseException:  # not kept by PerLoop: close it, or its session leaks
                await close_s3_client((context, client))
                raise
        return context, client

    async def _ensure_bucket(self, client: Any) -> None:
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1" and self.endpoint_url is None:
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        for attempt in range(_CREATE_ATTEMPTS):
            try:
                await client.create_bucket(**kwargs)
                return
            except ClientError as exc:
                code = error_code(exc)
                if code in _BUCKET_EXISTS:
                    return
                # workers racing to create the same bucket: some servers answer the losers
                # with a transient error (NoSuchBucket, OperationAborted, 5xx) while the
                # winner's bucket comes into being; the bucket is what matters
                if await self._bucket_exists(client):
                    return
                if code not in _CREATE_RACE_CODES or attempt == _CREATE_ATTEMPTS - 1:
                    raise self._error(exc, "create the bucket") from None
            await asyncio.sleep(0.05 * 2**attempt)

    async def _bucket_exists(self, client: Any) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            await client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError):
            return False
        return True

    def _error(self, exc: Exception, action: str, key: str | None = None) -> StorageError:
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
            SSLError,
        )

        if not _from_storage(exc):
            # not the storage's error but one raised into this code from outside: Prefect's
            # task worker raises StopTaskWorker from its SIGTERM handler wherever the main
            # thread is, and wrapped as a StorageError it was taken for a missed heartbeat,
            # and the worker never stopped
            raise exc
        where = f"s3://{self.bucket}/{self._object_key(key) if key else self.prefix}"
        if isinstance(exc, NoCredentialsError):
            return StorageAuthError(f"cannot {action} at {where}: no AWS credentials found")
        if isinstance(exc, SSLError):
            return StorageError(
                f"cannot {action} at {where}: SSLError (the TLS handshake with {self._server} "
                "failed: does it serve https, with a certificate this machine trusts?)"
            )
        if isinstance(exc, (ConnectionError, HTTPClientError)):
            return StorageUnavailableError(
                f"cannot {action} at {where}: {type(exc).__name__} (is {self._server} up?)"
            )
        code = error_code(exc)
        if isinstance(exc, ClientError) and code in _UNAVAILABLE_CODES:
            return StorageUnavailableError(
                f"cannot {action} at {where}: S3 error {code} (the server is unavailable)"
            )
        if isinstance(exc, ClientError):
            if code == "NoSuchBucket":
                return BucketNotFoundError(
                    f"bucket {self.bucket!r} does not exist ({self._missing_bucket})"
                )
            if code in _AUTH_CODES:
                return StorageAuthError(
                    f"cannot {action} at {where}: {code} (check the access key, secret and "
                    "bucket permissions)"
                )
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
            if not code or (code in ("404", "NotFound") and action in _WRITES):
                # no S3 error in the answer ("S3 error " and nothing), or a write answered
                # with a bare 404 (S3 names what is missing in its body): "no object at"
                return StorageError(f"cannot {action} at {where}: {self._not_s3(status)}")
            if code in _MISSING_KEY_CODES:
                return ObjectNotFoundError(f"no object at {where}")
            return StorageError(f"cannot {action} at {where}: S3 error {code}")
        return StorageError(f"cannot {action} at {where}: {type(exc).__name__}")

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Upload ``data`` to ``key`` with its content type and user metadata."""
        object_key = self._object_key(key)
        client = await self._s3()
        meta = _ascii_metadata(metadata)
        try:
            answer = await client.put_object(
                Bucket=self.bucket,
                Key=object_key,
                Body=data,
                ContentType=content_type,
                Metadata=meta,
            )
        except Exception as exc:
            if error_code(exc) in _AUTH_CODES:
                # servers that auto-create buckets answer AccessDenied for a missing one
                await self._check_bucket(client)
            raise self._error(exc, "store", key) from None
        return StoredObject(
            key=key,
            size=len(data),
            content_type=content_type,
            checksum=str(answer.get("ETag", "")).strip('"'),
            uri=self.uri(key),
            url=await self._presign(client, object_key, self.url_expires),
            metadata=meta,
        )

    async def exists(self, key: str) -> bool:
        """True when ``key`` exists (a HEAD request)."""
        from botocore.exceptions import ClientError

        object_key = self._object_key(key)
        client = await self._s3()
        try:
            await client.head_object(Bucket=self.bucket, Key=object_key)
        except ClientError as exc:
            if error_code(exc) in _MISSING_KEY_CODES:
                # a HEAD on a missing bucket is also a bare 404: tell the two apart
                await self._check_bucket(client)
                return False
            raise self._error(exc, "look up", key) from None
        except Exception as exc:
            raise self._error(exc, "look up", key) from None
        return True

    async def stat(self, key: str) -> StoredObject:
        """Describe ``key`` with one HEAD request (the object is not downloaded).

        Raises:
            ObjectNotFoundError: nothing is stored under ``key``.
        """
        from botocore.exceptions import ClientError

        object_key = self._object_key(key)
        client = await self._s3()
        try:
            head = await client.head_object(Bucket=self.bucket, Key=object_key)
        except ClientError as exc:
            if error_code(exc) in _MISSING_KEY_CODES:
                await self._check_bucket(client)
            raise self._error(exc, "look up", key) from None
        except Exception as exc:
            raise self._error(exc, "look up", key) from None
        return StoredObject(
            key=key,
            size=int(head.get("ContentLength", 0)),
            content_type=str(head.get("ContentType", "application/octet-stream")),
            checksum=str(head.get("ETag", "")).strip('"'),
            uri=self.uri(key),
            url=await self._presign(client, object_key, self.url_expires),
            metadata=dict(head.get("Metadata", {})),
        )

    @property
    def _server(self) -> str:
        return self.endpoint_url or "S3"

    async def _check_bucket(self, client: Any) -> None:
        from botocore.exceptions import ClientError

        try:
            await client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
                raise await self._no_bucket(client) from None
            raise self._error(exc, "look up the bucket") from None
        except Exception as exc:  # the server went away between two requests
            raise self._error(exc, "look up the bucket") from None

    async def _no_bucket(self, client: Any) -> StorageError:
        """The error for a bare 404 to a HEAD of the bucket. An S3 server without the bucket
        names it in the body of a GET (``NoSuchBucket``); any other server (a web server, an
        API, the wrong port) answers no such thing, and was called a missing bucket, then,
        with the bucket created, "no object"."""
        from botocore.exceptions import ClientError

        try:
            await client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
        except ClientError as exc:
            if error_code(exc) == "NoSuchBucket":
                return BucketNotFoundError(
                    f"bucket {self.bucket!r} does not exist ({self._missing_bucket})"
                )
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
            return StorageError(
                f"cannot look up the bucket {self.bucket!r}: {self._not_s3(status)}"
            )
        except Exception as exc:
            return self._error(exc, "look up the bucket")
        return StorageError(f"cannot look up the bucket {self.bucket!r}: {self._not_s3(404)}")

    def _not_s3(self, status: object) -> str:
        return (
            f"{self._server} does not answer as an S3 server (HTTP {status} with no S3 error "
            "in it): check the endpoint URL"
        )

    async def get(self, key: str) -> bytes:
        """Download ``key``."""
        object_key = self._object_key(key)  # a malformed key is an UnsafeKeyError, not wrapped
        client = await self._s3()
        try:
            answer = await client.get_object(Bucket=self.bucket, Key=object_key)
            async with answer["Body"] as body:
                return bytes(await body.read())
        except Exception as exc:
            raise self._error(exc, "read", key) from None

    async def url(self, key: str, *, expires: float | timedelta = 3600) -> str:
        """A presigned (SigV4) GET URL for ``key``, valid for ``expires`` (at most 7 days)."""
        object_key = self._object_key(key)
        client = await self._s3()
        return await self._presign(client, object_key, presign_seconds(expires))

    async def _presign(self, client: Any, object_key: str, expires: int) -> str:
        url = await client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": object_key}, ExpiresIn=expires
        )
        return str(url)

    async def delete(self, key: str) -> None:
        """Delete ``key`` (no error if it is missing)."""
        object_key = self._object_key(key)
        client = await self._s3()
        try:
            await client.delete_object(Bucket=self.bucket, Key=object_key)
        except Exception as exc:
            raise self._error(exc, "delete", key) from None

    async def aclose(self) -> None:
        """Close the S3 clients, each on the event loop it was made on."""
        await self._clients.aclose()

    async def __aenter__(self) -> S3Sink:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


#: The longest a SigV4 presigned URL may live (S3 refuses a longer ``X-Amz-Expires``).
MAX_PRESIGN_SECONDS = 7 * 24 * 3600


def presign_seconds(expires: float | timedelta, name: str = "expires") -> int:
    """``expires`` in whole seconds, for a presigned URL: positive, finite, at most 7 days."""
    value = seconds(expires, name)
    if value > MAX_PRESIGN_SECONDS:
        raise ConfigurationError(
            f"{name} may be at most 7 days ({MAX_PRESIGN_SECONDS} s) for a presigned URL, "
            f"not {value} s"
        )
    return value
