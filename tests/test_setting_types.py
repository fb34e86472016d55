"""A setting of the wrong type is refused where it is given, naming it.

Accepted as they were, these failed later and elsewhere: ``reader="x"`` made a batch list
nothing and report 0 of 0, ``retry_policy={}`` failed every job as unexpected,
``on_result="x"`` logged a traceback per job, ``BatchRemover("photoroom")`` raised an
``AttributeError`` from inside the batch, ``PhotoroomClient(base_url=5)`` another one.
"""

from __future__ import annotations

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
