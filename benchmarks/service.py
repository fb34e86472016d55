"""Measure what the HTTP service adds over the SDK it wraps.

Each of three processes does one thing: the emulator (fixed latency, no image work), the
service (``python -m photoroom_bg.service``, uvicorn, a memory sink), and this script, which
drives both and measures. Prints, each measured in this one run:

1. latency added by the service: clients post single images to ``/api/v1/remove-background``
   (multipart upload, the cut-out's bytes back), first one client, then 200 at once; beside
   them the same number of direct ``AsyncPhotoroomClient.remove_background`` calls. p50 and
   p99 of both, their differences, and the CPU each side spends per image;
2. wall-time efficiency of a 2,000-image ``/api/v2`` job (uploads, polled until done) against
   ``BatchRemover.run`` on the same images at the same concurrency, directly:
   ``direct time / service time`` (target >= 0.9).

Usage::

    python benchmarks/service.py                   # as quoted in the docs
    python benchmarks/service.py --latency 0.3 --clients 200 --requests 5 --images 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import io
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx
from PIL import Image

from photoroom_bg import AsyncPhotoroomClient, BatchRemover, MemorySink
from photoroom_bg.testing import DEFAULT_API_KEY

KEY = DEFAULT_API_KEY


@contextlib.contextmanager
def emulator(latency: float) -> Iterator[str]:
    """The emulator in its own process on a free port."""
    args = [sys.executable, "-m", "photoroom_bg.testing", "--port", "0", "--credits", "1e9"]
    args += ["--latency", f"{latency}s", "--no-image-work"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        match = re.search(r"(http://\S+)", proc.stdout.readline())
        if not match:
            raise RuntimeError("the emulator did not start")
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait()


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def service(emulator_url: str, concurrency: int, images: int) -> Iterator[tuple[str, int]]:
    """The service in its own process: no tokens (loopback), memory sink, no rate limits."""
    port = free_port()
    state = tempfile.mkdtemp(prefix="photoroom-bg-bench-")
    env = {
        **os.environ,
        "PHOTOROOM_API_KEY": KEY,
        "PHOTOROOM_BASE_URL": emulator_url,
        "PHOTOROOM_BG_SINK": "memory://",
        "PHOTOROOM_BG_STATE_DIR": state,
        "PHOTOROOM_BG_CONCURRENCY": str(concurrency),
        "PHOTOROOM_BG_PHOTOROOM_REQUESTS_PER_MINUTE": "0",
        "PHOTOROOM_BG_REQUESTS_PER_MINUTE_PER_TOKEN": "1000000",
        "PHOTOROOM_BG_MAX_IMAGES_PER_JOB": str(images),
        "PHOTOROOM_BG_MAX_BODY_BYTES": str(512 * 1024 * 1024),
    }
    args = [sys.executable, "-m", "photoroom_bg.service", "--port", str(port)]
    proc = subprocess.Popen([*args, "--log-level", "warning"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait()


def photos(n: int, offset: int = 0) -> list[bytes]:
    """``n`` distinct small PNGs."""
    out = []
    for i in range(offset, offset + n):
        image = Image.new("RGB", (16 + i % 64, 16 + i // 64 % 64), (i % 251, i // 251 % 251, 9))
        buffer = io.BytesIO()
        image.save(buffer, "PNG", compress_level=1)
        out.append(buffer.getvalue())
    return out


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1] if q < 100 else max(values)
    )


async def clients(count: int, jobs: list[list[bytes]], call: object) -> list[float]:
    """``count`` concurrent clients, each sending its images one after the other."""
    latencies: list[float] = []

    async def client(images: list[bytes]) -> None:
        for image in images:
            started = time.perf_counter()
            await call(image)  # type: ignore[operator]
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(client(job) for job in jobs[:count]))
    return latencies


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def added_latency(url: str, service_url: str, service_pid: int, count: int, per: int) -> None:
    print(f"1. latency added by the service: single images, 1 client, then {count} at once")
    images = photos(count * per + 100, offset=100_000)
    through = photos(count * per + 100, offset=200_000)

    async def direct(jobs: list[list[bytes]]) -> tuple[list[float], float]:
        async with AsyncPhotoroomClient(api_key=KEY, base_url=url) as client:

            async def call(image: bytes) -> None:
                result = await client.remove_background(image)
                assert result.content

            await call(photos(1, offset=1)[0])  # warm the pool
            started = time.process_time()
            latencies = await clients(len(jobs), jobs, call)
            return latencies, time.process_time() - started

    async def service(jobs: list[list[bytes]]) -> tuple[list[float], float]:
        # one HTTP client per caller, as separate users have: one shared pool of 200
        # connections would measure httpcore's pool scans in this process instead
        https = [httpx.AsyncClient(base_url=service_url, timeout=120) for _ in jobs]
        latencies: list[float] = []

        async def caller(http: httpx.AsyncClient, images: list[bytes]) -> None:
            for image in images:
                started = time.perf_counter()
                answer = await http.post(
                    "/api/v1/remove-background",
                    files={"image_file": ("photo.png", image, "image/png")},
                )
                answer.raise_for_status()
                assert answer.content
                latencies.append(time.perf_counter() - started)

        try:
            await caller(https[0], photos(1, offset=2))  # warm up
            latencies.clear()
            started = process_cpu(service_pid)
            await asyncio.gather(*(caller(h, j) for h, j in zip(https, jobs, strict=True)))
            return latencies, process_cpu(service_pid) - started
        finally:
            for http in https:
                await http.aclose()

    print(f"   {'':>26} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/image':>13}")
    for label, direct_jobs, service_jobs in (
        ("1 client, 100 images", [images[:100]], [through[:100]]),
        (
            f"{count} clients x {per} images",
            [images[100 + i :: count] for i in range(count)],
            [through[100 + i :: count] for i in range(count)],
        ),
    ):
        d, d_cpu = asyncio.run(direct(direct_jobs))
        s, s_cpu = asyncio.run(service(service_jobs))
        print(f"   {label}")
        rows = (
            ("direct client call", d, d_cpu / len(d)),
            ("through the service", s, s_cpu / len(s)),
        )
        for name, values, per_image in rows:
            p50, p99 = percentile(values, 50) * 1e3, percentile(values, 99) * 1e3
            print(f"   {name:>26} {p50:8.1f} {p99:8.1f} {per_image * 1e3:13.2f}")
        added50 = (percentile(s, 50) - percentile(d, 50)) * 1e3
        added99 = (percentile(s, 99) - percentile(d, 99)) * 1e3
        print(f"   {'added by the service':>26} {added50:8.1f} {added99:8.1f}")
    print("   (CPU: the direct client's process, or the service's process, per image)")


def job_efficiency(
    url: str, service_url: str, service_pid: int, n: int, concurrency: int, latency: float
) -> None:
    print(f"2. a {n}-image /api/v2 job against BatchRemover.run, concurrency {concurrency}")
    direct_images = photos(n, offset=300_000)
    remover = BatchRemover(
        sink=MemorySink(),
        api_key=KEY,
        base_url=url,
        concurrency=concurrency,
        requests_per_minute=None,
        keep_results=False,
        track_credits=False,
    )
    started, cpu = time.perf_counter(), time.process_time()
    report = asyncio.run(remover.run(direct_images))
    direct = time.perf_counter() - started
    direct_cpu = time.process_time() - cpu
    assert report.succeeded_count == n, report

    service_images = photos(n, offset=400_000)
    files = [("files", (f"p{i}.png", image, "image/png")) for i, image in enumerate(service_images)]
    with httpx.Client(base_url=service_url, timeout=300) as http:
        started, cpu = time.perf_counter(), process_cpu(service_pid)
        answer = http.post("/api/v2/remove-backgrounds", files=files)
        answer.raise_for_status()
        job = answer.json()
        while True:
            status = http.get(job["status_url"], params={"limit": 1}).json()
            if status["status"] != "running":
                break
            time.sleep(0.5)
        through = time.perf_counter() - started
        service_cpu = process_cpu(service_pid) - cpu
    assert status["stored_count"] == n, status
    ideal = n * latency / concurrency
    print(f"   ideal (N x latency / concurrency): {ideal:6.2f} s")
    print(f"   BatchRemover.run directly:         {direct:6.2f} s  ({direct_cpu:6.2f} s CPU)")
    print(f"   /api/v2 job, upload to done:       {through:6.2f} s  ({service_cpu:6.2f} s CPU)")
    print(f"   efficiency direct / service:       {direct / through:6.3f}  (target >= 0.9)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.3, help="emulator latency, seconds")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=5, help="images per client")
    parser.add_argument("--images", type=int, default=2000, help="images in the v2 job")
    parser.add_argument("--concurrency", type=int, default=64, help="the v2 job's concurrency")
    parser.add_argument("--only", choices=["latency", "job"])
    args = parser.parse_args()
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("httpx", "httpcore", "anyio", "h11", "fastapi", "uvicorn")
    )
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(versions)
    print(f"emulator latency {args.latency * 1000:.0f} ms, each part in its own process")
    with emulator(args.latency) as url, service(url, args.concurrency, args.images) as (svc, pid):
        if args.only in (None, "latency"):
            added_latency(url, svc, pid, args.clients, args.requests)
        if args.only in (None, "job"):
            job_efficiency(url, svc, pid, args.images, args.concurrency, args.latency)


if __name__ == "__main__":
    main()
