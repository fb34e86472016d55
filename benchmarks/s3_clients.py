"""CPU of opening an S3 client, as every S3Sink, SourceReader and job record does once per
event loop: photoroom_bg's clients / clients made the plain aiobotocore way, in one run.

Each client is opened, sends one request (to a closed loopback port: the request fails at
once, after the client has built its connection pool, where a TLS context is made), and
is closed; the first of each kind is left out (it imports and caches what every later one
reuses). Plain: ``aiobotocore.session.get_session().create_client("s3", ...)``, a session
and a botocore data loader per client, as photoroom_bg made them before it shared the
loader. Both kinds run against an ``http://`` and an ``https://`` endpoint, taking turns.

Usage::

    python benchmarks/s3_clients.py
    python benchmarks/s3_clients.py --n 40
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import platform
import socket
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from photoroom_bg._s3client import close_s3_client, open_s3_client

CONFIG = {"retries": {"max_attempts": 1, "mode": "standard"}, "connect_timeout": 2}


def versions() -> str:
    names = ("aiobotocore", "botocore", "aiohttp")
    found = ", ".join(f"{n} {importlib.metadata.version(n)}" for n in names)
    return f"Python {platform.python_version()}, {found}; {os.cpu_count()} CPUs"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def options(endpoint: str) -> dict[str, Any]:
    return {
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "bench",
        "aws_secret_access_key": "bench-secret",
    }


async def one_request(client: Any) -> None:
    """One request, refused at once: what is measured is the client's own work."""
    from botocore.exceptions import EndpointConnectionError

    with contextlib.suppress(EndpointConnectionError):
        await client.head_bucket(Bucket="bench")


async def ours(endpoint: str) -> None:
    entry = await open_s3_client("the benchmark needs", CONFIG, **options(endpoint))
    try:
        await one_request(entry[1])
    finally:
        await close_s3_client(entry)


async def plain(endpoint: str) -> None:
    from aiobotocore.session import get_session
    from botocore.config import Config

    async with get_session().create_client(
        "s3", config=Config(**CONFIG), **options(endpoint)
    ) as client:
        await one_request(client)


async def cpu_ms(make: Callable[[str], Awaitable[None]], endpoint: str) -> float:
    started = time.process_time()
    await make(endpoint)
    return (time.process_time() - started) * 1000


async def main(n: int) -> None:
    port = closed_port()
    endpoints = {"http": f"http://127.0.0.1:{port}", "https": f"https://127.0.0.1:{port}"}
    kinds: dict[str, Callable[[str], Awaitable[None]]] = {"photoroom_bg": ours, "plain": plain}
    for make in kinds.values():  # imports, and the caches every later client reuses
        for endpoint in endpoints.values():
            await make(endpoint)
    spent: dict[tuple[str, str], list[float]] = {(k, e): [] for k in kinds for e in endpoints}
    for _ in range(n):
        for scheme, endpoint in endpoints.items():
            for kind, make in kinds.items():
                spent[kind, scheme].append(await cpu_ms(make, endpoint))
    print(versions())
    print(f"CPU per S3 client opened, used once and closed (median of {n}, ms):")
    print("   endpoint   photoroom_bg    plain   ratio")
    for scheme in endpoints:
        mine = statistics.median(spent["photoroom_bg", scheme])
        theirs = statistics.median(spent["plain", scheme])
        print(f"   {scheme:8} {mine:12.1f} {theirs:8.1f}   {mine / theirs:5.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="clients of each kind per endpoint")
    asyncio.run(main(parser.parse_args().n))
