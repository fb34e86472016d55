"""S3Sink against a real SeaweedFS server: signing, errors, bucket creation races."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import unquote

import httpx
import pytest

from photoroom_bg.errors import (
    BucketNotFoundError,
    ConfigurationError,
    StorageAuthError,
    StorageError,
    StorageUnavailableError,
    UnsafeKeyError,
)
from photoroom_bg.sinks import S3Sink, SyncSink, open_sink
from photoroom_bg.sources import ImageSource, SourceReader

from ..loopback import closed_port
from ..s3server import S3Server
from ..sources.conftest import png_bytes


async def test_urls_are_presigned_and_the_bucket_is_private(
    s3_server: S3Server, s3_prefix: str
) -> None:
    async with S3Sink(s3_prefix, **s3_server.sink_options()) as sink:
        stored = await sink.put("shoe.png", b"cut-out", content_type="image/png")
        assert stored.url.startswith(s3_server.endpoint_url + "/")
        assert "X-Amz-Signature=" in stored.url
        assert "X-Amz-Expires=3600" in stored.url
        async with httpx.AsyncClient() as http:
            signed = await http.get(stored.url)
            unsigned = await http.get(stored.url.split("?")[0])
        assert signed.status_code == 200
        assert signed.content == b"cut-out"
        assert signed.headers["content-type"] == "image/png"
        assert unsigned.status_code == 403  # the old service handed out URLs like this one
        short = await sink.url("shoe.png", expires=30)
        assert "X-Amz-Expires=30" in short
        week = await sink.url("shoe.png", expires=timedelta(days=7))
        assert "X-Amz-Expires=604800" in week
        # -1 and 0 were made 1 s; NaN and inf raised ValueError / OverflowError; more than a
        # week made a URL S3 refuses
        for expires in (-1, 0, float("nan"), float("inf"), timedelta(days=8), "60"):
            with pytest.raises(ConfigurationError, match="expires"):
                await sink.url("shoe.png", expires=expires)  # type: ignore[arg-type]
            with pytest.raises(ConfigurationError, match="url_expires"):
                S3Sink(s3_prefix, url_expires=expires, **s3_server.sink_options())  # type: ignore[arg-type]


async def test_content_type_and_metadata_are_stored(s3_server: S3Server, s3_prefix: str) -> None:
    async with S3Sink(s3_prefix, **s3_server.sink_options()) as sink:
        await sink.put(
            "m.png",
            b"x",
            content_type="image/png",
            metadata={"source": "https://example.com/ä.jpg", "options-digest": "abc123"},
        )
        client = await sink._s3()
        head = await client.head_object(Bucket=sink.bucket, Key=sink.prefix + "m.png")
    assert head["ContentType"] == "image/png"
    assert head["Metadata"]["options-digest"] == "abc123"
    assert head["Metadata"]["source"] == "https://example.com/%C3%A4.jpg"


async def test_a_key_longer_than_s3_takes_is_refused_by_every_call(
    s3_server: S3Server, s3_prefix: str
) -> None:
    # a key over 1,024 bytes was sent: put failed after the engine was paid (KeyTooLongError,
    # a plain StorageError), exists() said False and url() signed a URL for nothing, where
    # the storage guide promises UnsafeKeyError from every call of every sink
    async with S3Sink(s3_prefix, **s3_server.sink_options()) as sink:
        # in folders of 200 bytes a name at most: the test server keeps no longer names
        room = 1024 - len(sink.prefix.encode()) - len("x.png")
        longest = ("k" * 199 + "/") * (room // 200) + "k" * (room % 200) + "x.png"
        assert len((sink.prefix + longest).encode()) == 1024
        assert (await sink.put(longest, b"x")).size == 1
        for key in ("k" + longest, ("é" * 100 + "/") * 6 + "x.png"):
            with pytest.raises(UnsafeKeyError, match=r"too long for S3: .* over 1,024"):
                await sink.put(key, b"x")
            for call in (sink.exists, sink.get, sink.url, sink.delete, sink.stat):
                with pytest.raises(UnsafeKeyError, match="too long for S3"):
                    await call(key)


async def test_a_wrong_secret_is_a_typed_error_without_the_secret(
    s3_server: S3Server, s3_prefix: str
) -> None:
    wrong = "not-the-secret-" + s3_server.secret_key[:8]
    sink = S3Sink(
        s3_prefix,
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=wrong,
    )
    for attempt in (sink.put("a.png", b"x"), sink.get("a.png"), sink.exists("a.png")):
        with pytest.raises(StorageAuthError) as caught:
            await attempt
        assert wrong not in str(caught.value)
        assert s3_server.secret_key not in str(caught.value)
    assert wrong not in repr(sink)
    await sink.aclose()


async def test_a_missing_bucket_is_a_typed_error(s3_server: S3Server, s3_new_bucket: str) -> None:
    sink = S3Sink(
        f"s3://{s3_new_bucket}/out",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.writer_access_key,
        aws_secret_access_key=s3_server.writer_secret_key,
    )
    for attempt in (sink.put("a.png", b"x"), sink.get("a.png"), sink.exists("a.png")):
        with pytest.raises(BucketNotFoundError, match="create_bucket=True"):
            await attempt
    await sink.aclose()


async def test_buckets_are_created_when_asked_even_by_racing_workers(
    s3_server: S3Server, s3_new_bucket: str
) -> None:
    sinks = [
        S3Sink(f"s3://{s3_new_bucket}/w{i}", create_bucket=True, **s3_server.sink_options())
        for i in range(20)
    ]
    stored = await asyncio.gather(*(s.put("x.png", f"{i}".encode()) for i, s in enumerate(sinks)))
    assert [s.uri for s in stored] == [f"s3://{s3_new_bucket}/w{i}/x.png" for i in range(20)]
    assert [await s.get("x.png") for s in sinks] == [f"{i}".encode() for i in range(20)]
    await asyncio.gather(*(s.aclose() for s in sinks))


class _RacingClient:
    """A bucket creation that loses a race: the server answers ``codes`` first, one per
    call, while the winner's bucket appears after ``exists_after`` head calls."""

    def __init__(self, codes: list[str], exists_after: int | None) -> None:
        self.codes = codes
        self.exists_after = exists_after
        self.creates = 0
        self.heads = 0

    async def create_bucket(self, **kwargs: object) -> None:
        from botocore.exceptions import ClientError

        self.creates += 1
        if self.codes:
            code = self.codes.pop(0)
            raise ClientError({"Error": {"Code": code, "Message": code}}, "CreateBucket")

    async def head_bucket(self, **kwargs: object) -> None:
        from botocore.exceptions import ClientError

        self.heads += 1
        if self.exists_after is None or self.heads <= self.exists_after:
            raise ClientError({"Error": {"Code": "404", "Message": "Not Found"}}, "HeadBucket")


@pytest.mark.parametrize("code", ["NoSuchBucket", "OperationAborted", "InternalError"])
async def test_a_worker_losing_the_bucket_creation_race_uses_the_winners_bucket(
    code: str,
) -> None:
    sink = S3Sink("s3://raced/out", create_bucket=True, endpoint_url="http://127.0.0.1:9")
    client = _RacingClient([code], exists_after=0)
    await sink._ensure_bucket(client)  # no error: the bucket is there
    assert client.creates == 1


async def test_a_transient_answer_to_bucket_creation_is_tried_again() -> None:
    sink = S3Sink("s3://raced/out", create_bucket=True, endpoint_url="http://127.0.0.1:9")
    client = _RacingClient(["OperationAborted", "503"], exists_after=None)
    await sink._ensure_bucket(client)
    assert client.creates == 3  # two transient refusals, then created


async def test_a_bucket_creation_refused_for_good_is_a_typed_error() -> None:
    sink = S3Sink("s3://raced/out", create_bucket=True, endpoint_url="http://127.0.0.1:9")
    client = _RacingClient(["InvalidBucketName"], exists_after=None)
    with pytest.raises(StorageError):
        await sink._ensure_bucket(client)
    assert client.creates == 1  # not retried
    always = _RacingClient(["NoSuchBucket"] * 10, exists_after=None)
    with pytest.raises(StorageError):
        await sink._ensure_bucket(always)
    assert always.creates == 4  # bounded


async def test_one_client_is_reused_and_closed(s3_server: S3Server, s3_prefix: str) -> None:
    sink = S3Sink(s3_prefix, **s3_server.sink_options())
    await sink.put("a.png", b"1")
    first = await sink._s3()
    await sink.put("b.png", b"2")
    assert await sink._s3() is first
    assert len(sink._clients) == 1  # one per event loop, reused
    await sink.aclose()
    assert len(sink._clients) == 0


async def test_a_new_client_reads_none_of_botocores_data_files_again(
    s3_server: S3Server, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every S3Sink, SourceReader and job record opens a client of its own (one per event
    loop); each one parsed botocore's endpoint and S3 model files anew (~150 ms of CPU), which
    was half the CPU of a Prefect worker running 50-image shards."""
    from botocore.loaders import JSONFileLoader

    async def another_sink_and_reader() -> None:
        async with S3Sink(s3_prefix, **s3_server.sink_options()) as sink:
            await sink.put("again.png", png_bytes())
        reader = SourceReader(s3_options=s3_server.reader_options())
        async with reader:
            assert (
                await reader.read(ImageSource("s3", s3_prefix + "/again.png", "again"))
                == png_bytes()
            )

    await another_sink_and_reader()  # the first clients of this process parse them
    parsed: list[str] = []
    load_file = JSONFileLoader.load_file

    def counted(self: JSONFileLoader, file_path: str) -> object:
        parsed.append(file_path)
        return load_file(self, file_path)

    monkeypatch.setattr(JSONFileLoader, "load_file", counted)

    await another_sink_and_reader()
    await asyncio.to_thread(asyncio.run, another_sink_and_reader())  # another thread and loop
    assert parsed == []


async def test_a_client_of_a_plain_http_endpoint_loads_no_certificates(
    s3_server: S3Server, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each client built a TLS context and read the CA bundle into it (some 50 ms of CPU,
    the next largest cost of a worker's shard) for an http:// endpoint, where it is never
    used."""
    import ssl

    loaded: list[object] = []
    load = ssl.SSLContext.load_verify_locations

    def counted(self: ssl.SSLContext, *args: object, **kwargs: object) -> None:
        loaded.append(args)
        load(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    assert s3_server.endpoint_url.startswith("http://")
    async with S3Sink(s3_prefix, **s3_server.sink_options()) as sink:
        await sink.put("plain.png", png_bytes())
        assert await sink.get("plain.png") == png_bytes()
    reader = SourceReader(s3_options=s3_server.reader_options())
    async with reader:
        assert await reader.read(ImageSource("s3", s3_prefix + "/plain.png", "p")) == png_bytes()
    assert loaded == []


def test_sync_façade_inside_a_running_loop(s3_server: S3Server, s3_prefix: str) -> None:
    async def notebook_cell() -> bytes:
        with SyncSink(open_sink(s3_prefix, **s3_server.sink_options())) as sink:
            sink.put("sync.png", b"from a notebook")
            assert sink.exists("sync.png")
            return httpx.get(sink.url("sync.png")).content

    assert asyncio.run(notebook_cell()) == b"from a notebook"


@pytest.fixture
def not_s3() -> Iterator[int]:
    """A loopback port whose server answers every request with bytes that are no HTTP."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # shut down: the test is over
                return
            with conn:
                conn.recv(65536)  # the start of a request, or of a TLS handshake
                conn.sendall(b"\x00\xffnot http\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        # a close alone does not wake the accept() (Linux): the teardown waited out the
        # join's 10 s and left the thread behind
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(timeout=10)
        assert not thread.is_alive()


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_an_endpoint_that_speaks_no_http_is_a_storage_error_on_every_call(
    not_s3: int, scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put raised AttributeError ('NoneType' object has no attribute 'get'): it read the
    error code of botocore's HTTPClientError, whose response is None, as a dict."""
    from botocore.retries.standard import ExponentialBackoff

    # botocore tries each call 3 times, a second or so apart: no pause between them here
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0)
    sink = S3Sink(
        "s3://bucket/prefix",
        endpoint_url=f"{scheme}://127.0.0.1:{not_s3}",
        aws_access_key_id="AKIAEXAMPLE",
        aws_secret_access_key="SECRETKEY789",
        region="us-east-1",
    )
    calls = {
        "put": lambda: sink.put("a.png", b"x"),
        "exists": lambda: sink.exists("a.png"),
        "stat": lambda: sink.stat("a.png"),
        "get": lambda: sink.get("a.png"),
        "delete": lambda: sink.delete("a.png"),
    }
    async with sink:
        for name, call in calls.items():
            with pytest.raises(StorageError) as caught:
                await call()
            message = str(caught.value)
            assert "SECRETKEY789" not in message, name
            if scheme == "http":
                assert isinstance(caught.value, StorageUnavailableError), (name, message)
            else:  # a TLS handshake with a server that does not speak TLS
                assert "TLS" in message, (name, message)


def test_repr_shows_no_secret(s3_server: S3Server) -> None:
    sink = S3Sink("s3://bucket/prefix", **s3_server.sink_options())
    assert s3_server.secret_key not in repr(sink)
    assert s3_server.access_key not in repr(sink)
    assert repr(sink).startswith("S3Sink('s3://bucket/prefix/'")


@pytest.mark.parametrize(
    "target",
    [
        "s3://AKIAEXAMPLE:SECRETKEY789@bucket/prefix",
        "s3://bucket?X-Amz-Security-Token=SECRETKEY789",
        "ftp://AKIAEXAMPLE:SECRETKEY789@127.0.0.1/out?token=SECRETKEY789",
    ],
)
def test_a_sink_uri_holding_credentials_is_refused_without_showing_them(target: str) -> None:
    # the message quoted the URI whole: an access key and its secret in an exception
    with pytest.raises(ConfigurationError) as caught:
        open_sink(target)
    assert "SECRETKEY789" not in str(caught.value)
    assert "AKIAEXAMPLE" not in str(caught.value)
    if "@bucket" in target:
        assert "takes no credentials" in str(caught.value)


@pytest.mark.parametrize(
    "endpoint",
    [
        f"http://user:SECRETKEY789@127.0.0.1:{closed_port()}",
        f"http://127.0.0.1:{closed_port()}/?token=SECRETKEY789",
        "127.0.0.1:9000",
    ],
    ids=["user-info", "query", "no-scheme"],  # the same in every process that collects them
)
@pytest.mark.parametrize("who", ["sink", "reader"])
async def test_an_endpoint_that_is_no_server_url_is_refused_without_its_secrets(
    endpoint: str, who: str
) -> None:
    # botocore failed on the first put instead: a raw AttributeError for the credentials,
    # "EndpointResolutionError" for the query; repr() showed them (the reader's too)
    def make() -> object:
        if who == "sink":
            return S3Sink("s3://bucket", endpoint_url=endpoint)
        return SourceReader(s3_options={"endpoint_url": endpoint})

    with pytest.raises(ConfigurationError, match="endpoint_url") as caught:
        make()
    assert "SECRETKEY789" not in str(caught.value)


@pytest.mark.parametrize("name", ["商品画像" * 256, "фото" * 256, "a" * 3000])
async def test_metadata_stays_within_what_s3_accepts(
    s3_server: S3Server, s3_prefix: str, name: str
) -> None:
    # a batch puts each cut-out with its source's name (up to 1,024 characters): in
    # percent-encoding, a long non-ASCII one came to 9 KB, past the 2 KB that AWS S3 takes
    # for user metadata (MetadataTooLarge: every put failed, every cut-out spilled); here the
    # put went through, and the next run's look-up of the object failed as "is the server
    # up?": its answer's headers were longer than the HTTP client reads
    async with S3Sink(s3_prefix, **s3_server.sink_options()) as sink:
        metadata = {"source": f"photos/{name[:1024]}.jpg", "options-digest": "0" * 64}
        await sink.put("cut.png", b"\x89PNG", content_type="image/png", metadata=metadata)
        stored = (await sink.stat("cut.png")).metadata
    assert sum(len(k.encode()) + len(v.encode()) for k, v in stored.items()) <= 2048
    assert stored["options-digest"] == "0" * 64
    source = stored["source"]
    if name.isascii():  # 1 KB: kept whole
        assert source == metadata["source"]
    else:
        assert source.endswith("...")
        assert f"photos/{name}".startswith(unquote(source[: -len("...")]))  # whole characters


@pytest.fixture
def web_server() -> Iterator[str]:
    """A loopback web server that is no S3 server: every request gets an HTML 404."""

    class NotFound(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.send_response(404)
            body = b"" if self.command == "HEAD" else b"<html><body>Not Found</body></html>"
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", "35")
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize("create_bucket", [False, True])
async def test_an_endpoint_that_is_no_s3_server_is_called_so(
    web_server: str, create_bucket: bool
) -> None:
    # a web server (the wrong port, an API) was "bucket 'cut' does not exist (pass
    # create_bucket=True)", and with create_bucket a put was "no object at s3://cut/a/"
    sink = S3Sink("s3://cut/a", endpoint_url=web_server, aws_access_key_id="AKIAEXAMPLE",
                  aws_secret_access_key="secret", create_bucket=create_bucket)  # fmt: skip
    for call in (sink.exists("k.png"), sink.put("k.png", b"x")):
        with pytest.raises(StorageError, match="does not answer as an S3 server") as refused:
            await call
        assert type(refused.value) is StorageError  # not BucketNotFound, not ObjectNotFound
    await sink.aclose()


async def test_an_exception_raised_into_a_call_from_outside_is_not_taken_for_a_storage_error(
    s3_server: S3Server, s3_prefix: str
) -> None:
    # Prefect's task worker raises StopTaskWorker from its SIGTERM handler wherever the main
    # thread is: raised during an S3 read it became "cannot read at s3://...: StopTaskWorker",
    # a missed heartbeat to the shard, and the worker never stopped
    class StopTaskWorker(Exception):
        pass

    async with S3Sink(s3_prefix, **s3_server.sink_options()) as sink:
        await sink.put("a.png", b"x")
        client = await sink._s3()

        async def stopped(**_: object) -> None:
            raise StopTaskWorker

        client.get_object = stopped
        client.put_object = stopped
        with pytest.raises(StopTaskWorker):
            await sink.get("a.png")
        with pytest.raises(StopTaskWorker):
            await sink.put("b.png", b"x")
