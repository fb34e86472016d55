"""Failures stay inside their job, the batch never hangs, and cancel() means no new billed call."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import logging
import os
import queue
import re
import shutil
import signal
import threading
import time
import tracemalloc
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from photoroom_bg import (
    AsyncPhotoroomClient,
    BatchRemover,
    ImageResult,
    JobResult,
    JobStatus,
    KeyTemplate,
    MemorySink,
    PhotoroomEngine,
    Progress,
    RetryPolicy,
    SegmentOptions,
)
from photoroom_bg.batch import _manifest
from photoroom_bg.errors import (
    BucketNotFoundError,
    ConfigurationError,
    InvalidSourceError,
    ServerError,
    SourceError,
    StorageAuthError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
    UnexpectedError,
    ValidationError,
)
from photoroom_bg.sinks import FileSystemSink, S3Sink, StoredObject
from photoroom_bg.sources import ImageSource, SourceReader
from photoroom_bg.testing import Faults, PhotoroomEmulator

from ..disks import no_file_at
from ..loopback import closed_port
from .conftest import job_records, photo, photo_folder, remover

# -- cancel() means no new billed request -----------------------------------------------------


@pytest.fixture
def ctrl_c() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt, as from a terminal, whatever this run inherited (a
    run started in the background of a script has SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("blocked_in", ["wait", "as_completed", "exception"])
def test_ctrl_c_while_blocked_on_a_batch_cancels_it(blocked_in: str, ctrl_c: None) -> None:
    # in a notebook the kernel lives on after an interrupt: the batch went on paying for
    # every image in the background while the user thought it stopped
    emulator = PhotoroomEmulator(credits=1000, faults=Faults(latency=0.05))
    first = threading.Event()
    main = threading.main_thread().ident
    assert main is not None
    assert threading.current_thread().ident == main  # where Python runs signal handlers

    def interrupt() -> None:
        assert first.wait(30)
        signal.pthread_kill(main, signal.SIGINT)

    with emulator.serve():
        batch = remover(emulator, MemorySink(), concurrency=2, on_result=lambda _: first.set())
        handle = batch.submit([photo() for _ in range(200)])
        threading.Thread(target=interrupt, daemon=True).start()
        block = {
            "wait": handle.wait,
            "as_completed": lambda: list(handle.as_completed()),
            "exception": handle.exception,
        }[blocked_in]
        with pytest.raises(KeyboardInterrupt):
            block()
        report = handle.wait(timeout=30)
    assert report.stop_reason == "interrupted"
    assert report.cancelled_count > 150
    assert emulator.ledger.calls() == report.succeeded_count  # each paid call stored


class SlowToAnswerSink(MemorySink):
    """A sink whose first ``exists`` (submit()'s check that it answers) takes a while."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = threading.Event()
        self.cancelled = False

    async def exists(self, key: str) -> bool:
        if not self.asked.is_set():
            self.asked.set()
            try:
                await asyncio.sleep(2)
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        return await super().exists(key)


def test_ctrl_c_while_submit_opens_the_batch_leaves_nothing_running(
    emulator: PhotoroomEmulator, tmp_path: Path, ctrl_c: None
) -> None:
    # submit() kept opening the batch on its own loop after the interrupt: it then made and
    # locked the manifest for a batch nobody would run, and the next submit() on it was
    # refused as "in use by another run" until the interpreter ended
    sink = SlowToAnswerSink()
    main = threading.main_thread().ident
    assert main is not None
    assert threading.current_thread().ident == main  # where Python runs signal handlers

    def interrupt() -> None:
        assert sink.asked.wait(30)
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    manifest = tmp_path / "m.jsonl"
    with pytest.raises(KeyboardInterrupt):
        remover(emulator, sink, manifest=manifest).submit([photo()])
    assert sink.cancelled  # the opening was stopped, not left running
    report = remover(emulator, sink, manifest=manifest).submit([photo()]).wait(timeout=30)
    assert report.stored_count == 1


def test_cancel_wakes_jobs_waiting_for_the_request_budget(emulator: PhotoroomEmulator) -> None:
    # one request every 10 seconds: without cancellation reaching the budget's wait, the
    # 19 other jobs would sit in it for three minutes
    batch = remover(emulator, MemorySink(), requests_per_minute=6, concurrency=4)
    handle = batch.submit([photo() for _ in range(20)])
    first = next(iter(handle.as_completed(timeout=30)))
    assert first.status is JobStatus.SUCCEEDED
    handle.cancel()
    report = handle.wait(timeout=10)
    assert report.cancelled_count == 19
    assert emulator.ledger.calls() == 1


def test_cancel_wakes_jobs_in_a_retry_after_pause_and_in_backoff() -> None:
    faults = Faults(retry_after=600)  # a server asking for ten minutes
    emulator = PhotoroomEmulator(credits=100, faults=faults)
    patient = RetryPolicy(initial_delay=300, max_delay=300, max_retry_after=600)
    with emulator.serve():
        emulator.inject("429", "503", "500", "502")
        batch = remover(emulator, MemorySink(), concurrency=4, retry_policy=patient)
        handle = batch.submit([photo() for _ in range(4)])
        deadline = time.monotonic() + 30
        while len(emulator.requests) < 4:
            assert time.monotonic() < deadline, "the four jobs never made their first call"
            time.sleep(0.01)
        handle.cancel("enough")
        report = handle.wait(timeout=10)
    assert report.cancelled_count == 4
    assert report.stop_reason == "enough"
    assert emulator.ledger.calls() == 0  # no call went out after cancel()
    assert len(emulator.requests) == 4


def test_a_retry_after_longer_than_the_policy_allows_is_capped() -> None:
    emulator = PhotoroomEmulator(credits=100, faults=Faults(retry_after=3600))
    capped = RetryPolicy(initial_delay=0.005, max_retry_after=0.1)
    with emulator.serve():
        emulator.inject("429", "503")
        batch = remover(emulator, MemorySink(), concurrency=1, retry_policy=capped)
        report = batch.submit([photo()]).wait(timeout=30)  # not an hour
    assert report.succeeded_count == 1


# -- an API that cannot be reached --------------------------------------------------------


def test_an_unreachable_api_stops_the_batch_after_the_first_wave() -> None:
    batch = BatchRemover(
        sink=MemorySink(), api_key="k", base_url=f"http://127.0.0.1:{closed_port()}",
        concurrency=8, requests_per_minute=None, track_credits=False, keep_results=True,
        retry_policy=RetryPolicy(initial_delay=0.5, max_delay=2),
    )  # fmt: skip
    handle = batch.submit([photo() for _ in range(300)])
    report = handle.wait(timeout=30)
    assert report.stop_reason is not None
    assert "cannot be reached" in report.stop_reason
    assert report.stored_count == 0
    attempts = sum(job.attempts for job in handle.results())
    assert attempts <= 2 * 8  # the first wave, not 300 images times their retries
    assert report.cancelled_count + report.failed_count == 300


class _Retries(logging.Handler):
    """Sets ``enough`` once ``count`` retries are logged after the engine stopped taking
    connections."""

    def __init__(self, count: int, enough: threading.Event) -> None:
        super().__init__(logging.DEBUG)
        self.count, self.seen, self.outage = count, 0, False
        self.enough = enough

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.outage = self.outage or "stopped taking connections" in message
        if self.outage and message.startswith("retrying job"):
            self.seen += 1
            if self.seen >= self.count:
                self.enough.set()


@contextlib.contextmanager
def _watching(handler: logging.Handler) -> Iterator[None]:
    logger = logging.getLogger("photoroom_bg.batch")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_an_api_that_stops_taking_connections_for_a_while_loses_no_job() -> None:
    # a restart of the API (or of a proxy in front of it) mid-batch: each job in flight
    # spent its retries on refused connections within a second and failed
    emulator = PhotoroomEmulator(credits=1000, faults=Faults(latency=0.02))
    port, concurrency = closed_port(), 4
    made, back = threading.Event(), threading.Event()

    def watch(job: Any) -> None:
        if job.index >= 10:
            made.set()
        if job.status is JobStatus.FAILED:
            back.set()  # (as it did before) no use waiting longer

    retries = _Retries(3 * concurrency, back)  # some job retried 3 times: over max_retries
    server = contextlib.ExitStack()
    server.enter_context(emulator.serve("127.0.0.1", port))
    try:
        batch = remover(
            emulator, MemorySink(), concurrency=concurrency, max_retries=1, on_result=watch
        )
        with _watching(retries):
            handle = batch.submit([photo() for _ in range(200)])
            assert made.wait(30)
            server.close()  # the API goes away mid-batch
            assert back.wait(60)  # until it has stayed away long enough, or a job failed
            server.enter_context(emulator.serve("127.0.0.1", port))  # and comes back
            report = handle.wait(timeout=60)
    finally:
        server.close()
    assert report.failure_counts == {}
    assert (report.succeeded_count, report.stop_reason) == (200, None)


def test_an_api_that_stays_away_past_the_outage_budget_stops_the_batch_for_a_later_run() -> None:
    emulator = PhotoroomEmulator(credits=1000, faults=Faults(latency=0.02))
    port = closed_port()
    made = threading.Event()
    server = contextlib.ExitStack()
    server.enter_context(emulator.serve("127.0.0.1", port))
    try:
        batch = remover(
            emulator, MemorySink(), concurrency=4,
            max_retries=1, engine_outage_budget=0.5, keep_results=True,
            on_result=lambda job: made.set() if job.index >= 10 else None,
        )  # fmt: skip
        handle = batch.submit([photo() for _ in range(300)])
        assert made.wait(30)
    finally:
        server.close()  # for good
    report = handle.wait(timeout=60)
    assert report.stop_reason is not None
    assert "no connection for 0.5 s (engine_outage_budget)" in report.stop_reason
    assert report.cancelled_count > 200  # left for a later run, not failed one by one
    assert report.failed_count <= 4  # at most the jobs that were trying
    assert report.stored_count + report.failed_count + report.cancelled_count == 300


# -- one input's surprise stays in its job ------------------------------------------------


class OddReader(SourceReader):
    """Reads files, but one of them hits an OSError no one mapped to a typed error."""

    async def read(self, source: ImageSource) -> bytes:
        if source.name == "cursed":
            raise OSError(5, "Input/output error")
        return await super().read(source)


def test_any_exception_while_handling_one_input_fails_only_that_job(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(photo())
    cursed = tmp_path / "cursed.png"
    cursed.write_bytes(photo())
    odd_name = os.fsdecode(bytes(tmp_path / "bad") + b"-\xff\xfe.png")
    Path(odd_name).write_bytes(photo())
    sources = [
        str(good),
        str(cursed),
        odd_name,
        "http://999.1.1.1/x.png",
        "http://127.0.0.1:99999/y",
        "http://[::1/z.png",  # submit() raised urllib's ValueError, recording the sources
        str(tmp_path / "nul\x00.png"),  # and so did a path with a NUL in it
    ]
    batch = remover(emulator, tmp_path / "out", reader=OddReader(), keep_results=True,
                    manifest=tmp_path / "m.jsonl")  # fmt: skip
    handle = batch.submit(sources)
    report = handle.wait(timeout=60)
    by_source = {job.index: job for job in handle.results()}
    assert by_source[0].status is JobStatus.SUCCEEDED
    assert isinstance(by_source[1].error, UnexpectedError)
    assert isinstance(by_source[1].error.__cause__, OSError)  # the cause is kept
    assert by_source[2].status is JobStatus.SUCCEEDED  # a name that is not UTF-8 is a name
    for index in (3, 4, 5, 6):
        assert by_source[index].status is JobStatus.FAILED
        assert isinstance(by_source[index].error, SourceError)
    assert report.total_count == 7


def test_a_source_iterator_that_raises_ends_the_listing_and_the_rest_completes(
    emulator: PhotoroomEmulator,
) -> None:
    def sources() -> Iterator[bytes]:
        for _ in range(3):
            yield photo()
        raise RuntimeError("the database cursor went away")

    report = remover(emulator, MemorySink()).submit(sources()).wait(timeout=60)
    assert (report.total_count, report.succeeded_count) == (3, 3)
    assert report.listing_error is not None
    assert "the database cursor went away" in report.listing_error
    assert not report.all_ok  # the listing did not finish: say so


class _BrokenPath(os.PathLike[str]):
    def __fspath__(self) -> str:
        raise RuntimeError("this path object is broken")


def _closed_file() -> io.BytesIO:
    file = io.BytesIO(photo())
    file.close()
    return file


def _half_a_listing() -> Iterator[bytes]:
    yield photo()
    raise RuntimeError("the cursor went away")


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ("s3://", InvalidSourceError, "names a bucket"),
        (None, SourceError, "not an image source: NoneType"),
        (42, SourceError, "not an image source: int"),
        ("a\x00b.png", InvalidSourceError, "not a usable path"),
        ("", InvalidSourceError, "an empty path"),
        (_BrokenPath(), SourceError, "this path object is broken"),
        (_closed_file(), SourceError, "file-2: the file object is closed"),
        (_half_a_listing(), SourceError, "listing it stopped after 1 source"),
    ],
    ids=[
        "s3-without-bucket",
        "none",
        "int",
        "nul-byte",
        "empty-path",
        "broken-pathlike",
        "closed-file",
        "nested-generator",
    ],
)
def test_one_bad_item_of_a_list_fails_alone_and_the_items_after_it_are_made(
    emulator: PhotoroomEmulator, bad: Any, error: type[Exception], message: str
) -> None:
    # Such an item used to end the listing (every later input silently left out of the
    # batch and its report) or, for a NUL byte, fail with an error outside the SDK's
    handle = remover(emulator, MemorySink(), keep_results=True).submit([photo(), bad, photo()])
    report = handle.wait(timeout=60)
    assert report.listing_error is None
    assert report.succeeded_count == 2 + isinstance(bad, types.GeneratorType)  # its one image
    assert report.total_count == report.succeeded_count + 1
    (failed,) = [job for job in handle.results() if job.status is JobStatus.FAILED]
    assert type(failed.error) is error
    assert message in str(failed.error)


@pytest.fixture
def unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    """A folder ``in`` with two images and a subfolder ``private`` of two more that cannot
    be listed (EACCES, as for a folder of another user's; simulated: tests may run as root,
    whom permissions do not stop) until its name is taken off the returned list."""
    from photoroom_bg import _listing

    root = tmp_path / "in"
    (root / "private").mkdir(parents=True)
    for path in ["a.png", "b.png", "private/c.png", "private/d.png"]:
        (root / path).write_bytes(photo())
    denied = [str(root / "private")]
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        if str(path) in denied:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(_listing.os, "scandir", scandir)
    return root, denied


@pytest.mark.parametrize("how", ["folder", "glob"])
def test_a_folder_that_cannot_be_listed_fails_as_a_job_and_a_retry_lists_it_again(
    emulator: PhotoroomEmulator, unreadable: tuple[Path, list[str]], how: str
) -> None:
    # Its images were left out silently: the batch reported every job made and all_ok,
    # and retry_failed() had nothing to retry.
    root, denied = unreadable
    spec = str(root) if how == "folder" else str(root / "**" / "*.png")
    handle = remover(emulator, MemorySink(), keep_results=True).submit(spec)
    report = handle.wait(timeout=60)
    assert (report.succeeded_count, report.failed_count) == (2, 1)
    assert not report.all_ok
    (failed,) = report.failures["SourceError"]
    assert str(root / "private") in str(failed.error)
    assert "could not be listed" in str(failed.error)
    assert "Permission denied" in str(failed.error)
    denied.clear()  # its permissions mended
    again = handle.retry_failed().wait(timeout=60)
    assert (again.succeeded_count, again.failed_count) == (2, 0)  # c and d, listed now
    assert emulator.ledger.calls() == 4


def test_retry_failed_leaves_out_sources_that_are_no_file_or_too_large(
    emulator: PhotoroomEmulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a FIFO named like an image and a file over the byte cap were submitted again by
    # retry_failed(), to fail again the same way
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "big.png").write_bytes(photo() + b"\0" * 2000)
    (tmp_path / "ok.png").write_bytes(photo())
    batch = remover(emulator, MemorySink(), reader=SourceReader(max_bytes=1500))
    handle = batch.submit([str(tmp_path / name) for name in ["pipe.png", "big.png", "ok.png"]])
    report = handle.wait(timeout=60)
    assert report.failure_counts == {"InvalidSourceError": 1, "SourceTooLargeError": 1}
    with caplog.at_level("WARNING", logger="photoroom_bg.batch"):
        again = handle.retry_failed().wait(timeout=60)
    assert again.total_count == 0
    assert "1 InvalidSourceError, 1 SourceTooLargeError" in caplog.text


# -- the batch's own machinery ------------------------------------------------------------


def test_a_manifest_that_cannot_be_created_is_refused_before_anything_is_billed(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    batch = remover(emulator, MemorySink(), manifest=blocker / "run.jsonl")
    with pytest.raises(ConfigurationError, match="cannot write the manifest"):
        batch.submit([photo()])
    with pytest.raises(ConfigurationError, match="cannot write the manifest"):
        asyncio.run(batch.run([photo()]))
    assert emulator.requests == []


@pytest.mark.parametrize("kind", ["fifo", "device"])
@pytest.mark.parametrize("how", ["submit", "run"])
def test_a_manifest_that_is_a_pipe_or_a_device_is_refused_before_it_is_read(
    emulator: PhotoroomEmulator, tmp_path: Path, kind: str, how: str
) -> None:
    # a manifest on a named pipe held the batch's start forever (opening it waits for a
    # writer), and one on /dev/zero was read until the memory ran out
    manifest = tmp_path / "m.jsonl"
    what = no_file_at(manifest, kind)
    batch = remover(emulator, MemorySink(), manifest=manifest)

    def start() -> object:
        if how == "submit":
            return batch.submit([photo()])
        return asyncio.run(batch.run([photo()]))

    with pytest.raises(ConfigurationError, match=rf"is {re.escape(what)}, not a file"):
        start()
    assert emulator.ledger.calls() == 0


@pytest.mark.parametrize("below", [False, True], ids=["the-file", "a-folder-under-it"])
def test_a_sink_folder_that_is_a_file_is_refused_before_anything_is_billed(
    emulator: PhotoroomEmulator, tmp_path: Path, below: bool
) -> None:
    # both images used to be billed, then spilled: no put into that folder could succeed
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    batch = remover(emulator, blocker / "out" if below else blocker, spill_dir=tmp_path / "spill")
    with pytest.raises(StorageError, match="is a file"):
        asyncio.run(batch.run([photo(), photo()]))
    assert emulator.ledger.calls() == 0
    assert not (tmp_path / "spill").exists() or not any((tmp_path / "spill").iterdir())


def test_a_key_through_a_file_in_the_sink_fails_its_job_before_anything_is_billed(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    # each image was billed, its put retried for store_retry_budget, then spilled: the folder
    # its key names is a file in the sink, and no put into it can ever succeed
    out = tmp_path / "out"
    out.mkdir()
    (out / "photoroom").write_text("a file where the template wants a folder")
    batch = remover(emulator, str(out), key_template="{engine}/{stem}-{digest12}.{ext}",
                    store_retry_budget=0.3, spill_dir=tmp_path / "spill")  # fmt: skip
    report = asyncio.run(batch.run([photo() for _ in range(3)]))
    assert (report.failed_count, report.spilled_count, report.billed_calls) == (3, 0, 0)
    assert emulator.ledger.calls() == 0
    (failure, *_) = report.failures["UnsafeKeyError"]
    assert "photoroom is a file, not a folder" in str(failure.error)


def _by_file_name(stem: str, ext: str, **_: str) -> str:
    """A key template of the caller's that leaves the digest out: the file's name only."""
    return f"{stem}.{ext}"


def _two_folders_sharing_a_name(tmp_path: Path) -> list[Path]:
    """Folders ``a`` and ``b``: each a ``shoe.png`` of its own, and a photo only it has."""
    folders = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "shoe.png").write_bytes(photo())
        (folder / f"only-{name}.png").write_bytes(photo())
        folders.append(folder)
    return folders


@pytest.mark.parametrize("skip_existing", [True, False])
@pytest.mark.parametrize("concurrency", [1, 16])
def test_a_key_template_that_gives_two_images_one_key_fails_the_second_unpaid(
    emulator: PhotoroomEmulator, tmp_path: Path, concurrency: int, skip_existing: bool
) -> None:
    # b/shoe.png was skipped as "output already stored" (never made, yet counted as stored);
    # with skip_existing=False it was paid for and written over a/shoe.png's cut-out
    sink = MemorySink()
    batch = remover(emulator, sink, key_template=KeyTemplate(_by_file_name),
                    concurrency=concurrency, skip_existing=skip_existing)  # fmt: skip
    report = asyncio.run(batch.run(_two_folders_sharing_a_name(tmp_path)))
    counts = (report.succeeded_count, report.skipped_count, report.failed_count)
    assert counts == (3, 0, 1)
    assert emulator.ledger.calls() == len(sink.objects) == 3
    (failure,) = report.failures["ValidationError"]
    assert "'shoe.png'" in str(failure.error)
    assert "{digest12}" in str(failure.error)
    assert failure.billed == 0


def test_a_key_an_earlier_run_gave_another_image_fails_unpaid(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    # a second run (same manifest and sink) took b/shoe.png for the a/shoe.png it recorded
    a, b = _two_folders_sharing_a_name(tmp_path)
    sink, manifest = MemorySink(), tmp_path / "manifest.jsonl"
    template = KeyTemplate(_by_file_name)
    first = asyncio.run(remover(emulator, sink, key_template=template, manifest=manifest).run(a))
    assert first.succeeded_count == 2
    again = asyncio.run(remover(emulator, sink, key_template=template, manifest=manifest).run(b))
    assert (again.succeeded_count, again.skipped_count, again.failed_count) == (1, 0, 1)
    assert "an earlier run" in str(again.failures["ValidationError"][0].error)
    # the same image again is no clash: it is skipped, as ever
    rerun = asyncio.run(remover(emulator, sink, key_template=template, manifest=manifest).run(a))
    assert (rerun.skipped_count, rerun.failed_count) == (2, 0)
    assert emulator.ledger.calls() == len(sink.objects) == 3


@pytest.mark.parametrize("value", [None, 5, b"shoe.png"])
def test_a_key_template_that_returns_no_text_fails_each_job_unpaid(
    emulator: PhotoroomEmulator, value: object
) -> None:
    # its None was stored as the key "None", every image after the first skipped as stored
    sink = MemorySink()
    batch = remover(emulator, sink, key_template=KeyTemplate(lambda **_: value))
    report = asyncio.run(batch.run([photo() for _ in range(3)]))
    assert (report.failed_count, emulator.ledger.calls(), len(sink.objects)) == (3, 0, 0)
    assert f"returned {type(value).__name__}, not a str" in str(
        report.failures["ValidationError"][0].error
    )


@pytest.mark.parametrize("raised", [SystemExit(3), KeyboardInterrupt()], ids=repr)
@pytest.mark.parametrize("how", ["submit", "run"])
def test_a_callback_that_asks_to_exit_stops_the_batch_and_the_caller_gets_it(
    emulator: PhotoroomEmulator, how: str, raised: BaseException
) -> None:
    # sys.exit() (or pytest.fail(), a KeyboardInterrupt) in on_result killed the thread of
    # the background loop: the batch hung, wait() never returned, and no later batch of the
    # process could start
    seen: list[JobResult] = []

    def on_result(result: JobResult) -> None:
        seen.append(result)
        if len(seen) == 2:
            raise raised

    sink = MemorySink()
    batch = remover(emulator, sink, on_result=on_result, concurrency=2)
    images = [photo() for _ in range(30)]

    handle = batch.submit(images) if how == "submit" else None

    def process() -> object:
        if handle is not None:
            return handle.wait(timeout=30)
        return asyncio.run(batch.run(images))

    with pytest.raises(type(raised)) as caught:
        process()
    assert caught.value is raised
    if handle is not None:  # what ended the batch, as wait() raised it
        assert handle.exception(timeout=30) is raised
    assert emulator.ledger.calls() == len(sink.objects) < 30  # stopped; every paid call kept
    assert sum(job.status is JobStatus.CANCELLED for job in seen) > 0
    again = remover(emulator, MemorySink()).submit([photo()]).wait(timeout=30)
    assert again.stored_count == 1  # the background loop lives on


class _ExitOnThird:
    """Code of the caller's that calls sys.exit() the third time it runs."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls == 3:
            raise SystemExit(4)


@pytest.mark.parametrize("where", ["sink", "reader", "key template", "source list"])
@pytest.mark.parametrize("how", ["submit", "run"])
def test_code_of_the_callers_that_calls_sys_exit_stops_the_batch_and_keeps_what_was_paid(
    tmp_path: Path, where: str, how: str
) -> None:
    # SystemExit from a sink's put, a reader, a key template or the source iterator hung a
    # submitted batch (wait() timed out), and ended run() with paid calls dropped
    exit_on_third = _ExitOnThird()
    emulator = PhotoroomEmulator(credits=1000, faults=Faults(latency=0.02), image_work=False)

    class Sink(MemorySink):
        async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
            if where == "sink":
                exit_on_third()
            return await super().put(key, data, **kwargs)

    class Reader(SourceReader):
        async def read(self, source: ImageSource) -> bytes:
            if where == "reader":
                exit_on_third()
            return await super().read(source)

    def template(**fields: str) -> str:
        if where == "key template":
            exit_on_third()
        return f"{fields['stem']}-{fields['digest12']}.{fields['ext']}"

    def images() -> Iterator[bytes]:
        for _ in range(20):
            if where == "source list":
                exit_on_third()
            yield photo()

    sink = Sink()
    with emulator.serve():
        batch = remover(emulator, sink, reader=Reader(), key_template=KeyTemplate(template),
                        spill_dir=tmp_path / "spill", concurrency=2)  # fmt: skip

        def process() -> object:
            if how == "submit":
                return batch.submit(images()).wait(timeout=30)
            return asyncio.run(batch.run(images()))

        with pytest.raises(SystemExit) as caught:
            process()
        assert caught.value.code == 4
        spill = tmp_path / "spill"
        spilled = [p for p in spill.rglob("*") if p.is_file()] if spill.exists() else []
        # stopped: every call paid for is stored, or kept in the spill folder for a re-run
        assert emulator.ledger.calls() == len(sink.objects) + len(spilled) < 20
        again = remover(emulator, MemorySink()).submit([photo()]).wait(timeout=30)
        assert again.stored_count == 1  # and the process goes on


@pytest.mark.parametrize("raised", [SystemExit(4), KeyboardInterrupt()], ids=repr)
def test_a_cut_out_kept_as_the_sinks_put_raised_sys_exit_is_recorded_as_spilled(
    tmp_path: Path, raised: BaseException
) -> None:
    # the paid cut-out was spilled, but its job was recorded "cancelled" (not processed),
    # with no output: the report and the manifest counted no spilled cut-out, and a re-run
    # with another spill folder had no record of where it was
    class Sink(MemorySink):
        calls = 0

        async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
            Sink.calls += 1
            if Sink.calls == 3:
                raise raised
            return await super().put(key, data, **kwargs)

    emulator = PhotoroomEmulator(credits=1000, faults=Faults(latency=0.02), image_work=False)
    results: list[JobResult] = []
    manifest = tmp_path / "manifest.jsonl"
    with emulator.serve():
        batch = remover(emulator, Sink(), spill_dir=tmp_path / "spill", concurrency=1,
                        manifest=manifest, on_result=results.append)  # fmt: skip
        handle = batch.submit([photo() for _ in range(6)])
        with pytest.raises(type(raised)):
            handle.wait(timeout=30)
    (kept,) = [job for job in results if job.index == 2]
    assert kept.status is JobStatus.SPILLED
    assert kept.output is not None
    assert Path(kept.output.uri.removeprefix("file://")).is_file()
    assert f"the sink's put raised {type(raised).__name__}" in str(kept.error)
    assert handle.progress.spilled == 1
    [record] = [r for r in job_records(manifest) if r["index"] == 2]
    assert (record["status"], record["uri"]) == ("spilled", kept.output.uri)


class _RaiseOnThird:
    """Code of the caller's that raises ``raised`` the third time it runs."""

    def __init__(self, raised: BaseException) -> None:
        self.raised = raised
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls == 3:
            raise self.raised


@pytest.mark.parametrize(
    "raised", [asyncio.CancelledError(), GeneratorExit()], ids=["CancelledError", "GeneratorExit"]
)
@pytest.mark.parametrize("where", ["sink", "reader", "key template", "source list", "callback"])
@pytest.mark.parametrize("how", ["submit", "run"])
def test_code_of_the_callers_that_raises_a_cancel_nothing_asked_for_fails_only_its_part(
    tmp_path: Path, where: str, how: str, raised: BaseException
) -> None:
    # a CancelledError of the caller's own (leaked from a task it cancelled) was taken for a
    # cancel of the batch: the batch's tasks ended without a word, wait() returned with
    # jobs unrecorded and paid cut-outs thrown away, and calls went on after it returned;
    # a GeneratorExit in on_result broke the batch's task, and wait() raised a RuntimeError
    raise_on_third = _RaiseOnThird(raised)
    emulator = PhotoroomEmulator(credits=1000, faults=Faults(latency=0.02), image_work=False)
    results: list[JobResult] = []

    class Sink(MemorySink):
        async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
            if where == "sink":
                raise_on_third()
            return await super().put(key, data, **kwargs)

    class Reader(SourceReader):
        async def read(self, source: ImageSource) -> bytes:
            if where == "reader":
                raise_on_third()
            return await super().read(source)

    def template(**fields: str) -> str:
        if where == "key template":
            raise_on_third()
        return f"{fields['stem']}-{fields['digest12']}.{fields['ext']}"

    def images() -> Iterator[bytes]:
        for _ in range(8):
            if where == "source list":
                raise_on_third()
            yield photo()

    def on_result(result: JobResult) -> None:
        results.append(result)
        if where == "callback":
            raise_on_third()

    sink, spill = Sink(), tmp_path / "spill"
    with emulator.serve():
        batch = remover(emulator, sink, reader=Reader(), key_template=KeyTemplate(template),
                        spill_dir=spill, concurrency=2, on_result=on_result)  # fmt: skip
        if how == "submit":
            report = batch.submit(images()).wait(timeout=60)
        else:
            report = asyncio.run(batch.run(images()))
        assert report.stop_reason is None  # nothing asked the batch to stop
        calls = emulator.ledger.calls()
    spilled = [p.name for p in spill.rglob("*.png")] if spill.exists() else []
    assert calls == len(sink.objects) + len(spilled)  # every paid cut-out kept
    assert len(results) == report.total_count  # every input has its record
    counts = (report.total_count, report.stored_count, report.spilled_count, report.failed_count)
    name = type(raised).__name__
    if where == "source list":
        assert counts == (2, 2, 0, 0)
        assert f"the iterator of sources raised {name}" in str(report.listing_error)
    elif where == "callback":
        assert counts == (8, 8, 0, 0)
    elif where == "sink":
        assert counts == (8, 7, 1, 0)
        (kept,) = [job for job in results if job.status is JobStatus.SPILLED]
        assert f"the sink's put raised {name}" in str(kept.error)
    else:
        assert counts == (8, 7, 0, 1)
        (failed,) = [job for job in results if job.status is JobStatus.FAILED]
        assert f"code of the caller's run for this job raised {name}" in str(failed.error)
        assert calls == 7  # the failed one was not paid for


@pytest.mark.parametrize("how", ["submit", "run"])
def test_a_callback_that_raises_stop_iteration_is_logged_and_the_batch_ends(
    emulator: PhotoroomEmulator, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    # a StopIteration from on_result, handed back from the worker thread that ran it, could
    # not be set on the future the batch awaited: the batch waited for it forever
    raise_on_third = _RaiseOnThird(StopIteration())
    batch = remover(emulator, MemorySink(), on_result=lambda _: raise_on_third())
    images = [photo() for _ in range(6)]
    if how == "submit":
        report = batch.submit(images).wait(timeout=60)
    else:
        report = asyncio.run(batch.run(images))
    assert (report.stored_count, emulator.ledger.calls()) == (6, 6)
    assert "raised StopIteration" in caplog.text


@pytest.mark.parametrize("answer", ["put", "exists", "stat"])
def test_a_sink_that_answers_with_the_wrong_type_loses_no_image(
    emulator: PhotoroomEmulator, tmp_path: Path, answer: str
) -> None:
    # a put that returned a str crashed the batch with an AttributeError, its cut-out and
    # those of the jobs under way thrown away, paid for; an exists() that returned None had
    # every image skipped as "already stored", and none made
    class Sink(MemorySink):
        async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
            stored = await super().put(key, data, **kwargs)
            return "ok" if answer == "put" and len(self.objects) == 2 else stored  # type: ignore[return-value]

        async def exists(self, key: str) -> bool:
            return None if answer == "exists" else await super().exists(key)  # type: ignore[return-value]

        async def stat(self, key: str) -> StoredObject:
            return None if answer == "stat" else await super().stat(key)  # type: ignore[return-value]

    if answer == "exists":
        Sink.stat = None  # type: ignore[assignment,method-assign]  # looked up with exists()
    sink, spill = Sink(), tmp_path / "spill"
    images = [photo() for _ in range(5)]
    handle = remover(emulator, sink, spill_dir=spill).submit(images)
    report = handle.wait(timeout=60)
    if answer == "put":
        assert (report.stored_count, report.spilled_count, emulator.ledger.calls()) == (4, 1, 5)
        (kept,) = [job for job in handle.results() if job.status is JobStatus.SPILLED]
        assert "the sink's put returned str, not a StoredObject" in str(kept.error)
        again = remover(emulator, sink, spill_dir=spill).submit(images).wait(timeout=60)
        assert (again.stored_count, emulator.ledger.calls()) == (5, 5)  # stored unpaid
    else:
        # no look-up answered: each job fails unpaid, with what the sink did wrong
        assert (report.failed_count, emulator.ledger.calls(), len(sink.objects)) == (5, 0, 0)
        (error, *_) = report.failures["StorageError"]
        assert f"the sink's {answer}() returned NoneType, not a " in str(error.error)


def test_a_spill_folder_that_is_a_file_is_refused_before_anything_is_billed(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    # a full sink then meant three images paid for, "neither stored nor kept"
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for spill in (blocker, blocker / "spill"):
        batch = remover(emulator, FullSink(), spill_dir=spill)
        with pytest.raises(StorageError, match=r"spill folder is not usable.*is a file"):
            asyncio.run(batch.run([photo() for _ in range(3)]))
    assert emulator.ledger.calls() == 0


@pytest.mark.parametrize("manifest_key", [None, "runs/manifest.jsonl"])
def test_a_sink_of_the_callers_that_raises_anything_at_the_start_is_a_storage_error(
    emulator: PhotoroomEmulator, manifest_key: str | None
) -> None:
    # its own exception left the batch as it was, outside the SDK's errors
    class Buggy(MemorySink):
        async def exists(self, key: str) -> bool:
            raise RuntimeError("a bug in the caller's sink")

        async def get(self, key: str) -> bytes:
            raise RuntimeError("a bug in the caller's sink")

    batch = remover(emulator, Buggy(), manifest_key=manifest_key)
    with pytest.raises(StorageError) as refused:
        asyncio.run(batch.run([photo()]))
    assert str(refused.value) == "the sink is not usable: RuntimeError: a bug in the caller's sink"
    assert isinstance(refused.value.__cause__, RuntimeError)
    assert emulator.ledger.calls() == 0


def test_a_manifest_upload_that_raises_anything_keeps_the_report_and_the_records(
    emulator: PhotoroomEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    # the caller's sink raised its own exception as the manifest was stored at the end, and
    # run() raised it: the report of a batch whose images were all stored was lost
    class Buggy(MemorySink):
        async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
            if key == "runs/manifest.jsonl":
                raise RuntimeError("a bug in the caller's sink")
            return await super().put(key, data, **kwargs)

    sink = Buggy()
    batch = remover(emulator, sink, manifest_key="runs/manifest.jsonl")
    with caplog.at_level(logging.WARNING, logger="photoroom_bg"):
        report = asyncio.run(batch.run([photo(), photo()]))
    assert (report.succeeded_count, report.billed_calls) == (2, 2)
    assert len(sink.objects) == 2
    [warning] = [r.getMessage() for r in caplog.records if "could not store" in r.getMessage()]
    assert 'RuntimeError("a bug in the caller\'s sink")' in warning
    kept = Path(warning.rsplit("it is kept at ", 1)[1])
    assert len(job_records(kept)) == 2
    kept.unlink()


class FullSink(MemorySink):
    async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
        raise StorageFullError(f"no space left to write {key!r}")


class RefusingSink(MemorySink):
    """Answers look-ups, but every put fails with an error a retry might fix."""

    async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
        raise StorageError(f"the server refused {key!r} (HTTP 500)")


class BuggySink(MemorySink):
    """A sink of the caller's whose put has a bug."""

    async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
        raise RuntimeError("a bug in the caller's sink")


@pytest.mark.parametrize("sink", [RefusingSink, BuggySink], ids=["refusing", "buggy"])
def test_a_spill_folder_that_cannot_keep_a_cut_out_stops_the_batch(
    tmp_path: Path, sink: type[MemorySink]
) -> None:
    # each image was billed, refused by the sink, and "neither stored nor kept" on the full
    # disk of the spill folder: the batch paid for all 30 and kept none
    from ..disks import fill, small_disk

    emulator = PhotoroomEmulator(credits=1000, faults=Faults(latency=0.05), image_work=False)
    with small_disk(tmp_path / "disk", "64k") as disk, emulator.serve():
        batch = remover(emulator, sink(), concurrency=2, spill_dir=disk / "spill",
                        store_retry_budget=0.05)  # fmt: skip
        handle = batch.submit([photo() for _ in range(30)])
        fill(disk)  # after the start's check of the spill folder
        report = handle.wait(timeout=60)
        billed = emulator.ledger.calls()
    lost = [job for jobs in report.failures.values() for job in jobs]
    assert 1 <= len(lost) <= 2  # the calls under way when the first could not be kept
    assert all(job.reason == "paid for, but neither stored nor kept" for job in lost)
    assert billed == len(lost)
    assert report.cancelled_count == 30 - len(lost)
    assert report.stop_reason is not None
    assert "the spill folder could not keep it either" in report.stop_reason
    assert "No space left on device" in report.stop_reason


@pytest.mark.parametrize("which", ["sink", "spill folder"])
def test_a_folder_this_process_cannot_write_is_refused_before_anything_is_billed(
    tmp_path: Path, which: str
) -> None:
    # submit() only asked whether a file was there: a read-only sink folder passed, and
    # every paid cut-out then failed to be stored (lost too, with the spill folder there)
    from ..disks import read_only_disk

    emulator = PhotoroomEmulator(credits=1000, faults=Faults(latency=0.02), image_work=False)
    with read_only_disk(tmp_path / "disk") as disk, emulator.serve():
        sink = disk / "out" if which == "sink" else tmp_path / "out"
        spill = disk / "spill" if which == "spill folder" else tmp_path / "spill"
        batch = remover(emulator, str(sink), spill_dir=spill, concurrency=2)
        with pytest.raises(StorageAuthError) as refused:
            batch.submit([photo() for _ in range(8)])
        with pytest.raises(StorageAuthError):
            asyncio.run(batch.run([photo()]))
    assert emulator.ledger.calls() == 0
    assert f"{disk} is not writable by this process" in str(refused.value)
    assert ("spill folder" in str(refused.value)) == (which == "spill folder")


def test_an_unreachable_sink_is_refused_before_anything_is_billed(
    emulator: PhotoroomEmulator,
) -> None:
    sink = S3Sink(
        "s3://nowhere/out", endpoint_url=f"http://127.0.0.1:{closed_port()}",
        aws_access_key_id="k", aws_secret_access_key="s",
    )  # fmt: skip
    batch = remover(emulator, sink)
    with pytest.raises(StorageUnavailableError, match="the sink is not usable"):
        batch.submit([photo()])
    assert emulator.requests == []
    asyncio.run(sink.aclose())


def test_options_the_engine_cannot_take_are_refused_at_submit() -> None:
    pytest.importorskip("onnxruntime")
    from photoroom_bg import LocalEngine

    batch = BatchRemover(LocalEngine(), sink=MemorySink(), options=SegmentOptions(despill=True))
    with pytest.raises(ValidationError, match="despill"):
        batch.submit([photo()])


def test_a_manifest_whose_disk_fills_stops_the_batch_and_the_next_run_pays_for_nothing_twice(
    tmp_path: Path,
) -> None:
    # The batch died with a raw "OSError: [Errno 28] No space left on device", raised from
    # the manifest's close with a traceback through contextlib, and no report.
    from ..disks import fill, small_disk

    inputs, _ = photo_folder(tmp_path, 40)
    emulator = PhotoroomEmulator(credits=1000, faults=Faults(latency=0.05), image_work=False)
    sink = MemorySink()
    with small_disk(tmp_path / "disk", "64k") as disk, emulator.serve():
        manifest = disk / "m.jsonl"
        seen: list[JobResult] = []

        def on_result(job: JobResult) -> None:
            seen.append(job)
            if len(seen) == 5:
                fill(disk)

        batch = remover(emulator, sink, manifest=manifest, concurrency=4, on_result=on_result)
        report = batch.submit(str(inputs)).wait(timeout=60)
        assert report.stop_reason is not None
        assert f"cannot write the manifest at {manifest}" in report.stop_reason
        assert "No space left on device" in report.stop_reason
        assert "make room" in report.stop_reason
        assert 5 <= report.stored_count < 40
        assert report.cancelled_count == 40 - report.stored_count
        assert emulator.ledger.calls() == report.stored_count  # every call paid for, stored
        assert len(job_records(manifest)) < report.stored_count  # not all recorded
        (disk / "filler").unlink()
        again = remover(emulator, sink, manifest=manifest, concurrency=4).submit(str(inputs))
        assert again.wait(timeout=60).all_ok
        assert emulator.ledger.calls() == 40  # the unrecorded outputs were found, not re-paid


def test_a_manifest_on_a_full_disk_is_refused_before_anything_is_billed(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    from ..disks import fill, small_disk

    with small_disk(tmp_path / "disk", "64k") as disk:
        fill(disk)
        batch = remover(emulator, MemorySink(), manifest=disk / "m.jsonl")
        with pytest.raises(StorageFullError, match=r"cannot write the manifest at .*m\.jsonl"):
            batch.submit([photo()])
    assert emulator.ledger.calls() == 0


class ExplodingManifest(_manifest.Manifest):
    """A manifest whose writer meets ``fault`` (a bug: no disk's failure) after its run
    header and ``healthy`` groups of records."""

    healthy = 2
    fault: Exception = RuntimeError("the manifest writer has a bug")

    def _append(self, lines: list[bytes]) -> None:
        self.writes = getattr(self, "writes", 0) + 1
        if self.writes > 1 + self.healthy:
            raise self.fault
        super()._append(lines)


def test_a_manifest_whose_disk_breaks_stops_the_batch_with_a_storage_error(
    emulator: PhotoroomEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # an I/O error on the manifest's disk killed the batch with the raw OSError
    from photoroom_bg.batch import _run

    monkeypatch.setattr(ExplodingManifest, "fault", OSError(5, "Input/output error"))
    monkeypatch.setattr(_run, "Manifest", ExplodingManifest)
    batch = remover(emulator, MemorySink(), manifest=tmp_path / "m.jsonl", concurrency=2)
    with caplog.at_level("WARNING", logger="photoroom_bg.batch"):
        report = batch.submit([photo() for _ in range(50)]).wait(timeout=60)
    assert "job record(s) could not be written to the manifest" in caplog.text
    assert report.stop_reason is not None
    assert "cannot write the manifest at" in report.stop_reason
    assert "(Input/output error)" in report.stop_reason
    assert report.cancelled_count > 0
    assert emulator.ledger.calls() == report.stored_count


def test_a_batch_whose_machinery_dies_stops_billing_and_its_handle_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from photoroom_bg.batch import _run

    monkeypatch.setattr(_run, "Manifest", ExplodingManifest)
    emulator = PhotoroomEmulator(credits=1000, faults=Faults(latency=0.05))
    with emulator.serve():
        batch = remover(emulator, MemorySink(), manifest=tmp_path / "m.jsonl", concurrency=2)
        handle = batch.submit([photo() for _ in range(200)])
        with pytest.raises(RuntimeError, match="has a bug"):
            list(handle.as_completed(timeout=30))  # ends, does not block forever
        with pytest.raises(RuntimeError, match="has a bug"):
            handle.wait(timeout=30)
        assert handle.done()
        assert isinstance(handle.exception(), RuntimeError)

        async def iterate() -> None:
            async for _ in handle:
                pass

        with pytest.raises(RuntimeError, match="has a bug"):
            asyncio.run(iterate())
        # a call sent just before the end is still billed by the server, which does not
        # know that the client left: past the emulator's latency, those are done
        time.sleep(0.3)
        calls = emulator.ledger.calls()
        time.sleep(0.3)  # nothing is running any more: the ledger must not move
        assert emulator.ledger.calls() == calls
    assert calls < 20  # the siblings were cancelled, not left billing 200 images


def test_an_unwatched_failed_batch_logs_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from photoroom_bg.batch import _run

    monkeypatch.setattr(ExplodingManifest, "healthy", 0)
    monkeypatch.setattr(_run, "Manifest", ExplodingManifest)
    batch = BatchRemover(CountingEngine(), sink=MemorySink(), manifest=tmp_path / "m.jsonl")
    with caplog.at_level("ERROR", logger="photoroom_bg.batch"):
        handle = batch.submit([photo() for _ in range(50)])
        deadline = time.monotonic() + 30
        while not handle.done():
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert "the batch failed" in caplog.text


@pytest.mark.parametrize("loop", ["handle", "as_completed"])
def test_a_cancelled_async_for_stops_the_batch_without_dropping_a_paid_call(loop: str) -> None:
    """``async for job in handle`` cancelled while it waits for a job (``asyncio.wait_for``
    timing out, ``asyncio.run`` ending on Ctrl-C) stops the batch as a cancelled ``await
    handle`` does: the calls under way finish and are stored, nothing more is paid for.
    It used to leave the batch billing on its own loop, nobody watching it."""
    emulator = PhotoroomEmulator(credits=100, faults=Faults(latency=0.3), image_work=False)
    with emulator.serve():
        handle = remover(emulator, MemorySink(), concurrency=4).submit([photo() for _ in range(20)])
        seen: list[JobResult] = []

        async def consume() -> None:
            jobs = handle if loop == "handle" else handle.as_completed(timeout=30)
            async for job in jobs:
                seen.append(job)

        async def main() -> None:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(consume(), 0.45)

        finished = threading.Event()

        def script() -> None:
            asyncio.run(main())
            finished.set()

        thread = threading.Thread(target=script, daemon=True)
        thread.start()
        assert finished.wait(20), "asyncio.run() did not return after the loop was cancelled"
        report = handle.wait(timeout=30)
        assert handle.cancelled()
        assert 0 < report.stored_count < 20
        assert report.cancelled_count == 20 - report.stored_count
        assert emulator.ledger.calls() == report.stored_count  # every call paid for, stored
        assert len(seen) < report.stored_count  # the calls under way finished after it left


# -- engines and clients ------------------------------------------------------------------


def test_a_run_whose_source_iterator_ends_early_stores_every_call_under_way() -> None:
    """The batch guide's graceful stop of ``run()``: the source iterator ends (a shutdown
    hook set an event), the batch takes no more inputs, and every call already sent finishes
    and is stored, none dropped as cancelling the task would drop it."""
    emulator = PhotoroomEmulator(credits=100, faults=Faults(latency=0.2), image_work=False)
    images = [photo() for _ in range(20)]

    async def main() -> Any:
        stop = asyncio.Event()
        done: list[object] = []

        def on_result(job: object) -> None:
            done.append(job)
            if len(done) == 3:
                stop.set()

        async def until() -> Any:
            for image in images:
                if stop.is_set():
                    return
                yield image

        batch = remover(emulator, MemorySink(), concurrency=4, on_result=on_result)
        return await batch.run(until())

    with emulator.serve():
        report = asyncio.run(main())
    assert 3 < report.total_count < 20  # stopped part-way, the calls under way finished
    assert report.stored_count == report.total_count
    assert emulator.ledger.calls() == report.stored_count  # no call paid for was dropped


def test_a_cancelled_await_of_a_handle_stops_the_batch_without_dropping_a_paid_call() -> None:
    """``await handle`` cancelled (``asyncio.wait_for`` timing out, ``asyncio.run`` ending
    on SIGTERM's ``sys.exit``) stops the batch as ``cancel()`` does: the calls under way
    finish and are stored. It used to cancel the batch's own task, dropping them."""
    emulator = PhotoroomEmulator(credits=100, faults=Faults(latency=0.3), image_work=False)
    with emulator.serve():
        handle = remover(emulator, MemorySink(), concurrency=4).submit([photo() for _ in range(20)])

        async def main() -> None:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(handle, 0.45)

        asyncio.run(main())
        report = handle.wait(timeout=30)
        assert 0 < report.stored_count < 20
        assert report.cancelled_count == 20 - report.stored_count
        assert emulator.ledger.calls() == report.stored_count  # every call paid for, stored


def test_a_client_with_its_own_http_client_is_refused_by_submit_and_works_with_run(
    emulator: PhotoroomEmulator,
) -> None:
    async def main() -> int:
        async with (
            httpx.AsyncClient() as http,
            AsyncPhotoroomClient(
                api_key=emulator.api_key, base_url=emulator.url, http_client=http
            ) as client,
        ):
            batch = BatchRemover(client, sink=MemorySink(), requests_per_minute=None)
            with pytest.raises(ConfigurationError, match="http_client"):
                batch.submit([photo()])
            assert emulator.requests == []  # refused before anything was sent
            return (await batch.run([photo()])).succeeded_count

    assert asyncio.run(main()) == 1


class CountingPhotoroomEngine(PhotoroomEngine):
    """A caller's engine subclass: its override must run."""

    calls = 0

    async def process(self, image: bytes, options: Any) -> ImageResult:
        type(self).calls += 1
        return await super().process(image, options)


def test_a_photoroom_engine_subclass_is_kept_by_submit_and_run(
    emulator: PhotoroomEmulator,
) -> None:
    engine = CountingPhotoroomEngine(api_key=emulator.api_key, base_url=emulator.url)
    batch = BatchRemover(engine, sink=MemorySink(), requests_per_minute=None)
    assert batch.submit([photo() for _ in range(3)]).wait().succeeded_count == 3

    async def on_my_loop() -> int:
        async with engine:  # its pool is used on this loop: close it here
            return (await batch.run([photo(), photo()])).succeeded_count

    assert asyncio.run(on_my_loop()) == 2
    assert CountingPhotoroomEngine.calls == 5


class RecordingPolicy(RetryPolicy):
    """A policy whose backoff delays are observed."""

    def delays(self) -> Iterator[float]:
        _delays_used.append(self.initial_delay)
        while True:
            yield 0.0


_delays_used: list[float] = []


class FlakyEngine:
    """Fails every call once with a 5xx, then succeeds."""

    name = "flaky"
    bills = False

    def __init__(self) -> None:
        self.seen: set[bytes] = set()

    async def process(self, image: bytes, options: Any) -> ImageResult:
        if image not in self.seen:
            self.seen.add(image)
            raise ServerError("flaky", status_code=500)
        return ImageResult(image)

    async def aclose(self) -> None:
        pass


def test_the_batch_backs_off_with_the_retry_policy_it_is_given(
    emulator: PhotoroomEmulator,
) -> None:
    _delays_used.clear()
    batch = BatchRemover(FlakyEngine(), sink=MemorySink(), retry_policy=RecordingPolicy(
        initial_delay=7.5))  # fmt: skip
    assert batch.submit([photo(), photo()]).wait(timeout=30).succeeded_count == 2
    assert _delays_used == [7.5, 7.5]  # its delays, not a backoff of the batch's own
    _delays_used.clear()
    client = emulator.async_client(retry_policy=RecordingPolicy(initial_delay=2.5))
    emulator.inject("503")
    batch = BatchRemover(client, sink=MemorySink(), requests_per_minute=None, track_credits=False)
    assert batch.submit([photo()]).wait(timeout=30).succeeded_count == 1
    assert 2.5 in _delays_used  # the client's policy is the batch's default
    asyncio.run(client.aclose())


class AnsweringEngine:
    """An engine of one's own that answers every call with ``answer``."""

    name = "mine"
    bills = True

    def __init__(self, answer: object) -> None:
        self.answer = answer

    async def process(self, image: bytes, options: Any) -> Any:
        return self.answer

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (ImageResult(b"", content_type="image/png"), "made no usable cut-out: its body is empty"),
        (ImageResult(b"<html></html>", content_type="text/html"), "is not an image"),
        (ImageResult(photo()[:-20], content_type="image/png"), "PNG stops before its end"),
        (None, "returned NoneType, not an ImageResult"),
        (b"\x89PNG", "returned bytes, not an ImageResult"),
        (ImageResult("text", content_type="image/png"), "content is str"),  # type: ignore[arg-type]
    ],
    ids=["empty", "html", "cut-short", "none", "bytes", "str"],
)
def test_an_engine_answer_that_is_no_image_fails_its_job_and_stores_nothing(
    tmp_path: Path, answer: object, message: str
) -> None:
    # an empty or spoiled answer from an engine of one's own was stored as the cut-out, and
    # every later run skipped the image as made
    batch = BatchRemover(AnsweringEngine(answer), sink=tmp_path / "out", keep_results=True)
    report = batch.submit([photo(), photo()]).wait(timeout=30)
    assert (report.succeeded_count, report.failed_count) == (0, 2)
    errors = [job.error for jobs in report.failures.values() for job in jobs]
    assert all(isinstance(error, UnexpectedError) for error in errors)
    assert all(message in str(error) and "'mine'" in str(error) for error in errors)
    assert all("nothing was stored" in str(error) for error in errors)
    assert report.billed_calls == 2  # the engine answered: it may have charged
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_an_engine_answer_in_a_bytearray_is_stored(tmp_path: Path) -> None:
    made = photo()
    batch = BatchRemover(AnsweringEngine(ImageResult(bytearray(made))), sink=MemorySink())  # type: ignore[arg-type]
    assert batch.submit([photo()]).wait(timeout=30).succeeded_count == 1


# -- memory -----------------------------------------------------------------------------------


def big_photo(seed: int) -> bytes:
    noise = Image.effect_noise((900, 900), 64 + seed).convert("RGB")
    out = io.BytesIO()
    noise.save(out, "PNG")
    return out.getvalue()


def test_the_handle_keeps_no_input_bytes_of_failed_jobs(tmp_path: Path) -> None:
    emulator = PhotoroomEmulator({"poor": 0})  # every call: 402, with the request behind it
    paths = []
    for i in range(12):
        paths.append(str(tmp_path / f"big{i}.png"))
        Path(paths[-1]).write_bytes(big_photo(i))
    size = sum(os.path.getsize(p) for p in paths)
    assert size > 8_000_000
    with emulator.serve():
        batch = BatchRemover(
            sink=MemorySink(), api_key="poor", base_url=emulator.url, concurrency=1,
            requests_per_minute=None, track_credits=False, keep_results=True,
        )  # fmt: skip
        gc.collect()
        tracemalloc.start()
        try:
            handle = batch.submit(paths)
            report = handle.wait(timeout=60)
            gc.collect()
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert report.failed_count + report.cancelled_count == 12
    assert report.failed_count >= 1
    assert held < size / 4  # the failed inputs' bytes were let go


class CountingEngine:
    name = "counting"
    bills = False

    async def process(self, image: bytes, options: Any) -> ImageResult:
        await asyncio.sleep(0)
        return ImageResult(image)

    async def aclose(self) -> None:
        pass


def test_a_disk_that_turns_slow_mid_batch_gets_the_puts_off_the_event_loop_and_loses_nothing(
    tmp_path: Path, emulator: PhotoroomEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = FileSystemSink(tmp_path / "out")
    now = [0.0]
    fsynced_in: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.path.isfile(f"/proc/self/fd/{fd}"):  # a cut-out's file, not its folder
            fsynced_in.append(threading.current_thread().name)
            if len(fsynced_in) > 5:
                now[0] += 1.0  # the disk turns slow: each fsync takes a second
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    sink._quick_puts.clock = lambda: now[0]
    images = [photo() for _ in range(20)]
    report = asyncio.run(remover(emulator, sink, concurrency=4).run(images))
    assert report.succeeded_count == 20
    assert len(list((tmp_path / "out").iterdir())) == 20
    assert emulator.ledger.calls() == 20  # each paid once
    here = threading.current_thread().name
    assert fsynced_in[:5] == [here] * 5  # quick: on the event loop
    # after the first slow one, in worker threads (a probe in place now and then)
    assert fsynced_in[6:].count("photoroom_bg-worker") >= len(fsynced_in[6:]) // 2


def test_a_file_object_read_already_fails_its_job_with_a_hint(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    # it failed as "... is empty (0 bytes)" of a file that is not
    path = tmp_path / "shoe.png"
    path.write_bytes(photo())
    with path.open("rb") as spent, path.open("rb") as fresh:
        spent.read()
        report = remover(emulator, MemorySink()).submit([spent, fresh]).wait()
    assert report.succeeded_count == 1
    (failed,) = report.failures["InvalidImageError"]
    assert failed.index == 0
    assert "nothing left to read" in str(failed.error)
    assert "seek(0)" in str(failed.error)
    assert emulator.ledger.calls() == 1


def test_a_closed_file_object_fails_its_job_saying_so(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    # it failed as "<BufferedReader>: listing it stopped: ValueError: read of closed file"
    path = tmp_path / "shoe.png"
    path.write_bytes(photo())
    with path.open("rb") as closed:
        pass
    report = remover(emulator, MemorySink()).submit([closed, photo()]).wait()
    assert report.succeeded_count == 1
    (failed,) = report.failures["SourceError"]
    assert "shoe.png: the file object is closed" in str(failed.error)
    assert emulator.ledger.calls() == 1


def test_a_batch_without_an_api_key_stops_at_the_first_call_instead_of_failing_every_job(
    emulator: PhotoroomEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every job failed alike with "no Photoroom API key", one by one, to the last input
    monkeypatch.delenv("PHOTOROOM_API_KEY", raising=False)
    batch = BatchRemover(
        sink=MemorySink(), base_url=emulator.url, concurrency=2, requests_per_minute=None,
        track_credits=False, keep_results=True,
    )  # fmt: skip
    report = batch.submit([photo() for _ in range(40)]).wait(timeout=30)
    assert report.stop_reason is not None
    assert report.stop_reason.startswith("ConfigurationError: no Photoroom API key")
    assert 1 <= report.failure_counts["ConfigurationError"] <= 2
    assert report.cancelled_count >= 38
    assert emulator.requests == []


@pytest.mark.parametrize("given", ["folder", "glob", "files"])
def test_a_change_of_working_folder_while_the_batch_runs_reads_the_files_it_was_given(
    emulator: PhotoroomEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    # A notebook's %cd, or code of the application's calling os.chdir, while a submitted
    # batch runs: paths given relative to the folder it was submitted from were read from the
    # new one, so every later job failed (58 of 60) or, where the new folder holds files of
    # the same names, paid for and stored the wrong images
    _, images = photo_folder(tmp_path, 40)
    elsewhere = tmp_path / "elsewhere" / "in"
    elsewhere.mkdir(parents=True)
    for name in images:  # the same names, other pictures (16 x 16)
        Image.new("RGB", (16, 16), "red").save(elsewhere / name)
    monkeypatch.chdir(tmp_path)
    spec: Any = {"folder": "in", "glob": "in/*.png", "files": [f"in/{n}" for n in images]}[given]
    moved: list[str] = []

    def on_result(job: JobResult) -> None:
        if not moved:
            moved.append(job.source)
            os.chdir(elsewhere.parent)

    sink = FileSystemSink(tmp_path / "out")
    batch = remover(emulator, sink, concurrency=2, on_result=on_result)
    handle = batch.submit(spec)
    report = handle.wait(timeout=60)
    assert moved
    assert os.getcwd() == str(elsewhere.parent)
    assert (report.stored_count, report.failed_count) == (40, 0), report.failures[:2]
    sizes = {}
    for job in handle.results():
        assert job.ok
        assert job.key is not None
        assert not os.path.isabs(str(job.source))
        with Image.open(sink.path(job.key)) as cutout:
            sizes[job.source] = cutout.size
    expected = {f"in/{n}": Image.open(io.BytesIO(data)).size for n, data in images.items()}
    assert sizes == expected


def test_a_removers_manifest_and_spill_folder_stay_where_it_was_made(
    emulator: PhotoroomEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the sink's folder was taken in the working folder of when the remover was made, its
    # manifest and spill folder in that of each submit(): a %cd in between split them
    source, _ = photo_folder(tmp_path, 3)
    made, later = tmp_path / "made", tmp_path / "later"
    made.mkdir()
    later.mkdir()
    monkeypatch.chdir(made)
    batch = remover(emulator, "out", manifest="run.jsonl", spill_dir="spill")
    monkeypatch.chdir(later)
    report = batch.submit(str(source)).wait(timeout=60)
    assert report.stored_count == 3
    assert len(job_records(made / "run.jsonl")) == 3
    assert batch.spill_dir == made / "spill"
    assert sorted(p.name for p in later.iterdir()) == []


def test_an_s3_source_holding_credentials_fails_alone_and_never_shows_them(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    # s3://KEY:SECRET@bucket/... failed its job, but the secret went to the manifest, the
    # job's repr, its source and its error (botocore's message repeated the "bucket")
    secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYSECRETKEY"
    given = [f"s3://AKIAEXAMPLE:{secret}@bucket/photo.png", f"s3://AKIAEXAMPLE:{secret}@b/raw/"]
    reader = SourceReader(s3_options={"endpoint_url": f"http://127.0.0.1:{closed_port()}"})
    manifest = tmp_path / "run.jsonl"
    batch = remover(emulator, MemorySink(), reader=reader, manifest=str(manifest))
    handle = batch.submit([*given, photo()])
    report = handle.wait(timeout=60)
    assert (report.stored_count, report.failed_count) == (1, 2)
    failed = [job for job in handle.results() if not job.ok]
    assert all(isinstance(job.error, InvalidSourceError) for job in failed)
    assert all("takes no credentials" in str(job.error) for job in failed)
    assert {str(job.source) for job in failed} == {"s3://bucket/photo.png", "s3://b/raw/"}
    shown = [manifest.read_text(), repr(report)]
    shown += [repr(job) + str(job.source) + str(job.error) for job in handle.results()]
    assert not [text for text in shown if secret in text or "AKIAEXAMPLE" in text]


def test_a_keep_results_larger_than_any_process_holds_keeps_every_job(
    emulator: PhotoroomEmulator,
) -> None:
    # taken by the constructor, then submit() raised a bare OverflowError (a deque's bound)
    batch = remover(emulator, MemorySink(), keep_results=10**30)
    handle = batch.submit([photo() for _ in range(3)])
    assert handle.wait(timeout=60).stored_count == 3
    assert len(handle.results()) == 3


def test_a_generator_that_waits_holds_up_neither_the_batch_nor_cancel(
    emulator: PhotoroomEmulator,
) -> None:
    # a plain generator was pulled on the loop every submitted batch shares: while it waited
    # (here for a queue fed by another thread), no job ran, cancel() did nothing, and no
    # other batch of the process moved
    fed: queue.Queue[bytes | None] = queue.Queue()
    for _ in range(4):
        fed.put(photo())

    def feed() -> Iterator[bytes]:
        while (item := fed.get()) is not None:
            yield item

    other_done = threading.Event()

    def other_batch() -> None:  # a thread of its own: before, its submit() never returned
        if remover(emulator, MemorySink()).submit([photo()]).wait(timeout=60).stored_count:
            other_done.set()

    try:
        handle = remover(emulator, MemorySink(), concurrency=8).submit(feed())
        threading.Thread(target=other_batch, daemon=True).start()
        assert other_done.wait(30), "another batch of the process did not move"
        deadline = time.monotonic() + 30
        while handle.progress.stored < 4:  # the four given are made meanwhile
            assert time.monotonic() < deadline, handle.progress
            time.sleep(0.01)
        assert handle.cancel()
        report = handle.wait(timeout=30)
        assert (report.stored_count, report.failed_count) == (4, 0)
    finally:
        fed.put(None)  # the generator ends, and the thread that waits for it


def test_a_long_name_with_the_whole_digest_makes_a_key_a_file_system_takes(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    # a stem is cut to 160 bytes "so a key fits a file system's 255-byte names", but with
    # the documented {digest} (64 characters) a long Japanese name made a 228-byte name,
    # which FileSystemSink refuses (it keeps 28 bytes for its temporary and metadata names)
    folder = tmp_path / "in"
    folder.mkdir()
    long_name = "夏のコレクション" * 8  # 64 characters, 192 bytes
    fitting = "é" * 75  # 150 bytes: its key is 219 bytes, fits already, and keeps its stem
    for name in (long_name, fitting):
        (folder / f"{name}.png").write_bytes(photo())
    handle = remover(
        emulator, FileSystemSink(tmp_path / "out"), key_template="{stem}-{digest}.{ext}"
    ).submit(str(folder))
    report = handle.wait(timeout=60)
    assert (report.stored_count, report.failed_count) == (2, 0), report.failures
    keys = {job.source.rsplit("/", 1)[1]: job.key for job in handle.results()}
    assert all(key is not None and len(key.encode()) <= 227 for key in keys.values())
    assert keys[f"{fitting}.png"].startswith(f"{fitting}-")
    assert keys[f"{long_name}.png"].startswith("夏のコレクション")


@pytest.mark.parametrize("how", ["another sink", "outputs removed"])
def test_a_recorded_output_the_durable_sink_does_not_hold_is_made_again(
    emulator: PhotoroomEmulator, tmp_path: Path, how: str
) -> None:
    # the manifest's record was trusted, though the stat made to describe the output said
    # there was none: "skipped, output already stored", and no cut-out anywhere
    source, _ = photo_folder(tmp_path, 3)
    manifest = str(tmp_path / "run.jsonl")
    first = remover(emulator, FileSystemSink(tmp_path / "a"), manifest=manifest)
    assert first.submit(str(source)).wait(timeout=60).stored_count == 3
    if how == "outputs removed":
        sink = FileSystemSink(tmp_path / "a")
        for path in (tmp_path / "a").iterdir():
            path.unlink()
    else:
        sink = FileSystemSink(tmp_path / "b")
    handle = remover(emulator, sink, manifest=manifest).submit(str(source))
    report = handle.wait(timeout=60)
    assert (report.succeeded_count, report.skipped_count) == (3, 0)
    assert all(job.key and sink.path(job.key).is_file() for job in handle.results())
    assert emulator.ledger.calls() == 6


@pytest.mark.parametrize("key_template", ["{stem}-{digest12}.png", "cut/{stem}-{digest12}.png"])
@pytest.mark.parametrize("replacement", ["file", "broken link"])
def test_a_sink_folder_replaced_mid_batch_stops_the_batch(
    emulator: PhotoroomEmulator, tmp_path: Path, replacement: str, key_template: str
) -> None:
    # a put into a root that became a file failed as an ordinary storage error: each job was
    # retried for store_retry_budget, then spilled, and the batch went on paying for all 12
    source, _ = photo_folder(tmp_path, 12)
    root = tmp_path / "out"
    replaced: list[int] = []

    def replace_the_root(progress: Progress) -> None:
        if progress.succeeded == 2 and not replaced:
            replaced.append(progress.succeeded)
            shutil.rmtree(root)
            if replacement == "file":
                root.write_bytes(b"not a folder")
            else:
                root.symlink_to(tmp_path / "nowhere")

    batch = remover(
        emulator, FileSystemSink(root), concurrency=1, key_template=key_template,
        spill_dir=tmp_path / "spill", store_retry_budget=2.0, on_progress=replace_the_root,
    )  # fmt: skip
    handle = batch.submit(source)
    report = handle.wait(timeout=60)
    assert replaced == [2]
    billed = emulator.ledger.calls()
    assert (report.succeeded_count, report.spilled_count, billed) == (2, 1, 3)
    assert report.cancelled_count == 9
    assert report.stop_reason is not None
    assert f"{root} cannot be the sink's folder" in report.stop_reason
    [spilled] = [job for job in handle.results() if job.status is JobStatus.SPILLED]
    assert isinstance(spilled.error, BucketNotFoundError)
    assert spilled.output is not None
    assert (tmp_path / "spill" / spilled.key).is_file()  # paid for, and kept


def test_a_slow_callback_holds_up_no_call_and_pays_for_nothing_twice(tmp_path: Path) -> None:
    # the callbacks ran on the event loop: while the first one took 0.8 s, the answers to the
    # calls under way arrived but were not read, their 0.5 s timeouts fired, and the calls,
    # billed already, were made again
    emulator = PhotoroomEmulator(credits=100, faults=Faults(latency=0.2), image_work=False)
    called: list[tuple[str, int]] = []
    threads: set[str] = set()

    def on_result(result: JobResult) -> None:
        threads.add(threading.current_thread().name)
        called.append(("result", result.index))
        time.sleep(0.8)  # a slow callback: a database write, a network call

    def on_progress(progress: Progress) -> None:
        called.append(("progress", progress.succeeded))

    with emulator.serve():
        batch = remover(
            emulator, MemorySink(), concurrency=4, timeout=0.5, on_result=on_result,
            on_progress=on_progress,
        )  # fmt: skip
        handle = batch.submit([photo() for _ in range(8)])
        report = handle.wait(timeout=60)
        calls = emulator.ledger.calls()
    assert (report.succeeded_count, report.billed_calls, calls) == (8, 8, 8)
    assert report.possibly_billed_calls == 0
    # one call at a time, in the order jobs ended, each job's result then its progress
    results = [index for kind, index in called if kind == "result"]
    assert sorted(results) == list(range(8))
    assert [kind for kind, _ in called] == ["result", "progress"] * 8
    assert [count for kind, count in called if kind == "progress"] == list(range(1, 9))
    assert "photoroom-bg-loop" not in threads, threads


def test_paths_from_home_are_read_and_written_in_home_as_the_sinks_folder_is(
    emulator: PhotoroomEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sink="~/cutouts"`` was expanded, but "~/photos" as a source was read as a folder
    named "~" in the working folder (a SourceNotFoundError; a glob found nothing and the
    batch reported 0 of 0), and ``manifest="~/runs.jsonl"`` made that folder."""
    home, work = tmp_path / "home", tmp_path / "work"
    (home / "photos").mkdir(parents=True)
    work.mkdir()
    for name in ("a", "b", "c"):
        (home / "photos" / f"{name}.png").write_bytes(photo())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    batch = remover(emulator, "~/cutouts", manifest="~/runs.jsonl", spill_dir="~/spill")
    runs = [(["~/photos"], 3), (["~/photos/*.png"], 3), (["~/photos/a.png", Path("~/b.png")], 2)]
    (home / "b.png").write_bytes((home / "photos" / "b.png").read_bytes())
    for sources, total in runs:
        report = batch.submit(sources).wait(timeout=30)
        assert report.failure_counts == {}, report
        assert report.total_count == total
    assert len(list((home / "cutouts").glob("*.png"))) == 3  # b twice: one image, one key
    assert (home / "runs.jsonl").is_file()
    assert batch.spill_dir == home / "spill"
    assert list(work.iterdir()) == []  # no folder named "~"
