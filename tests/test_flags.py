"""Settings that are True or False refuse anything else when they are given.

A string read from an environment variable or a config file is truthy whatever it says:
``allow_private_networks="false"`` switched the address guard off, ``skip_existing="false"``
kept skipping, ``retry_possibly_billed="false"`` kept paying for retries.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from photoroom_bg import BatchRemover, EditOptions, FileSystemSink, MemorySink, RetryPolicy
from photoroom_bg._netguard import NetworkPolicy
from photoroom_bg.errors import ConfigurationError
from photoroom_bg.sinks import S3Sink
from photoroom_bg.sources import SourceReader

SETTINGS: dict[str, Callable[[Path, Any], object]] = {
    "skip_existing": lambda _, v: BatchRemover(sink=MemorySink(), skip_existing=v),
    "progress": lambda _, v: BatchRemover(sink=MemorySink(), progress=v),
    "url_passthrough": lambda _, v: BatchRemover(
        sink=MemorySink(), options=EditOptions(), url_passthrough=v
    ),
    "track_credits": lambda _, v: BatchRemover(sink=MemorySink(), track_credits=v),
    "allow_private_networks": lambda _, v: SourceReader(allow_private_networks=v),
    "allow_private_networks ": lambda _, v: NetworkPolicy(allow_private_networks=v),
    "write_metadata": lambda tmp, v: FileSystemSink(tmp, write_metadata=v),
    "checksums": lambda tmp, v: FileSystemSink(tmp, checksums=v),
    "durable": lambda tmp, v: FileSystemSink(tmp, durable=v),
    "create_bucket": lambda _, v: S3Sink(
        "s3://b", endpoint_url="http://127.0.0.1:9", create_bucket=v
    ),
    "retry_possibly_billed": lambda _, v: RetryPolicy(retry_possibly_billed=v),
}


@pytest.mark.parametrize("value", ["false", "False", "0", "", 0, 1, None, 1.0])
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_a_flag_given_anything_but_a_bool_is_refused(tmp_path: Path, name: str, value: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SETTINGS[name](tmp_path, value)
    message = str(caught.value)
    assert name.strip() in message
    assert "True or False" in message
    assert repr(value) in message


@pytest.mark.parametrize("value", [True, False])
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_a_flag_takes_true_and_false(tmp_path: Path, name: str, value: bool) -> None:
    made = SETTINGS[name](tmp_path, value)
    assert made is not None
