"""Durable records and real outages: torn manifests, resumes, a sink that goes away and comes
back, an interpreter that exits under a running batch, resources of loops that ended."""

from __future__ import annotations

import asyncio
import errno
import gc
import io
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from photoroom_bg import FileSystemSink, JobStatus, MemorySink, S3Sink, SyncSink
from photoroom_bg.batch import load_sources
from photoroom_bg.batch._manifest import latest_records, load_finished_keys, read_manifest
from photoroom_bg.errors import ConfigurationError, StorageUnavailableError
from photoroom_bg.sinks import StoredObject
from photoroom_bg.testing import Faults, PhotoroomEmulator

from ..loopback import until
from ..s3server import S3Server
from ..tcpproxy import running_proxy
from .conftest import job_records, photo, photo_folder, remover

# -- the manifest -----------------------------------------------------------------------


def record(key: str, status: str = "succeeded") -> str:
    return json.dumps(
        {"v": 1, "key": key, "status": status, "name": "é-" + key}, ensure_ascii=False
    )


def test_a_manifest_torn_inside_a_utf8_character_is_read_and_the_tear_counted(
    tmp_path: Path,
) -> None:
    manifest = tmp_path / "m.jsonl"
    whole = (record("a") + "\n" + record("b") + "\n").encode()
    torn = record("c").encode()
    cut = torn.index("é".encode()) + 1  # half of a two-byte character
    manifest.write_bytes(whole + torn[:cut])
    assert load_finished_keys(manifest) == {"a", "b"}
    assert read_manifest(manifest).torn == 1


#: Lines ``json.loads`` cannot read although they are well formed: nested past the parser's
#: recursion (a ``RecursionError``, no ``ValueError``) and an integer of too many digits
UNREADABLE_LINES = ["[" * 100_000 + "]" * 100_000, '{"v": 1, "key": ' + "1" * 5_000 + "}"]


def test_a_manifest_line_too_deep_or_too_long_to_read_is_counted_torn(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    # the nested line raised RecursionError out of every read of the manifest: the batch
    # could be neither started nor resumed on it
    manifest = tmp_path / "m.jsonl"
    lines = [record("a"), *UNREADABLE_LINES, record("b")]
    manifest.write_text("\n".join(lines) + "\n")
    assert load_finished_keys(manifest) == {"a", "b"}
    assert read_manifest(manifest).torn == 2
    report = remover(emulator, MemorySink(), manifest=manifest).submit([photo()]).wait()
    assert report.succeeded_count == 1


@pytest.mark.parametrize(
    "sources", ["photos", ["photos", 3, None], {"photos": 1}], ids=["a-string", "not-text", "a-map"]
)
def test_a_run_header_whose_sources_are_no_list_of_names_is_not_replayed(
    emulator: PhotoroomEmulator, tmp_path: Path, sources: object
) -> None:
    # "sources": "photos" (a hand edit, another tool) made resume() open "p", "h", "o"...:
    # one failed job per character, written back as the next run's sources
    manifest = tmp_path / "m.jsonl"
    good = {"v": 1, "type": "run", "time": 1.0, "sources": [str(tmp_path / "in")]}
    odd = {"v": 1, "type": "run", "time": 2.0, "sources": sources}
    manifest.write_text(json.dumps(good) + "\n" + json.dumps(odd) + "\n")
    assert read_manifest(manifest).torn == 1  # counted as a line that could not be read
    assert load_sources(manifest) == [str(tmp_path / "in")]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "p.png").write_bytes(photo())
    report = remover(emulator, MemorySink()).resume(manifest=manifest).wait()
    assert (report.total_count, report.succeeded_count) == (1, 1)


def test_appending_after_a_torn_line_starts_on_a_new_line(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes((record("a") + "\n").encode() + record("b").encode()[:25])
    images = [photo() for _ in range(3)]
    report = remover(emulator, MemorySink(), manifest=manifest).submit(images).wait()
    assert report.succeeded_count == 3
    state = read_manifest(manifest)
    assert state.torn == 1  # only the old tear: every record of this run reads back
    assert len(job_records(manifest)) == 1 + 3


def test_a_manifest_path_no_file_can_have_is_refused_before_anything_is_billed(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    # open() raises ValueError for a NUL byte: it left submit() outside the SDK's errors,
    # where the spill folder's and the sink's folder's were ConfigurationErrors
    manifest = tmp_path / "runs\x00.jsonl"
    with pytest.raises(ConfigurationError, match="cannot write the manifest"):
        remover(emulator, MemorySink(), manifest=manifest).submit([photo()]).wait()
    assert emulator.ledger.calls() == 0


@pytest.mark.parametrize(
    ("sink", "manifest", "spill", "where"),
    [
        ("out", "out", "spill", "the sink's folder"),
        ("out/cutouts", "out", "spill", "the sink's folder"),
        ("out", "runs", "runs", "the spill folder"),
        ("out", "runs", "runs/spill", "the spill folder"),
    ],
)
def test_a_manifest_where_a_folder_of_the_batch_goes_is_refused_before_anything_is_billed(
    emulator: PhotoroomEmulator, tmp_path: Path, sink: str, manifest: str, spill: str, where: str
) -> None:
    # the folders are made as cut-outs arrive, the manifest when the batch opens: a manifest
    # named as the sink's folder took its place, and the first paid cut-out could not be
    # stored (spilled, the batch stopped); named as the spill folder, a cut-out the sink
    # refused had nowhere to go
    made = remover(
        emulator, str(tmp_path / sink), manifest=tmp_path / manifest, spill_dir=tmp_path / spill
    )
    with pytest.raises(ConfigurationError, match=f"is where {where} .* goes"):
        made.submit([photo()]).wait()
    assert emulator.ledger.calls() == 0
    assert sorted(os.listdir(tmp_path)) == []
    with pytest.raises(ConfigurationError, match=f"is where {where} .* goes"):
        remover(emulator, str(tmp_path / sink), spill_dir=tmp_path / spill).resume(
            [photo()], manifest=tmp_path / manifest
        )
    assert emulator.ledger.calls() == 0


def test_the_sinks_copy_of_a_manifest_keeps_the_records_of_a_run_killed_before_it(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    # a local manifest kept for the sink's copy (as the service keeps each job's): a run
    # killed before it stored the copy left its records in the local file only, and the
    # next run's copy held its own lines after the file's end: what the killed run made and
    # paid for was gone from the job's record ("skipped, billed: false")
    sink, local = MemorySink(), tmp_path / "job.jsonl"
    images = [photo() for _ in range(4)]
    killed = remover(emulator, sink, manifest=local)  # as if killed: no copy stored
    assert killed.submit(images[:2]).wait().succeeded_count == 2
    assert "jobs/j/manifest.jsonl" not in sink.objects
    resumed = remover(emulator, sink, manifest=local, manifest_key="jobs/j/manifest.jsonl")
    report = resumed.submit(images).wait()
    assert (report.skipped_count, report.succeeded_count) == (2, 2)
    copy = sink.objects["jobs/j/manifest.jsonl"].decode().splitlines()
    records = latest_records(json.loads(line) for line in copy)
    assert [records[i]["status"] for i in range(4)] == ["succeeded"] * 4
    assert [records[i]["billed"] for i in range(4)] == [True] * 4
    assert sum('"type": "run"' in line for line in copy) == 2
    # and a third run adds its own lines only, nothing twice
    remover(emulator, sink, manifest=local, manifest_key="jobs/j/manifest.jsonl").submit(
        images
    ).wait()
    again = sink.objects["jobs/j/manifest.jsonl"].decode().splitlines()
    assert again[: len(copy)] == copy
    assert sum('"type": "run"' in line for line in again) == 3
    assert len(again) == len(copy) + 1 + 4
    assert emulator.ledger.calls() == 4


@pytest.mark.parametrize("key", ["../runs.jsonl", "runs\x00.jsonl", "\ud800.jsonl", "/runs"])
def test_a_manifest_key_no_sink_takes_is_refused_when_the_remover_is_made(
    emulator: PhotoroomEmulator, key: str
) -> None:
    # refused only once the batch opened, as "the sink is not usable: key ...": the sink
    # was fine, the setting was not
    with pytest.raises(ConfigurationError, match=r"^manifest_key .*: key "):
        remover(emulator, MemorySink(), manifest_key=key)
    assert emulator.ledger.calls() == 0


def test_a_file_that_is_not_a_manifest_is_refused_untouched_before_anything_is_billed(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    products = tmp_path / "products.csv"  # named as the manifest by mistake
    products.write_bytes(b"sku,url\n1,https://shop.example/a.jpg\n")
    before = products.read_bytes()
    with pytest.raises(
        ConfigurationError, match=r"products.csv is not a manifest \(it begins 'sku,'"
    ):
        remover(emulator, MemorySink(), manifest=products).submit([photo()]).wait()
    assert products.read_bytes() == before
    assert emulator.ledger.calls() == 0
    with pytest.raises(ConfigurationError, match="is not a manifest"):
        remover(emulator, MemorySink()).resume(manifest=products)
    folder = tmp_path / "m.jsonl"
    folder.mkdir()
    with pytest.raises(ConfigurationError, match=r"the manifest at .*m\.jsonl is a folder, not"):
        remover(emulator, MemorySink()).resume(manifest=folder)


def test_a_sink_object_that_is_not_a_manifest_is_refused_untouched(
    emulator: PhotoroomEmulator,
) -> None:
    sink = MemorySink()
    asyncio.run(sink.put("products.csv", b"sku,url\n", content_type="text/csv"))
    with pytest.raises(ConfigurationError, match=r"the sink's 'products\.csv' is not a manifest"):
        remover(emulator, sink, manifest_key="products.csv").submit([photo()]).wait()
    assert asyncio.run(sink.get("products.csv")) == b"sku,url\n"
    assert emulator.ledger.calls() == 0


def test_a_manifest_cut_off_in_its_first_line_is_still_one(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    for cut in (b"{", b'{"v', b'{"v": 1, "ty'):
        manifest = tmp_path / f"m{len(cut)}.jsonl"
        manifest.write_bytes(cut)  # a crash while the first record was written
        for _ in range(2):  # the run after the one that ended the torn line too
            report = remover(emulator, MemorySink(), manifest=manifest).submit([photo()]).wait()
            assert report.succeeded_count + report.skipped_count == 1, cut


def test_records_the_writer_holds_when_it_is_cancelled_are_written(tmp_path: Path) -> None:
    """A cancel that lands while the writer waits for a worker thread (all of them busy on a
    loaded machine) must not drop the records it has already taken from its queue."""
    import anyio

    from photoroom_bg.batch._manifest import Manifest

    async def main() -> None:
        manifest = Manifest(tmp_path / "m.jsonl")
        manifest.open()
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = 1
        release = threading.Event()
        failures: list[Exception] = []
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, release.wait)  # the only thread
                await until(lambda: limiter.borrowed_tokens == 1)
                tg.start_soon(manifest.writer, failures.append)
                for n in range(3):
                    manifest._send.send_nowait(f'{{"n": {n}}}\n'.encode())  # type: ignore[union-attr]
                await until(lambda: manifest._receive.statistics().current_buffer_used == 0)  # type: ignore[union-attr]
                tg.cancel_scope.cancel()
                release.set()
        finally:
            limiter.total_tokens = 40
            manifest.close()
        assert failures == []
        assert (tmp_path / "m.jsonl").read_text().splitlines() == [
            f'{{"n": {n}}}' for n in range(3)
        ]

    asyncio.run(main())


def test_resume_after_retry_failed_finds_the_batch_sources_in_an_earlier_run(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(5):
        (folder / f"p{i}.png").write_bytes(photo())
    emulator = PhotoroomEmulator(credits=1000)
    manifest = tmp_path / "m.jsonl"
    with emulator.serve():
        emulator.inject(*["500"] * 2)
        batch = remover(emulator, tmp_path / "out", manifest=manifest, max_retries=0,
                        concurrency=1)  # fmt: skip
        handle = batch.submit(str(folder))
        assert handle.wait().failed_count == 2
        emulator.inject("500")
        retried = handle.retry_failed().wait()
        assert (retried.total_count, retried.failed_count) == (2, 1)
        assert load_sources(manifest) == [str(folder.resolve())]  # not the retry's subset
        final = batch.resume().wait()
    assert (final.total_count, final.stored_count) == (5, 5)
    assert emulator.ledger.calls() == 5


def test_resume_never_replays_an_older_run_in_place_of_one_whose_sources_were_not_recorded(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    # a run of bytes records no sources; resume() then replayed the run before it, skipped
    # everything that run had stored, and reported all_ok: the interrupted images, never
    # made, were not mentioned
    folder, _ = photo_folder(tmp_path, 2)
    manifest = tmp_path / "m.jsonl"
    batch = remover(emulator, tmp_path / "out", manifest=manifest, max_retries=0)
    assert batch.submit(str(folder)).wait().stored_count == 2
    emulator.inject("500")
    interrupted = photo()
    assert batch.submit([interrupted]).wait().failed_count == 1
    with pytest.raises(ConfigurationError, match="does not record re-openable sources"):
        batch.resume()
    assert emulator.ledger.calls() == 2  # the 500 billed nothing
    assert batch.resume([interrupted]).wait().stored_count == 1  # given again, it goes on


def test_sources_that_are_not_utf8_text_are_recorded_and_resumed_as_given(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    # the run's record of its sources was encoded strictly: a file name that is not UTF-8
    # (os.fsdecode's \udcxx) or a URL holding a lone surrogate made submit() raise
    # UnicodeEncodeError, and the batch could not start
    odd = tmp_path / os.fsdecode(b"caf\xe9.png")
    odd.write_bytes(photo())
    manifest = tmp_path / "m.jsonl"
    sources = [str(odd), "http://127.0.0.1:9/\ud800.png"]
    batch = remover(emulator, tmp_path / "out", manifest=manifest)
    first = batch.submit(sources).wait()
    assert (first.stored_count, first.failure_counts) == (1, {"InvalidSourceError": 1})
    assert load_sources(manifest) == sources
    again = batch.resume().wait()  # from the manifest's own record of the sources
    assert (again.total_count, again.skipped_count) == (2, 1)
    assert emulator.ledger.calls() == 1


@pytest.mark.parametrize("skip_existing", [True, False])
@pytest.mark.parametrize("durable", [True, False])
def test_a_resume_checks_what_a_sink_that_is_not_durable_kept(
    emulator: PhotoroomEmulator, tmp_path: Path, durable: bool, skip_existing: bool
) -> None:
    """What a power cut can leave of the last outputs of ``FileSystemSink(durable=False)``:
    nothing, or an empty file. A resume from the manifest makes those again (paying for
    them), and takes no empty file for a cut-out. A durable sink's recorded outputs are
    described by a stat: one that is gone (someone's hand removed it) is made again, and an
    empty file, which no power cut leaves there, is taken as it is."""
    images = [photo() for _ in range(5)]
    manifest = tmp_path / "m.jsonl"
    out = tmp_path / "out"
    batch = remover(emulator, FileSystemSink(out, durable=durable), manifest=manifest)
    assert batch.submit(images).wait().stored_count == 5
    outputs = sorted(out.glob("*.png"))
    assert len(outputs) == 5
    outputs[0].unlink()  # lost
    outputs[1].write_bytes(b"")  # renamed into place, its bytes never written back
    sink = FileSystemSink(out, durable=durable)
    resumed = remover(emulator, sink, manifest=manifest, skip_existing=skip_existing)
    again = resumed.resume(images).wait()
    if durable:
        assert (again.skipped_count, again.succeeded_count, again.billed_calls) == (4, 1, 1)
        assert outputs[0].stat().st_size > 0
    else:
        assert (again.skipped_count, again.succeeded_count, again.billed_calls) == (3, 2, 2)
        assert all(path.stat().st_size > 0 for path in outputs)
    assert emulator.ledger.calls() == (6 if durable else 7)


def test_a_resume_in_a_new_process_makes_what_a_memory_sink_lost_with_the_old_one(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    # a memory sink's objects end with the process, but a resume in a new one (a notebook's
    # kernel restarted, the same manifest) trusted the records: every job ended "skipped",
    # and no cut-out was anywhere
    images = [photo() for _ in range(3)]
    manifest = tmp_path / "m.jsonl"
    assert (
        remover(emulator, MemorySink(), manifest=manifest).submit(images).wait().stored_count == 3
    )
    sink = MemorySink()  # what the new process has
    again = remover(emulator, sink, manifest=manifest).resume(images).wait()
    assert (again.skipped_count, again.succeeded_count, again.billed_calls) == (0, 3, 3)
    assert len(sink.objects) == 3
    # in the same process, with the same sink, the records are kept, and nothing is paid
    third = remover(emulator, sink, manifest=manifest).resume(images).wait()
    assert (third.skipped_count, third.billed_calls) == (3, 0)
    assert emulator.ledger.calls() == 6


# -- the sink goes away -------------------------------------------------------------------


def proxied_sink(s3_server: S3Server, prefix: str, url: str) -> S3Sink:
    options = {**s3_server.sink_options(), "endpoint_url": url}
    return S3Sink(prefix, **options)


def test_a_sink_outage_pauses_the_batch_and_it_goes_on_when_the_sink_is_back(
    s3_server: S3Server, s3_prefix: str
) -> None:
    host, port = s3_server.endpoint_url.rsplit("/", 1)[1].split(":")
    emulator = PhotoroomEmulator(credits=10_000, faults=Faults(latency=0.01), image_work=False)
    images = [photo() for _ in range(200)]
    with running_proxy((host, int(port))) as proxy, emulator.serve():
        sink = proxied_sink(s3_server, s3_prefix, proxy.url)
        batch = remover(emulator, sink, concurrency=8, sink_outage_budget=60)
        handle = batch.submit(images)
        stored = 0
        for job in handle.as_completed(timeout=60):
            stored += job.ok
            if stored == 50:
                proxy.cut()  # the S3 server is gone: refused connections, reset streams
                cut_at = len(emulator.requests)
                threading.Timer(2.0, proxy.restore).start()
        report = handle.wait(timeout=120)
        from photoroom_bg import _loop

        _loop.run_sync(sink.aclose())
    assert report.stored_count == 200  # a pause, not a massacre
    assert report.failed_count == 0
    assert emulator.ledger.calls() == 200
    assert len(emulator.requests) - cut_at <= 150 + 8  # nobody kept calling the API blindly


def test_a_sink_gone_for_longer_than_the_budget_stops_the_batch_and_keeps_paid_cut_outs(
    s3_server: S3Server, s3_prefix: str, tmp_path: Path
) -> None:
    host, port = s3_server.endpoint_url.rsplit("/", 1)[1].split(":")
    emulator = PhotoroomEmulator(credits=10_000, faults=Faults(latency=0.02), image_work=False)
    images = [photo() for _ in range(60)]
    with running_proxy((host, int(port))) as proxy, emulator.serve():
        sink = proxied_sink(s3_server, s3_prefix, proxy.url)
        batch = remover(emulator, sink, concurrency=4, sink_outage_budget=1.0,
                        spill_dir=tmp_path / "spill")  # fmt: skip
        handle = batch.submit(images)
        for count, _ in enumerate(handle.as_completed(timeout=60), start=1):
            if count == 10:
                proxy.cut()
                break
        report = handle.wait(timeout=60)
        from photoroom_bg import _loop

        _loop.run_sync(sink.aclose())
    assert report.stop_reason is not None
    assert "unreachable for 1 s" in report.stop_reason
    billed = emulator.ledger.calls()
    # every paid cut-out is either in the bucket or in the spill folder
    assert report.succeeded_count + report.spilled_count == billed
    spilled = [p for p in (tmp_path / "spill").rglob("*.png")]
    assert len(spilled) == report.spilled_count
    assert report.cancelled_count + report.failed_count + billed == 60 - report.skipped_count


def test_a_sink_that_answers_look_ups_but_takes_no_put_stops_the_batch_after_the_budget(
    tmp_path: Path,
) -> None:
    # a server serving reads but not writes (503 on every put, 200 on every look-up): the
    # prober found it answering each time, and the batch paused and retried without end
    class ReadOnlyNow(MemorySink):
        async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
            raise StorageUnavailableError("503 Slow Down: writes are suspended")

    emulator = PhotoroomEmulator(credits=100, faults=Faults(latency=0.02), image_work=False)
    with emulator.serve():
        batch = remover(emulator, ReadOnlyNow(), concurrency=2, sink_outage_budget=1.0,
                        spill_dir=tmp_path / "spill")  # fmt: skip
        report = batch.submit([photo() for _ in range(20)]).wait(timeout=60)
    assert report.stop_reason is not None
    assert "taken no cut-out for 1 s, though it answers look-ups" in report.stop_reason
    billed = emulator.ledger.calls()
    assert 1 <= billed < 20  # stopped: no more calls paid for what it cannot store
    assert report.spilled_count == billed  # and every paid cut-out kept
    assert len(list((tmp_path / "spill").rglob("*.png"))) == billed


# -- interpreter exit ---------------------------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from photoroom_bg import BatchRemover

    logging.basicConfig(level=logging.WARNING)
    url, out, manifest, exit_timeout = sys.argv[1:5]
    images = [open(p, "rb").read() for p in sys.argv[5:]]
    batch = BatchRemover(sink=out, base_url=url, manifest=manifest, concurrency=4,
                         requests_per_minute=None, track_credits=False,
                         exit_timeout=float(exit_timeout))
    handle = batch.submit(images)
    while handle.progress.done < 6:
        pass
    print("leaving", flush=True)
    # no wait(): the script ends with the batch running
    """
)


# inf: wait as long as the jobs take (it once reached Future.result as is, which raised
# OverflowError there, so the exit cancelled the jobs at once instead of waiting at all)
@pytest.mark.parametrize("exit_timeout", ["30", "inf"])
def test_an_interpreter_exit_lets_running_jobs_store_and_says_how_to_resume(
    tmp_path: Path, exit_timeout: str
) -> None:
    inputs = []
    for i in range(40):
        inputs.append(tmp_path / f"in{i}.png")
        inputs[-1].write_bytes(photo())
    out, manifest = tmp_path / "out", tmp_path / "m.jsonl"
    emulator = PhotoroomEmulator(credits=1000, faults=Faults(latency=0.3), image_work=False)
    env = {**os.environ, "PHOTOROOM_API_KEY": emulator.api_key}
    with emulator.serve() as url:
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, url, str(out), str(manifest), exit_timeout,
             *map(str, inputs)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    billed = emulator.ledger.calls()
    assert 6 <= billed < 40  # it stopped starting jobs
    stored = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert len(stored) == billed  # every call paid for was stored before the exit
    recorded = [r for r in job_records(manifest) if r["status"] == "succeeded"]
    assert len(recorded) == billed  # and the manifest was flushed
    assert "interpreter exited before the batch ended" in done.stderr
    # the images were bytes, which no manifest records: a bare resume() would be refused
    assert ".resume(sources), given the same sources again" in done.stderr


HUNG_SCRIPT = textwrap.dedent(
    """
    import io, logging, sys, threading
    import anyio
    from PIL import Image
    from photoroom_bg import BatchRemover, FileSystemSink
    from photoroom_bg.models import ImageResult

    logging.basicConfig(level=logging.WARNING)
    where, out, spill, manifest, count = sys.argv[1:6]
    entered = threading.Semaphore(0)
    cut_out = io.BytesIO()
    Image.new("RGBA", (8, 8)).save(cut_out, "PNG")

    class Engine:  # a paid engine of one's own, which may stop answering
        name, bills = "paid", True

        async def process(self, image, options):
            if where == "engine":
                entered.release()
                await anyio.sleep_forever()
            return ImageResult(cut_out.getvalue(), content_type="image/png")

        async def aclose(self):
            pass

    class Sink(FileSystemSink):  # a sink that may stop answering (a stuck network mount)
        async def put(self, key, data, **kwargs):
            if where in ("sink", "command"):
                entered.release()
                await anyio.sleep_forever()
            return await super().put(key, data, **kwargs)

    batch = BatchRemover(Engine(), sink=Sink(out), spill_dir=spill, manifest=manifest,
                         concurrency=4, exit_timeout=0.2)
    batch._command = where == "command"  # as the photoroom-bg command runs it
    handle = batch.submit([bytes([i]) + b"input" for i in range(int(count))])
    for _ in range(4):  # every worker is held up, its job's call paid for, or under way
        assert entered.acquire(timeout=60)
    print("leaving", flush=True)
    # no wait(): the script ends with the batch held up past its exit_timeout
    """
)


@pytest.mark.parametrize("where", ["sink", "engine", "command"])
def test_an_exit_past_the_exit_timeout_spills_what_was_paid_and_says_what_may_be_paid_again(
    tmp_path: Path, where: str
) -> None:
    # past the exit_timeout the exit cancelled the batch and went on at once: the cut-outs
    # paid for and waiting on a sink that hung were dropped, unrecorded, not spilled, and
    # the warning said "nothing is paid twice" while a resume paid for them again
    out, spill, manifest = tmp_path / "out", tmp_path / "spill", tmp_path / "m.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", HUNG_SCRIPT, where, str(out), str(spill), str(manifest), "8"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "leaving\n"
    if where == "command":  # its advice is the command's (it was Python's: wait(), resume())
        assert "stopped before the batch ended: 0 stored, 4 spilled" in done.stderr
        assert "run the same command again to finish it" in done.stderr
        assert "wait()" not in done.stderr
        assert "resume" not in done.stderr
    else:
        assert "the interpreter exited before the batch ended" in done.stderr
    spilled = sorted(p.name for p in spill.rglob("*.png"))
    records = job_records(manifest)
    if where in ("sink", "command"):
        assert len(spilled) == 4  # every paid cut-out kept for a later run
        assert sorted(r["key"] for r in records if r["status"] == "spilled") == spilled
        assert "0 stored, 4 spilled" in done.stderr
        assert "nothing is paid twice" in done.stderr
    else:
        assert spilled == []
        assert "4 call(s) to paid under way were cut short: they may have been billed" in (
            done.stderr
        )
        assert "nothing is paid twice" not in done.stderr


def test_an_exit_that_leaves_nothing_undone_says_nothing(tmp_path: Path) -> None:
    # a batch with nothing to do (retry_failed() of a batch that all succeeded, say) still
    # running when the script ended was reported as "exited before the batch ended: 0
    # stored, 0 spilled, 0 failed, 0 not processed"
    emulator = PhotoroomEmulator(credits=10)
    script = textwrap.dedent(
        """
        import logging, sys
        from photoroom_bg import BatchRemover

        logging.basicConfig(level=logging.WARNING)
        batch = BatchRemover(sink=sys.argv[2], base_url=sys.argv[1], track_credits=False)
        batch.submit([])
        """
    )
    env = {**os.environ, "PHOTOROOM_API_KEY": emulator.api_key}
    with emulator.serve() as url:
        done = subprocess.run(
            [sys.executable, "-c", script, url, str(tmp_path / "out")],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "exited before" not in done.stderr
    assert done.stderr == ""


# -- resources of loops, notebooks --------------------------------------------------------


def test_resources_of_a_loop_that_ended_are_closed_not_dropped(
    s3_server: S3Server, s3_prefix: str
) -> None:
    sink = S3Sink(s3_prefix, **s3_server.sink_options())

    async def forgetful() -> bool:
        return await sink.exists("nothing-here")  # a client made on this loop, never closed

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert asyncio.run(forgetful()) is False
        gc.collect()
    assert [str(w.message) for w in caught if "nclosed" in str(w.message)] == []
    assert len(sink._clients) == 1
    assert asyncio.run(forgetful()) is False
    assert len(sink._clients) == 1  # the dead loop's entry was let go


def test_closing_a_sync_sink_used_with_await_on_the_notebook_loop_does_not_deadlock(
    s3_server: S3Server, s3_prefix: str
) -> None:
    facade = SyncSink(S3Sink(s3_prefix, **s3_server.sink_options()))
    finished = threading.Event()

    async def cell() -> None:
        await facade.sink.put("a.png", b"data")  # a client on the notebook's own loop
        assert facade.get("a.png") == b"data"  # and one on the background loop
        facade.close()  # used to wait for the notebook loop, which waits for it
        finished.set()

    thread = threading.Thread(target=asyncio.run, args=(cell(),), daemon=True)
    thread.start()
    assert finished.wait(30), "SyncSink.close() deadlocked"
    thread.join(30)


def test_a_skipped_s3_output_is_described_by_a_head_not_a_download(
    s3_server: S3Server, s3_prefix: str, emulator: PhotoroomEmulator
) -> None:
    images = [photo() for _ in range(3)]
    sink = S3Sink(s3_prefix, **s3_server.sink_options())
    batch = remover(emulator, sink, keep_results=True)
    first = batch.submit(images).wait()
    handle = batch.submit(images)
    second = handle.wait()
    assert (first.succeeded_count, second.skipped_count) == (3, 3)
    skipped = [job for job in handle.results() if job.status is JobStatus.SKIPPED]
    assert all(job.output is not None and job.output.url.startswith("http") for job in skipped)
    assert all(job.output is not None and job.output.size > 0 for job in skipped)
    from photoroom_bg import _loop

    _loop.run_sync(sink.aclose())


# -- progress -----------------------------------------------------------------------------


def test_progress_after_a_cancel_tells_what_happened(
    capsys: pytest.CaptureFixture[str],
) -> None:
    emulator = PhotoroomEmulator(credits=1000, faults=Faults(latency=0.05), image_work=False)
    with emulator.serve():
        batch = remover(emulator, MemorySink(), concurrency=2, progress=True)
        handle = batch.submit([photo() for _ in range(100)])
        for count, _ in enumerate(handle.as_completed(timeout=60), start=1):
            if count == 10:
                handle.cancel()
        report = handle.wait()
    progress = handle.progress
    assert progress.total == 100  # known once the listing ended
    assert progress.processed == report.stored_count
    assert progress.cancelled == 100 - report.stored_count
    assert progress.rate == pytest.approx(progress.processed / progress.elapsed)
    assert progress.eta == 0
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()[-1]
    assert f"{report.stored_count}/100" in bar  # not 100/100 with a few stored
    assert f"cancelled={report.cancelled_count}" in bar
    assert "stopped" in bar


def test_the_bar_shows_the_total_once_the_listing_ends(
    capsys: pytest.CaptureFixture[str], emulator: PhotoroomEmulator
) -> None:
    images = (photo() for _ in range(5))  # a generator: the total is unknown at first
    remover(emulator, MemorySink(), progress=True).submit(images).wait()
    final = capsys.readouterr().err.replace("\r", "\n").splitlines()[-1]
    assert "5/5" in final


class _FailingStream(io.TextIOBase):
    """``stderr`` that fails after ``writes`` writes: its reader gone (``... 2>&1 | tee log``
    with ``tee`` killed), its disk full, or the stream closed in-process."""

    def __init__(self, writes: int, error: Exception) -> None:
        self.left = writes
        self.error = error
        self.failures = 0

    def write(self, text: str) -> int:
        self._spend()
        return len(text)

    def flush(self) -> None:
        if self.left <= 0:
            self._spend()

    def _spend(self) -> None:
        if self.left <= 0:
            self.failures += 1
            raise self.error
        self.left -= 1


@pytest.mark.parametrize(
    ("writes", "error"),
    [
        (0, BrokenPipeError(errno.EPIPE, "Broken pipe")),
        (2, BrokenPipeError(errno.EPIPE, "Broken pipe")),
        (2, OSError(errno.ENOSPC, "No space left on device")),
        (2, ValueError("I/O operation on closed file.")),
    ],
    ids=["closed-pipe-at-once", "closed-pipe-mid-batch", "full-disk", "closed-file"],
)
@pytest.mark.parametrize("how", ["submit", "run"])
def test_a_progress_bar_that_cannot_be_drawn_never_stops_the_batch(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    writes: int,
    error: Exception,
    how: str,
) -> None:
    # the bar's error ended the batch: calls under way paid for and dropped, and a raw
    # BrokenPipeError out of wait() (or out of submit() when the first draw failed)
    emulator = PhotoroomEmulator(credits=1000, faults=Faults(latency=0.05), image_work=False)
    stderr = _FailingStream(writes, error)
    sink = MemorySink()
    with emulator.serve():
        monkeypatch.setattr(sys, "stderr", stderr)
        batch = remover(emulator, sink, concurrency=2, progress=True)
        images = [photo() for _ in range(30)]
        report = batch.submit(images).wait() if how == "submit" else asyncio.run(batch.run(images))
        billed = emulator.ledger.calls()
    assert (report.stored_count, report.failed_count, report.stop_reason) == (30, 0, None)
    assert billed == len(sink.objects) == 30
    assert stderr.failures == 1  # the bar stopped drawing at its first failure
    warned = [r.getMessage() for r in caplog.records if "progress bar" in r.getMessage()]
    assert warned == [
        f"the progress bar cannot be drawn ({type(error).__name__}: {error}); "
        "the batch goes on without it"
    ]


class _StalledStream(io.TextIOBase):
    """``stderr`` that takes one write, then blocks every later one until ``go`` is set: a
    terminal paused with Ctrl-S, or a pipe whose reader stopped reading."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.text: list[str] = []

    def write(self, text: str) -> int:
        self._stall()
        self.text.append(text)
        return len(text)

    def flush(self) -> None:
        self._stall()

    def _stall(self) -> None:
        if self.text and not self.go.wait(30):
            raise OSError(errno.EIO, "stalled for 30 s")


@pytest.mark.parametrize("how", ["submit", "run"])
def test_a_stalled_terminal_holds_up_neither_the_batch_nor_its_paid_calls(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    # the bar was drawn on the event loop: its write blocked the loop, with every call under
    # way, paid for, until the terminal took output again (wait() timed out after 20 s; run()
    # went on only once the write failed, 30 s later)
    emulator = PhotoroomEmulator(credits=1000, faults=Faults(latency=0.2), image_work=False)
    stderr = _StalledStream()
    sink = MemorySink()
    try:
        with emulator.serve():
            monkeypatch.setattr(sys, "stderr", stderr)
            batch = remover(emulator, sink, concurrency=4, progress=True, timeout=0.5)
            images = [photo() for _ in range(12)]
            if how == "submit":
                report = batch.submit(images).wait(timeout=20)
            else:
                report = asyncio.run(asyncio.wait_for(batch.run(images), 20))
            billed = emulator.ledger.calls()
    finally:
        stderr.go.set()
    assert (report.stored_count, report.possibly_billed_calls, billed) == (12, 0, 12)
    assert len(sink.objects) == 12
    assert not [r for r in caplog.records if "progress bar" in r.getMessage()]


def test_a_submitted_batch_shows_its_bar_in_a_jupyter_kernel(tmp_path: Path) -> None:
    jupyter_client = pytest.importorskip("jupyter_client")
    pytest.importorskip("ipykernel")
    pytest.importorskip("ipywidgets")
    emulator = PhotoroomEmulator(credits=100, faults=Faults(latency=0.05), image_work=False)
    images = tmp_path / "in"
    images.mkdir()
    for i in range(4):
        (images / f"p{i}.png").write_bytes(photo())
    with emulator.serve() as url:
        manager = jupyter_client.KernelManager(kernel_name="python3")
        manager.start_kernel(
            env={**os.environ, "PHOTOROOM_API_KEY": emulator.api_key}, cwd=str(tmp_path)
        )
        client = manager.client()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=60)
            cell = (
                "from photoroom_bg import BatchRemover\n"
                f"batch = BatchRemover(sink='out', base_url={url!r}, progress=True,\n"
                "                     requests_per_minute=None, track_credits=False)\n"
                f"handle = batch.submit({str(images)!r})\n"
            )
            outputs: list[dict[str, Any]] = []
            reply = client.execute_interactive(cell, timeout=60, output_hook=outputs.append)
            assert reply["content"]["status"] == "ok", reply["content"]
            waited = client.execute_interactive(
                "print(handle.wait().stored_count)", timeout=60, output_hook=outputs.append
            )
            assert waited["content"]["status"] == "ok"
        finally:
            client.stop_channels()
            manager.shutdown_kernel(now=True)
    kinds = [m["msg_type"] for m in outputs]
    widgets = [
        m for m in outputs
        if m["msg_type"] == "display_data"
        and "application/vnd.jupyter.widget-view+json" in m["content"]["data"]
    ]  # fmt: skip
    assert widgets, f"no progress widget was displayed in the cell: {kinds}"
    printed = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
    assert "4" in printed


def wait_until(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


_FORKING = """
import asyncio, io, os, signal, sys, time
from PIL import Image
from photoroom_bg import BatchRemover, MemorySink

def photo(n):
    out = io.BytesIO()
    Image.new("RGB", (40 + n, 30), (n, 90, 90)).save(out, "PNG")
    return out.getvalue()

def remover(**extra):
    return BatchRemover(
        sink=MemorySink(), api_key=sys.argv[1], base_url=sys.argv[2], concurrency=2,
        requests_per_minute=None, track_credits=False, **extra,
    )
"""


def _run_forking(script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script``, after the helpers of :data:`_FORKING`, in a child Python that calls an
    emulator (the script forks)."""
    emulator = PhotoroomEmulator(credits=1_000, faults=Faults(latency=0.2))
    with emulator.serve():
        return subprocess.run(
            [sys.executable, "-c", _FORKING + script, emulator.api_key, emulator.url],
            capture_output=True,
            text=True,
            timeout=120,
        )


_FORK_AND_EXIT = """
batch = remover(exit_timeout=float("inf"))
handle = batch.submit([photo(n) for n in range(40)])
pid = os.fork()
if pid == 0:  # the child never touches its parent's batch: it just ends
    sys.exit(0)
deadline = time.monotonic() + 20
while not os.waitpid(pid, os.WNOHANG)[0]:
    if time.monotonic() > deadline:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        print("the child did not exit")
        break
    time.sleep(0.02)
else:
    print("the child exited", handle.done())
handle.cancel()
handle.wait(timeout=60)
"""


def test_a_forked_child_exits_without_waiting_for_its_parents_batch(tmp_path: Path) -> None:
    # the child inherited the list of running batches its exit waits for: with
    # exit_timeout=inf it never exited (with the default, after 35 s, warning about a batch
    # it does not own)
    child = _run_forking(_FORK_AND_EXIT)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == "the child exited False", child.stderr[-2000:]
    assert "the interpreter exited before the batch ended" not in child.stderr


_FORK_AND_WAIT = """
batch = remover()
finished = batch.submit([photo(100)])
finished.wait(timeout=60)
handle = batch.submit([photo(n) for n in range(20)])

async def awaited():
    return await handle

async def iterated():
    return [job async for job in handle]

calls = {
    "wait": handle.wait,
    "result": handle.result,
    "exception": handle.exception,
    "as_completed": lambda: list(handle.as_completed()),
    "await": lambda: asyncio.run(awaited()),
    "async for": lambda: asyncio.run(iterated()),
    "cancel": handle.cancel,
}
pid = os.fork()
if pid == 0:
    signal.alarm(20)  # a call that blocks forever ends the child here
    for name, call in calls.items():
        try:
            call()
        except RuntimeError as exc:
            print(name, "refused:", exc)
        else:
            print(name, "returned")
    print("finished in the child:", finished.wait().succeeded_count)
    sys.stdout.flush()
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("child status", status)
report = handle.wait(timeout=60)
print("parent", report.succeeded_count, report.cancelled_count)
"""


def test_a_forked_child_is_refused_waiting_for_or_cancelling_its_parents_batch() -> None:
    # in the child no thread runs the batch: wait() and the rest blocked forever there, and
    # cancel() said True and did nothing
    child = _run_forking(_FORK_AND_WAIT)
    assert child.returncode == 0, child.stderr[-2000:]
    lines = child.stdout.splitlines()
    names = ["wait", "result", "exception", "as_completed", "await", "async for", "cancel"]
    refused = [line.split(" refused:")[0] for line in lines if " refused: " in line]
    assert refused == names, child.stdout
    assert all("forked" in line for line in lines if " refused: " in line), child.stdout
    assert "finished in the child: 1" in lines  # a batch that ended before the fork is there
    assert "child status 0" in lines, child.stdout
    assert "parent 20 0" in lines  # the child's cancel() did not touch the parent's batch
