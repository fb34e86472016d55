"""BatchRemover against the emulator over loopback: nothing lost, nothing paid twice."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from photoroom_bg import (
    AsyncPhotoroomClient,
    BatchHandle,
    BatchRemover,
    EditOptions,
    JobResult,
    JobStatus,
    MemorySink,
    PhotoroomClient,
    RetryPolicy,
    S3Sink,
    SegmentOptions,
    _loop,
)
from photoroom_bg.batch import _run
from photoroom_bg.errors import (
    ConfigurationError,
    InvalidImageError,
    OutOfCreditsError,
    SourceNotFoundError,
    StorageError,
    UnsafeURLError,
)
from photoroom_bg.sources import SourceReader
from photoroom_bg.testing import Faults, PhotoroomEmulator

from ..sources.conftest import ImageServer
from .conftest import photo


def remover(emulator: PhotoroomEmulator, sink: Any, **kwargs: Any) -> BatchRemover:
    kwargs.setdefault("requests_per_minute", None)
    kwargs.setdefault("retry_policy", RetryPolicy(initial_delay=0.005, max_delay=0.05))
    return BatchRemover(sink=sink, api_key=emulator.api_key, base_url=emulator.url, **kwargs)


def test_500_images_through_faults_all_succeed_and_each_is_billed_once(tmp_path: Path) -> None:
    faults = Faults(
        rates={"429": 0.04, "500": 0.03, "502": 0.03, "503": 0.03, "reset": 0.03, "truncate": 0.03},
        retry_after=0,
        seed=3,
    )
    emulator = PhotoroomEmulator(credits=10_000, faults=faults, image_work=False)
    images = [photo() for _ in range(500)]
    with emulator.serve():
        report = (
            remover(emulator, tmp_path, concurrency=16, max_retries=8, track_credits=True)
            .submit(images)
            .wait()
        )
    assert report.total_count == 500
    assert report.stored_count == 500
    assert report.failures == {}
    injected = [r.fault for r in emulator.requests if r.fault]
    assert len(injected) > 50  # the faults really happened
    billed = emulator.ledger.billed_per_image()
    assert sorted(billed) == sorted(hashlib.sha256(i).hexdigest() for i in images)
    assert set(billed.values()) == {1}
    assert report.billed_calls == 500
    assert report.credits_spent == 500
    assert len(list(tmp_path.iterdir())) == 500


def test_bad_inputs_fail_alone_with_typed_errors(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    server = ImageServer()
    server.start()
    reader = SourceReader(allow_networks=["127.0.0.1/32"])
    good = [photo() for _ in range(5)]
    bad = [
        b"\x89PNG\r\n\x1a\n" + b"corrupt" * 20,
        f"{server.url}/missing.png",
        "http://127.0.0.2/x.png",
        "http://10.0.0.1/x.png",
        "http://169.254.169.254/latest/meta-data/",
        f"{server.url}/redirect?to=http://169.254.169.254/",
        "file:///etc/passwd",
        str(tmp_path / "nope.jpg"),
    ]
    try:
        handle = remover(emulator, MemorySink(), reader=reader).submit([*good, *bad])
        report = handle.wait()
    finally:
        _loop.run_sync(reader.aclose())  # its pool lives on the loop submit() ran on
        server.stop()
    assert report.stored_count == 5
    assert report.failed_count == len(bad)
    by_type = {name: len(jobs) for name, jobs in report.failures.items()}
    assert by_type == {"InvalidImageError": 1, "SourceNotFoundError": 2, "UnsafeURLError": 5}
    errors = {type(job.error) for job in handle.results() if job.status is JobStatus.FAILED}
    assert errors == {InvalidImageError, SourceNotFoundError, UnsafeURLError}
    assert emulator.ledger.calls() == 5


def test_out_of_credits_stops_submission(tmp_path: Path) -> None:
    emulator = PhotoroomEmulator(credits=10)
    with emulator.serve():
        handle = remover(emulator, tmp_path, concurrency=2).submit([photo() for _ in range(40)])
        report = handle.wait()
    assert report.succeeded_count == 10
    assert report.failures.keys() == {"OutOfCreditsError"}
    assert 1 <= report.failed_count <= 2
    assert report.cancelled_count == 40 - 10 - report.failed_count
    assert report.stop_reason is not None
    assert report.stop_reason.startswith("OutOfCreditsError")
    cancelled = [j for j in handle.results() if j.status is JobStatus.CANCELLED]
    assert all(j.reason == report.stop_reason for j in cancelled)
    statuses = [r.status for r in emulator.requests if r.path == "/v1/segment"]
    assert statuses.count(402) == report.failed_count  # no hammering after the first 402s
    assert isinstance(report.failures["OutOfCreditsError"][0].error, OutOfCreditsError)


def test_a_bad_key_stops_the_batch_too(emulator: PhotoroomEmulator) -> None:
    batch = BatchRemover(
        sink=MemorySink(),
        api_key="wrong",
        base_url=emulator.url,
        concurrency=1,
        requests_per_minute=None,
    )
    report = batch.submit([photo() for _ in range(10)]).wait()
    assert report.failed_count == 1
    assert report.cancelled_count == 9
    assert "AuthenticationError" in (report.stop_reason or "")


def test_cancel_mid_batch(tmp_path: Path) -> None:
    emulator = PhotoroomEmulator(faults=Faults(latency=0.02), image_work=False)
    with emulator.serve():
        handle = remover(emulator, tmp_path, concurrency=4).submit([photo() for _ in range(200)])
        for count, _ in enumerate(handle.as_completed(), start=1):
            if count == 10:
                handle.cancel()
        report = handle.wait()
    assert report.stop_reason == "cancelled"
    assert report.failed_count == 0
    assert report.succeeded_count >= 10
    assert report.cancelled_count > 0
    assert report.succeeded_count + report.cancelled_count == 200
    assert emulator.ledger.calls() == report.succeeded_count
    assert handle.done()
    assert handle.cancelled()
    assert handle.cancel() is False  # already ended


def test_the_handle_follows_the_future_convention(emulator: PhotoroomEmulator) -> None:
    handle = remover(emulator, MemorySink()).submit([photo() for _ in range(3)])
    report = handle.result(timeout=60)
    assert handle.done() is True  # a method, as Future.done()
    assert handle.cancelled() is False
    assert handle.exception() is None
    assert report is handle.wait()
    assert (report.stored_count, report.succeeded_count, report.skipped_count) == (3, 3, 0)
    assert handle.progress.stored == 3


@pytest.mark.parametrize("forever", [float("inf"), 1e12], ids=repr)
def test_waiting_on_the_handle_with_an_endless_timeout_waits_for_the_batch(
    emulator: PhotoroomEmulator, forever: float
) -> None:
    # these timeouts reached Future.result and Condition.wait as given: OverflowError
    handle = remover(emulator, MemorySink()).submit([photo() for _ in range(3)])
    assert len(list(handle.as_completed(timeout=forever))) == 3
    assert handle.wait(timeout=forever).stored_count == 3
    assert handle.result(timeout=forever).stored_count == 3
    assert handle.exception(timeout=forever) is None
    for call in (handle.wait, handle.exception, lambda timeout: list(handle.as_completed(timeout))):
        with pytest.raises(ConfigurationError, match="timeout"):
            call(timeout=float("nan"))


def test_sync_use_inside_a_running_event_loop(emulator: PhotoroomEmulator) -> None:
    async def notebook_cell() -> tuple[int, int]:
        handle = remover(emulator, MemorySink()).submit([photo() for _ in range(6)])
        seen = len(list(handle.as_completed()))
        return seen, handle.wait().stored_count

    assert asyncio.run(notebook_cell()) == (6, 6)


async def test_async_use_await_and_async_for(emulator: PhotoroomEmulator) -> None:
    handle = remover(emulator, MemorySink()).submit([photo() for _ in range(6)])
    jobs = [job async for job in handle]
    report = await handle
    assert len(jobs) == 6
    assert report.stored_count == 6
    run_report = await remover(emulator, MemorySink()).run([photo() for _ in range(3)])
    assert run_report.stored_count == 3


def test_progress_partial_results_and_callbacks(emulator: PhotoroomEmulator) -> None:
    seen: list[JobResult] = []
    progress: list[int] = []
    batch = remover(
        emulator,
        MemorySink(),
        concurrency=2,
        on_result=seen.append,
        on_progress=lambda p: progress.append(p.done),
    )
    handle = batch.submit(photo() for _ in range(12))
    first = next(iter(handle.as_completed()))
    assert first in handle.results()
    report = handle.wait()
    final = handle.progress
    assert (final.total, final.succeeded, final.pending, final.running) == (12, 12, 0, 0)
    assert final.eta == 0
    assert len(seen) == 12
    assert progress == list(range(1, 13))
    assert report.total_count == 12
    assert all(job.output is not None and job.output.size == job.output_size for job in seen)


def test_rerun_skips_stored_outputs_without_calling_the_engine(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    images = [photo() for _ in range(8)]
    first = remover(emulator, tmp_path).submit(images).wait()
    calls = emulator.ledger.calls()
    second = remover(emulator, tmp_path).submit(images).wait()
    assert (first.succeeded_count, second.skipped_count, second.billed_calls) == (8, 8, 0)
    assert emulator.ledger.calls() == calls
    other_options = remover(emulator, tmp_path, options=SegmentOptions(crop=True))
    assert other_options.submit(images).wait().succeeded_count == 8  # new options, new keys


def test_manifest_records_every_job_without_secrets_and_resumes(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    manifest = tmp_path / "run.jsonl"
    images = [photo() for _ in range(5)]
    server = ImageServer()
    server.start()
    url = f"{server.url}/img.png?X-Amz-Signature=s3cr3t&token=hidden"
    reader = SourceReader(allow_networks=["127.0.0.1/32"])
    try:
        batch = remover(emulator, tmp_path / "out", manifest=manifest, reader=reader)
        report = batch.submit([*images, url]).wait()
    finally:
        _loop.run_sync(reader.aclose())
        server.stop()
    text = manifest.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["type"] == "run"
    assert lines[0]["sources"] is None  # bytes and a signed URL: nothing re-openable
    records = lines[1:]
    assert report.stored_count == 6
    assert len(records) == 6
    assert {r["status"] for r in records} == {"succeeded"}
    assert all(r["key"] and r["uri"] for r in records)
    for secret in (emulator.api_key, "s3cr3t", "hidden"):
        assert secret not in text
        assert secret not in repr(batch)
        assert secret not in repr(report)
    resumed = remover(emulator, tmp_path / "out", manifest=manifest, skip_existing=False)
    again = resumed.resume(images).wait()
    assert again.skipped_count == 5
    assert again.billed_calls == 0


def test_retry_failed_runs_only_the_failed_inputs(tmp_path: Path) -> None:
    emulator = PhotoroomEmulator(credits=3)
    with emulator.serve():
        handle = remover(emulator, tmp_path, concurrency=1).submit([photo() for _ in range(4)])
        report = handle.wait()
        assert (report.succeeded_count, report.failed_count) == (3, 1)
        emulator.ledger.accounts[emulator.api_key].credits += 10
        retried = handle.retry_failed().wait()
    # the handle keeps no input bytes: an in-memory input cannot be submitted again
    assert (retried.total_count, retried.succeeded_count) == (0, 0)


def test_retry_failed_retries_what_a_retry_can_fix_and_says_what_it_leaves_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(4):
        (folder / f"ok{i}.png").write_bytes(photo())
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"corrupt" * 20)
    emulator = PhotoroomEmulator(credits=3)
    with emulator.serve():
        batch = remover(emulator, tmp_path / "out", concurrency=1, track_credits=True)
        handle = batch.submit(sorted(str(p) for p in folder.iterdir()))
        first = handle.wait()
        assert first.credits_spent == 3
        assert first.failure_counts == {"InvalidImageError": 1, "OutOfCreditsError": 1}
        emulator.ledger.accounts[emulator.api_key].credits += 10
        with caplog.at_level("WARNING", logger="photoroom_bg.batch"):
            retried = handle.retry_failed().wait()
    # out of credits can be fixed (by topping up); a corrupt image cannot
    assert (retried.total_count, retried.succeeded_count) == (1, 1)
    assert retried.credits_spent == 1  # the retry reports its spending like any batch
    assert "1 InvalidImageError" in caplog.text
    assert emulator.ledger.calls() == 4


class FlakySink(MemorySink):
    """Fails the first put of every key: the engine must not be called again."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: set[str] = set()

    async def put(self, key: str, data: bytes, **kwargs: Any) -> Any:
        if key not in self.failed:
            self.failed.add(key)
            raise StorageError("disk hiccup")
        return await super().put(key, data, **kwargs)


def test_a_storage_failure_retries_the_put_not_the_engine(emulator: PhotoroomEmulator) -> None:
    sink = FlakySink()
    report = remover(emulator, sink).submit([photo() for _ in range(4)]).wait()
    assert report.succeeded_count == 4
    assert emulator.ledger.calls() == 4
    assert len(sink.objects) == 4


def test_a_generator_of_sources_is_consumed_lazily(emulator: PhotoroomEmulator) -> None:
    pulled = 0

    def endless() -> Any:
        nonlocal pulled
        while True:
            pulled += 1
            yield photo()

    handle = remover(emulator, MemorySink(), concurrency=4).submit(endless())
    for count, _ in enumerate(handle.as_completed(), start=1):
        if count == 20:
            handle.cancel()
    report = handle.wait()
    assert report.succeeded_count >= 20
    assert pulled <= report.total_count + 4 + 1  # at most the queue's read-ahead beyond


def test_edit_options_and_url_passthrough(emulator: PhotoroomEmulator) -> None:
    server = ImageServer()
    server.start()
    try:
        batch = remover(
            emulator,
            MemorySink(),
            options=EditOptions(
                background_color="FFFFFF", output_size="64x64", export_format="jpg"
            ),
            url_passthrough=True,
        )
        report = batch.submit([f"{server.url}/img.png", photo()]).wait()
    finally:
        server.stop()
    assert report.succeeded_count == 2
    assert emulator.ledger.calls() == 2
    gets = [r for r in emulator.requests if r.path == "/v2/edit" and r.method == "GET"]
    assert len(gets) == 1  # the URL went straight to Photoroom


@pytest.mark.parametrize(("fmt", "kind"), [("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP")])
def test_a_mask_is_stored_under_the_extension_of_its_format(
    emulator: PhotoroomEmulator, fmt: str, kind: str
) -> None:
    # channels="alpha" keys ended in ".png" whatever the format: a JPEG or WebP mask was
    # stored as "x.png"
    sink = MemorySink()
    options = SegmentOptions(channels="alpha", format=fmt)  # type: ignore[arg-type]
    handle = remover(emulator, sink, options=options).submit([photo()])
    assert handle.wait().stored_count == 1
    [job] = handle.results()
    assert job.key is not None
    assert job.key.endswith(f".{fmt}")
    assert Image.open(io.BytesIO(sink.objects[job.key])).format == kind


def test_an_async_callback_is_refused_not_silently_never_run() -> None:
    # accepted: its coroutine was made and dropped for each job, its body never ran, and
    # the batch reported success ("coroutine was never awaited" the only sign)
    async def on_result(result: JobResult) -> None:
        raise AssertionError("never called")

    class Later:
        async def __call__(self, progress: object) -> None:
            raise AssertionError("never called")

    with pytest.raises(ConfigurationError, match="on_result must be a plain function"):
        BatchRemover(sink=MemorySink(), on_result=on_result)
    with pytest.raises(ConfigurationError, match="on_progress must be a plain function"):
        BatchRemover(sink=MemorySink(), on_progress=Later())


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="concurrency"):
        BatchRemover(sink=MemorySink(), concurrency=0)
    with pytest.raises(ConfigurationError, match="url_passthrough needs EditOptions"):
        BatchRemover(sink=MemorySink(), url_passthrough=True)


@pytest.mark.parametrize(
    "setting",
    [
        {"concurrency": 2.5},
        {"concurrency": True},
        {"max_retries": -1},
        # each of these would silently have meant "no limit"
        {"requests_per_minute": 0},
        {"requests_per_minute": -5},
        {"requests_per_minute": float("nan")},
        {"store_retry_budget": -1.0},
        {"store_retry_budget": float("nan")},
        {"store_timeout": 0},
        {"engine_outage_budget": -1},
        {"sink_outage_budget": float("nan")},
        {"exit_timeout": -1},
        {"keep_results": -1},
    ],
    ids=lambda setting: "=".join(map(str, next(iter(setting.items())))),
)
def test_a_nonsense_number_is_refused_with_its_name(setting: dict[str, object]) -> None:
    (name,) = setting
    with pytest.raises(ConfigurationError, match=name):
        BatchRemover(sink=MemorySink(), **setting)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: BatchRemover(sink=MemorySink(), base_url=""), "base_url"),
        (lambda: BatchRemover(sink=MemorySink(), manifest=""), "manifest"),
        (lambda: BatchRemover(sink=MemorySink(), manifest_key=" "), "manifest_key"),
        (lambda: BatchRemover(sink=MemorySink(), spill_dir=""), "spill_dir"),
        (lambda: PhotoroomClient(base_url=""), "base_url"),
        (lambda: AsyncPhotoroomClient(segment_base_url=""), "segment_base_url"),
        (lambda: PhotoroomClient(image_api_base_url=" "), "image_api_base_url"),
        (lambda: S3Sink("s3://bucket", endpoint_url=""), "endpoint_url"),
        (lambda: SourceReader(s3_options={"endpoint_url": ""}), "s3_options\\['endpoint_url'\\]"),
    ],
    ids=lambda item: item if isinstance(item, str) else "",
)
def test_an_empty_string_setting_is_refused_rather_than_read_as_the_default(
    make: Callable[[], object], name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # an unset variable passed on: base_url="" meant Photoroom itself (real calls, paid, where
    # the emulator or a proxy was meant), endpoint_url="" AWS, spill_dir="" this folder
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match=f"^{name} is an empty string"):
        make()
    assert list(tmp_path.iterdir()) == []


def test_an_infinite_requests_per_minute_means_no_client_side_limit(
    emulator: PhotoroomEmulator,
) -> None:
    # accepted, then every job failed: the budget's wait came out as NaN seconds
    batch = BatchRemover(
        sink=MemorySink(),
        api_key=emulator.api_key,
        base_url=emulator.url,
        requests_per_minute=float("inf"),
    )
    report = batch.submit([photo() for _ in range(5)]).wait(timeout=60)
    assert (report.succeeded_count, report.failed_count) == (5, 0)
    assert emulator.ledger.calls() == 5


def test_bounded_results_keep_failures_and_as_completed_misses_nothing(
    emulator: PhotoroomEmulator,
) -> None:
    images: list[Any] = [photo() for _ in range(30)]
    images[7] = b"not an image"
    handle = remover(emulator, MemorySink(), keep_results=5, concurrency=3).submit(images)
    seen = list(handle.as_completed())
    report = handle.wait()
    assert len(seen) == 30  # every job, although the handle keeps only a few
    assert sorted(job.index for job in seen) == list(range(30))
    kept = handle.results()
    assert len(kept) == 1 + 5
    assert kept[0].index == 7
    assert kept[0].status is JobStatus.FAILED
    assert [job.index for job in kept[1:]] == [job.index for job in seen if job.ok][-5:]
    assert report.stored_count == 29


def test_a_batch_reads_the_balance_only_when_asked(emulator: PhotoroomEmulator) -> None:
    # Two balance reads cost two round trips whatever the batch's size: a one-image batch
    # took three times as long as its one call. A batch makes only the calls it needs.
    quiet = remover(emulator, MemorySink()).submit([photo()]).wait()
    assert quiet.credits_spent is None
    assert quiet.billed_calls == 1
    assert [r.path for r in emulator.requests] == ["/v1/segment"]
    tracked = remover(emulator, MemorySink(), track_credits=True).submit([photo()]).wait()
    assert tracked.credits_spent == 1
    paths = [r.path for r in emulator.requests][1:]
    assert paths == ["/v2/account", "/v1/segment", "/v2/account"]


def test_resume_from_the_manifest_alone(emulator: PhotoroomEmulator, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        (folder / f"p{i}.png").write_bytes(photo())
    manifest = tmp_path / "run.jsonl"
    first = remover(emulator, tmp_path / "out", manifest=manifest)
    assert first.submit([folder]).wait().succeeded_count == 4
    (folder / "new.png").write_bytes(photo())
    later = remover(emulator, tmp_path / "out")
    report = later.resume(manifest=manifest).wait()  # no sources given: the manifest has them
    assert (report.skipped_count, report.succeeded_count) == (4, 1)
    assert emulator.ledger.calls() == 5
    from_bytes = remover(emulator, MemorySink(), manifest=tmp_path / "b.jsonl")
    assert from_bytes.submit([photo()]).wait().succeeded_count == 1
    with pytest.raises(ConfigurationError, match="pass the sources to resume"):
        later.resume(manifest=tmp_path / "b.jsonl")


def test_a_full_sink_spills_the_paid_cut_out_and_stops_paying_for_outputs_it_cannot_keep(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    images = [photo() for _ in range(10)]
    sink = MemorySink(max_bytes=1)  # no room at all for a cut-out
    manifest = tmp_path / "run.jsonl"
    handle = remover(emulator, sink, concurrency=1, manifest=manifest).submit(images)
    report = handle.wait()
    assert report.spilled_count == 1
    (spilled,) = [job for job in handle.results() if job.status is JobStatus.SPILLED]
    assert spilled.billed  # Photoroom was paid for that one, and the job says so
    assert "max_bytes" in str(spilled.error)
    assert spilled.output is not None
    assert spilled.output.uri.startswith("file://")  # the paid cut-out is kept on disk
    assert report.cancelled_count == 9
    assert report.stop_reason is not None
    assert report.stop_reason.startswith("StorageFullError")
    assert emulator.ledger.calls() == 1  # not one more credit for outputs that cannot be kept
    records = [json.loads(line) for line in manifest.read_text().splitlines()[1:]]
    assert [r["status"] for r in records].count("spilled") == 1
    assert records[0]["error_type"] == "StorageFullError"
    # with room again, the next run stores the kept cut-out without calling the engine
    roomy = MemorySink()
    again = remover(emulator, roomy, concurrency=1, manifest=manifest).submit(images).wait()
    assert (again.stored_count, again.spilled_count) == (10, 0)
    assert again.billed_calls == 9
    assert set(emulator.ledger.billed_per_image().values()) == {1}  # each image paid once
    assert spilled.key in roomy.objects


async def test_a_client_of_the_callers_loop_can_drive_a_submitted_batch(
    emulator: PhotoroomEmulator,
) -> None:
    from photoroom_bg import AsyncPhotoroomClient, PhotoroomEngine

    async with AsyncPhotoroomClient(api_key=emulator.api_key, base_url=emulator.url) as client:
        await client.account()  # a pooled connection now belongs to this loop
        for engine in (client, PhotoroomEngine(client)):
            batch = BatchRemover(engine, sink=MemorySink(), requests_per_minute=None)
            report = await batch.submit([photo() for _ in range(4)])  # on the background loop
            assert report.stored_count == 4
            assert (await batch.run([photo()])).stored_count == 1  # on this loop
        assert (await client.account()).images_available == 10_000 - 10


async def test_one_reader_serves_submitted_batches_and_the_callers_loop(
    emulator: PhotoroomEmulator,
) -> None:
    server = ImageServer()
    server.start()
    try:
        async with SourceReader(allow_networks=["127.0.0.1/32"]) as reader:
            batch = remover(emulator, MemorySink(), reader=reader, skip_existing=False)
            urls = [f"{server.url}/img.png"] * 3
            assert (await batch.submit(urls)).stored_count == 3  # the background loop's pool
            assert (await batch.run(urls)).stored_count == 3  # and now this loop's own
    finally:
        server.stop()


def test_failures_are_bounded_too_with_exact_counts(
    emulator: PhotoroomEmulator, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    paths = []
    for i in range(13):
        paths.append(tmp_path / f"in{i:02d}.png")
        paths[-1].write_bytes(photo())
    emulator.inject(*["500"] * 12)
    batch = remover(
        emulator, MemorySink(), keep_results=4, max_retries=0, concurrency=1, track_credits=False
    )
    handle = batch.submit([str(path) for path in paths])
    report = handle.wait()
    assert report.failed_count == 12
    assert report.failure_counts == {"ServerError": 12}
    assert len(report.failures["ServerError"]) == 4  # memory does not grow with them
    assert sum(job.status is JobStatus.FAILED for job in handle.results()) == 4
    retried = handle.retry_failed().wait()
    assert retried.total_count == 4
    assert "8 more could be retried" in caplog.text


def test_blocking_calls_refuse_to_run_on_the_batch_loop(emulator: PhotoroomEmulator) -> None:

    handle = remover(emulator, MemorySink()).submit([photo()])

    async def on_the_batch_loop() -> None:  # e.g. from an on_result callback
        with pytest.raises(RuntimeError, match="would block the batch's own event loop"):
            handle.wait()
        with pytest.raises(RuntimeError, match=r"use async for job in handle\.as_completed\(\)"):
            next(iter(handle.as_completed()))

    _loop.run_sync(on_the_batch_loop())
    assert handle.wait().stored_count == 1


def test_a_callback_waiting_for_its_own_batch_is_refused(emulator: PhotoroomEmulator) -> None:
    # callbacks run in a worker thread: a wait there for the batch whose callback it is
    # would wait for itself, as the batch ends once its callbacks have returned
    handles: list[BatchHandle] = []
    submitted = threading.Event()
    other = remover(emulator, MemorySink()).submit([photo()])
    seen: list[str] = []

    def on_result(result: JobResult) -> None:
        assert submitted.wait(30)
        for call in (handles[0].wait, lambda: next(iter(handles[0].as_completed()))):
            try:
                call()
            except RuntimeError as exc:
                seen.append(str(exc))
        seen.append(f"the other batch stored {other.wait(timeout=30).stored_count}")

    batch = remover(emulator, MemorySink(), on_result=on_result)
    handles.append(batch.submit([photo()]))
    submitted.set()
    assert handles[0].wait(timeout=30).stored_count == 1
    assert seen == [
        "wait() in a callback of the same batch would wait for itself",
        "as_completed() in a callback of the same batch would wait for itself",
        "the other batch stored 1",
    ]


async def test_run_calls_its_callbacks_on_the_callers_loop(emulator: PhotoroomEmulator) -> None:
    # run() shares the caller's loop with the caller's tasks: its callbacks may feed them
    # through the loop's own objects, which are not thread-safe, so they are called there
    finished: asyncio.Queue[int] = asyncio.Queue()
    caller = threading.current_thread()
    threads: set[threading.Thread] = set()

    def on_result(result: JobResult) -> None:
        threads.add(threading.current_thread())
        finished.put_nowait(result.index)

    async def consume() -> list[int]:
        return sorted([await finished.get() for _ in range(3)])

    batch = remover(emulator, MemorySink(), on_result=on_result)
    consumer = asyncio.create_task(consume())
    report = await batch.run([photo() for _ in range(3)])
    assert report.stored_count == 3
    assert await asyncio.wait_for(consumer, 30) == [0, 1, 2]
    assert threads == {caller}


async def test_as_completed_works_with_async_for_too(emulator: PhotoroomEmulator) -> None:
    # the issue promised as_completed() for "for" and "async for": async for raised a
    # TypeError ("requires an object with __aiter__ method, got generator")
    handle = remover(emulator, MemorySink()).submit([photo() for _ in range(6)])
    jobs = [job async for job in handle.as_completed(timeout=30)]
    assert sorted(job.index for job in jobs) == list(range(6))
    assert (await handle).stored_count == 6
    again = [job async for job in handle.as_completed()]  # a finished batch: what it holds
    assert len(again) == 6


async def test_async_as_completed_times_out_with_a_message_and_the_batch_goes_on() -> None:
    from photoroom_bg.testing import Faults

    emulator = PhotoroomEmulator(credits=100, faults=Faults(latency=1.0))
    with emulator.serve():
        handle = remover(emulator, MemorySink()).submit([photo()])
        with pytest.raises(TimeoutError, match=r"no job finished within 0\.05 s"):
            async for _ in handle.as_completed(timeout=0.05):
                pass
        assert (await handle).stored_count == 1


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_the_default_engine_takes_a_timeout(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the batch's own engine always waited 120 s: a slow AI feature had no way to wait
    # longer, a tight service no way to wait less
    emulator = PhotoroomEmulator(credits=100, faults=Faults(latency=1.0))
    kwargs: dict[str, Any] = {"max_retries": 0}
    if how == "argument":
        kwargs["timeout"] = 0.2
    else:
        monkeypatch.setenv("PHOTOROOM_TIMEOUT", "0.2")
    with emulator.serve():
        report = remover(emulator, MemorySink(), **kwargs).submit([photo()]).wait()
    (job,) = report.failures["APITimeoutError"]
    assert job.possibly_billed == 1
    assert "PHOTOROOM_TIMEOUT=<seconds>" in str(job.error)
    assert "--timeout" in str(job.error)


def test_a_bad_timeout_fails_the_remover_not_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="timeout must be greater than 0"):
        BatchRemover(sink=MemorySink(), timeout=0)
    monkeypatch.setenv("PHOTOROOM_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError, match="PHOTOROOM_TIMEOUT='soon'"):
        BatchRemover(sink=MemorySink())


def test_wait_and_exception_time_out_with_a_message_and_the_batch_goes_on() -> None:
    # wait(timeout=0) raised a TimeoutError with no message (on Python 3.10, not even a
    # builtin TimeoutError)
    from photoroom_bg.testing import Faults

    emulator = PhotoroomEmulator(credits=100, faults=Faults(latency=1.0))
    with emulator.serve():
        handle = remover(emulator, MemorySink()).submit([photo()])
        with pytest.raises(TimeoutError, match=r"did not end within 0 s; it goes on"):
            handle.wait(timeout=0)
        with pytest.raises(TimeoutError, match=r"did not end within 0\.01 s"):
            handle.exception(timeout=0.01)
        with pytest.raises(TimeoutError, match=r"no job finished within 0\.01 s"):
            next(handle.as_completed(timeout=0.01))
        # past what a float holds: math.isnan raised OverflowError out of each call. Too
        # long to wait is no limit, as inf is; a negative one is no wait, as 0 is
        for wait in (handle.wait, handle.exception):
            with pytest.raises(TimeoutError, match="within 0 s; it goes on"):
                wait(timeout=-(10**400))
        with pytest.raises(TimeoutError, match="within 0 s; the batch goes on"):
            next(handle.as_completed(timeout=-(10**400)))
        assert handle.wait(timeout=10**400).stored_count == 1
        assert [job.index for job in handle.as_completed(timeout=10**400)] == [0]


async def test_a_completed_jobs_loop_left_early_stops_listening_when_closed(
    emulator: PhotoroomEmulator,
) -> None:
    handle = remover(emulator, MemorySink()).submit([photo() for _ in range(4)])
    jobs = handle.as_completed()
    async for _ in jobs:
        break
    assert len(handle._subscribers) == 1  # still queued jobs for this loop
    await jobs.aclose()
    assert handle._subscribers == []
    await handle
    done = handle.as_completed()
    next(done)
    done.close()
    assert handle._subscribers == []


@pytest.mark.parametrize("which", ["before", "after"])
def test_a_balance_that_does_not_come_holds_no_batch_back(
    which: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The balance is an extra: a balance read that hung (here: stalls past the wait) held
    # every paid call back for the client's timeout, twice, before a single image was made.
    monkeypatch.setattr(_run, "BALANCE_WAIT", 0.3)
    # the requests in order: the balance, three images, the balance
    stalls = [None, None, None, None, "stall"] if which == "after" else ["stall"]
    emulator = PhotoroomEmulator(credits=10, faults=Faults(stall_seconds=6))
    with emulator.serve():
        emulator.inject(*stalls)
        batch = remover(emulator, MemorySink(), track_credits=True, concurrency=2)
        started = time.monotonic()
        with caplog.at_level("WARNING", logger="photoroom_bg.batch"):
            report = batch.submit([photo() for _ in range(3)]).wait(timeout=15)
        took = time.monotonic() - started
    assert report.succeeded_count == 3
    assert report.credits_spent is None  # not known: never a guess
    assert took < 5, took  # the stall lasts 6 s
    assert f"the account balance {which} the batch" in caplog.text
    assert "credits_spent is not reported" in caplog.text
    assert emulator.api_key not in caplog.text
