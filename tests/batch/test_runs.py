"""Batches in harsher settings: a killed process, a real S3 server, the offline engine, 429s."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from photoroom_bg import BatchRemover, ImageResult, MemorySink, S3Sink, SegmentOptions
from photoroom_bg.batch._limiter import AdaptiveLimit, RateGate
from photoroom_bg.errors import RateLimitError
from photoroom_bg.testing import Faults, PhotoroomEmulator

from ..s3server import S3Server
from ..tcpproxy import running_proxy
from .conftest import job_records, photo, photo_folder, wait_for_jobs

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"

CHILD = textwrap.dedent(
    """
    import sys
    from photoroom_bg import BatchRemover

    source, out, manifest, url = sys.argv[1:5]
    batch = BatchRemover(
        sink=out, manifest=manifest, base_url=url, concurrency=4, requests_per_minute=None
    )
    report = batch.submit(source).wait()
    print(report.stored_count)
    """
)


def test_a_killed_run_then_rerun_bills_nothing_twice(tmp_path: Path) -> None:
    source, images = photo_folder(tmp_path, 60)
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    emulator = PhotoroomEmulator(credits=1000, faults=Faults(latency=0.05), image_work=False)
    env = {**os.environ, "PHOTOROOM_API_KEY": emulator.api_key}
    with emulator.serve() as url:
        args = [sys.executable, "-c", CHILD, str(source), str(out), str(manifest), url]
        with subprocess.Popen(args, env=env, stdout=subprocess.PIPE) as child:
            wait_for_jobs(child, manifest, 15)
            child.send_signal(signal.SIGKILL)
            child.wait()
        assert child.returncode == -signal.SIGKILL
        before_kill = {r["key"] for r in job_records(manifest) if r["status"] == "succeeded"}
        assert 15 <= len(before_kill) < 60  # killed part-way
        # whatever the kill left under a final name is a whole image, never a torn one
        for path in out.iterdir():
            if not path.name.startswith("."):
                Image.open(path).verify()

        rerun = BatchRemover(
            sink=out, manifest=manifest, base_url=url, api_key=emulator.api_key,
            concurrency=4, requests_per_minute=None,
        ).submit(source).wait()  # fmt: skip

    assert rerun.total_count == 60
    assert rerun.stored_count == 60
    assert rerun.skipped_count >= len(before_kill)
    billed = emulator.ledger.billed_per_image()
    assert set(billed) == {hashlib.sha256(data).hexdigest() for data in images.values()}
    twice = [digest for digest, count in billed.items() if count > 1]
    assert len(twice) <= 4  # only the jobs in flight at the kill (concurrency 4)
    stored_before = {
        hashlib.sha256(images[r["name"] + ".png"]).hexdigest()
        for r in job_records(manifest)[: len(before_kill)]
        if r["key"] in before_kill
    }
    assert all(billed[digest] == 1 for digest in stored_before)
    finals = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert len(finals) == 60


def test_a_script_that_makes_sigterm_act_as_ctrl_c_pays_for_nothing_twice(
    tmp_path: Path,
) -> None:
    """The batch guide's recipe: with SIGTERM acting as Ctrl-C, ``wait()`` cancels the
    batch, the calls under way are stored, and the re-run pays for no image again."""
    source, images = photo_folder(tmp_path, 30)
    out, manifest = tmp_path / "out", tmp_path / "run.jsonl"
    # calls take 0.3 s each: at the signal, calls the server bills are under way
    emulator = PhotoroomEmulator(credits=1000, faults=Faults(latency=0.3), image_work=False)
    env = {**os.environ, "PHOTOROOM_API_KEY": emulator.api_key}
    script = "import signal\nsignal.signal(signal.SIGTERM, signal.default_int_handler)\n" + CHILD
    with emulator.serve() as url:
        args = [sys.executable, "-c", script, str(source), str(out), str(manifest), url]
        with subprocess.Popen(args, env=env, stdout=subprocess.PIPE) as child:
            wait_for_jobs(child, manifest, 4)
            child.send_signal(signal.SIGTERM)
            child.wait(60)
        assert child.returncode != -signal.SIGTERM  # it ended on its own terms
        stored = [r for r in job_records(manifest) if r["status"] == "succeeded"]
        assert 4 <= len(stored) < 30
        assert emulator.ledger.calls() == len(stored)  # every call paid for was stored

        rerun = BatchRemover(
            sink=out, manifest=manifest, base_url=url, api_key=emulator.api_key,
            concurrency=4, requests_per_minute=None,
        ).submit(source).wait()  # fmt: skip
    assert rerun.stored_count == 30
    assert emulator.ledger.billed_per_image() == {
        hashlib.sha256(data).hexdigest(): 1 for data in images.values()
    }


def test_a_batch_into_a_real_s3_bucket(s3_server: S3Server, s3_prefix: str) -> None:
    images = [photo() for _ in range(20)]
    emulator = PhotoroomEmulator(credits=100)
    keys: list[str] = []
    with emulator.serve() as url:

        async def run() -> tuple[Any, Any, bytes]:
            async with S3Sink(s3_prefix, **s3_server.sink_options()) as sink:
                batch = BatchRemover(
                    sink=sink,
                    api_key=emulator.api_key,
                    base_url=url,
                    requests_per_minute=None,
                    on_result=lambda job: keys.append(job.key or ""),
                )
                first = await batch.run(images)
                second = await batch.run(images)
                fetched = httpx.get(await sink.url(keys[0])).content
                # a worker with no lasting disk keeps its manifest in the bucket
                keeper = BatchRemover(
                    sink=sink,
                    api_key=emulator.api_key,
                    base_url=url,
                    skip_existing=False,
                    manifest_key="runs/manifest.jsonl",
                )
                await keeper.run(images[:3])
                third = await keeper.run(images[:3])  # skipped by the manifest alone
                assert third.skipped_count == 3
                records = (await sink.get("runs/manifest.jsonl")).decode().splitlines()
                assert len(records) == 2 * (1 + 3)  # a header and 3 jobs per run
                return first, second, fetched

        first, second, fetched = asyncio.run(run())
    assert (first.succeeded_count, first.billed_calls) == (20, 20)
    assert (second.skipped_count, second.billed_calls) == (20, 0)
    assert len(set(keys)) == 20
    assert fetched.startswith(b"\x89PNG")
    assert emulator.ledger.calls() == 20 + 3


def test_the_local_engine_drives_a_batch_offline(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from photoroom_bg import LocalEngine

    report = (
        BatchRemover(LocalEngine(), sink=tmp_path, options=SegmentOptions(crop=True))
        .submit(EXAMPLES)
        .wait()
    )
    assert report.succeeded_count == len(list(EXAMPLES.glob("*.jpg"))) + len(
        list(EXAMPLES.glob("*.png"))
    )
    assert report.billed_calls == 0
    assert report.credits_spent is None
    for path in tmp_path.iterdir():
        with Image.open(path) as cutout:
            assert cutout.mode == "RGBA"
            assert cutout.getextrema()[3][0] == 0  # some background made transparent


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


async def test_rate_gate_spaces_requests_and_says_once_when_it_holds_the_batch_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    gate = RateGate(60, clock=clock, sleep=clock.sleep)  # one request per second
    with caplog.at_level(logging.INFO, logger="photoroom_bg.batch"):
        for _ in range(10):
            await gate.acquire()
    assert clock.slept == [1.0] * 9
    notices = [r for r in caplog.records if "holds this batch back" in r.getMessage()]
    assert len(notices) == 1  # once, after a few seconds of waiting, not per request
    assert "requests_per_minute=60" in notices[0].getMessage()
    # how to raise it, in the words of each front end (the service's setting was missing)
    for setting in ("requests_per_minute=...", "--rpm", "PHOTOROOM_BG_PHOTOROOM_REQUESTS_PER_"):
        assert setting in notices[0].getMessage()
    unlimited = RateGate(None, clock=clock, sleep=clock.sleep)
    for _ in range(100):
        await unlimited.acquire()
    assert len(clock.slept) == 9


async def test_calls_waiting_for_the_budget_each_sleep_once_until_their_turn() -> None:
    # 260 calls at once against a budget of 200 a second (a burst of 200): the 60 over the
    # burst wait. Each sleeps once until its own turn, instead of every waiter waking up
    # each time one of them may go (which cost more CPU than the calls themselves).
    sleepers: list[object] = []
    durations: list[float] = []

    async def sleep(seconds: float) -> None:
        sleepers.append(asyncio.current_task())
        durations.append(seconds)
        await anyio.sleep(seconds)

    gate = RateGate(200 * 60, sleep=sleep)
    async with anyio.create_task_group() as tg:
        for _ in range(260):
            tg.start_soon(gate.acquire)
    assert len(sleepers) == len(set(sleepers))  # nobody slept twice
    assert 0 < len(sleepers) <= 60
    assert max(durations) <= 60 / 200 + 0.01  # the last turn: 60 calls past the burst


async def test_a_freed_slot_wakes_the_one_call_it_goes_to() -> None:
    waits = 0

    make_event = anyio.Event

    class CountingEvent:
        def __init__(self) -> None:
            self.event = make_event()

        def set(self) -> None:
            self.event.set()

        def is_set(self) -> bool:
            return self.event.is_set()

        async def wait(self) -> None:
            nonlocal waits
            waits += 1
            await self.event.wait()

    order: list[int] = []

    async def call(index: int) -> None:
        await limit.acquire()
        order.append(index)
        await anyio.sleep(0)
        limit.release()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(anyio, "Event", CountingEvent)
        limit = AdaptiveLimit(2)
        async with anyio.create_task_group() as tg:
            for index in range(20):
                tg.start_soon(call, index)
    assert sorted(order) == list(range(20))
    assert waits == 18  # one wait per call that had to queue, not one per waiter per slot
    assert limit.in_use == 0


async def test_a_call_cancelled_as_its_slot_comes_passes_the_slot_on() -> None:
    limit = AdaptiveLimit(1)
    await limit.acquire()
    got: list[str] = []
    scopes: list[anyio.CancelScope] = []

    async def call(name: str) -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await limit.acquire()
            got.append(name)
            limit.release()

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "first")
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(call, "second")
        await anyio.wait_all_tasks_blocked()
        scopes[0].cancel()  # the first in the queue is cancelled, and before it runs...
        limit.release()  # ...the freed slot goes to it
    assert got == ["second"]
    assert limit.in_use == 0


async def test_adaptive_limit_halves_on_429_once_per_window_and_grows_back() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(16, window=1.0, clock=clock)
    limit.throttled()
    limit.throttled()  # the same burst: calls already in flight when the first 429 came
    assert limit.limit == 8
    clock.now += 1.0
    limit.throttled()
    assert limit.limit == 4
    for _ in range(3):
        limit.throttled()
        clock.now += 1.0
    assert limit.limit == 1  # never below one
    for _ in range(200):
        limit.succeeded()
    assert limit.limit == 16  # grown back, capped at the batch's concurrency


async def test_a_small_batch_at_a_huge_concurrency_starts_a_worker_per_input() -> None:
    # concurrency=10_000 started 10,000 workers for 3 inputs (100_000: 11 s and 800 MB)
    loop = asyncio.get_running_loop()
    created = 0

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        nonlocal created
        created += 1
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting)
    try:
        batch = BatchRemover(CountingEngine(), sink=MemorySink(), concurrency=10_000)
        report = await batch.run([photo() for _ in range(3)])
    finally:
        loop.set_task_factory(None)
    assert report.succeeded_count == 3
    assert created < 50


class RateLimitedOnce:
    """An engine that answers the first call with a 429 and records when calls start."""

    name = "ratelimited"
    bills = False

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        self.starts: list[float] = []
        self.limited_at: float | None = None

    async def process(self, image: bytes, options: Any) -> ImageResult:
        now = time.monotonic()
        self.starts.append(now)
        if self.limited_at is None:
            self.limited_at = now
            raise RateLimitError("slow down", retry_after=self.retry_after)
        await asyncio.sleep(0)
        return ImageResult(image)

    async def aclose(self) -> None:
        pass


async def test_a_sporadic_429_delays_its_own_job_not_every_worker() -> None:
    engine = RateLimitedOnce(retry_after=0.5)
    batch = BatchRemover(engine, sink=MemorySink(), concurrency=4, requests_per_minute=None)
    report = await batch.run([photo() for _ in range(12)])
    assert report.succeeded_count == 12
    assert engine.limited_at is not None
    retried = [start for start in engine.starts[1:] if start - engine.limited_at >= 0.5]
    assert len(retried) == 1  # only the throttled job waited its Retry-After
    # the other eleven went on meanwhile, at a concurrency halved to two
    assert sum(start < retried[0] for start in engine.starts[1:]) == 11


def test_no_secret_reaches_reprs_logs_or_errors(
    emulator: PhotoroomEmulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "sk_live_do_not_leak_123"
    batch = BatchRemover(
        sink=tmp_path, api_key=secret, base_url=emulator.url, manifest=tmp_path / "m.jsonl"
    )
    handle = batch.submit([photo() for _ in range(3)])
    report = handle.wait()
    assert report.failures.keys() == {"AuthenticationError"}
    texts = [
        repr(batch),
        repr(handle),
        repr(report),
        caplog.text,
        (tmp_path / "m.jsonl").read_text(),
        *(str(job.error) + repr(job.error) for job in handle.results() if job.error),
    ]
    assert all(secret not in text for text in texts)


class CountingEngine:
    """A free, instant engine."""

    name = "counting"
    bills = False

    def __init__(self) -> None:
        self.calls = 0

    async def process(self, image: bytes, options: Any) -> ImageResult:
        self.calls += 1
        return ImageResult(image)

    async def aclose(self) -> None:
        pass


def test_the_request_budget_does_not_throttle_engines_that_do_not_bill() -> None:
    engine = CountingEngine()
    batch = BatchRemover(engine, sink=MemorySink(), requests_per_minute=1)
    # one request a minute would need 2 minutes for 3 images; a local model is not limited
    report = batch.submit([photo() for _ in range(3)]).wait(timeout=30)
    assert (report.succeeded_count, engine.calls) == (3, 3)


def test_a_manifest_the_sink_refuses_is_kept_on_disk_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = MemorySink(max_bytes=20_000)
    batch = BatchRemover(CountingEngine(), sink=sink, manifest_key="m.jsonl")
    images = [photo() for _ in range(3)]
    assert batch.submit(images).wait().succeeded_count == 3
    first = sink.objects["m.jsonl"].decode().splitlines()
    assert len(first) == 4
    sink.max_bytes = sink.total_bytes  # the sink is now full
    with caplog.at_level(logging.WARNING, logger="photoroom_bg.batch"):
        again = batch.submit(images).wait()
    assert again.skipped_count == 3
    assert "could not store the manifest" in caplog.text
    kept = Path(caplog.records[-1].args[-1])  # type: ignore[index]
    assert kept.read_text().count("skipped") == 3
    kept.unlink()


def test_an_s3_sink_used_by_submit_then_by_the_callers_own_loop(
    s3_server: S3Server, s3_prefix: str
) -> None:
    sink = S3Sink(s3_prefix, **s3_server.sink_options())
    keys: list[str] = []
    batch = BatchRemover(
        CountingEngine(), sink=sink, on_result=lambda job: keys.append(job.key or "")
    )
    images = [photo(), photo()]
    assert batch.submit(images).wait().succeeded_count == 2  # the client lives on our loop

    async def afterwards() -> bytes:
        data = await sink.get(keys[0])  # from the caller's loop, a client of its own
        await sink.aclose()  # closes both, each on its own loop
        return data

    assert asyncio.run(afterwards()) in images


class BuggyEngine(CountingEngine):
    """Raises something outside the error tree on every third image."""

    async def process(self, image: bytes, options: Any) -> ImageResult:
        self.calls += 1
        if self.calls % 3 == 0:
            raise KeyError("a bug")
        return ImageResult(image)


def test_an_unforeseen_exception_fails_its_job_only(caplog: pytest.LogCaptureFixture) -> None:
    from photoroom_bg.errors import UnexpectedError

    report = (
        BatchRemover(BuggyEngine(), sink=MemorySink(), concurrency=1)
        .submit([photo() for _ in range(9)])
        .wait()
    )
    assert (report.succeeded_count, report.failed_count) == (6, 3)
    (failure, *_) = report.failures["UnexpectedError"]
    assert isinstance(failure.error, UnexpectedError)
    assert isinstance(failure.error.__cause__, KeyError)
    assert "failed unexpectedly" in caplog.text


async def test_the_balance_is_read_while_the_first_inputs_are_checked(
    respx_mock: Any,
) -> None:
    # The balance before the batch is read while the jobs read their inputs and look for
    # stored outputs (an S3 HEAD, a download: tens of ms each); no paid call starts before it.
    lookups: list[str] = []
    checked = asyncio.Event()
    order: list[str] = []

    class Watched(MemorySink):
        async def stat(self, key: str) -> Any:
            lookups.append(key)
            if len(lookups) == 3:
                checked.set()
            return await super().stat(key)

    async def account(request: httpx.Request) -> httpx.Response:
        order.append("account")
        await asyncio.wait_for(checked.wait(), 10)  # the jobs go on meanwhile
        balance = 100 - order.count("segment")
        return httpx.Response(200, json={"images": {"available": balance, "subscription": 0}})

    def segment(request: httpx.Request) -> httpx.Response:
        order.append("segment")
        return httpx.Response(200, content=photo(), headers={"content-type": "image/png"})

    base = "http://127.0.0.1:9"
    respx_mock.get(f"{base}/v2/account").mock(side_effect=account)
    respx_mock.post(f"{base}/v1/segment").mock(side_effect=segment)
    batch = BatchRemover(
        sink=Watched(),
        api_key="sk_test",
        base_url=base,
        concurrency=3,
        skip_existing=True,
        track_credits=True,
    )
    report = await batch.run([photo() for _ in range(5)])
    assert report.succeeded_count == 5
    assert order == ["account", *["segment"] * 5, "account"]
    assert report.credits_spent == 5


def test_a_batch_a_few_calls_at_a_time_keeps_reusing_a_few_connections() -> None:
    # Spread over the pool's 64 shards in turn, every call opened a connection of its own:
    # against Photoroom a TLS handshake per image, and at the default pace (each shard's
    # turn coming back after the keep-alive expiry) for every image of the batch.
    emulator = PhotoroomEmulator(credits=10_000)
    with emulator.serve():
        host, port = str(emulator.url).rsplit("/", 1)[1].split(":")
        with running_proxy((host, int(port))) as proxy:
            batch = BatchRemover(
                sink=MemorySink(),
                api_key=emulator.api_key,
                base_url=proxy.url,
                concurrency=2,
                requests_per_minute=None,
                track_credits=True,
            )
            report = batch.submit([photo() for _ in range(30)]).wait(timeout=60)
    assert report.succeeded_count == 30
    assert report.credits_spent == 30  # the balance read before and after, on the same pool
    assert proxy.connections <= 2
