"""Measure BatchRemover against the emulator running in its own process(es).

Every section prints ratios measured within the one run, next to a plain httpx loop sending
the same requests, so the ceiling of this machine and this emulator is visible too:

1. ``efficiency``: wall-time efficiency = ideal time (N x latency / concurrency) / measured
   time, for N = 2,000 at concurrency 8, 64 and 256, with the client's and the emulator's CPU
   (100 % = one core; an emulator near 100 % per process is what limits the run). BatchRemover
   runs as configured by default, then with ``track_credits=True`` (the balance read before
   and after the batch: two round trips that cost the same whatever N). The bare
   loop runs twice: on one httpx pool, and on the SDK's sharded pool (``--shards`` to try
   other shard counts);
2. ``cpu``: client CPU seconds per image at latency 0, BatchRemover / a bare loop (tiny
   synthetic PNGs, results kept in memory), on one pool and sharded; and both held to
   BatchRemover's default ``requests_per_minute=500`` (calls spread out over time cost more
   CPU each on a VM, so the paced pair is compared with each other, not with the unpaced),
   with the TCP connections each one opened (a few calls at a time reuse a few connections);
3. ``rss``: peak RSS of a whole batch process at N = 1,000 and N = 20,000 (filesystem sink);
4. ``photos``: client CPU per image with real photos (``examples/images`` cut into 64-128 px
   crops, and full-size copies), read from files and stored as files, BatchRemover / a hand
   loop on the SDK's sharded pool, at concurrency 8 and 64, against an emulator doing real
   image work; the hand loop runs three ways: plain, storing durably as the file-system sink
   does (temporary file, fsync, rename, folder fsync), and durably with each file's sha-256
   stamped on it as the sink's default does (``hashed``); the runners take turns, run after
   run, and each ratio is the median of the runs' own ratios (``--repeat`` runs: on a VM,
   single runs of the same code vary by a quarter). The files go to the system's temporary
   folder, or ``--photo-dir`` (``/dev/shm``: the client's CPU without the disk's);
   ``--no-checksums`` stores the batch's cut-outs without their sha-256
   (``FileSystemSink(checksums=False)``), as the plain and durable loops do, and
   ``--not-durable`` without fsyncs (``FileSystemSink(durable=False)``), as the plain loop
   does;
5. ``faults``: sporadic faults (about 20 %: 429 and 503 with ``Retry-After: 1``, 500, 502,
   resets, truncations) and a server-side rate limit, BatchRemover / a plain loop with one
   shared ``httpx.AsyncClient``, a semaphore and 5 retries honouring ``Retry-After``: wall time
   ratio and the 429s each one met;
6. ``threads``: CPU per blocking call run off the event loop, ``asyncio.to_thread`` against
   the worker threads that read and store files for the batch, from 1, 8 and 64 tasks at once;
7. ``instructions`` (only when asked for, and with valgrind installed): the instructions the
   client process runs per image with the photos of section 4, counted by valgrind's
   callgrind, which does not drift with the machine as CPU time does: the hand loops of
   section 4, BatchRemover storing as the plain loop stores, and with its defaults;
   each runner runs over 50 and over 200 photos (``--counted``), and the difference is
   divided by 150, so start-up cancels. The share of libcrypto (sha-256) is shown apart,
   with what a sha-256 costs natively: under valgrind it runs without the CPU's SHA
   instructions.

The first line gives the versions of everything on the hot path (Python, httpx, httpcore,
anyio, h11, sniffio; uvicorn and starlette serve the emulator), the CPUs this process may use
and the load average, so that a quoted number can be reproduced. On a shared machine pin the
run and lower the others' share of it, and run each configuration twice::

    python benchmarks/batch.py                          # sections 1, 2 and 3
    python benchmarks/batch.py --only photos faults threads   # the others
    python benchmarks/batch.py --only photos --photo-dir /dev/shm --no-checksums
    python benchmarks/batch.py --only photos --no-checksums --not-durable
    python benchmarks/batch.py --only instructions --photo-dir /dev/shm
    python benchmarks/batch.py --only efficiency --latency 1.0 --concurrency 64 256
    python benchmarks/batch.py --only efficiency --emulator-workers 2
    python benchmarks/batch.py --only efficiency --concurrency 64 256 --shards 2 4 8 16 32
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import random
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from photoroom_bg import BatchRemover, FileSystemSink, MemorySink, _threads
from photoroom_bg._pool import ShardedTransport
from photoroom_bg.testing import DEFAULT_API_KEY

KEY = DEFAULT_API_KEY
ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "examples" / "images"
# one httpx pool's keep-alive share: httpcore counts idle connections in quadratic time, so a
# keep-alive pool as large as 256 would make the one-pool loop an unfair floor
KEEPALIVE = 64
HOT_PATH = ("httpx", "httpcore", "anyio", "h11", "sniffio", "uvicorn", "starlette")
# section 2's paced run: BatchRemover's default budget, and the images it paces
PACED_RPM, PACED_N = 500, 200
# about 20 % of segment requests fail, in the ways real networks and servers fail
SPORADIC = {"429": 0.06, "503": 0.04, "500": 0.03, "502": 0.03, "reset": 0.02, "truncate": 0.02}
RETRIED = {408, 429, 500, 502, 503, 504}


def environment() -> str:
    """One line: the versions on the hot path, the CPUs we may use and the load average."""
    names = []
    for name in HOT_PATH:
        try:
            names.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            names.append(f"{name} -")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    # wrapped to 84 columns, so that the output can be quoted as it is
    text = f"python {sys.version.split()[0]}, {', '.join(names)}; "
    text += f"{os.cpu_count()} CPUs ({usable} usable), load average {load}"
    return "\n".join(textwrap.wrap(text, 84, break_on_hyphens=False))


# --- the emulator, in processes of its own -------------------------------------------------


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Emulator:
    """The Photoroom emulator in ``workers`` processes sharing one loopback port.

    Each process has its own ledger and rate-limit window (``SO_REUSEPORT`` spreads the
    connections), so a server-side rate limit is only exact with one worker. ``statuses``
    and ``faults`` (of ``/v1/segment`` requests) and ``connections`` (TCP connections the
    clients opened, told apart by their address and port) are filled in when the block ends.
    """

    def __init__(
        self,
        latency: float,
        *,
        workers: int = 1,
        rpm: int | None = None,
        faults: dict[str, float] | None = None,
        image_work: bool = False,
        seed: int = 0,
    ) -> None:
        self.seed = seed
        self.config: dict[str, Any] = {
            "latency": latency,
            "rpm": rpm,
            "faults": faults or {},
            "image_work": image_work,
        }
        self.workers = workers
        self.procs: list[subprocess.Popen[str]] = []
        self.url = ""
        self.statuses: Counter[int] = Counter()
        self.faults: Counter[str] = Counter()
        self.connections = 0

    def __enter__(self) -> Emulator:
        reserve = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserve.bind(("127.0.0.1", 0))  # bound, never listening: takes no connections
        port = reserve.getsockname()[1]
        try:
            for worker in range(self.workers):
                config = {**self.config, "port": port, "seed": self.seed + worker}
                args = [sys.executable, __file__, "--emulator-child", json.dumps(config)]
                proc = subprocess.Popen(
                    args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
                self.procs.append(proc)
            for proc in self.procs:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if not line.startswith("listening"):
                    raise RuntimeError(f"the emulator did not start: {line!r}")
        except BaseException:
            self.__exit__()
            raise
        finally:
            reserve.close()
        self.url = f"http://127.0.0.1:{port}"
        asyncio.run(self._warm_up())
        return self

    async def _warm_up(self) -> None:
        # unknown key: a 403 before the rate limit counts it or a fault is drawn
        async with httpx.AsyncClient(base_url=self.url) as client:
            for _ in range(4 * self.workers):
                await client.get("/v1/account", headers={"x-api-key": "warm-up"})

    def cpu(self) -> float:
        """CPU seconds used so far by all emulator processes."""
        return sum(_proc_cpu(proc.pid) for proc in self.procs)

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()  # end of input: the child stops and reports
        for proc in self.procs:
            out = proc.stdout.read() if proc.stdout is not None else ""
            proc.wait(timeout=60)
            for line in out.splitlines():
                if line.startswith("{"):
                    stats = json.loads(line)
                    self.statuses.update({int(k): v for k, v in stats["statuses"].items()})
                    self.faults.update(stats["faults"])
                    self.connections += stats["connections"]
        self.procs.clear()


def emulator_child(config: dict[str, Any]) -> None:
    """Serve the emulator on ``config["port"]`` (shared with ``SO_REUSEPORT``) until stdin
    closes; then print what ``/v1/segment`` answered, as JSON."""
    from photoroom_bg.testing import Faults, PhotoroomEmulator, _app, _server

    def shared_socket(host: str, port: int) -> socket.socket:
        # as the emulator's own listen_socket (IPPROTO_TCP, so that asyncio turns Nagle's
        # algorithm off), plus a port shared by every worker
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        return sock

    _server.listen_socket = shared_socket
    clients: set[tuple[str, int]] = set()  # one address and port per connection
    serve = _app.EmulatorApp.__call__

    async def counting(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("client"):
            clients.add(tuple(scope["client"]))
        await serve(self, scope, receive, send)

    _app.EmulatorApp.__call__ = counting  # type: ignore[method-assign]
    emulator = PhotoroomEmulator(
        credits=1e9,
        requests_per_minute=config["rpm"],
        faults=Faults(
            latency=config["latency"],
            rates=config["faults"],
            paths=("/v1/segment",),
            seed=config["seed"],
        ),
        image_work=config["image_work"],
    )
    with emulator.serve("127.0.0.1", config["port"]):
        print("listening", flush=True)
        sys.stdin.read()
    segment = [r for r in emulator.requests if r.path == "/v1/segment"]
    statuses = Counter(str(r.status) for r in segment if r.fault is None)
    faults = Counter(r.fault for r in segment if r.fault is not None)
    stats = {"statuses": statuses, "faults": faults, "connections": len(clients)}
    print(json.dumps(stats), flush=True)


# --- inputs ----------------------------------------------------------------------------------


def images(n: int, offset: int = 0) -> Iterator[bytes]:
    """``n`` distinct small PNGs, made on demand (a generator: nothing piles up)."""
    for i in range(offset, offset + n):
        image = Image.new("RGB", (16 + i % 64, 16 + i // 64 % 64), (i % 251, i // 251 % 251, 7))
        out = io.BytesIO()
        image.save(out, "PNG", compress_level=1)
        yield out.getvalue()


def photo_files(folder: Path, n: int, full_size: bool, seed: int = 0) -> list[Path]:
    """``n`` distinct JPEG files in ``folder`` made from the example photos: random 64-128 px
    crops, or full-size copies (each with one pixel changed). Each file also carries its
    number in a JPEG comment: the encoder's quantization can undo a one-pixel change, and
    two files alike would let the batch store a copy of the first cut-out where the hand
    loops pay for a second one (16 of 400 full-size copies were alike before)."""
    rng = random.Random(seed)
    sources = [Image.open(p).convert("RGB") for p in sorted(PHOTOS.glob("*.jpg"))]
    paths = []
    for i in range(n):
        photo = sources[i % len(sources)]
        if full_size:
            image = photo.copy()
            image.putpixel((i // len(sources) % image.width, 0), (i % 256, i // 256 % 256, 0))
        else:
            w, h = rng.randint(64, 128), rng.randint(64, 128)
            x, y = rng.randint(0, photo.width - w), rng.randint(0, photo.height - h)
            image = photo.crop((x, y, x + w, y + h))
        path = folder / f"photo-{i:05d}.jpg"
        image.save(path, "JPEG", quality=90, comment=f"photo {i}".encode())
        paths.append(path)
    distinct = {hashlib.sha256(path.read_bytes()).digest() for path in paths}
    assert len(distinct) == n, f"{n - len(distinct)} of the {n} photos are alike"
    return paths


# --- what is measured ------------------------------------------------------------------------


def http_client(url: str, concurrency: int, pool: str) -> httpx.AsyncClient:
    """The loops' one shared client: ``pool`` is ``"1 pool"`` (one httpx pool, as httpx makes
    it), ``"sharded"`` (the SDK's :class:`ShardedTransport`) or ``"<k> shards"``."""
    if pool == "1 pool":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=KEEPALIVE)
        return httpx.AsyncClient(base_url=url, limits=limits, timeout=60)
    shards = None if pool == "sharded" else int(pool.split()[0])
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    transport = ShardedTransport(limits, shards=shards)
    return httpx.AsyncClient(base_url=url, transport=transport, timeout=60)


def sdk_batch(
    url: str,
    data: Sequence[bytes] | Sequence[Path],
    concurrency: int,
    *,
    sink: Any = None,
    requests_per_minute: float | None = None,
    track_credits: bool = False,
) -> tuple[float, Any]:
    """One BatchRemover run; its wall time and report."""
    batch = BatchRemover(
        sink=sink if sink is not None else MemorySink(),
        api_key=KEY,
        base_url=url,
        concurrency=concurrency,
        requests_per_minute=requests_per_minute,
        skip_existing=sink is not None,
        keep_results=False,
        track_credits=track_credits,
    )
    started = time.perf_counter()
    report = asyncio.run(batch.run(list(data)))
    return time.perf_counter() - started, report


def bare_loop(
    url: str,
    data: Sequence[bytes],
    concurrency: int,
    pool: str = "1 pool",
    requests_per_minute: float | None = None,
) -> float:
    """What the same requests cost with nothing but httpx: the floor we compare with
    (``requests_per_minute``: evenly spaced, each request sleeping once until its turn)."""

    async def run() -> None:
        async with http_client(url, concurrency, pool) as client:
            queue: asyncio.Queue[bytes] = asyncio.Queue()
            for item in data:
                queue.put_nowait(item)
            loop = asyncio.get_running_loop()
            next_turn = loop.time()

            async def worker() -> None:
                nonlocal next_turn
                while not queue.empty():
                    image = queue.get_nowait()
                    if requests_per_minute:
                        now = loop.time()
                        turn = max(next_turn, now)
                        next_turn = turn + 60 / requests_per_minute
                        await asyncio.sleep(turn - now)
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


#: Where the hashed hand loop stamps each file's sha-256 (the sink's stamp is as long).
LOOP_XATTR = "user.benchmark.sha256"


def durable_write(target: Path, data: bytes, hashed: bool = False) -> None:
    """Store ``data`` as the file-system sink does: a temporary file beside the target,
    fsynced, renamed over it, and the folder fsynced (so it survives a power cut);
    ``hashed``: with its sha-256, size and time stamped on the file first, as the sink's
    default (``checksums=True``) stamps them, so that a reader gets them without reading."""
    temp = target.with_name(f".{target.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if hashed:
            info = os.fstat(fd)
            stamp = hashlib.sha256(data).digest() + struct.pack(
                "<qq", info.st_size, info.st_mtime_ns
            )
            with contextlib.suppress(OSError):  # as the sink: no user attributes there
                os.setxattr(fd, LOOP_XATTR, stamp)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, target)
    folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def hand_loop(
    url: str,
    paths: Sequence[Path],
    concurrency: int,
    out: Path,
    pool: str = "1 pool",
    durable: bool = False,
    hashed: bool = False,
) -> int:
    """What a user writes by hand: read each file, post it, store the cut-out as a file
    (``durable``: as :func:`durable_write` does, ``hashed`` or not). Returns the number of
    images stored."""

    async def run() -> int:
        stored = 0
        async with http_client(url, concurrency, pool) as client:
            queue: asyncio.Queue[Path] = asyncio.Queue()
            for path in paths:
                queue.put_nowait(path)

            async def worker() -> None:
                nonlocal stored
                while not queue.empty():
                    path = queue.get_nowait()
                    response = await client.post(
                        "/v1/segment",
                        headers={"x-api-key": KEY},
                        files={"image_file": (path.name, path.read_bytes(), "image/jpeg")},
                    )
                    response.raise_for_status()
                    target = out / f"{path.stem}.png"
                    if durable:
                        durable_write(target, response.content, hashed)
                    else:
                        target.write_bytes(response.content)
                    stored += 1

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return stored

    return asyncio.run(run())


def sharded_loop(runner: str, url: str, paths: Sequence[Path], concurrency: int, out: Path) -> int:
    """:func:`hand_loop` on the sharded pool as sections 4 and 7 name it: ``"sharded"``
    (plain), ``"durable"`` or ``"hashed"`` (durable, with each file's sha-256 stamped)."""
    durable, hashed = runner != "sharded", runner == "hashed"
    return hand_loop(url, paths, concurrency, out, "sharded", durable=durable, hashed=hashed)


def retry_loop(url: str, data: Sequence[bytes], concurrency: int, retries: int = 5) -> int:
    """A plain loop: one shared client, a semaphore, ``retries`` retries per request on
    429, 5xx and transport errors, sleeping ``Retry-After`` when given (else exponential
    backoff with full jitter). Returns the number of images that came back."""

    async def run() -> int:
        semaphore = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:

            async def one(image: bytes) -> bool:
                async with semaphore:
                    for attempt in range(retries + 1):
                        delay = 0.5 * 2**attempt * random.random()
                        try:
                            response = await client.post(
                                "/v1/segment",
                                headers={"x-api-key": KEY},
                                files={"image_file": ("image.png", image, "image/png")},
                            )
                        except httpx.TransportError:
                            pass
                        else:
                            if response.is_success:
                                return True
                            if response.status_code not in RETRIED:
                                return False
                            if "retry-after" in response.headers:
                                delay = float(response.headers["retry-after"])
                        if attempt < retries:
                            await asyncio.sleep(delay)
                    return False

            return sum(await asyncio.gather(*(one(image) for image in data)))

    return asyncio.run(run())


def cpu(fn: Callable[..., object], *args: object, **kwargs: object) -> float:
    before = time.process_time()
    fn(*args, **kwargs)
    return time.process_time() - before


# --- the sections ----------------------------------------------------------------------------


def efficiency(latency: float, n: int, levels: list[int], workers: int, pools: list[str]) -> None:
    processes = f"{workers} emulator process{'es' if workers > 1 else ''}"
    print(f"1. wall-time efficiency: N={n}, emulator latency {latency * 1000:.0f} ms, {processes}")
    print(
        f"   {'concurrency':>11}  {'':<22} {'wall s':>7} {'efficiency':>10} "
        f"{'client CPU':>10} {'emulator CPU':>12}"
    )
    data = list(images(n))
    runners: list[tuple[str, Callable[[str, list[bytes], int], float]]] = [
        ("BatchRemover", lambda url, d, c: sdk_batch(url, d, c)[0]),
        ("  track_credits=True", lambda url, d, c: sdk_batch(url, d, c, track_credits=True)[0]),
        *((f"bare loop, {pool}", _bare(pool)) for pool in ["1 pool", *pools]),
    ]
    with Emulator(latency, workers=workers) as emu:
        sdk_batch(emu.url, data[:50], 8)  # warm up the emulator and the imports
        for concurrency in levels:
            ideal = n * latency / concurrency
            print(f"   {concurrency:>11}  {'ideal':<22} {ideal:>7.2f}")
            for name, runner in runners:
                emu_before, cpu_before = emu.cpu(), time.process_time()
                wall = runner(emu.url, data, concurrency)
                client_cpu = time.process_time() - cpu_before
                emu_cpu = emu.cpu() - emu_before
                print(
                    f"   {concurrency:>11}  {name:<22} {wall:>7.2f} {ideal / wall:>10.3f} "
                    f"{client_cpu / wall:>9.0%} {emu_cpu / wall:>12.0%}"
                )


def _bare(pool: str) -> Callable[[str, list[bytes], int], float]:
    return lambda url, data, concurrency: bare_loop(url, data, concurrency, pool)


def cpu_ratio(n: int) -> None:
    print(f"2. client CPU per image: N={n}, concurrency 64, emulator latency 0")
    data = list(images(n, offset=10**6))
    with Emulator(0.0) as emu:
        sdk_batch(emu.url, data[:100], 64)
        bare_loop(emu.url, data[:100], 64)
        sdk = min(cpu(sdk_batch, emu.url, data, 64) for _ in range(3))
        bare = {
            pool: min(cpu(bare_loop, emu.url, data, 64, pool) for _ in range(3))
            for pool in ("1 pool", "sharded")
        }
    # the same batch held to a requests-per-minute budget: waiting for it costs CPU too; an
    # emulator each, to count the connections opened (a few calls at a time should reuse a few)
    paced_n = min(n, PACED_N)
    with Emulator(0.0) as emu:
        paced = cpu(sdk_batch, emu.url, data[:paced_n], 64, requests_per_minute=PACED_RPM)
    with Emulator(0.0) as emu_bare:
        paced_bare = cpu(
            bare_loop, emu_bare.url, data[:paced_n], 64, "sharded", requests_per_minute=PACED_RPM
        )
    for pool, seconds in bare.items():
        print(f"   bare httpx loop, {pool + ':':<9} {seconds / n * 1e3:.3f} ms CPU/image")
    print(f"   BatchRemover:              {sdk / n * 1e3:.3f} ms CPU/image")
    ratios = ", ".join(f"{sdk / seconds:.2f} ({pool})" for pool, seconds in bare.items())
    print(f"   ratio sdk/bare: {ratios}  (target <= 1.5)")
    print(
        f"   held to requests_per_minute={PACED_RPM} (the default), N={paced_n}, ms CPU/image:\n"
        f"   BatchRemover {paced / paced_n * 1e3:.3f}, bare loop (sharded, one sleep per turn) "
        f"{paced_bare / paced_n * 1e3:.3f}, ratio {paced / paced_bare:.2f}\n"
        f"   connections opened: BatchRemover {emu.connections}, bare loop {emu_bare.connections}"
    )


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
    with Emulator(0.0) as emu:
        for keep in (1000, 10_000):
            peaks = {}
            for n in (small, large):
                with tempfile.TemporaryDirectory() as out:
                    args = [sys.executable, __file__, "--rss-child", str(n), emu.url, out]
                    run = subprocess.run([*args, str(keep)], check=True, capture_output=True)
                    peaks[n] = int(run.stdout)
            sizes = ", ".join(f"N={n}: {kib / 1024:.1f} MiB" for n, kib in peaks.items())
            growth = peaks[large] / peaks[small] - 1
            print(f"   keep_results={keep:<6} {sizes}; growth {growth * 100:+.1f} %")
    print("   (target: growth < 10 %; keep_results=1000 is the default, ~1 KB per kept job)")


def photos(
    crops: int,
    full: int,
    levels: list[int],
    repeat: int,
    photo_dir: str | None = None,
    checksums: bool = True,
    durable: bool = True,
) -> None:
    """Section 4; ``photo_dir``: where the photos and the outputs go (default: the system's
    temporary folder); ``checksums``, ``durable``: how the batch's file-system sink stores."""
    print(
        "4. client CPU per image with real photos, read from files and stored as files,\n"
        "   emulator latency 0 with image work (crops: random 64-128 px pieces of them;\n"
        "   full: the whole photos)"
    )
    where = photo_dir or tempfile.gettempdir()
    print(f"   files in {where} ({file_system(where)})")
    print(f"   BatchRemover's sink: FileSystemSink(checksums={checksums}, durable={durable})")
    print(
        f"   {'':<10} {'':>5}  {'hand loop, ms/image':<23} {'batch':>6}  "
        f"{'ratio, batch / loop':<22} {'folder':>6}"
    )
    print(
        f"   {'images':<10} {'conc.':>5}  {'sharded':>7} {'durable':>7} {'hashed':>7} "
        f"{'ms':>6}  {'sharded':>7} {'durable':>7} {'hashed':>6} {'fsyncs':>6}"
    )
    runners = ("sharded", "durable", "hashed", "sdk")
    spread: list[str] = []
    folder_syncs = count_folder_fsyncs()
    with tempfile.TemporaryDirectory(dir=photo_dir) as tmp, Emulator(0.0, image_work=True) as emu:
        kinds = ((f"{crops} crops", crops, False), (f"{full} full", full, True))
        for label, n, full_size in kinds:
            folder = Path(tmp, "full" if full_size else "crops")
            folder.mkdir()
            paths = photo_files(folder, n, full_size)
            for concurrency in levels:
                runs: list[dict[str, float]] = []  # ms per image of each runner, run by run
                folder_syncs.clear()
                for attempt in range(repeat + 1):  # the first one warms up
                    # each attempt in another order: what one run leaves the file system
                    # to do (writing back, the inode allocator's state) is not always
                    # paid by the same runner
                    shift = attempt % len(runners)
                    used: dict[str, float] = {}
                    for runner in runners[shift:] + runners[:shift]:
                        out = Path(tmp, f"{runner}-{full_size}-{concurrency}-{attempt}")
                        out.mkdir()
                        before = time.process_time()
                        if runner == "sdk":
                            sink = FileSystemSink(out, checksums=checksums, durable=durable)
                            _, report = sdk_batch(emu.url, paths, concurrency, sink=sink)
                            assert report.succeeded_count == n, report
                            assert report.billed_calls == n, report  # no copies: all paid
                        else:
                            stored = sharded_loop(runner, emu.url, paths, concurrency, out)
                            assert stored == n
                        used[runner] = (time.process_time() - before) / n * 1e3
                    if attempt:
                        runs.append(used)
                medians = [statistics.median(run[runner] for run in runs) for runner in runners]
                # each run's own ratio: the machine's drift over the runs cancels out
                ratios = [[run["sdk"] / run[loop] for run in runs] for loop in runners[:3]]
                syncs = len(folder_syncs) / n / (repeat + 1)
                print(
                    f"   {label:<10} {concurrency:>5}  {medians[0]:>7.2f} {medians[1]:>7.2f} "
                    f"{medians[2]:>7.2f} {medians[3]:>6.2f}  "
                    f"{statistics.median(ratios[0]):>7.2f} {statistics.median(ratios[1]):>7.2f} "
                    f"{statistics.median(ratios[2]):>6.2f} {syncs:>6.2f}"
                )
                spread.append(
                    f"   {label} at {concurrency}: "
                    + " / ".join(" ".join(f"{r:.2f}" for r in sorted(each)) for each in ratios)
                )
    print(
        f"   (ms of client CPU per image, the median of {repeat} runs after a warm-up;\n"
        "   durable: the sharded loop storing as the file-system sink does, temporary\n"
        "   file, fsync, rename, folder fsync; hashed: the durable loop stamping each\n"
        "   file with its sha-256 too, as the sink does by default; ratio: the median of\n"
        "   BatchRemover / that loop in each run; the runners take turns in a rotating\n"
        "   order; folder fsyncs: the sink's, per image stored, shared by the puts that\n"
        "   rename in the same turn of the loop)\n"
        "   each run's ratio to the sharded / the durable / the hashed loop, least first:"
    )
    print("\n".join(spread))


def file_system(folder: str) -> str:
    """The type of the file system ``folder`` is on (Linux), else ``"?"``."""
    folder = os.path.realpath(folder)  # a relative path or a symlink names its mount too
    best, kind = "", "?"
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                parts = line.split()
                mount = parts[1].replace("\\040", " ")
                inside = folder == mount or folder.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) > len(best):
                    best, kind = mount, parts[2]
    except OSError:
        pass
    return kind


def count_folder_fsyncs() -> list[object]:
    """A list that gets an item for each fsync of a folder by :class:`FileSystemSink`."""
    from photoroom_bg.sinks import _filesystem

    synced: list[object] = []
    fsync_dir = _filesystem._fsync_dir

    def counted(folder: Any) -> None:
        synced.append(folder)
        fsync_dir(folder)

    _filesystem._fsync_dir = counted
    return synced


def thread_calls(n: int, repeat: int) -> None:
    print(
        f"6. CPU per blocking call run off the event loop: {n} calls of os.stat made by\n"
        "   1, 8 or 64 tasks at once (as a batch reads and stores files)"
    )
    print(f"   {'tasks':>8} {'asyncio.to_thread':>18} {'worker threads':>15} {'ratio':>6}")
    folder = tempfile.gettempdir()

    async def calls(runner: Callable[..., Any], tasks: int) -> None:
        async def one() -> None:
            for _ in range(n // tasks):
                await runner(os.stat, folder)

        await asyncio.gather(*(one() for _ in range(tasks)))

    for tasks in (1, 8, 64):
        used = {
            name: min(cpu(asyncio.run, calls(runner, tasks)) for _ in range(repeat + 1))
            for name, runner in (("to_thread", asyncio.to_thread), ("ours", _threads.run_sync))
        }
        theirs, ours = (used[k] / n * 1e6 for k in ("to_thread", "ours"))
        print(f"   {tasks:>8} {theirs:>15.1f} us {ours:>12.1f} us {ours / theirs:>6.2f}")
    print(f"   (us of CPU per call, the least of {repeat + 1} runs; ratio: ours / to_thread)")


#: Section 7 runs each runner at this concurrency only (the instructions hardly depend on it).
CONCURRENCY_COUNTED = 8


#: Section 7's runners: what runs in the measured process, and how the table names it.
COUNTED = {
    "sharded": "hand loop, sharded",
    "durable": "hand loop, durable",
    "hashed": "hand loop, durable, hashed",
    "sdk-plain": "batch, stored as the loop",
    "sdk": "batch, defaults",
}


def counted_child(runner: str, url: str, n: int, folder: str, out: str) -> None:
    """Section 7's measured process: one runner over the first ``n`` photos in ``folder``."""
    paths = sorted(Path(folder).glob("*.jpg"))[:n]
    if runner.startswith("sdk"):
        plain = runner == "sdk-plain"
        sink = FileSystemSink(out, checksums=not plain, durable=not plain)
        _, report = sdk_batch(url, paths, CONCURRENCY_COUNTED, sink=sink)
        assert report.succeeded_count == report.billed_calls == n, report
    else:
        stored = sharded_loop(runner, url, paths, CONCURRENCY_COUNTED, Path(out))
        assert stored == n


def callgrind(runner: str, url: str, n: int, folder: Path, out: Path) -> Counter[str]:
    """Instructions run by a process of ``runner`` over ``n`` photos, under callgrind: the
    total (``""``) and by shared object."""
    data = out.with_suffix(".callgrind")
    args = [sys.executable, __file__, "--counted-child", runner, url, str(n), str(folder)]
    command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={data}", *args, str(out)]
    ran = subprocess.run(command, capture_output=True, text=True)
    if ran.returncode:
        raise RuntimeError(f"{runner} under callgrind failed:\n{ran.stderr[-2000:]}")
    table = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", str(data)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    data.unlink()
    counts: Counter[str] = Counter()
    for line in table.splitlines():
        count, _, rest = line.strip().partition(" ")
        if not count[:1].isdigit():
            continue
        if rest.endswith("PROGRAM TOTALS"):
            counts[""] = int(count.replace(",", ""))
        elif rest.endswith("]"):
            counts[Path(rest[rest.rindex("[") + 1 : -1]).name] += int(count.replace(",", ""))
    return counts


def instructions(sizes: list[int], photo_dir: str | None) -> None:
    """Section 7: instructions per image, under valgrind's callgrind."""
    small, large = sorted(sizes)
    if small == large:
        raise SystemExit("--counted takes two different numbers of images")
    print(
        f"7. client instructions per image with real photos (valgrind's callgrind, the\n"
        f"   client process only; a run of {large} images less one of {small}, so start-up\n"
        f"   cancels), concurrency {CONCURRENCY_COUNTED}, emulator latency 0 with image work"
    )
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        print("   skipped: valgrind is not installed (e.g. apt install valgrind)")
        return
    version_line = subprocess.run(["valgrind", "--version"], capture_output=True, text=True)
    print(f"   {version_line.stdout.strip()}")
    hashing: dict[str, list[float]] = {"input": [], "cut-out": []}
    with tempfile.TemporaryDirectory(dir=photo_dir) as tmp, Emulator(0.0, image_work=True) as emu:
        for label, full_size in (("crops", False), ("full", True)):
            folder = Path(tmp, label)
            folder.mkdir()
            paths = photo_files(folder, large, full_size)
            print(
                f"   {label:<26} {'M instructions':>14} {'libcrypto':>10} "
                f"{'ratio to the sharded loop':>26}"
            )
            print(
                f"   {'':<26} {'per image':>14} {'(sha-256)':>10} {'all':>12} {'w/o libcrypto':>13}"
            )
            per_image: dict[str, tuple[float, float]] = {}
            for runner, name in COUNTED.items():
                runs = []
                for n in (small, large):
                    out = Path(tmp, f"{label}-{runner}-{n}")
                    out.mkdir()
                    runs.append(callgrind(runner, emu.url, n, folder, out))
                total = (runs[1][""] - runs[0][""]) / (large - small)
                crypto = sum(
                    runs[1][lib] - runs[0][lib] for lib in runs[1] if lib.startswith("libcrypto")
                ) / (large - small)
                per_image[runner] = total, crypto
                loop_total, loop_crypto = per_image["sharded"]
                print(
                    f"   {name:<26} {total / 1e6:>14.2f} {crypto / 1e6:>10.2f} "
                    f"{total / loop_total:>12.2f} "
                    f"{(total - crypto) / (loop_total - loop_crypto):>13.2f}"
                )
            outputs = sorted(Path(tmp, f"{label}-durable-{large}").glob("*.png"))
            for kind, files in (("input", paths), ("cut-out", outputs)):
                data = [path.read_bytes() for path in files[:50]]
                started = time.perf_counter()
                for _ in range(20):
                    for item in data:
                        hashlib.sha256(item).digest()
                hashing[kind].append((time.perf_counter() - started) / 20 / len(data) * 1e6)
    crops_in, full_in = hashing["input"]
    crops_out, full_out = hashing["cut-out"]
    print(
        "   (libcrypto: the sha-256 of each input, which names its output, and with the\n"
        "   default sink of each cut-out; callgrind's CPU has no SHA instructions, so there\n"
        "   it costs several times what it costs natively: here, without valgrind, the\n"
        f"   sha-256 of an input takes {crops_in:.1f} us (crops) and {full_in:.1f} us (full), "
        f"of a\n   cut-out {crops_out:.1f} us and {full_out:.1f} us)"
    )


def faults(n: int, concurrency: int, latency: float, rate_n: int, rpm: int, repeat: int) -> None:
    mix = ", ".join(f"{name} {p:.0%}" for name, p in SPORADIC.items())
    print(
        f"5a. sporadic faults: N={n}, concurrency {concurrency}, emulator latency "
        f"{latency * 1000:.0f} ms,\n    {sum(SPORADIC.values()):.0%} of requests fail "
        f"({mix}),\n    Retry-After: 1"
    )
    fault_runs(n, concurrency, repeat, dict(latency=latency, faults=SPORADIC), [None])
    print(
        f"5b. server rate limit: N={rate_n}, concurrency {concurrency}, latency "
        f"{latency * 1000:.0f} ms,\n    the emulator allows {rpm} requests a minute per key "
        "(sliding window)"
    )
    fault_runs(rate_n, concurrency, repeat, dict(latency=latency, rpm=rpm), [None, rpm])


def fault_runs(
    n: int,
    concurrency: int,
    repeat: int,
    emulator: dict[str, Any],
    budgets: list[int | None],
) -> None:
    print(f"   {'':<40} {'wall s':>7} {'stored':>7} {'429s':>6} {'other faults':>13}")
    data = list(images(n, offset=3 * 10**6))
    for attempt in range(repeat):
        rows: list[tuple[str, float, int, Counter[int], Counter[str]]] = []
        runs: list[tuple[str, Callable[[str], int]]] = [
            ("plain retry loop", lambda url: retry_loop(url, data, concurrency))
        ]
        for budget in budgets:
            name = f"BatchRemover, requests_per_minute={budget}"

            def run(url: str, budget: int | None = budget) -> int:
                _, report = sdk_batch(
                    url, data, concurrency, requests_per_minute=budget, track_credits=False
                )
                return int(report.succeeded_count)

            runs.append((name, run))
        for name, runner in runs:
            with Emulator(seed=attempt, **emulator) as emu:
                started = time.perf_counter()
                stored = runner(emu.url)
                wall = time.perf_counter() - started
            rows.append((name, wall, stored, emu.statuses, emu.faults))
        loop_wall, loop_429 = rows[0][1], rows[0][3][429] + rows[0][4]["429"]
        for name, wall, stored, statuses, injected in rows:
            met = statuses[429] + injected["429"]
            other = sum(injected.values()) - injected["429"]
            print(f"   {name:<40} {wall:>7.1f} {stored:>7} {met:>6} {other:>13}")
        for name, wall, _, statuses, injected in rows[1:]:
            met = statuses[429] + injected["429"]
            print(
                f"   run {attempt + 1}: {name} / loop:\n"
                f"      wall time {wall / loop_wall:.2f}x, 429s {met} vs {loop_429}"
            )


def main() -> None:
    sections = ["efficiency", "cpu", "rss", "photos", "faults", "threads", "instructions"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.3, help="emulator latency, seconds")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[8, 64, 256], help="efficiency levels"
    )
    parser.add_argument("--n", type=int, default=2000, help="images per efficiency run")
    parser.add_argument(
        "--emulator-workers", type=int, default=1, help="emulator processes (efficiency)"
    )
    parser.add_argument(
        "--shards",
        type=int,
        nargs="+",
        default=None,
        help="shard counts of the sharded bare loop (default: ShardedTransport's own)",
    )
    parser.add_argument("--rss-small", type=int, default=1000)
    parser.add_argument("--rss-large", type=int, default=20000)
    parser.add_argument("--photo-crops", type=int, default=2000, help="crops per photo run")
    parser.add_argument("--photo-full", type=int, default=400, help="full-size photos per run")
    parser.add_argument(
        "--photo-concurrency", type=int, nargs="+", default=[8, 64], help="photo levels"
    )
    parser.add_argument(
        "--photo-dir", default=None, help="where section 4's files go (e.g. /dev/shm)"
    )
    parser.add_argument(
        "--no-checksums",
        action="store_true",
        help="section 4: the batch's sink stores without sha-256 (checksums=False)",
    )
    parser.add_argument(
        "--not-durable",
        action="store_true",
        help="section 4: the batch's sink stores without fsyncs (durable=False)",
    )
    parser.add_argument("--fault-n", type=int, default=2000, help="images per sporadic run")
    parser.add_argument("--fault-concurrency", type=int, default=16)
    parser.add_argument("--fault-latency", type=float, default=0.1, help="seconds")
    parser.add_argument("--rate-n", type=int, default=900, help="images per rate-limit run")
    parser.add_argument("--rate-rpm", type=int, default=600, help="the emulator's limit")
    parser.add_argument("--repeat", type=int, default=2, help="runs of sections 4 and 5")
    parser.add_argument(
        "--only", nargs="+", choices=sections, default=None, help="default: 1, 2 and 3"
    )
    parser.add_argument(
        "--counted", type=int, nargs=2, default=[50, 200], help="section 7's two run sizes"
    )
    parser.add_argument("--rss-child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--counted-child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--emulator-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.emulator_child:
        emulator_child(json.loads(args.emulator_child))
        return
    if args.counted_child:
        runner, url, n, folder, out = args.counted_child
        counted_child(runner, url, int(n), folder, out)
        return
    if args.rss_child:
        n, url, out, keep = args.rss_child
        rss_child(url, int(n), out, int(keep))
        return
    only = args.only or sections[:3]
    print(environment())
    steps: dict[str, Callable[[], None]] = {
        "efficiency": lambda: efficiency(
            args.latency,
            args.n,
            args.concurrency,
            args.emulator_workers,
            [f"{k} shards" for k in args.shards] if args.shards else ["sharded"],
        ),
        "cpu": lambda: cpu_ratio(args.n),
        "rss": lambda: rss(args.rss_small, args.rss_large),
        "photos": lambda: photos(
            args.photo_crops,
            args.photo_full,
            args.photo_concurrency,
            args.repeat,
            args.photo_dir,
            not args.no_checksums,
            not args.not_durable,
        ),
        "faults": lambda: faults(
            args.fault_n,
            args.fault_concurrency,
            args.fault_latency,
            args.rate_n,
            args.rate_rpm,
            args.repeat,
        ),
    }
    steps["threads"] = lambda: thread_calls(6400, args.repeat)
    steps["instructions"] = lambda: instructions(args.counted, args.photo_dir)
    for name in sections:
        if name in only:
            steps[name]()
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
