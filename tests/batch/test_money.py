"""One image, one charge, or an honest count: ambiguous failures, duplicates in flight,
cut-outs the sink did not take, outputs of another engine."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image

from photoroom_bg import (
    BatchRemover,
    FileSystemSink,
    ImageResult,
    MemorySink,
    PhotoroomEngine,
    RetryPolicy,
    S3Sink,
    SegmentOptions,
    _logs,
    _loop,
)
from photoroom_bg.batch import _claims
from photoroom_bg.errors import StorageError
from photoroom_bg.sources import SourceReader
from photoroom_bg.testing import BILLED_FAULTS, PhotoroomEmulator

from ..s3server import S3Server
from .conftest import FAST, job_records, photo, remover


@pytest.fixture
def fast_stall_emulator() -> Any:
    from photoroom_bg.testing import Faults

    emu = PhotoroomEmulator(credits=1000, faults=Faults(stall_seconds=2))
    with emu.serve():
        yield emu


def test_failures_the_server_may_have_billed_are_retried_and_counted(
    fast_stall_emulator: PhotoroomEmulator,
) -> None:
    emulator = fast_stall_emulator
    images = [photo() for _ in range(len(BILLED_FAULTS) + 3)]
    for fault in BILLED_FAULTS:  # one per job: billed and lost, then made on the retry
        emulator.inject(fault, None)
    engine = PhotoroomEngine(
        emulator.async_client(timeout=0.5, max_retries=0)  # a stall outlasts the timeout
    )
    batch = BatchRemover(
        engine, sink=MemorySink(), concurrency=1, requests_per_minute=None, track_credits=False,
        retry_policy=FAST, keep_results=True,
    )  # fmt: skip
    handle = batch.submit(images)
    report = handle.wait()
    assert report.stored_count == len(images)  # retried by default: every image is made
    billed = emulator.ledger.calls()
    assert billed == len(images) + len(BILLED_FAULTS)  # the faults were billed, then lost
    # the report says so: at least the successes, at most everything, never less than paid
    assert report.billed_calls == len(images)
    assert report.possibly_billed_calls == len(BILLED_FAULTS)
    assert report.billed_calls <= billed <= report.billed_calls + report.possibly_billed_calls
    assert report.possibly_billed_twice == len(BILLED_FAULTS)
    twice = [job for job in handle.results() if job.possibly_billed]
    assert [job.charges for job in twice] == [(1, 2)] * len(BILLED_FAULTS)
    _loop_close(engine)


def _loop_close(engine: PhotoroomEngine) -> None:
    from photoroom_bg import _loop

    _loop.run_sync(engine.client.aclose())


def test_retry_possibly_billed_off_fails_those_jobs_instead(emulator: PhotoroomEmulator) -> None:
    images = [photo() for _ in range(4)]
    emulator.inject("bill-reset", None, "bill-500")
    strict = RetryPolicy(initial_delay=0.005, retry_possibly_billed=False)
    report = remover(emulator, MemorySink(), concurrency=1, retry_policy=strict).submit(images)
    result = report.wait()
    assert (result.stored_count, result.failed_count) == (2, 2)
    assert result.possibly_billed_calls == 2
    assert emulator.ledger.calls() == 4  # two made, two billed and lost: never a third try
    assert set(result.failure_counts) == {"APIConnectionError", "ServerError"}


def test_the_same_input_twice_in_flight_is_billed_once(emulator: PhotoroomEmulator) -> None:
    from photoroom_bg.testing import Faults

    slow = PhotoroomEmulator(credits=100, faults=Faults(latency=0.2))
    image, other = photo(), photo()
    with slow.serve():
        handle = remover(slow, MemorySink(), concurrency=8, keep_results=True).submit(
            [image, image, other, image, other]
        )
        report = handle.wait()
    assert slow.ledger.calls() == 2
    # in-memory inputs are named image-1, image-2...: the copies get keys of their own
    assert (report.succeeded_count, report.stored_count) == (5, 5)
    reasons = [job.reason or "" for job in handle.results()]
    assert sum(reason.startswith("the same image as #") for reason in reasons) == 3


def test_a_folder_and_a_glob_over_it_bill_each_image_once(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        (folder / f"p{i}.png").write_bytes(photo())
    report = remover(emulator, tmp_path / "out").submit([folder, str(folder / "*.png")]).wait()
    assert report.total_count == 12
    assert (report.succeeded_count, report.skipped_count) == (6, 6)
    assert emulator.ledger.calls() == 6


def test_a_re_run_into_a_folder_inside_the_inputs_never_takes_cut_outs_for_inputs(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    # "remove photos -o photos/cutouts", run again to resume: the second run listed the
    # first one's cut-outs (and its spill folder) as inputs and paid for cut-outs of them
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        (photos / f"p{i}.png").write_bytes(photo())
    spill = photos / "spill"
    (spill / "x").mkdir(parents=True)
    (spill / "x" / "waiting.png").write_bytes(photo())  # a cut-out a run could not store
    for sources in (photos, str(photos / "**" / "*.png"), photos):
        batch = remover(emulator, photos / "cutouts", spill_dir=spill)
        report = batch.submit(sources).wait()
        assert report.total_count == 4, sources
    assert emulator.ledger.calls() == 4
    assert len(list((photos / "cutouts").glob("*.png"))) == 4


def test_a_folder_that_is_the_output_folder_is_refused_as_an_input(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    # outputs beside the inputs: every re-run paid for cut-outs of the last one's cut-outs
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(photo())
    alone = photos / "b.png"
    alone.write_bytes(photo())
    report = remover(emulator, photos).submit([photos, str(photos / "*.png"), alone]).wait()
    failures = report.failures["InvalidSourceError"]
    assert [f.index for f in failures] == [0, 1]
    assert all("is where this batch stores cut-outs" in str(f.error) for f in failures)
    assert report.succeeded_count == 1  # a file named on its own is still taken
    assert emulator.ledger.calls() == 1


def test_the_same_content_under_another_name_is_stored_again_from_the_first_cut_out(
    tmp_path: Path,
) -> None:
    from photoroom_bg.testing import Faults

    slow = PhotoroomEmulator(credits=100, faults=Faults(latency=0.2))
    data = photo()
    (tmp_path / "a.png").write_bytes(data)
    (tmp_path / "b.png").write_bytes(data)
    sink = MemorySink()
    with slow.serve():
        report = remover(slow, sink, concurrency=2).submit(
            [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
        )
        result = report.wait()
    assert slow.ledger.calls() == 1
    assert result.succeeded_count == 2
    a, b = sorted(sink.objects)
    assert a.startswith("a-")
    assert b.startswith("b-")
    assert sink.objects[a] == sink.objects[b]


def _copies(folder: Path, names: str, data: bytes) -> list[str]:
    for name in names:
        (folder / f"{name}.png").write_bytes(data)
    return [str(folder / f"{name}.png") for name in names]


def test_the_same_content_under_another_name_after_the_first_is_done_is_not_paid_again(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    # one product photo under several SKUs, far apart in a batch (here one job at a time):
    # only copies in flight together were made once, and each later copy was paid again
    inputs = _copies(tmp_path, "abc", photo())
    sink = MemorySink()
    handle = remover(emulator, sink, concurrency=1, keep_results=True).submit(inputs)
    report = handle.wait()
    assert emulator.ledger.calls() == 1
    assert (report.succeeded_count, report.billed_calls) == (3, 1)
    assert len(sink.objects) == 3
    assert len(set(sink.objects.values())) == 1
    reasons = [job.reason or "" for job in handle.results()]
    assert reasons[1:] == ["the same image as #0: its cut-out, stored again"] * 2


@pytest.mark.parametrize(("remembered", "calls"), [(3, 3), (2, 4)])
def test_a_batch_remembers_a_bounded_number_of_cut_outs(
    emulator: PhotoroomEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    remembered: int,
    calls: int,
) -> None:
    from photoroom_bg.batch import _run

    monkeypatch.setattr(_run, "MADE_REMEMBERED", remembered)
    first = photo()
    inputs = [  # a copy of a after two other images
        *_copies(tmp_path, "a", first),
        *_copies(tmp_path, "b", photo()),
        *_copies(tmp_path, "c", photo()),
        *_copies(tmp_path, "d", first),
    ]
    report = remover(emulator, MemorySink(), concurrency=1).submit(inputs).wait()
    assert (report.succeeded_count, emulator.ledger.calls()) == (4, calls)


def test_a_copy_whose_first_cut_out_cannot_be_read_back_is_made_again(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    sink = MemorySink()

    def lose_the_first(job: Any) -> None:
        if job.index == 0:
            sink._objects.clear()  # deleted by someone else meanwhile

    batch = remover(emulator, sink, concurrency=1, on_result=lose_the_first)
    report = batch.submit(_copies(tmp_path, "ab", photo())).wait()
    assert (report.succeeded_count, emulator.ledger.calls()) == (2, 2)


@pytest.mark.parametrize(("since", "calls"), [("kept", 1), ("deleted", 2), ("spoiled", 2)])
def test_a_renamed_copy_in_a_later_run_is_stored_from_the_earlier_cut_out(
    emulator: PhotoroomEmulator, tmp_path: Path, since: str, calls: int
) -> None:
    # the manifest recorded keys only, so the same photo under a new name (a renamed file,
    # a new SKU) in a later run was paid for again; now the earlier cut-out is copied, as
    # long as it can still be read back whole
    (tmp_path / "in").mkdir()
    data = photo()
    manifest = tmp_path / "manifest.jsonl"
    sink = FileSystemSink(tmp_path / "out")
    first = remover(emulator, sink, manifest=manifest).submit(_copies(tmp_path / "in", "a", data))
    assert first.wait().succeeded_count == 1
    [made] = list((tmp_path / "out").iterdir())
    if since == "deleted":
        made.unlink()
    elif since == "spoiled":
        made.write_bytes(made.read_bytes()[:100])  # cut short by a crash of someone else's
    later = remover(emulator, sink, manifest=manifest, keep_results=True)
    handle = later.submit(_copies(tmp_path / "in", "b", data))
    report = handle.wait()
    assert (report.succeeded_count, emulator.ledger.calls()) == (1, calls)
    [result] = handle.results()
    output = tmp_path / "out" / result.key
    if since == "kept":
        assert (
            result.reason == f"the same image as {made.name}, made by an earlier run: stored again"
        )
        assert report.billed_calls == 0
        assert output.read_bytes() == made.read_bytes()
    else:
        assert result.reason is None  # paid for, and stored
        assert report.billed_calls == 1
    # each record names what its cut-out was made as: the same image, the same options
    first_as, later_as = (record["made_as"] for record in job_records(manifest))
    assert first_as == later_as
    assert len(bytes.fromhex(first_as)) == 16


def test_a_renamed_copy_is_found_through_a_manifest_kept_in_the_sink(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    data, sink = photo(), MemorySink()
    for name in "ab":
        batch = remover(emulator, sink, manifest_key="runs/manifest.jsonl")
        assert batch.submit(_copies(tmp_path, name, data)).wait().succeeded_count == 1
    assert emulator.ledger.calls() == 1
    a, b = sorted(key for key in sink.objects if not key.startswith("runs/"))
    assert (a[:2], b[:2]) == ("a-", "b-")
    assert sink.objects[a] == sink.objects[b]


def test_a_renamed_copy_with_other_options_is_paid_for(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    data, sink, manifest = photo(), MemorySink(), tmp_path / "manifest.jsonl"
    remover(emulator, sink, manifest=manifest).submit(_copies(tmp_path, "a", data)).wait()
    jpeg = remover(emulator, sink, manifest=manifest, options=SegmentOptions(format="jpg"))
    assert jpeg.submit(_copies(tmp_path, "b", data)).wait().succeeded_count == 1
    assert emulator.ledger.calls() == 2


class FailingPuts(MemorySink):
    """A sink whose puts fail with an ordinary storage error until it is fixed."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = True
        self.attempts = 0

    async def put(self, key: str, data: bytes, **kwargs: Any) -> Any:
        if self.broken:
            self.attempts += 1
            raise StorageError("the disk is being replaced")
        return await super().put(key, data, **kwargs)


class BuggyPuts(MemorySink):
    """A sink of the caller's whose puts raise something outside the SDK's errors."""

    def __init__(self) -> None:
        super().__init__()
        self.buggy = True

    async def put(self, key: str, data: bytes, **kwargs: Any) -> Any:
        if self.buggy:
            raise RuntimeError("a bug in the caller's sink")
        return await super().put(key, data, **kwargs)


def test_a_sink_that_raises_something_unforeseen_after_billing_keeps_the_cut_out(
    emulator: PhotoroomEmulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the job failed with UnexpectedError and the paid cut-out was thrown away
    sink, spill = BuggyPuts(), tmp_path / "spill"
    inputs = [*_copies(tmp_path, "a", photo()), *_copies(tmp_path, "b", photo())]
    handle = remover(emulator, sink, spill_dir=spill, keep_results=True).submit(inputs)
    report = handle.wait()
    assert (report.spilled_count, emulator.ledger.calls()) == (2, 2)
    assert all("unexpected RuntimeError" in str(job.error) for job in handle.results())
    assert "a bug in the caller's sink" in caplog.text  # with its traceback, to be fixed
    sink.buggy = False
    again = handle.retry_failed().wait()
    assert (again.succeeded_count, again.billed_calls, emulator.ledger.calls()) == (2, 0, 2)


class HangingPuts(MemorySink):
    """A sink whose puts never return until ``fixed``; ``storing`` is set by the first."""

    def __init__(self) -> None:
        super().__init__()
        self.fixed, self.storing = False, threading.Event()

    async def put(self, key: str, data: bytes, **kwargs: Any) -> Any:
        if not self.fixed:
            self.storing.set()
            await anyio.sleep_forever()
        return await super().put(key, data, **kwargs)


def test_a_sink_that_hangs_after_billing_ends_the_batch_with_the_cut_outs_kept(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    # the store is shielded (paid for: never abandoned), so a put that never returned kept
    # the batch running forever, cancel() included
    sink, spill = HangingPuts(), tmp_path / "spill"
    inputs = [*_copies(tmp_path, "a", photo()), *_copies(tmp_path, "b", photo())]
    batch = remover(emulator, sink, spill_dir=spill, store_timeout=0.5, concurrency=2)
    handle = batch.submit(inputs)
    assert sink.storing.wait(30)
    handle.cancel()
    report = handle.wait(timeout=30)
    assert (report.spilled_count, emulator.ledger.calls()) == (2, 2)
    sink.fixed = True
    again = handle.retry_failed().wait()
    assert (again.succeeded_count, again.billed_calls, emulator.ledger.calls()) == (2, 0, 2)


class HangingLookups(MemorySink):
    """A sink whose look-ups (``stat`` and ``exists``) never return: of every key, or of
    every key but the one the batch checks the sink with when it starts."""

    def __init__(self, answers_at_start: bool) -> None:
        super().__init__()
        self.answers_at_start = answers_at_start

    async def _hang(self, key: str) -> None:
        from photoroom_bg.batch._storage import PROBE_KEY

        if not (self.answers_at_start and key == PROBE_KEY):
            await anyio.sleep_forever()

    async def stat(self, key: str) -> Any:
        await self._hang(key)
        return await super().stat(key)

    async def exists(self, key: str) -> bool:
        await self._hang(key)
        return await super().exists(key)


def test_a_sink_whose_look_ups_hang_fails_the_jobs_unpaid_instead_of_hanging(
    emulator: PhotoroomEmulator,
) -> None:
    from photoroom_bg.errors import StorageError

    with pytest.raises(StorageError, match=r"took more than 0\.3 s to answer"):
        remover(emulator, HangingLookups(False), store_timeout=0.3).submit([photo()]).wait(30)
    batch = remover(emulator, HangingLookups(True), store_timeout=0.3, keep_results=True)
    handle = batch.submit([photo(), photo()])
    report = handle.wait(timeout=30)
    assert (report.failed_count, emulator.ledger.calls()) == (2, 0)
    assert all("to look an output up" in str(job.error) for job in handle.results())


def test_a_manifest_upload_that_hangs_ends_the_batch_with_the_manifest_kept_locally(
    emulator: PhotoroomEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    class HangsOnTheManifest(MemorySink):
        async def put(self, key: str, data: bytes, **kwargs: Any) -> Any:
            if key == "runs/manifest.jsonl":
                await anyio.sleep_forever()
            return await super().put(key, data, **kwargs)

    sink = HangsOnTheManifest()
    batch = remover(emulator, sink, manifest_key="runs/manifest.jsonl", store_timeout=0.3)
    report = batch.submit([photo(), photo()]).wait(timeout=30)
    assert (report.succeeded_count, len(sink.objects)) == (2, 2)
    assert "(it took more than 0.3 s, the store_timeout); it is kept at" in caplog.text


def test_a_copy_of_a_spilled_cut_out_is_taken_from_the_spill_folder(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    sink, spill = FailingPuts(), tmp_path / "spill"
    batch = remover(emulator, sink, store_retry_budget=0.1, spill_dir=spill, concurrency=1)
    handle = batch.submit(_copies(tmp_path, "ab", photo()))
    report = handle.wait()
    assert (report.spilled_count, emulator.ledger.calls()) == (2, 1)
    sink.broken = False
    again = handle.retry_failed().wait()
    assert (again.succeeded_count, again.billed_calls, emulator.ledger.calls()) == (2, 0, 1)


def test_a_sink_that_fails_after_billing_keeps_the_cut_out_for_the_next_run(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    images = []
    for i in range(3):
        images.append(str(tmp_path / f"in{i}.png"))
        Path(images[-1]).write_bytes(photo())
    sink = FailingPuts()
    spill = tmp_path / "spill"
    batch = remover(emulator, sink, store_retry_budget=0.3, spill_dir=spill, concurrency=1)
    handle = batch.submit(images)
    first = handle.wait()
    assert first.spilled_count == 3
    assert sink.attempts > 3  # the put was retried within its budget before spilling
    assert len([p for p in spill.rglob("*") if p.is_file()]) == 3
    assert emulator.ledger.calls() == 3
    sink.broken = False
    again = handle.retry_failed().wait()  # spilled jobs are retried: stored, not re-made
    assert (again.succeeded_count, again.billed_calls) == (3, 0)
    assert emulator.ledger.calls() == 3
    assert len(sink.objects) == 3
    assert [p for p in spill.rglob("*") if p.is_file()] == []  # stored, then let go


class PreviewEngine:
    """Stands in for an offline model: free, named like the local engine."""

    name = "local:u2netp"
    bills = False

    async def process(self, image: bytes, options: Any) -> ImageResult:
        shade = hashlib.sha256(image).digest()[:3]  # a cut-out of its own per image
        out = io.BytesIO()
        Image.new("RGBA", (4, 4), (*shade, 255)).save(out, "PNG")
        return ImageResult(out.getvalue())

    async def aclose(self) -> None:
        pass


def test_a_preview_from_another_engine_never_stands_in_for_a_photoroom_cut_out(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    images = [photo() for _ in range(4)]
    out = tmp_path / "out"
    preview = BatchRemover(PreviewEngine(), sink=out).submit(images).wait()
    assert preview.succeeded_count == 4
    real = remover(emulator, out).submit(images).wait()
    assert (real.succeeded_count, real.skipped_count) == (4, 0)
    assert emulator.ledger.calls() == 4
    again = BatchRemover(PreviewEngine(), sink=out).submit(images).wait()
    assert again.skipped_count == 4  # and each engine still finds its own outputs
    assert len(list(out.iterdir())) == 8


def test_the_photoroom_engine_keeps_the_keys_outputs_always_had() -> None:
    from photoroom_bg.sinks import KeyTemplate

    old = hashlib.sha256(b"c0ffee:0pt10ns").hexdigest()[:12]
    key = KeyTemplate().render(
        stem="shoe", content_digest="c0ffee", options_digest="0pt10ns", ext="png"
    )
    assert key == f"shoe-{old}.png"  # a re-run after an upgrade skips what is stored


def test_a_memory_sink_given_as_a_string_keeps_its_outputs(emulator: PhotoroomEmulator) -> None:
    images = [photo() for _ in range(3)]
    batch = remover(emulator, "memory://")
    first = batch.submit(images).wait()
    second = batch.submit(images).wait()
    assert (first.succeeded_count, second.skipped_count) == (3, 3)
    assert isinstance(batch.sink, MemorySink)
    assert len(batch.sink.objects) == 3  # the outputs can be read
    assert emulator.ledger.calls() == 3


def test_spilled_cut_outs_wait_in_a_folder_named_by_output_key(tmp_path: Path) -> None:
    from photoroom_bg.batch import default_spill_dir

    assert default_spill_dir() == Path(str(tmp_path / "spill"))  # the tests' own folder
    shutil.rmtree(tmp_path / "spill", ignore_errors=True)


class HeldSink(MemorySink):
    """A memory sink whose puts wait until ``release`` is set; ``storing``: one has begun."""

    def __init__(self) -> None:
        super().__init__()
        self.release, self.storing = threading.Event(), threading.Event()

    async def put(self, key: str, data: bytes, **kwargs: Any) -> Any:
        self.storing.set()
        await anyio.to_thread.run_sync(self.release.wait)
        return await super().put(key, data, **kwargs)


def test_a_second_run_on_the_same_manifest_is_refused_before_it_pays(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    # Two runs into one folder (the command started twice, an overlapping cron job) both
    # skipped nothing yet stored and paid for the same images twice.
    from photoroom_bg.errors import ConfigurationError

    images = [photo() for _ in range(3)]
    manifest = tmp_path / "manifest.jsonl"
    sink = HeldSink()
    release, storing = sink.release, sink.storing
    first = remover(emulator, sink, manifest=manifest, concurrency=1).submit(images)
    try:
        assert storing.wait(30)  # the first run is under way, one image paid for
        before = manifest.read_bytes()
        second = remover(emulator, MemorySink(), manifest=manifest, concurrency=1)
        with pytest.raises(ConfigurationError, match="another run is using the manifest"):
            second.submit(images).wait()
        assert emulator.ledger.calls() == 1  # the second run paid for nothing
        assert manifest.read_bytes() == before  # and wrote nothing
    finally:
        release.set()
    assert first.wait().stored_count == 3
    again = remover(emulator, sink, manifest=manifest).submit(images).wait()
    assert (again.skipped_count, emulator.ledger.calls()) == (3, 3)


@pytest.mark.parametrize(
    "shared", ["one remover", "two removers, one folder", "a folder and its subfolder"]
)
def test_batches_running_at_once_in_one_process_pay_once_for_an_output(
    emulator: PhotoroomEmulator, tmp_path: Path, shared: str
) -> None:
    # a notebook cell run twice while its first handle still runs (submit() returns at
    # once), or two services' jobs on the same folder: each image was paid for twice; and
    # the same files named from two roots (out/sub + "x.png", out + "sub/x.png") still were
    images = [photo() for _ in range(6)]
    first = remover(emulator, str(tmp_path / "out" / "sub"), concurrency=3)
    if shared == "one remover":
        second = first
    elif shared == "two removers, one folder":
        second = remover(emulator, str(tmp_path / "out" / "sub"))
    else:
        second = remover(
            emulator, str(tmp_path / "out"), key_template="sub/{stem}-{digest12}.{ext}"
        )
    a, b = first.submit(images), second.submit(images)
    reports = [a.wait(), b.wait()]
    assert emulator.ledger.calls() == len(images)
    assert sum(r.succeeded_count for r in reports) == len(images)
    assert all(r.stored_count == len(images) for r in reports)


def test_two_batches_naming_one_bucket_prefix_two_ways_pay_once_for_an_output(
    emulator: PhotoroomEmulator, s3_server: S3Server, s3_prefix: str
) -> None:
    # the same objects through s3://b/p/sub + "x.png" and s3://b/p + "sub/x.png", the
    # endpoint spelled with and without a trailing slash: each image was paid for twice
    images = [photo() for _ in range(6)]
    options = s3_server.sink_options()
    endpoint = options.pop("endpoint_url")
    sinks = [
        S3Sink(f"{s3_prefix}/sub", endpoint_url=endpoint, **options),
        S3Sink(s3_prefix, endpoint_url=endpoint.upper().replace("HTTP", "http") + "/", **options),
    ]
    first = remover(emulator, sinks[0], concurrency=3)
    second = remover(emulator, sinks[1], key_template="sub/{stem}-{digest12}.{ext}")
    a, b = first.submit(images), second.submit(images)
    try:
        reports = [a.wait(), b.wait()]
    finally:
        for sink in sinks:
            asyncio.run(sink.aclose())
    assert emulator.ledger.calls() == len(images)
    assert sum(r.succeeded_count for r in reports) == len(images)
    assert all(r.stored_count == len(images) for r in reports)


def test_a_re_run_into_a_prefix_inside_the_listed_one_never_takes_cut_outs_for_inputs(
    emulator: PhotoroomEmulator, s3_server: S3Server, s3_prefix: str
) -> None:
    # s3://b/p/ listed, outputs in s3://b/p/cutouts/: the second run paid for the cut-outs
    options = s3_server.sink_options()
    inputs = S3Sink(s3_prefix, **options)
    for i in range(3):
        asyncio.run(inputs.put(f"raw/p{i}.png", photo(), content_type="image/png"))
    asyncio.run(inputs.aclose())
    region = options.pop("region")
    reader = SourceReader(s3_options={**options, "region_name": region})
    sink = S3Sink(f"{s3_prefix}/cutouts", **s3_server.sink_options())
    batch = remover(emulator, sink, reader=reader)
    try:
        reports = [batch.submit(f"{s3_prefix}/").wait() for _ in range(2)]
        outputs = batch.submit(f"{s3_prefix}/cutouts/").wait()
    finally:
        _loop.run_sync(reader.aclose())  # its clients live on the loop submit() ran on
        _loop.run_sync(sink.aclose())
    assert [r.total_count for r in reports] == [3, 3]
    assert emulator.ledger.calls() == 3
    assert outputs.total_count == 0
    assert "is where this batch stores cut-outs" in str(outputs.listing_error)


@pytest.mark.parametrize("spelling", ["the environment", "localhost"])
def test_the_output_prefix_is_left_out_however_the_reader_spells_its_server(
    emulator: PhotoroomEmulator,
    s3_server: S3Server,
    s3_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    spelling: str,
) -> None:
    # the sink given its endpoint and the reader finding it in AWS_ENDPOINT_URL_S3 (or one
    # writing localhost, the other 127.0.0.1): taken for two servers, each re-run listed
    # the cut-outs as inputs and paid for cut-outs of them
    options = s3_server.reader_options()
    endpoint = options.pop("endpoint_url")
    inputs = S3Sink(s3_prefix, **s3_server.sink_options())
    for i in range(3):
        asyncio.run(inputs.put(f"raw/p{i}.png", photo(), content_type="image/png"))
    asyncio.run(inputs.aclose())
    if spelling == "the environment":
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        reader = SourceReader(s3_options=options)
    else:
        reader = SourceReader(s3_options={**options, "endpoint_url": endpoint})
        endpoint = endpoint.replace("127.0.0.1", "localhost")
    sink_options = {**s3_server.sink_options(), "endpoint_url": endpoint}
    sink = S3Sink(f"{s3_prefix}/cutouts", **sink_options)
    batch = remover(emulator, sink, reader=reader)
    try:
        reports = [batch.submit(f"{s3_prefix}/").wait() for _ in range(2)]
    finally:
        _loop.run_sync(reader.aclose())
        _loop.run_sync(sink.aclose())
    assert [r.total_count for r in reports] == [3, 3]
    assert emulator.ledger.calls() == 3


def test_an_output_at_the_buckets_root_is_never_listed_as_inputs(
    emulator: PhotoroomEmulator, s3_server: S3Server, s3_new_bucket: str
) -> None:
    # an output at the root ("" prefix) was never left out: each run of
    # `edit s3://b/ -o s3://b` took the earlier cut-outs for inputs and paid for them
    reader = SourceReader(s3_options=s3_server.reader_options())
    sink = S3Sink(f"s3://{s3_new_bucket}", create_bucket=True, **s3_server.sink_options())
    asyncio.run(sink.put("p0.png", photo(), content_type="image/png"))
    batch = remover(emulator, sink, reader=reader)
    try:
        report = batch.submit(f"s3://{s3_new_bucket}/").wait()
    finally:
        _loop.run_sync(reader.aclose())
        _loop.run_sync(sink.aclose())
    assert report.total_count == 0
    assert "is where this batch stores cut-outs" in str(report.listing_error)
    assert emulator.ledger.calls() == 0


def test_a_batch_waiting_for_another_ones_output_pays_when_that_one_fails(
    tmp_path: Path,
) -> None:
    # the first batch's call fails for good: the one waiting must not take that as stored
    from photoroom_bg.testing import Faults

    emulator = PhotoroomEmulator(credits=1000, faults=Faults(latency=0.3))  # calls overlap
    strict = RetryPolicy(initial_delay=0.005, retry_possibly_billed=False)
    image = photo()
    with emulator.serve():
        emulator.inject("bill-500")  # the first call: billed, answered with a 500
        first = remover(emulator, str(tmp_path / "out"), retry_policy=strict).submit([image])
        second = remover(emulator, str(tmp_path / "out"), retry_policy=strict).submit([image])
        reports = sorted([first.wait(), second.wait()], key=lambda r: r.failed_count)
    assert (reports[0].succeeded_count, reports[1].failed_count) == (1, 1)
    assert reports[1].possibly_billed_calls == 1
    assert emulator.ledger.calls() == 2


def test_a_batch_waiting_for_another_ones_output_can_be_cancelled(
    emulator: PhotoroomEmulator,
) -> None:
    image, sink = photo(), HeldSink()
    release, storing = sink.release, sink.storing
    first = remover(emulator, sink).submit([image])
    try:
        assert storing.wait(30)  # the first batch holds the output, its put held
        second = remover(emulator, sink).submit([image])
        deadline = time.monotonic() + 30
        while not any(_claims._held.values()):  # until the second batch waits for the first
            assert time.monotonic() < deadline, "the second batch never waited"
            release.wait(0.005)  # (never set here: a short pause between looks)
        second.cancel()
        report = second.wait(timeout=30)  # it was waiting for the first: cancel reaches it
        assert (report.cancelled_count, emulator.ledger.calls()) == (1, 1)
    finally:
        release.set()
    assert first.wait().succeeded_count == 1


TWO_PROCESSES = textwrap.dedent(
    """
    import sys
    from photoroom_bg import BatchRemover
    url, out, *paths = sys.argv[1:]
    batch = BatchRemover(sink=out, base_url=url, concurrency=3, requests_per_minute=None,
                         track_credits=False)
    print("ready", flush=True)
    sys.stdin.readline()  # both start together
    report = batch.submit([open(p, "rb").read() for p in paths]).wait()
    print(report.succeeded_count, report.skipped_count, flush=True)
    """
)


def test_two_processes_on_one_folder_pay_once_for_an_output(tmp_path: Path) -> None:
    # two scripts, or two workers of the service, on one folder: each image was paid twice
    from photoroom_bg.testing import Faults

    inputs = []
    for i in range(6):
        inputs.append(tmp_path / f"in{i}.png")
        inputs[-1].write_bytes(photo())
    out = tmp_path / "out"
    emulator = PhotoroomEmulator(credits=1000, faults=Faults(latency=0.3), image_work=False)
    env = {**os.environ, "PHOTOROOM_API_KEY": emulator.api_key}
    with emulator.serve() as url, contextlib.ExitStack() as stack:
        children = [
            stack.enter_context(
                subprocess.Popen(
                    [sys.executable, "-c", TWO_PROCESSES, url, str(out), *map(str, inputs)],
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
            for _ in range(2)
        ]
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n"
        for child in children:  # both go at once
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        counts = [child.communicate(timeout=120)[0].split() for child in children]
    assert [child.returncode for child in children] == [0, 0]
    made = sum(int(succeeded) for succeeded, _ in counts)
    assert (made, emulator.ledger.calls()) == (6, 6)
    assert sum(int(skipped) for _, skipped in counts) == 6
    stored = [p.name for p in out.iterdir() if not p.name.startswith(".")]
    assert len(stored) == 6
    place = _claims.place_of(FileSystemSink(out))
    for key in stored:  # the processes are gone, and so are their claims
        with other_process_claim(place, key):
            pass


@contextlib.contextmanager
def other_process_claim(place: Any, key: str) -> Iterator[None]:
    """Hold the claim of ``key`` in ``place`` as another process would: through an open file
    description of the claim file of its own (fails at once if someone holds it)."""
    import fcntl

    byte = _claims._claim_byte(place, key)
    assert byte is not None
    with open(os.path.join(_claims._claims_folder(), "claims"), "r+b") as other:
        _claims._set(other.fileno(), byte[1], fcntl.F_WRLCK, fcntl.F_OFD_SETLK)
        yield


def test_a_batch_waiting_for_another_process_can_be_cancelled_and_leaves_no_lock(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    image, out = photo(), tmp_path / "out"
    first = remover(emulator, str(out)).submit([image]).wait()
    assert first.succeeded_count == 1
    (key,) = [p.name for p in out.iterdir() if not p.name.startswith(".")]
    (out / key).unlink()  # to be made again, while "another process" makes it
    with other_process_claim(_claims.place_of(FileSystemSink(out)), key):
        waiting = remover(emulator, str(out)).submit([image])
        deadline = time.monotonic() + 30
        while not any(t.name == "photoroom-bg claim" for t in threading.enumerate()):
            assert time.monotonic() < deadline, "the batch never waited for the claim"
            time.sleep(0.005)  # a short pause between looks
        waiting.cancel()
        assert waiting.wait(timeout=30).cancelled_count == 1
        assert emulator.ledger.calls() == 1
    # the other "process" is done; the given-up wait must not keep the claim
    again = remover(emulator, str(out)).submit([image]).wait(timeout=30)
    assert (again.succeeded_count, emulator.ledger.calls()) == (1, 2)


def test_a_claims_folder_that_is_not_private_is_not_used(
    emulator: PhotoroomEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "tmp"
    folder = shared / f"photoroom-bg-claims-{os.getuid()}"
    folder.mkdir(parents=True)
    folder.chmod(0o777)  # someone else could plant files in it
    monkeypatch.setattr("tempfile.tempdir", str(shared))
    _claims._claims_folder.cache_clear()
    monkeypatch.setattr(_claims, "_file", None)  # this process opens it again
    try:
        assert _claims._claim_byte(("file", "/x"), "k.png") is None
        report = remover(emulator, str(tmp_path / "out")).submit([photo()]).wait()
        assert report.succeeded_count == 1  # claims within the process still hold
        assert list(folder.iterdir()) == []
    finally:
        _claims._claims_folder.cache_clear()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_holds_none_of_its_parents_claims() -> None:
    # the child shared the parent's open file description, so it kept the parent's claims
    # alive after the parent died, and inherited claims no batch of its own would release
    async def hold_and_fork() -> int:
        async def wait(until: Any) -> Any:
            return await until()

        async with _claims.making(("file", "/forked"), "k.png", wait):
            assert _claims._file is not None
            pid = os.fork()
            if pid == 0:  # the child: report through the exit code only
                ok = _claims._held == {} and _claims._file is None
                os._exit(0 if ok else 1)
            return os.waitpid(pid, 0)[1]

    assert os.waitstatus_to_exitcode(asyncio.run(hold_and_fork())) == 0
    with other_process_claim(("file", "/forked"), "k.png"):
        pass  # and the parent's claim ended with its block


def test_a_batch_waiting_for_another_that_spills_takes_the_spilled_cut_out(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    # the first batch paid, and its sink refused the cut-out: it went to the spill folder.
    # The batch that waited for it looked only in the sink, and paid again
    image, sink, spill = photo(), FailingPuts(), tmp_path / "spill"
    batches = [
        remover(emulator, sink, store_retry_budget=0.3, spill_dir=spill).submit([image])
        for _ in range(2)
    ]
    reports = [batch.wait() for batch in batches]
    assert emulator.ledger.calls() == 1
    assert [r.spilled_count for r in reports] == [1, 1]  # the sink still refuses it
    assert len([p for p in spill.rglob("*") if p.is_file()]) == 1
    sink.broken = False
    again = remover(emulator, sink, spill_dir=spill).submit([image]).wait()
    assert (again.succeeded_count, emulator.ledger.calls(), len(sink.objects)) == (1, 1, 1)


def test_an_answer_with_no_whole_image_is_never_stored_and_the_next_run_makes_it(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    # a 200 whose image was cut short was stored as the cut-out: the job "succeeded", and
    # every later run skipped the image as made
    images = [photo(), photo()]
    emulator.inject(*["bill-garble"] * 3)  # the first job's three attempts
    first = remover(emulator, tmp_path / "out", concurrency=1, max_retries=2).submit(images)
    report = first.wait()
    assert (report.stored_count, report.failed_count) == (1, 1)
    assert set(report.failure_counts) == {"APIResponseValidationError"}
    assert report.possibly_billed_calls == 3
    stored = sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_file())
    assert len(stored) == 1
    again = remover(emulator, tmp_path / "out").submit(images).wait()
    assert (again.succeeded_count, again.skipped_count) == (1, 1)
    for cut in (tmp_path / "out").iterdir():
        if cut.is_file():
            with Image.open(cut) as img:
                img.load()  # whole images only


def test_a_batch_under_warnings_as_errors_keeps_every_answer_it_paid_for(
    emulator: PhotoroomEmulator,
) -> None:
    # Photoroom's "ignored unsupported parameters" header became a PhotoroomWarning raised
    # from each billed answer: 6 images charged, none stored, and the report said 0 billed
    options = SegmentOptions(extra_params={"someNewParam": "x"})
    sink = MemorySink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = remover(emulator, sink, options=options).submit([photo() for _ in range(6)]).wait()
    assert (report.stored_count, report.billed_calls) == (6, 6)
    assert emulator.ledger.calls() == len(sink.objects) == 6


class _RaisingHandler(logging.Handler):
    """An application's log handler with a bug: it raises on every record."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.calls = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.calls += 1
        raise RuntimeError("the handler broke")


def test_a_log_handler_that_raises_never_loses_an_answer_paid_for(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the SDK's own log lines (a call's status, a retry after a billed 500) raised out of the
    # job once the call was billed: 15 images charged, 3 stored, and the batch ended raw
    from photoroom_bg.testing import Faults

    monkeypatch.setattr(_logs, "_reported", set())  # each failure is shown once
    faults = Faults(rates={"bill-500": 0.2, "503": 0.1}, seed=5)
    emulator = PhotoroomEmulator(credits=1000, faults=faults)
    handler, logger = _RaisingHandler(), logging.getLogger("photoroom_bg")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    sink = MemorySink()
    try:
        with emulator.serve():
            report = remover(emulator, sink).submit([photo() for _ in range(20)]).wait()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert handler.calls > 20  # it was called, and failed, all along
    assert (report.stored_count, report.failed_count, len(sink.objects)) == (20, 0, 20)
    assert report.billed_calls + report.possibly_billed_calls >= emulator.ledger.calls()
    # reported as the logging module reports a handler's own failure, once
    err = capsys.readouterr().err
    assert err.count("--- Logging error ---") == 1
    assert "RuntimeError: the handler broke" in err
