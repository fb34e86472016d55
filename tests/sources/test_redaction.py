"""No log line of ours or of the libraries we drive shows URL credentials, presigned query
strings or signatures: checked at DEBUG, where httpx, httpcore and botocore say the most."""

from __future__ import annotations

import logging
import re
from urllib.parse import quote

import pytest

from photoroom_bg._redact import RedactingFilter, install_log_redaction, redact_text, redact_url
from photoroom_bg.errors import SourceError
from photoroom_bg.sinks import S3Sink
from photoroom_bg.sources import ImageSource, SourceReader

from ..s3server import S3Server
from .conftest import ImageServer, png_bytes

SIGNATURE = "f" * 64


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


async def test_fetches_log_urls_without_userinfo_or_query(
    image_server: ImageServer, debug_logs: pytest.LogCaptureFixture
) -> None:
    secret_url = (
        f"http://alice:pa55word@127.0.0.1:{image_server.port}/img.png"
        f"?X-Amz-Signature={SIGNATURE}&X-Amz-Credential=AKIDEXAMPLE"
    )
    redirect = f"{image_server.url}/redirect?to={quote(secret_url, safe='')}"
    async with SourceReader(allow_networks=["127.0.0.1/32"]) as reader:
        assert await reader.read(ImageSource("url", redirect, "img")) == png_bytes()
    text = debug_logs.text
    # the lines are there (so this test can fail), with the URLs cut short
    assert f"HTTP Request: GET http://127.0.0.1:{image_server.port}/img.png " in text
    assert "receive_response_headers" in text  # httpcore's DEBUG lines, Location included
    for secret in ["pa55word", "alice", SIGNATURE, "X-Amz-Signature", "AKIDEXAMPLE", "to=http"]:
        assert secret not in text


async def test_a_quote_in_a_fetched_urls_path_or_query_hides_no_secret_from_redaction(
    image_server: ImageServer, debug_logs: pytest.LogCaptureFixture
) -> None:
    # httpx's "HTTP Request: GET ..." line showed the query after a "'" whole (sig=...)
    urls = [
        f"{image_server.url}/img.png?name=it's&sig=QUOTESECRET1",
        f"{image_server.url}/it's.png?sig=QUOTESECRET2",
    ]
    async with SourceReader(allow_networks=["127.0.0.1/32"]) as reader:
        assert await reader.read(ImageSource("url", urls[0], "img")) == png_bytes()
        with pytest.raises(SourceError):  # not there: its request is logged all the same
            await reader.read(ImageSource("url", urls[1], "img"))
    text = debug_logs.text
    assert f"HTTP Request: GET {image_server.url}/it's.png " in text
    assert "QUOTESECRET" not in text


async def test_s3_presigned_urls_and_signed_requests_are_not_logged(
    s3_server: S3Server, s3_prefix: str, debug_logs: pytest.LogCaptureFixture
) -> None:
    async with S3Sink(s3_prefix, **s3_server.sink_options()) as sink:
        await sink.put("a.png", png_bytes(), content_type="image/png")
        presigned = await sink.url("a.png")
    signature = re.search(r"X-Amz-Signature=([0-9a-f]+)", presigned)
    assert signature is not None
    debug_logs.clear()
    reader = SourceReader(
        allow_networks=["127.0.0.1/32"],
        s3_options=s3_server.reader_options(),
    )
    async with reader:
        assert await reader.read(ImageSource("url", presigned, "a")) == png_bytes()
        assert await reader.read(ImageSource("s3", f"{s3_prefix}/a.png", "a")) == png_bytes()
    text = debug_logs.text
    assert "HTTP Request: GET" in text
    assert any(r.name.startswith("botocore") for r in debug_logs.records)
    assert signature.group(1) not in text
    assert "X-Amz-Signature" not in text
    assert s3_server.secret_key not in text
    assert re.search(r"Signature=[0-9a-f]{64}", text) is None  # Authorization headers
    assert re.search(r"\nSignature:\n[0-9a-f]{64}", text) is None  # botocore.auth's own line


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("https://u:p@h.example/a.png?sig=1#frag", "https://h.example/a.png"),
        ("https://u:p@ss@h.example/a.png", "https://h.example/a.png"),
        ("http://999.1.1.1/x?token=1", "http://999.1.1.1/x"),
        ("http://[::1/x?token=1", "http://[::1/x"),
        ("data:image/png;base64,iVBORw0KGgo=", "data:image/png;base64,..."),
        ("https://h.example/caf\udce9.png?s=1", "https://h.example/caf\\xe9.png"),
        # a "'" in the path or query ended the URL there: the query after it was shown whole
        ("https://h.example/it's.png?sig=1", "https://h.example/it's.png"),
        ("https://h.example/a.png?name=it's&sig=1", "https://h.example/a.png"),
        ("https://h.example/a.png?q=1#it's?sig=1", "https://h.example/a.png"),
    ],
)
def test_urls_are_shown_without_secrets_and_never_raise(raw: str, shown: str) -> None:
    assert redact_url(raw) == shown
    assert ImageSource("url", raw, "x").display == shown


def test_free_text_loses_urls_secrets_and_secret_headers() -> None:
    text = redact_text(
        "GET https://u:p@h/x?X-Amz-Signature=abc then "
        "headers={'Authorization': b'AWS4-HMAC-SHA256 Credential=AK/x, Signature="
        + SIGNATURE
        + "', 'x-api-key': 'sk_live_123'}"
    )
    assert "https://h/x then" in text
    for secret in ["u:p", "X-Amz-Signature", "AWS4-HMAC", SIGNATURE, "sk_live_123"]:
        assert secret not in text
    # quotes around a URL still end it; a "'" inside one does not
    assert redact_text("'http://h/a.png?sig=1': no such file") == "'http://h/a.png': no such file"
    assert redact_text("['http://h/a?s=1', 'http://h/b?s=2']") == "['http://h/a', 'http://h/b']"
    assert (
        redact_text('HTTP Request: GET http://h/it\'s.png?sig=SECRET "HTTP/1.1 200 OK"')
        == 'HTTP Request: GET http://h/it\'s.png "HTTP/1.1 200 OK"'
    )


def test_the_filter_is_installed_once_on_each_logger() -> None:
    install_log_redaction()
    install_log_redaction()
    for name in ["httpx", "httpcore.http11", "httpcore.connection", "photoroom_bg"]:
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, RedactingFilter) for f in filters) == 1, name
