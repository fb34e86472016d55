"""Measure BatchRemover against the emulator running in its own process.

Prints three ratios, each measured in this one run:

1. wall-time efficiency = ideal time (N x latency / concurrency) / measured time, for
   N = 2,000 at concurrency 8, 64 and 256 (a bare httpx loop is measured beside it, so the
   ceiling of this machine and emulator is visible too);
2. client CPU seconds per image, BatchRemover / a bare ``httpx.AsyncClient`` loop sending the
   same requests;
3. peak RSS of a whole batch process at N = 1,000 and N = 20,000 with the filesystem sink.

Usage::

    python benchmarks/batch.py                 # everything, as quoted in the docs
    python benchmarks/batch.py --latency 0.5   # another emulator latency
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from PIL import Image

from photoroom_bg import BatchRemover, MemorySink
from photoroom_bg.testing import DEFAULT_API_KEY

KEY = DEFAULT_API_KEY
# the SDK's own pool settings; a keep-alive pool as large as 256 costs httpcore ~16 ms of CPU
# per request (it scans every idle connection), so the bare loop would be an unfair floor
KEEPALIVE = 64


@contextmanager
def emulator(latency: float) -> Iterator[str]:
    """The emulator as a separate process on a free port, with fixed latency, no image work."""
    args = [sys.executable, "-m", "photoroom_bg.testing", "--port", "0", "--credits", "1e9"]
    args += ["--latency", f"{latency}s", "--no-image-work"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"(http://\S+)", line)
        if not match:
            raise RuntimeError(f"the emulator did not start: {line!r}")
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait()


def images(n: int, offset: int = 0) -> Iterator[bytes]:
    """``n`` distinct small PNGs, made on demand (a generator: nothing piles up)."""
    for i in range(offset, offset + n):
        image = Image.new("RGB", (16 + i % 64, 16 + i // 64 % 64), (i % 251, i // 251 % 251, 7))
        out = io.BytesIO()
        image.save(out, "PNG", compress_level=1)
        yield out.getvalue()


def sdk_batch(url: str, data: list[bytes], concurrency: int) -> float:
    batch = BatchRemover(
        sink=MemorySink(),
        api_key=KEY,
        base_url=url,
        concurrency=concurrency,
        requests_per_minute=None,
        skip_existing=False,
        keep_results=False,
    )
    started = time.perf_counter()
    report = asyncio.run(batch.run(data))
    elapsed = time.perf_counter() - started
    assert report.succeeded_count == len(data), report
    return elapsed


def bare_loop(url: str, data: list[bytes], concurrency: int) -> float:
    """What the same requests cost with nothing but httpx: the floor we compare with."""

    async def run() -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=KEEPALIVE)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            queue: asyncio.Queue[bytes] = asyncio.Queue()
            for item in data:
                queue.put_nowait(item)

            async def worker() -> None:
                while not queue.empty():
                    image = queue.get_nowait()
                    response = await client.post(
                        "/v1/segment",
                        headers={"x-api-key": KEY},
                        files={"image_file": ("image.png", image, "image/png")},
                    )
                    response.raise_for_status()
                    _ = response.content

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    started = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - started


def cpu(fn: object, *args: object) -> float:
    before = time.process_time()
    fn(*args)  # type: ignore[operator]
    return time.process_time() - before


def efficiency(latency: float, n: int, levels: list[int]) -> None:
    print(f"1. wall-time efficiency: N={n}, emulator latency {latency * 1000:.0f} ms")
    print(f"   {'concurrency':>11} {'ideal s':>8} {'sdk s':>7} {'sdk eff':>8} {'bare eff':>9}")
    data = list(images(n))
    with emulator(latency) as url:
        sdk_batch(url, data[:50], 8)  # warm up the emulator and the imports
        for concurrency in levels:
            ideal = n * latency / concurrency
            sdk = sdk_batch(url, data, concurrency)
            bare = bare_loop(url, data, concurrency)
            print(
                f"   {concurrency:>11} {ideal:>8.2f} {sdk:>7.2f} {ideal / sdk:>8.3f} "
                f"{ideal / bare:>9.3f}"
            )


def cpu_ratio(n: int) -> None:
    print(f"2. client CPU per image: N={n}, concurrency 64, emulator latency 0")
    data = list(images(n, offset=10**6))
    with emulator(0.0) as url:
        sdk_batch(url, data[:100], 64)
        bare_loop(url, data[:100], 64)
        sdk = min(cpu(sdk_batch, url, data, 64) for _ in range(3))
        bare = min(cpu(bare_loop, url, data, 64) for _ in range(3))
    print(f"   bare httpx loop: {bare / n * 1e3:.3f} ms CPU/image")
    print(f"   BatchRemover:    {sdk / n * 1e3:.3f} ms CPU/image")
    print(f"   ratio sdk/bare:  {sdk / bare:.2f}  (target <= 1.5)")


def rss_child(url: str, n: int, out: str, keep: int) -> None:
    """One whole batch in this process; print its peak RSS in KiB."""
    batch = BatchRemover(
        sink=out,
        api_key=KEY,
        base_url=url,
        concurrency=64,
        requests_per_minute=None,
        manifest=os.path.join(out, "manifest.jsonl"),
        keep_results=keep,
    )
    report = batch.submit(images(n, offset=2 * 10**6)).wait()
    assert report.succeeded_count == n, report
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def rss(small: int, large: int) -> None:
    print("3. peak RSS of a batch process, FileSystemSink + manifest, concurrency 64")
    with emulator(0.0) as url:
        for keep in (1000, 10_000):
            peaks = {}
            for n in (small, large):
                with tempfile.TemporaryDirectory() as out:
                    args = [sys.executable, __file__, "--rss-child", str(n), url, out, str(keep)]
                    run = subprocess.run(args, check=True, capture_output=True)
                    peaks[n] = int(run.stdout)
            sizes = ", ".join(f"N={n}: {kib / 1024:.1f} MiB" for n, kib in peaks.items())
            growth = peaks[large] / peaks[small] - 1
            print(f"   keep_results={keep:<6} {sizes}; growth {growth * 100:+.1f} %")
    print("   (target: growth < 10 %; keep_results=1000 is the default, ~1 KB per kept job)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.3, help="emulator latency, seconds")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[8, 64, 256], help="efficiency levels"
    )
    parser.add_argument("--n", type=int, default=2000, help="images per efficiency run")
    parser.add_argument("--rss-small", type=int, default=1000)
    parser.add_argument("--rss-large", type=int, default=20000)
    parser.add_argument("--only", choices=["efficiency", "cpu", "rss"], default=None)
    parser.add_argument("--rss-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        n, url, out, keep = args.rss_child
        rss_child(url, int(n), out, int(keep))
        return
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    if args.only in (None, "efficiency"):
        efficiency(args.latency, args.n, args.concurrency)
    if args.only in (None, "cpu"):
        cpu_ratio(args.n)
    if args.only in (None, "rss"):
        rss(args.rss_small, args.rss_large)


if __name__ == "__main__":
    main()
