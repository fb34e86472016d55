"""What a worker takes from its own environment, never from a run's parameters.

A parameter names *where* (``s3://bucket/prefix``, a folder); the worker decides *how*: the S3
endpoint, region and credentials come from the standard AWS variables (``AWS_ENDPOINT_URL_S3``
or ``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``...), the Photoroom base URL from
``PHOTOROOM_BASE_URL``, the networks image URLs may reach although not public from
``PHOTOROOM_BG_ALLOW_NETWORKS``. A parameter that could redirect a worker's API key or storage
credentials to another server would be a way to steal them.
"""

from __future__ import annotations

import os
from typing import Any

import attrs

from .._s3client import configured_endpoint
from ..errors import ConfigurationError
from ..sinks import S3Sink, Sink, open_sink
from ..sources import _DEFAULT_MAX_BYTES as DEFAULT_MAX_BYTES
from ..sources import SourceReader

__all__ = ["check_shared_sink", "open_worker_sink", "s3_endpoint", "worker_reader"]


def s3_endpoint() -> str | None:
    """The S3 endpoint of this worker: ``$AWS_ENDPOINT_URL_S3``, else ``$AWS_ENDPOINT_URL``."""
    return configured_endpoint()


def check_shared_sink(uri: str) -> str:
    """Refuse sinks that the shards of a job cannot share.

    Raises:
        ConfigurationError: ``memory://`` (each process, and each shard, would get its own)
            or an empty string.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigurationError("a job needs a sink: an s3:// URI or a folder")
    if uri.startswith("memory://"):
        raise ConfigurationError(
            "a memory:// sink cannot be shared by the shards of a job: use s3:// or a folder "
            "every worker can reach"
        )
    return uri


def open_worker_sink(uri: str) -> Sink:
    """Open the sink ``uri`` with this worker's storage settings."""
    options: dict[str, Any] = {}
    endpoint = s3_endpoint()
    if uri.startswith("s3://") and endpoint:
        options["endpoint_url"] = endpoint
    sink = open_sink(check_shared_sink(uri), **options)
    if isinstance(sink, S3Sink):  # a flow's caller cannot pass create_bucket=True
        sink._missing_bucket = (
            "create it before the job: workers do not create buckets (the service creates "
            "its own at start)"
        )
    return sink


#: networks image URLs may reach although not public (the service's variable too)
ALLOW_NETWORKS_VARIABLE = "PHOTOROOM_BG_ALLOW_NETWORKS"


def worker_reader(max_bytes: int | None = None) -> SourceReader:
    """A :class:`~photoroom_bg.sources.SourceReader` with this worker's S3 settings and the
    default SSRF policy: URLs to loopback, private or link-local addresses are refused, except
    in the networks ``$PHOTOROOM_BG_ALLOW_NETWORKS`` lists (``10.1.0.0/16``, comma or space
    separated), which only the worker's environment can set. ``max_bytes``: the largest
    source read (``None``: the reader's default, 50 MB)."""
    endpoint = s3_endpoint()
    allowed = os.environ.get(ALLOW_NETWORKS_VARIABLE, "").replace(",", " ").split()
    reader = SourceReader(
        s3_options={"endpoint_url": endpoint} if endpoint else None,
        allow_networks=allowed,
        max_bytes=DEFAULT_MAX_BYTES if max_bytes is None else max_bytes,
    )
    # a refusal's advice names the variable above, not the SDK's arguments
    reader.policy = attrs.evolve(reader.policy, front_end="service")
    return reader
