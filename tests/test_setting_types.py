"""A setting of the wrong type is refused where it is given, naming it.

Accepted as they were, these failed later and elsewhere: ``reader="x"`` made a batch list
nothing and report 0 of 0, ``retry_policy={}`` failed every job as unexpected,
``on_result="x"`` logged a traceback per job, ``BatchRemover("photoroom")`` raised an
``AttributeError`` from inside the batch, ``PhotoroomClient(base_url=5)`` another one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest

from photoroom_bg import AsyncPhotoroomClient, BatchRemover, MemorySink, PhotoroomClient
from photoroom_bg.errors import ConfigurationError
from photoroom_bg.sinks import FileSystemSink, S3Sink
from photoroom_bg.sources import SourceReader

LOCAL = "http://127.0.0.1:9"


def batch(**settings: Any) -> Callable[[], object]:
    return lambda: BatchRemover(sink=MemorySink(), api_key="sk_test", **settings)


CASES: list[tuple[str, Callable[[], object]]] = [
    ("engine", lambda: BatchRemover("photoroom", sink=MemorySink())),  # type: ignore[arg-type]
    ("engine", lambda: BatchRemover(object(), sink=MemorySink())),  # type: ignore[arg-type]
    ("reader", batch(reader="x")),
    ("retry_policy", batch(retry_policy={})),
    ("on_result", batch(on_result="x")),
    ("on_progress", batch(on_progress=5)),
    ("key_template", batch(key_template=5)),
    ("manifest", batch(manifest=5)),
    ("manifest_key", batch(manifest_key=5)),
    ("spill_dir", batch(spill_dir=5)),
    ("base_url", batch(base_url=5)),
    ("base_url", lambda: PhotoroomClient(api_key="sk_test", base_url=5)),  # type: ignore[arg-type]
    (
        "segment_base_url",
        lambda: AsyncPhotoroomClient(api_key="sk_test", segment_base_url=b"http://x"),  # type: ignore[arg-type]
    ),
    (
        "image_api_base_url",
        lambda: PhotoroomClient(api_key="sk_test", image_api_base_url=["http://x"]),  # type: ignore[arg-type]
    ),
    ("retry_policy", lambda: PhotoroomClient(api_key="sk_test", retry_policy={})),  # type: ignore[arg-type]
    ("retry_policy", lambda: AsyncPhotoroomClient(api_key="sk_test", retry_policy=0.5)),  # type: ignore[arg-type]
    ("root", lambda: FileSystemSink(5)),  # type: ignore[arg-type]
    ("uri", lambda: S3Sink(5)),  # type: ignore[arg-type]
    ("endpoint_url", lambda: S3Sink("s3://b", endpoint_url=5)),  # type: ignore[arg-type]
    ("region", lambda: S3Sink("s3://b", endpoint_url=LOCAL, region=5)),  # type: ignore[arg-type]
    ("aws_access_key_id", lambda: S3Sink("s3://b", aws_access_key_id=5)),  # type: ignore[arg-type]
    ("aws_secret_access_key", lambda: S3Sink("s3://b", aws_secret_access_key=b"s")),  # type: ignore[arg-type]
    ("aws_session_token", lambda: S3Sink("s3://b", aws_session_token=5)),  # type: ignore[arg-type]
    # a str would be read one character at a time: "'1' does not appear to be a network"
    ("allow_networks", lambda: SourceReader(allow_networks="10.0.0.0/8")),
    ("allow_networks", lambda: SourceReader(allow_networks=["10.0.0.0/33"])),
    ("allow_networks", lambda: SourceReader(allow_networks=[5])),  # type: ignore[list-item]
    ("resolver", lambda: SourceReader(resolver="x")),  # type: ignore[arg-type]
    ("s3_options", lambda: SourceReader(s3_options=5)),  # type: ignore[arg-type]
    ("http_client", lambda: SourceReader(http_client="x")),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(
    ("name", "make"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)]
)
def test_a_setting_of_the_wrong_type_is_refused_naming_it(
    name: str, make: Callable[[], object]
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        make()
    assert str(caught.value).startswith(f"{name} must be ")


#: An integer past what a float holds (about 1.8e308): ``math.isnan`` or ``float()`` of it
#: raise ``OverflowError``, and ``repr()`` of it ``ValueError`` (past 4,300 digits)
HUGE = 10**5000

TOO_LARGE: list[tuple[str, Callable[[], object]]] = [
    ("concurrency", batch(concurrency=HUGE)),
    ("concurrency", batch(concurrency=2**63)),
    ("max_retries", batch(max_retries=-HUGE)),
    ("keep_results", batch(keep_results=-HUGE)),
    ("requests_per_minute", batch(requests_per_minute=HUGE)),
    ("store_retry_budget", batch(store_retry_budget=HUGE)),
    ("exit_timeout", batch(exit_timeout=-HUGE)),
    ("timeout", lambda: PhotoroomClient(api_key="sk_test", timeout=HUGE)),
    ("max_bytes", lambda: SourceReader(max_bytes=HUGE)),
    ("max_redirects", lambda: SourceReader(max_redirects=-HUGE)),
    ("timeout", lambda: SourceReader(timeout=HUGE)),
    ("max_bytes", lambda: MemorySink(max_bytes=-HUGE)),
    ("progress", batch(progress=HUGE)),
]


@pytest.mark.parametrize(
    ("name", "make"), TOO_LARGE, ids=[f"{n}-{i}" for i, (n, _) in enumerate(TOO_LARGE)]
)
def test_a_number_too_large_for_a_float_or_a_count_is_refused_naming_it(
    name: str, make: Callable[[], object]
) -> None:
    # these raised OverflowError when made or when the batch opened (a reader's max_bytes
    # when a file object was read), or ValueError while the message was written; a count
    # past sys.maxsize, which no container holds, is refused as well
    with pytest.raises(ConfigurationError) as caught:
        make()
    message = str(caught.value)
    assert message.startswith(f"{name} must be "), message
    assert "more than 4,300 digits" in message or "9,223,372,036,854,775,807" in message


def test_a_count_of_results_to_keep_past_any_process_still_means_every_job() -> None:
    assert batch(keep_results=HUGE)().keep_results == sys.maxsize  # type: ignore[attr-defined]
