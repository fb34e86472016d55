"""Measure photoroom_bg.prefect on a local Prefect server (loopback, SQLite, quiet settings).

Prints two ratios, each measured in this one run:

1. orchestration overhead per image: (wall time - a plain BatchRemover's wall time for the
   same work) / images, for the ``remove_backgrounds`` flow with deferred shards on a task
   worker, and for the original service's design (one flow run per image, runs of a served
   deployment, each in a process of its own), on the same server, emulator latency 0;
2. throughput of the flow with 1 and with 2 ``prefect task serve`` workers, emulator latency
   300 ms, each worker's CPU time beside it. The per-shard concurrency is low by default
   (``--throughput-concurrency 4``) so that two workers sharing one small machine with the
   server and the emulator are bound by latency rather than by its CPUs.

Usage::

    python benchmarks/prefect.py                   # both sections, as quoted in the docs
    python benchmarks/prefect.py --only overhead
"""

from __future__ import annotations

# This file is named like the package it measures: take its folder off the import path
# before anything imports ``prefect``.
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

QUIET = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_ENABLED": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    "PREFECT_CLI_PROMPT": "false",
}
os.environ.update(QUIET)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # this process only, not its children

import argparse  # noqa: E402
import asyncio  # noqa: E402
import importlib.metadata  # noqa: E402
import io  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import ExitStack, contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
from PIL import Image  # noqa: E402
from prefect import flow  # noqa: E402

from photoroom_bg.testing import DEFAULT_API_KEY  # noqa: E402

SERVER_SERVICES_OFF = {
    f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false"
    for name in ("SCHEDULER", "LATE_RUNS", "FOREMAN", "PAUSE_EXPIRATIONS", "DB_VACUUM", "TRIGGERS")
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_images(folder: Path, n: int, offset: int = 0) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(offset, offset + n):
        image = Image.new("RGB", (16 + i % 64, 16 + i // 64 % 64), (i % 251, i // 251 % 251, 7))
        out = io.BytesIO()
        image.save(out, "PNG", compress_level=1)
        (folder / f"img-{i:06d}.png").write_bytes(out.getvalue())
    return str(folder)


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path, ready: str) -> Iterator[Any]:
    """A child process, once ``ready`` shows in its log; terminated on exit."""
    with log.open("wb") as out:
        child = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while ready not in log.read_text(errors="replace"):
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{args[:4]} did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield child
    finally:
        child.terminate()
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@contextmanager
def emulator(latency: float, workdir: Path) -> Iterator[str]:
    """The emulator in a process of its own: fixed latency, no image work."""
    args = [sys.executable, "-m", "photoroom_bg.testing", "--port", "0", "--credits", "1e9"]
    args += ["--latency", f"{latency}s", "--no-image-work"]
    log = workdir / f"emulator-{latency}.log"
    with process(args, dict(os.environ), log, "listening on") as _:
        match = re.search(r"(http://\S+)", log.read_text())
        assert match is not None
        yield match.group(1)


@contextmanager
def prefect_server(workdir: Path) -> Iterator[dict[str, str]]:
    """``prefect server start`` on a free loopback port; yields the fleet's environment."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "PREFECT_LOGGING_LEVEL"},
        "PREFECT_HOME": str(workdir / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
    }
    args = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    log = workdir / "server.log"
    with process([*args, "--port", str(port)], {**env, **SERVER_SERVICES_OFF}, log, ""):
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("prefect server did not start:\n" + log.read_text()[-2000:])
            time.sleep(0.25)
        yield env


def wait_for_workers(env: dict[str, str], count: int) -> None:
    """Until the server counts exactly ``count`` connected task workers."""
    url = env["PREFECT_API_URL"] + "/task_workers/filter"
    deadline = time.monotonic() + 180
    while len(httpx.post(url, json={}, timeout=10).json()) != count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server never counted {count} task workers")
        time.sleep(0.2)


@contextmanager
def task_workers(
    env: dict[str, str], workdir: Path, count: int, limit: int
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` ``prefect task serve -m photoroom_bg.prefect`` processes, once connected."""
    args = [sys.executable, "-m", "prefect", "task", "serve", "-m", "photoroom_bg.prefect"]
    with ExitStack() as stack:
        workers = []
        for i in range(count):
            log = workdir / f"worker-{time.monotonic_ns()}-{i}.log"
            workers.append(
                stack.enter_context(process([*args, "--limit", str(limit)], env, log, ""))
            )
        wait_for_workers(env, count)
        yield workers
    wait_for_workers(env, 0)


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds used so far by these processes (Linux /proc)."""
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def plain_batch(url: str, sources: str, out: str, concurrency: int) -> float:
    """The work alone: one BatchRemover over the same images, no orchestration."""
    from photoroom_bg import BatchRemover

    remover = BatchRemover(
        api_key=DEFAULT_API_KEY,
        base_url=url,
        sink=out,
        concurrency=concurrency,
        requests_per_minute=None,
        keep_results=False,
        track_credits=False,
    )
    started = time.perf_counter()
    report = asyncio.run(remover.run(sources))
    assert report.stored_count == report.total_count > 0, report
    return time.perf_counter() - started


def flow_run(sources: str, out: str, **parameters: Any) -> float:
    """One remove_backgrounds flow run, deferred shards; its wall time."""
    from photoroom_bg.prefect import remove_backgrounds

    started = time.perf_counter()
    state = asyncio.run(
        remove_backgrounds(
            sources=sources, sink=out, deferred=True, **parameters, return_state=True
        )
    )
    elapsed = time.perf_counter() - started
    assert state.is_completed(), state
    return elapsed


# -- the original design: one flow run per image --------------------------------------------


@flow(name="remove-one-background")
def remove_one(path: str, out_dir: str) -> str:
    """The original service's unit of work: one image, one flow run (its key came as a
    parameter; here, as it should, from the environment)."""
    from photoroom_bg import PhotoroomClient

    with PhotoroomClient() as client:
        result = client.remove_background(path)
    target = Path(out_dir) / (Path(path).stem + ".png")
    target.write_bytes(result.content)
    return str(target)


def serve_one_per_image(limit: int) -> None:
    """Child mode: serve the per-image flow as a deployment; the runner starts a process per
    flow run, as the original's process worker did."""
    remove_one.serve(name="one-per-image", limit=limit)


def one_flow_run_per_image(
    env: dict[str, str], workdir: Path, paths: list[Path], limit: int
) -> float:
    """Serve the per-image flow, create one run per image at once, wait for all of them."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import arun_deployment

    out = workdir / "one-per-image-out"
    out.mkdir()
    args = [sys.executable, os.path.abspath(__file__), "--serve-one-per-image", str(limit)]
    with process(args, env, workdir / "runner.log", ""):
        deployment = (
            f"{env['PREFECT_API_URL']}/deployments/name/remove-one-background/one-per-image"
        )
        deadline = time.monotonic() + 180
        while httpx.get(deployment, timeout=10).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the per-image deployment was never served")
            time.sleep(0.2)

        async def run_all() -> float:
            started = time.perf_counter()
            runs = [
                await arun_deployment(
                    "remove-one-background/one-per-image",
                    parameters={"path": str(p), "out_dir": str(out)},
                    timeout=0,
                    as_subflow=False,
                )
                for p in paths
            ]
            async with get_client() as client:
                while True:
                    states = [(await client.read_flow_run(r.id)).state for r in runs]
                    if all(s is not None and s.is_final() for s in states):
                        break
                    await asyncio.sleep(0.2)
            elapsed = time.perf_counter() - started
            assert all(s is not None and s.is_completed() for s in states), states
            return elapsed

        return asyncio.run(run_all())


def overhead(workdir: Path, env: dict[str, str], n: int, originals: int) -> None:
    print("1. orchestration overhead per image, emulator latency 0")
    print(f"   (N={n}; original design: {originals})")
    sources = make_images(workdir / "overhead-in", n)
    paths = sorted(Path(sources).iterdir())[:originals]
    concurrency = 16
    with emulator(0.0, workdir) as url:
        os.environ.update(PHOTOROOM_BASE_URL=url, PHOTOROOM_API_KEY=DEFAULT_API_KEY)
        env = {**env, "PHOTOROOM_BASE_URL": url, "PHOTOROOM_API_KEY": DEFAULT_API_KEY}
        plain_batch(url, str(paths[0].parent), str(workdir / "warm-up"), concurrency)
        plain = plain_batch(url, sources, str(workdir / "plain-out"), concurrency)
        plain_per_image = plain / n
        with task_workers(env, workdir, 1, limit=4):
            ours = flow_run(
                sources,
                str(workdir / "flow-out"),
                shard_size=n // 4,
                concurrency=concurrency,
                max_running_shards=1,  # one shard at a time: the plain batch's concurrency
            )
        original = one_flow_run_per_image(env, workdir, paths, limit=4)
    ours_overhead = max(ours / n - plain_per_image, 1e-9)
    original_overhead = original / originals - plain_per_image
    print(
        f"   plain BatchRemover:            {plain_per_image * 1e3:8.2f} ms/image ({plain:.1f} s)"
    )
    print(
        f"   remove_backgrounds, 4 shards:  {ours / n * 1e3:8.2f} ms/image ({ours:.1f} s)\n"
        f"      overhead {ours_overhead * 1e3:.2f} ms/image"
    )
    print(
        f"   one flow run per image (x4):   {original / originals * 1e3:8.2f} ms/image "
        f"({original:.1f} s)\n      overhead {original_overhead * 1e3:.2f} ms/image"
    )
    print(
        f"   overhead ratio original/ours:  {original_overhead / ours_overhead:.0f}x"
        "  (target >= 50x)"
    )


def throughput(workdir: Path, env: dict[str, str], n: int, concurrency: int) -> None:
    print(
        f"2. throughput with 1 and 2 task workers, emulator latency 300 ms\n"
        f"   (N={n}, shards of 50, {concurrency} images at a time per shard,\n"
        f"   2 shards at a time per worker)"
    )
    sources = make_images(workdir / "throughput-in", n, offset=10**6)
    # every shard handed out at once, so that no worker ever waits for the flow to create one
    parameters = {"shard_size": 50, "concurrency": concurrency, "max_running_shards": n // 50}
    results = {}
    with emulator(0.3, workdir) as url:
        os.environ.update(PHOTOROOM_BASE_URL=url, PHOTOROOM_API_KEY=DEFAULT_API_KEY)
        env = {**env, "PHOTOROOM_BASE_URL": url, "PHOTOROOM_API_KEY": DEFAULT_API_KEY}
        for workers in (1, 2):
            with task_workers(env, workdir, workers, limit=2) as children:
                pids = [child.pid for child in children]
                before = cpu_seconds(pids)
                elapsed = flow_run(sources, str(workdir / f"out-{workers}"), **parameters)
                used = cpu_seconds(pids) - before
            results[workers] = n / elapsed
            load = os.getloadavg()[0]
            print(
                f"   {workers} worker{'s' if workers > 1 else ' '}: {elapsed:6.1f} s, "
                f"{n / elapsed:6.1f} images/s; load average {load:.1f}\n"
                f"      workers' CPU {used:.1f} s ({used / n * 1e3:.1f} ms/image)"
            )
    print(f"   ratio 2 workers / 1 worker: {results[2] / results[1]:.2f}  (ideal 2.0)")
    print(f"   ({os.cpu_count()} CPUs for the workers, the server, the emulator, this flow)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["overhead", "throughput"], default=None)
    parser.add_argument("--n", type=int, default=2000, help="images of the overhead run")
    parser.add_argument("--originals", type=int, default=24, help="flow runs of the original")
    parser.add_argument("--throughput-n", type=int, default=1200)
    parser.add_argument(
        "--throughput-concurrency",
        type=int,
        default=4,
        help="images at a time per shard (kept low by default so that two workers sharing "
        "one small machine are bound by latency, not by its CPUs)",
    )
    parser.add_argument("--serve-one-per-image", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help="keep logs and outputs in a folder made here")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_one_per_image:
        serve_one_per_image(args.serve_one_per_image)
        return
    if args.measure:  # the child that measures, its Prefect settings in its environment
        workdir = Path(args.measure)
        env = dict(os.environ)
        env.pop("PREFECT_LOGGING_LEVEL", None)
        if args.only in (None, "overhead"):
            overhead(workdir, env, args.n, args.originals)
        if args.only in (None, "throughput"):
            throughput(workdir, env, args.throughput_n, args.throughput_concurrency)
        return
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("prefect", "httpx", "httpcore", "anyio")
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"python {sys.version.split()[0]}, {versions}", flush=True)
    print(f"{os.cpu_count()} CPUs, load average {load}", flush=True)
    with ExitStack() as stack:
        if args.workdir:  # keep the logs and outputs
            workdir = Path(tempfile.mkdtemp(prefix="photoroom-bg-prefect-bench-", dir=args.workdir))
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="photoroom-bg-bench-"))
            workdir = Path(tmp)
        with prefect_server(workdir) as env:
            # Prefect reads its settings once, on import: measure in a child that starts
            # with the server's address in its environment
            child = [sys.executable, os.path.abspath(__file__), "--measure", str(workdir)]
            child += sys.argv[1:]
            quiet = {"PREFECT_LOGGING_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
            subprocess.run(child, env={**env, **quiet}, check=True)


if __name__ == "__main__":
    main()
