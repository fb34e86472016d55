"""s3:// sources against the real S3 server: single objects and prefixes."""

from __future__ import annotations

import pytest

from photoroom_bg.errors import (
    ConfigurationError,
    InvalidImageError,
    InvalidSourceError,
    SourceError,
    SourceNotFoundError,
    SourceTooLargeError,
)
from photoroom_bg.sinks import S3Sink
from photoroom_bg.sources import ImageSource, SourceReader, iter_sources

from ..loopback import closed_port
from ..s3server import S3Server
from .conftest import png_bytes


def reader_for(server: S3Server, **kwargs: object) -> SourceReader:
    return SourceReader(
        s3_options=server.reader_options(),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_objects_and_prefixes_are_read(s3_server: S3Server, s3_prefix: str) -> None:
    async with S3Sink(s3_prefix, **s3_server.sink_options()) as sink:
        for key in ["raw/a.png", "raw/sub/b.jpg", "raw/notes.txt", "other/c.png"]:
            await sink.put(key, png_bytes())
    async with reader_for(s3_server) as reader:
        listed = [s async for s in iter_sources(f"{s3_prefix}/raw/", reader=reader)]
        assert sorted(s.location for s in listed) == [
            f"{s3_prefix}/raw/a.png",
            f"{s3_prefix}/raw/sub/b.jpg",
        ]
        assert [s.name for s in listed] == ["a", "b"]
        assert await reader.read(listed[0]) == png_bytes()


async def test_s3_errors_and_caps(s3_server: S3Server, s3_prefix: str) -> None:
    async with S3Sink(s3_prefix, **s3_server.sink_options()) as sink:
        await sink.put("text.png", b"this is not an image at all")
        await sink.put("big.png", png_bytes() + b"\x00" * 5000)
    async with reader_for(s3_server, max_bytes=2000) as reader:
        for name, error in [
            ("missing.png", SourceNotFoundError),
            ("text.png", InvalidImageError),
            ("big.png", SourceTooLargeError),
        ]:
            with pytest.raises(error):
                await reader.read(ImageSource("s3", f"{s3_prefix}/{name}", name))


async def test_an_object_over_the_cap_has_its_response_body_closed(
    s3_server: S3Server, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiobotocore.response import AioStreamingBody

    async with S3Sink(s3_prefix, **s3_server.sink_options()) as sink:
        await sink.put("big.png", png_bytes() + b"\x00" * 5000)
        await sink.put("ok.png", png_bytes())
    closed: list[object] = []
    real_close = AioStreamingBody.close

    def close(self: AioStreamingBody) -> None:
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(AioStreamingBody, "close", close)
    async with reader_for(s3_server, max_bytes=2000) as reader:
        for _ in range(3):
            with pytest.raises(SourceTooLargeError, match="limit is 2,000"):
                await reader.read(ImageSource("s3", f"{s3_prefix}/big.png", "big"))
            assert closed, "the refused object's body was left open"
            assert closed.pop().raw_stream.closed  # type: ignore[attr-defined]
        assert await reader.read(ImageSource("s3", f"{s3_prefix}/ok.png", "ok")) == png_bytes()


async def test_s3_reads_have_a_deadline(
    s3_server: S3Server, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from photoroom_bg.errors import SourceTimeoutError

    async with S3Sink(s3_prefix, **s3_server.sink_options()) as sink:
        await sink.put("slow.png", png_bytes())
    async with reader_for(s3_server, deadline=0.2) as reader:
        client = await reader._s3()
        never = asyncio.Event()

        async def hanging_get_object(**kwargs: object) -> object:
            await never.wait()  # a server that accepted the request and went silent
            raise AssertionError("unreachable")

        monkeypatch.setattr(client, "get_object", hanging_get_object)
        with pytest.raises(SourceTimeoutError, match=r"0\.2 s deadline"):
            await reader.read(ImageSource("s3", f"{s3_prefix}/slow.png", "slow"))


@pytest.mark.parametrize(
    "uri",
    ["s3://bucket/\ud800.png", "s3://bucket/\ud800/", "s3://bucket/x\udcff/*.png"],
    ids=["object", "prefix", "glob"],
)
async def test_an_s3_uri_that_is_no_text_is_a_typed_error_before_any_request(
    s3_server: S3Server, uri: str
) -> None:
    # a lone surrogate (a \udcxx from a file name that is no UTF-8, say) raised botocore's
    # UnicodeEncodeError: the batch filed the object and the glob as unexpected errors
    async with reader_for(s3_server) as reader:

        async def read_all() -> None:
            async for source in iter_sources([uri], reader=reader):
                await reader.read(source)

        with pytest.raises(InvalidSourceError, match="not text"):
            await read_all()


async def test_an_s3_object_botocore_refuses_is_an_error_that_says_why(
    s3_server: S3Server,
) -> None:
    # the message was the exception's class name alone: "s3://B_ad!/k.png: ParamValidationError"
    async with reader_for(s3_server) as reader:
        with pytest.raises(SourceError, match=r"ParamValidationError: .*Invalid bucket name"):
            await reader.read(ImageSource("s3", "s3://B_ad!/k.png", "k"))


async def test_a_prefix_that_cannot_be_listed_is_a_source_error_that_says_why(
    s3_server: S3Server, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # listing let botocore's own errors out (ClientError, ParamValidationError,
    # EndpointConnectionError): a caller of iter_sources or list_s3 met no error of ours
    import botocore.retryhandler

    # botocore tries a refused connection 5 times, a second or so apart: no pause here
    monkeypatch.setattr(botocore.retryhandler, "delay_exponential", lambda **_: 0)
    bucket = s3_prefix[len("s3://") :].split("/")[0]
    async with reader_for(s3_server) as reader:
        with pytest.raises(SourceNotFoundError, match="no such bucket"):
            [s async for s in reader.list_s3(f"s3://{bucket}-missing/raw/")]
        with pytest.raises(SourceError, match=r"ParamValidationError: .*Invalid bucket name"):
            [s async for s in iter_sources("s3://B_ad!/raw/", reader=reader)]
    unreachable = SourceReader(
        s3_options={
            **s3_server.reader_options(),
            "endpoint_url": f"http://127.0.0.1:{closed_port()}",
        }
    )
    async with unreachable:
        with pytest.raises(SourceError, match="EndpointConnectionError") as caught:
            [s async for s in unreachable.list_s3(f"{s3_prefix}/raw/")]
        assert s3_server.secret_key not in str(caught.value)


async def test_an_upper_case_scheme_is_an_s3_uri(s3_server: S3Server, s3_prefix: str) -> None:
    # a URI's scheme is case-insensitive: S3://bucket/key was taken for an http URL and
    # refused ("only http and https URLs are fetched, not s3:")
    async with S3Sink(s3_prefix, **s3_server.sink_options()) as sink:
        await sink.put("raw/a.png", png_bytes())
    upper = "S3" + s3_prefix[len("s3") :]
    async with reader_for(s3_server) as reader:
        one = [s async for s in iter_sources(f"{upper}/raw/a.png", reader=reader)]
        assert [(s.kind, s.location) for s in one] == [("s3", f"{s3_prefix}/raw/a.png")]
        assert await reader.read(one[0]) == png_bytes()
        listed = [s async for s in iter_sources(f"{upper}/raw/", reader=reader)]
        assert [s.location for s in listed] == [f"{s3_prefix}/raw/a.png"]
        by_hand = ImageSource("s3", f"{upper}/raw/a.png", "a")
        assert await reader.read(by_hand) == png_bytes()


async def test_a_botocore_config_in_s3_options_is_used(s3_server: S3Server, s3_prefix: str) -> None:
    # it was passed twice ("got multiple values for argument 'config'"): every s3:// job
    # failed as an unexpected TypeError
    from botocore.config import Config

    async with S3Sink(s3_prefix, **s3_server.sink_options()) as sink:
        await sink.put("a.png", png_bytes())
    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2})
    options = {**s3_server.reader_options(), "config": config}
    async with SourceReader(s3_options=options) as reader:
        assert await reader.read(ImageSource("s3", f"{s3_prefix}/a.png", "a")) == png_bytes()


@pytest.mark.parametrize(
    ("name", "hint"), [("region", "region_name"), ("endpoint", "endpoint_url")]
)
def test_an_s3_option_the_client_does_not_take_is_refused_when_the_reader_is_made(
    name: str, hint: str
) -> None:
    # accepted, then every s3:// job failed with "unexpected keyword argument", each with a
    # traceback in the log
    with pytest.raises(ConfigurationError, match=f"'{name}' is not an argument.*'{hint}'"):
        SourceReader(s3_options={name: "x"})
