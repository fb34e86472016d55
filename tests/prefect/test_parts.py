"""The parts of photoroom_bg.prefect that need no Prefect server: options as parameters,
summaries, the rate-limited engine, the retry rule, the job records."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
from prefect.states import Failed

from photoroom_bg import (
    BatchRemover,
    CustomImage,
    EditOptions,
    FileSystemSink,
    ImageLayer,
    LayerSegmentation,
    PromptImage,
    RetryPolicy,
    SegmentOptions,
    TextLayer,
    _loop,
)
from photoroom_bg.errors import (
    APIConnectionError,
    BucketNotFoundError,
    ConfigurationError,
    InvalidImageError,
    StorageAuthError,
    StorageError,
    ValidationError,
)
from photoroom_bg.prefect import (
    FailureNote,
    JobFailed,
    JobParameters,
    JobStore,
    RateLimitedEngine,
    RunSummary,
    ShardStopped,
    ShardSummary,
    check_job_id,
    options_from_dict,
    options_to_dict,
    run_shard,
    shard_summary,
    should_retry,
)
from photoroom_bg.prefect._coordinator import Coordinator, _Flight
from photoroom_bg.prefect._summary import RunTotals
from photoroom_bg.testing import PhotoroomEmulator

from ..s3server import S3Server
from .conftest import photo_folder

# -- options travel as dicts -----------------------------------------------------------------


def test_options_round_trip_through_a_json_ready_dict() -> None:
    edit = EditOptions(background_color="FFFFFF", output_size="1000x1000", padding=0.1)
    data = options_to_dict(edit)
    assert data == {
        "type": "edit",
        "background_color": "FFFFFF",
        "output_size": "1000x1000",
        "padding": 0.1,
    }
    assert options_from_dict(data) == edit
    assert options_from_dict(None) == SegmentOptions()
    assert options_to_dict(None) == {"type": "segment"}
    assert options_from_dict({"size": "hd", "crop": True}) == SegmentOptions(size="hd", crop=True)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"type": "resize"}, "not one of"),
        ({"sise": "hd"}, "unknown segment option"),
        ({"size": "huge"}, "size="),
        ({"type": "edit", "background_image_file": "..."}, "cannot travel"),
        ({"type": "edit", "output_size": "big"}, "output_size"),
    ],
)
def test_bad_options_are_refused_before_any_work(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        options_from_dict(data)


def test_image_bytes_never_become_a_parameter() -> None:
    with pytest.raises(ValidationError, match="cannot travel"):
        options_to_dict(EditOptions(background_image_file=b"\x89PNG..."))
    for options in (
        EditOptions(layers={"logo": ImageLayer(image_file=b"\x89PNG...")}),
        EditOptions(virtual_model_model=CustomImage(image_file=b"\x89PNG...")),
        EditOptions(edit_with_ai_additional_images={"a": b"\x89PNG..."}),
    ):
        with pytest.raises(ValidationError, match="cannot travel"):
            options_to_dict(options)


def test_options_holding_layers_and_custom_images_travel_as_json_and_come_back(
    tmp_path: Path, emulator: PhotoroomEmulator
) -> None:
    # a TextLayer, an ImageLayer or a CustomImage was copied into the dict as it was: a job
    # with them raised "Object of type TextLayer is not JSON serializable" when started,
    # and their dict form was refused ("got FrozenDict"): such options could not run on
    # Prefect in any form
    edit = EditOptions(
        layers={
            "caption": TextLayer(content="SALE", foreground_color="FF0000"),
            "logo": ImageLayer(
                image_url="https://images.example/logo.png",
                segmentation=LayerSegmentation(prompt="cup"),
            ),
            "sky": ImageLayer(image_from_prompt=PromptImage(prompt="clouds", seed=3)),
        },
        virtual_model_model=CustomImage(image_url="https://images.example/model.png"),
    )
    data = json.loads(json.dumps(options_to_dict(edit)))
    assert data["layers"]["caption"] == {
        "type": "text", "content": "SALE", "foreground_color": "FF0000",
    }  # fmt: skip
    assert data["virtual_model_model"] == {"image_url": "https://images.example/model.png"}
    assert options_from_dict(data) == edit
    params = JobParameters(sources=["a.jpg"], sink=str(tmp_path), job_id="j", options=data)
    json.dumps(params.flow_parameters())
    # written by hand: a layer is told by its fields when it has no "type"
    assert options_from_dict({"type": "edit", "layers": {"t": {"content": "hi"}}}) == EditOptions(
        layers={"t": TextLayer(content="hi")}
    )
    for layer, message in (({}, '"type": "text" or "image"'), ({"type": "video"}, "'video'")):
        with pytest.raises(ValidationError, match=message):
            options_from_dict({"type": "edit", "layers": {"t": layer}})
    with pytest.raises(ValidationError, match="unknown TextLayer field"):
        options_from_dict({"type": "edit", "layers": {"t": {"type": "text", "size": 3}}})
    # and a shard makes the cut-out with them
    source = photo_folder(tmp_path / "in", 1)
    caption = {"type": "edit", "layers": {"caption": {"type": "text", "content": "SALE"}}}
    summary, _ = asyncio.run(
        run_shard([str(p) for p in source.iterdir()], str(tmp_path / "out"), job_id="j",
                  shard=0, lease="l", options=caption)
    )  # fmt: skip
    assert summary.count("stored_count") == 1
    [call] = [r for r in emulator.requests if r.path == "/v2/edit"]
    assert call.params["layers.caption.text.content"] == "SALE"


# -- summaries -------------------------------------------------------------------------------


@attrs.frozen
class _FutureReport:
    """A BatchReport with a count that does not exist yet: summaries must carry it anyway."""

    total_count: int
    stored_count: int
    failed_count: int
    possibly_billed_count: int
    billed_calls: int
    failures: dict[str, tuple[Any, ...]]
    failure_counts: dict[str, int]
    credits_spent: float | None = None
    stop_reason: str | None = None
    duration: float = 1.5


@attrs.frozen
class _Job:
    source: str
    error_type: str
    error: Any
    reason: str | None = None


def test_shard_summaries_carry_every_count_of_the_report_even_new_ones() -> None:
    failures = {
        "InvalidImageError": tuple(
            _Job(f"s3://b/{i}.jpg", "InvalidImageError", InvalidImageError("x" * 500))
            for i in range(30)
        )
    }
    report = _FutureReport(
        total_count=40,
        stored_count=10,
        failed_count=30,
        possibly_billed_count=2,
        billed_calls=10,
        failures=failures,
        failure_counts={"InvalidImageError": 30},
    )
    summary = shard_summary(
        report, job_id="j", shard=3, size=40, outcome="completed", manifest_key="m", max_failures=5
    )
    assert summary.count("possibly_billed_count") == 2
    assert summary.count("billed_calls") == 10
    assert len(summary.failures) == 5  # bounded
    assert all(len(note.message) <= 300 for note in summary.failures)
    assert ShardSummary.from_dict(summary.to_dict()) == summary

    totals = RunTotals(max_failures=3)
    totals.add(summary)
    totals.add(summary)
    run = totals.summary(
        job_id="j",
        sink="s3://b/out",
        manifests="m/",
        cancelled=False,
        credits_spent=None,
        duration=2,
    )
    assert run.count("possibly_billed_count") == 4  # summed without knowing the field
    assert run.state == "failed"
    assert len(run.failures) == 3
    assert "20 of 80 images stored" in run.message
    assert RunSummary.from_dict(run.to_dict()) == run


def test_a_stopped_jobs_message_names_the_shard_and_counts_the_spilled_cut_outs() -> None:
    # "stopped: OutOfCreditsError: ..." named no shard, where the guide shows "stopped:
    # shard 3: ...", and cut-outs paid for and kept in a spill folder were left out of it
    report = _FutureReport(
        total_count=6,
        stored_count=0,
        failed_count=0,
        possibly_billed_count=0,
        billed_calls=4,
        failures={},
        failure_counts={},
        stop_reason="StorageFullError: the disk is full",
    )
    summary = attrs.evolve(
        shard_summary(report, job_id="j", shard=3, size=6, outcome="stopped", manifest_key="m"),
        counts={"total_count": 6, "stored_count": 0, "spilled_count": 4, "cancelled_count": 2},
    )
    totals = RunTotals()
    totals.add(summary)
    totals.stop("shard 3: StorageFullError: the disk is full")  # as the coordinator says it
    run = totals.summary(
        job_id="j", sink="s3://b/out", manifests="m/", cancelled=False, credits_spent=None,
        duration=1,
    )  # fmt: skip
    assert run.message == (
        "0 of 6 images stored; 4 paid for and kept in a spill folder (run the job again to "
        "store them); 2 not processed; stopped: shard 3: StorageFullError: the disk is full"
    )


def test_a_job_failure_survives_pickling_with_its_summary() -> None:
    totals = RunTotals()
    totals.add_unfinished(shard=0, size=5, outcome="failed", error_type="ShardFailed", message="x")
    run = totals.summary(
        job_id="j", sink="out", manifests="m/", cancelled=False, credits_spent=None, duration=1
    )
    error = pickle.loads(pickle.dumps(JobFailed(run)))  # noqa: S301 (our own bytes)
    assert isinstance(error, JobFailed)
    assert error.summary == run
    assert error.summary.failures == (FailureNote("shard 0 (5 sources)", "ShardFailed", "x"),)


# -- the retry rule --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (StorageError("sink hiccup"), True),
        (APIConnectionError("reset"), True),
        (ConnectionResetError(), True),
        (StorageAuthError("denied"), False),
        (BucketNotFoundError("gone"), False),
        (ConfigurationError("no key"), False),
        (ValidationError("bad option"), False),
        (ShardStopped("402"), False),
        (RuntimeError("bug"), False),
    ],
)
def test_shards_are_retried_only_for_failures_a_retry_can_fix(
    error: BaseException, retry: bool
) -> None:
    state: Any = Failed(data=error)
    assert should_retry(None, None, state) is retry  # type: ignore[arg-type]


# -- parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sink": "memory://"}, "cannot be shared"),
        ({"sources": []}, "non-empty"),
        ({"shard_size": 0}, "shard_size"),
        ({"engine": "rembg"}, "unknown engine"),
        ({"job_id": "../escape"}, "job id"),
        ({"options": {"size": "giant"}}, "size"),
        ({"requests_per_minute": 0}, "positive"),
        ({"requests_per_minute": float("nan")}, "positive"),
        ({"heartbeat_timeout": float("nan")}, "heartbeat_timeout"),
        ({"max_failures": -1}, "max_failures"),
        # each of these once passed: inf never declared a lost worker lost (and is no JSON
        # for a flow run's parameters); a fraction or a bool is not a count
        ({"heartbeat_timeout": float("inf")}, "heartbeat_timeout"),
        ({"requests_per_minute": float("inf")}, "requests_per_minute"),
        ({"concurrency": 2.5}, "concurrency"),
        ({"shard_size": True}, "shard_size"),
        ({"max_running_shards": 1.5}, "max_running_shards"),
        ({"max_failures": 0.5}, "max_failures"),
        # each of these once meant a default: an unset variable must not bill whatever key
        # each worker has, run the fleet past the account's rate, or pick a model unasked
        ({"api_key_secret": ""}, "api_key_secret is an empty string"),
        ({"rate_limit": " "}, "rate_limit is an empty string"),
        ({"rate_limit": "", "requests_per_minute": 100}, "rate_limit is an empty string"),
        ({"engine": "local:"}, "unknown engine 'local:'"),
        ({"deferred": "false"}, "deferred must be True or False, not 'false'"),
        ({"deferred": None}, "deferred must be True or False, not None"),
    ],
)
def test_job_parameters_are_checked_before_anything_runs(
    changes: dict[str, Any], message: str
) -> None:
    base: dict[str, Any] = {"sources": ["s3://b/a.jpg"], "sink": "s3://b/out"}
    with pytest.raises((ConfigurationError, ValidationError), match=message):
        JobParameters(**{**base, **changes})


def test_relative_paths_of_a_job_are_the_callers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a job's flow run and its task workers may work in other folders than the caller that
    # named "photos/" and "out": they listed, read and stored there (or found nothing)
    monkeypatch.chdir(tmp_path)
    given = ["photos/", "more/*.jpg", "one.png", "/abs/x.png", "~/y.png"]
    urls = ["s3://b/raw/", "https://127.0.0.1:9/z.png"]
    params = JobParameters(sources=[*given, *urls], sink="out")
    assert params.sources == [
        *(str(tmp_path / "photos") + "/", str(tmp_path / "more/*.jpg"), str(tmp_path / "one.png")),
        "/abs/x.png",
        "~/y.png",
        *urls,
    ]
    assert params.sink == str(tmp_path / "out")
    assert params.flow_parameters()["sink"] == params.sink
    assert JobParameters(sources=urls, sink="s3://b/out").sink == "s3://b/out"
    # an upper-case scheme was taken for a folder named "S3:" in the working folder
    assert JobParameters(sources=urls, sink="S3://b/out").sink == "s3://b/out"


def test_one_reference_given_as_a_string_is_one_source_not_one_per_character(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a str is a Sequence[str], so mypy let jobs.start("photos") through: the job listed
    # "p", "h", "o", "t", "o", "s", each a path of its own, as JobParameters("photos") did
    from photoroom_bg.prefect import PrefectJobs

    monkeypatch.chdir(tmp_path)
    assert JobParameters(sources="photos", sink="out").sources == [str(tmp_path / "photos")]
    started: list[JobParameters] = []

    async def start(self: PrefectJobs, params: JobParameters) -> JobParameters:
        started.append(params)
        return params

    monkeypatch.setattr(PrefectJobs, "_start", start)
    jobs = PrefectJobs("out")
    _loop.run_sync(jobs.start("photos"))
    _loop.run_sync(jobs.start(tmp_path / "more"))  # type: ignore[arg-type]
    assert [p.sources for p in started] == [[str(tmp_path / "photos")], [str(tmp_path / "more")]]


@pytest.mark.parametrize(
    "given",
    [
        {"sources": ["http://127.0.0.1:9/\ud800.png"]},
        {"sources": [os.fsdecode(b"/photos/caf\xe9.png")]},  # a file name that is no UTF-8
        {"sink": "out/\udcff"},
    ],
)
def test_a_reference_no_worker_can_be_sent_is_refused_naming_it(given: dict[str, Any]) -> None:
    # job parameters travel as JSON (to Prefect's server, and the job's own records): such
    # a string raised UnicodeEncodeError from the first record's write
    kwargs: dict[str, Any] = {"sources": ["http://127.0.0.1:9/a.png"], "sink": "out", **given}
    with pytest.raises(ConfigurationError, match=r"is not text: .*rename"):
        JobParameters(**kwargs)


def test_a_record_holding_a_file_name_that_is_no_utf8_reads_back_as_it_was(
    tmp_path: Path,
) -> None:
    # a folder's listing on a worker gives such names (os.fsdecode's \udcxx); a shard's
    # record of them raised UnicodeEncodeError, and the shard could not be written
    store = _job_store(tmp_path)
    name = os.fsdecode(b"/photos/caf\xe9.png")
    _loop.run_sync(store.write("jobs/job/shards/0.json", {"sources": [name]}))
    assert _loop.run_sync(store.read("jobs/job/shards/0.json")) == {"sources": [name]}


@pytest.mark.parametrize(
    "interval", [-1, 0, float("nan"), float("inf"), 10**400, "1", True], ids=repr
)
def test_a_wait_interval_that_is_no_pause_is_refused_before_anything_is_read(
    tmp_path: Path, interval: Any
) -> None:
    # a negative, zero or NaN interval polled the job's record (and Prefect's API) with no
    # pause at all, for up to 30 s after the job ended; inf never polled again
    from photoroom_bg.prefect import PrefectJobs

    jobs = PrefectJobs(str(tmp_path / "out"))
    with pytest.raises(ConfigurationError, match="interval"):
        _loop.run_sync(jobs.wait("no-such-job", interval=interval))
    assert not (tmp_path / "out").exists()


def test_job_ids_must_be_safe_key_segments() -> None:
    assert check_job_id("2026-11_run.3") == "2026-11_run.3"
    for bad in ("", "a/b", "..", ".hidden", "x" * 129, "a b", "job\n"):
        with pytest.raises(ValidationError):
            check_job_id(bad)


# -- the rate-limited engine -----------------------------------------------------------------


class _CountingAcquire:
    def __init__(self) -> None:
        self.names: list[str] = []

    async def __call__(self, name: str) -> None:
        self.names.append(name)


def test_every_billed_attempt_takes_a_fleet_slot_retries_included(tmp_path: Path) -> None:
    emu = PhotoroomEmulator(credits=100)
    acquire = _CountingAcquire()
    with emu.serve() as url:
        from photoroom_bg import PhotoroomEngine

        engine = RateLimitedEngine(
            PhotoroomEngine(api_key=emu.api_key, base_url=url, max_retries=0),
            "fleet",
            acquire=acquire,
        )
        emu.inject("503", "429")  # two unbilled failures, retried by the batch
        remover = BatchRemover(
            engine,
            sink=FileSystemSink(tmp_path / "out"),
            requests_per_minute=None,
            retry_policy=RetryPolicy(initial_delay=0.01, max_delay=0.05),
            track_credits=False,
            concurrency=1,
        )
        report = remover.submit(str(photo_folder(tmp_path / "in", 3))).wait(60)
        _loop.run_sync(engine.aclose())
    assert report.stored_count == 3
    assert emu.ledger.calls() == 3
    assert acquire.names == ["fleet"] * 5  # 3 billed calls + 2 retried attempts
    assert engine.name == "photoroom"  # keys and manifests name the real engine
    assert engine.bills is True


def test_engines_that_do_not_bill_take_no_slot() -> None:
    class Local:
        name = "local:test"
        bills = False

        async def process(self, image: bytes, options: Any) -> Any:
            return image

        async def aclose(self) -> None:
            pass

    acquire = _CountingAcquire()
    engine = RateLimitedEngine(Local(), "fleet", acquire=acquire)
    assert asyncio.run(engine.process(b"x", SegmentOptions())) == b"x"
    assert acquire.names == []


def test_the_wrapped_engine_is_closed_on_the_loop_that_used_it() -> None:
    closed_on: list[asyncio.AbstractEventLoop] = []

    class Tracked:
        name = "tracked"
        bills = False

        async def process(self, image: bytes, options: Any) -> Any:
            return image

        async def aclose(self) -> None:
            closed_on.append(asyncio.get_running_loop())

    engine = RateLimitedEngine(Tracked(), "fleet")
    _loop.run_sync(engine.process(b"x", SegmentOptions()))  # used on the background loop
    asyncio.run(engine.aclose())  # closed from another loop
    assert closed_on == [_loop.background_loop()]


def test_a_fleet_held_back_by_its_rate_limit_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the per-batch budget says when it is what holds a batch back; the fleet's limit, which
    # replaces it on workers, capped a job at requests_per_minute in silence
    import logging

    now = [0.0]

    class Slow:  # a slot comes one second after it is asked for
        async def __call__(self, name: str) -> None:
            now[0] += 1.0

    class Api:
        name = "photoroom"
        bills = True

        async def process(self, image: bytes, options: Any) -> Any:
            return image

        async def aclose(self) -> None:
            pass

    engine = RateLimitedEngine(Api(), "photoroom-bg", acquire=Slow(), clock=lambda: now[0])

    async def calls(count: int) -> None:
        for _ in range(count):
            await engine.process(b"x", SegmentOptions())

    with caplog.at_level(logging.INFO, logger="photoroom_bg.prefect"):
        asyncio.run(calls(4))
        assert not [r for r in caplog.records if "holds" in r.getMessage()]
        asyncio.run(calls(10))
    notices = [r for r in caplog.records if "holds" in r.getMessage()]
    assert len(notices) == 1
    told = notices[0].getMessage()
    assert "'photoroom-bg'" in told
    for setting in ("requests_per_minute=", "PHOTOROOM_BG_PHOTOROOM_REQUESTS_PER_MINUTE"):
        assert setting in told
    # slots that come at once (a round trip to the Prefect API) are not waiting for the limit
    quick = RateLimitedEngine(Api(), "other", acquire=_CountingAcquire(), clock=lambda: now[0])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="photoroom_bg.prefect"):
        for _ in range(50):
            asyncio.run(quick.process(b"x", SegmentOptions()))
    assert not caplog.records


# -- shards that must not run ------------------------------------------------------------------


def _job_store(sink: Path, job_id: str = "job") -> JobStore:
    return JobStore(FileSystemSink(sink), job_id)


@pytest.mark.parametrize(
    ("control", "record", "outcome"),
    [
        ({"attempt": "run:2", "stop": None}, None, "superseded"),
        ({"attempt": "run:1", "stop": None}, {"lease": "newer"}, "superseded"),
        ({"attempt": "run:1", "stop": "out of credits", "kind": "stopped"}, None, "cancelled"),
    ],
)
def test_a_stale_duplicate_or_stopped_shard_ends_without_calling_photoroom(
    tmp_path: Path,
    emulator: PhotoroomEmulator,
    control: dict[str, Any],
    record: dict[str, Any] | None,
    outcome: str,
) -> None:
    store = _job_store(tmp_path / "out")
    asyncio.run(store.write(store.control_key, control))
    if record is not None:
        asyncio.run(store.write_shard(0, record))
    sources = [str(p) for p in sorted(photo_folder(tmp_path / "in", 4).iterdir())]
    summary, reason = asyncio.run(
        run_shard(
            sources, str(tmp_path / "out"), job_id="job", shard=0, lease="mine", attempt="run:1"
        )
    )
    assert summary.outcome == outcome
    assert summary.count("cancelled_count") == 4
    assert reason
    assert emulator.requests == []  # not even one request


# -- stranded shards ---------------------------------------------------------------------------


def test_shards_taken_by_a_worker_but_never_started_are_found_first_in_first_out() -> None:
    params = JobParameters(sources=["s3://b/x.jpg"], sink="s3://b/out", deferred=True, job_id="j")
    coordinator = Coordinator(params, "a:1", "a", None)

    def flight(shard: int, seq: int, started: bool) -> _Flight:
        return _Flight(shard, [], "l", seq, shard, None, 0, 0.0, started=started)

    coordinator.flights = {
        0: flight(0, 1, True),
        1: flight(1, 2, False),  # a later shard started: this one was handed out and stuck
        2: flight(2, 3, True),
        3: flight(3, 4, False),  # nothing later started: it may just be queued
    }
    # no worker lost or stopped yet: a live worker holds what it took ahead of its limit
    assert coordinator._stranded() == []
    coordinator._suspect_upto = 4  # a worker was lost once these four were queued
    assert [f.shard for f in coordinator._stranded()] == [1]
    # queued after the loss: the lost worker cannot hold it, whatever started later
    coordinator.flights[4] = flight(4, 5, False)
    coordinator.flights[5] = flight(5, 6, True)
    assert [f.shard for f in coordinator._stranded()] == [1, 3]


def test_a_shard_that_ends_between_two_reads_is_counted_from_its_final_record(
    tmp_path: Path,
) -> None:
    """The flow reads task states, then records: a shard finishing in between (its record
    written, then its task run completed) must not look like one that ended without one."""
    from prefect.states import Completed

    params = JobParameters(sources=["a.jpg"], sink=str(tmp_path / "out"), job_id="race")
    coordinator = Coordinator(params, "run:1", "run", None)
    coordinator.store = store = _job_store(tmp_path / "out", "race")
    summary = ShardSummary(
        job_id="race",
        shard=0,
        size=1,
        outcome="completed",
        counts={"total_count": 1, "stored_count": 1},
    )
    asyncio.run(store.write_shard(0, {"lease": "l", "state": "running", "beat": 1}))
    coordinator.flights = {0: _Flight(0, ["a.jpg"], "l", 1, "t0", None, 0, 0.0)}

    async def states(flights: list[_Flight]) -> dict[str, Any]:
        # the shard finishes now: final record first, then its task run completes
        await store.write_shard(
            0, {"lease": "l", "state": "completed", "summary": summary.to_dict()}
        )
        return {"t0": Completed()}

    coordinator._states = states  # type: ignore[method-assign]
    asyncio.run(coordinator._poll())
    assert coordinator.flights == {}
    assert coordinator.totals.shard_outcomes == {"completed": 1}
    assert coordinator.totals.counts["stored_count"] == 1
    assert not coordinator.stopping


@pytest.mark.parametrize("reported", [True, False], ids=["reported", "worker-lost"])
def test_a_shard_whose_worker_died_after_its_final_record_is_not_left_running(
    tmp_path: Path, reported: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed between a shard's final record and its report of the task run's end
    left that task run "running" in Prefect for ever, the job long completed. The flow counts
    the shard from its record at once, waits for the report as long as for a lost beat, and
    then marks the run ended itself; a report that comes in time is left as it is."""
    from types import SimpleNamespace

    from prefect.states import Completed, Running

    from photoroom_bg.prefect import _coordinator

    clock = SimpleNamespace(now=1000.0)
    fake_time = SimpleNamespace(monotonic=lambda: clock.now, time=time.time)
    monkeypatch.setattr(_coordinator, "time", fake_time)
    params = JobParameters(
        sources=["a.jpg"],
        sink=str(tmp_path / "out"),
        job_id="late",
        deferred=True,
        heartbeat_timeout=10,
    )
    coordinator = Coordinator(params, "run:1", "run", None)
    coordinator.store = store = _job_store(tmp_path / "out", "late")
    coordinator.client = client = _FakeClient()
    summary = ShardSummary(
        job_id="late", shard=0, size=1, outcome="completed", counts={"stored_count": 1}
    )
    asyncio.run(
        store.write_shard(0, {"lease": "l", "state": "completed", "summary": summary.to_dict()})
    )
    coordinator.flights = {0: _Flight(0, ["a.jpg"], "l", 1, "run-1", None, 0, clock.now)}
    state: dict[str, Any] = {"run-1": Running()}

    async def states(flights: list[_Flight]) -> dict[str, Any]:
        return dict(state)

    coordinator._states = states  # type: ignore[method-assign]
    asyncio.run(coordinator._poll())
    # counted at once, from its record
    assert coordinator.flights == {}
    assert coordinator.totals.counts["stored_count"] == 1
    clock.now += params.heartbeat_timeout / 2
    asyncio.run(coordinator._poll())
    assert client.forced == []  # not yet: its report may be on its way
    if reported:
        state["run-1"] = Completed()
    clock.now += params.heartbeat_timeout  # as long as a lost beat takes
    asyncio.run(coordinator._poll())
    assert client.forced == ([] if reported else [("run-1", "COMPLETED")])
    clock.now += params.heartbeat_timeout
    asyncio.run(coordinator._poll())  # marked once, and no more watched
    assert len(client.forced) == (0 if reported else 1)


class _FakeTask:
    """Stands in for remove_shard: records deferrals, hands out task run ids."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def delay(self, **params: Any) -> Any:
        self.calls.append(params)
        return type("Future", (), {"task_run_id": f"run-{len(self.calls)}"})()


class _FakeClient:
    def __init__(self) -> None:
        self.forced: list[tuple[str, str]] = []

    async def set_task_run_state(self, task_run_id: str, state: Any, force: bool) -> None:
        assert force
        self.forced.append((task_run_id, state.type.value))


def test_a_shard_whose_worker_stopped_beating_is_crashed_and_handed_over(tmp_path: Path) -> None:
    """A running shard whose beats stop is marked Crashed and submitted again with a new
    lease; a shard a worker took but never started (a later one did start) goes too."""
    from prefect.states import Running, Scheduled

    params = JobParameters(
        sources=["a.jpg"],
        sink=str(tmp_path / "out"),
        job_id="lost",
        deferred=True,
        heartbeat_timeout=0.3,
    )
    task, client = _FakeTask(), _FakeClient()
    coordinator = Coordinator(params, "run:1", "run", task)
    coordinator.store = store = _job_store(tmp_path / "out", "lost")
    coordinator.client = client

    async def scenario() -> None:
        await coordinator._submit(0, ["a.jpg"], resubmits=0)  # taken, never started
        await coordinator._submit(1, ["b.jpg"], resubmits=0)  # running, then silent
        await store.write_shard(
            1, {"lease": coordinator.flights[1].lease, "state": "running", "beat": 3}
        )

        async def states(flights: list[_Flight]) -> dict[str, Any]:
            return {"run-1": Scheduled(), "run-2": Running()}

        coordinator._states = states  # type: ignore[method-assign]
        await coordinator._poll()  # sees shard 1 alive
        assert len(task.calls) == 2
        await asyncio.sleep(0.6)  # longer than heartbeat_timeout, and no beat meanwhile
        await coordinator._poll()

    asyncio.run(scenario())
    assert sorted(client.forced) == [("run-1", "CANCELLED"), ("run-2", "CRASHED")]
    resubmitted = {call["shard"]: call["lease"] for call in task.calls[2:]}
    assert sorted(resubmitted) == [0, 1]
    for shard, lease in resubmitted.items():
        record = asyncio.run(store.read_shard(shard))
        assert record is not None
        assert record["lease"] == lease  # the lost copies, should they wake up, stand down
        assert record["state"] == "queued"
    assert coordinator.flights[1].resubmits == 1


def test_a_new_attempt_clears_old_stops_but_keeps_a_cancel_aimed_at_its_own_run(
    tmp_path: Path,
) -> None:
    store = _job_store(tmp_path / "out", "cancel-early")

    async def scenario() -> list[Any]:
        await store.request_stop("out of credits", "stopped")  # an earlier attempt's stop
        resumed = await store.start_attempt("fr-1:1", "fr-1")
        await store.request_stop("cancelled by the user", "cancelled", run="fr-2")
        other = await store.start_attempt("fr-3:1", "fr-3")  # another run: goes on
        await store.request_stop("cancelled by the user", "cancelled", run="fr-4")
        aimed = await store.start_attempt("fr-4:1", "fr-4")  # the run the cancel was for
        return [resumed, other, aimed]

    resumed, other, aimed = asyncio.run(scenario())
    assert resumed.stop is None
    assert other.stop is None
    assert aimed.stop == "cancelled by the user"
    assert aimed.attempt == "fr-4:1"


async def test_a_workers_refusal_advises_the_variable_that_allows_a_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a task worker reads URLs with worker_reader(), whose only setting is the variable:
    # its refusals told the service's callers to pass an SDK argument instead
    from photoroom_bg.errors import UnsafeURLError
    from photoroom_bg.prefect import worker_reader
    from photoroom_bg.sources import ImageSource

    monkeypatch.delenv("PHOTOROOM_BG_ALLOW_NETWORKS", raising=False)
    async with worker_reader() as reader:
        with pytest.raises(UnsafeURLError) as refused:  # loopback, refused before connecting
            await reader.read(ImageSource("url", "http://127.0.0.2:9/photo.png", "photo"))
    assert "allow a network with PHOTOROOM_BG_ALLOW_NETWORKS" in str(refused.value)
    assert "allow_private_networks" not in str(refused.value)


async def test_a_workers_missing_bucket_is_told_to_create_it_not_to_pass_an_argument(
    s3_server: S3Server, s3_new_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the sink's error advised create_bucket=True, which a flow's caller cannot pass
    from photoroom_bg.errors import BucketNotFoundError
    from photoroom_bg.prefect import open_worker_sink

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)
    # a key that may write objects but not create buckets (SeaweedFS would make one on a put)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.writer_access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.writer_secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    sink = open_worker_sink(f"s3://{s3_new_bucket}/cut")
    try:
        with pytest.raises(BucketNotFoundError) as missing:
            await sink.put("a.png", b"\x89PNG")
    finally:
        await sink.aclose()
    assert "create it before the job: workers do not create buckets" in str(missing.value)
    assert "create_bucket=True" not in str(missing.value)


def test_a_workers_engine_waits_as_long_as_its_environment_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a worker has no argument to pass: PHOTOROOM_TIMEOUT, which a timed-out call's
    # advice names, is its setting
    from photoroom_bg import PhotoroomEngine
    from photoroom_bg.prefect._shard import build_engine

    monkeypatch.setenv("PHOTOROOM_TIMEOUT", "600")
    engine = build_engine("photoroom", "worker-key", "fleet")
    assert isinstance(engine, RateLimitedEngine)
    inner = engine.engine
    assert isinstance(inner, PhotoroomEngine)
    assert inner.client.timeout.read == 600.0
    _loop.run_sync(engine.aclose())


def test_a_shard_task_cancelled_on_a_live_worker_closes_what_it_opened_once_its_batch_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a task timeout (the worker stays up) with calls that outlast the drain (AI features):
    # the batch goes on to store its paid calls, so its engine, reader and sink stayed open,
    # and were never closed: one connection pool and one sink client leaked per such shard
    # on a long-lived worker
    from photoroom_bg.prefect import _shard
    from photoroom_bg.testing import Faults

    monkeypatch.setattr(_shard, "DRAIN_SECONDS", 0.05)

    closed: list[str] = []
    all_closed = asyncio.Event()

    def closing(name: str, obj: Any) -> Any:
        original = obj.aclose

        async def aclose() -> None:
            await original()
            closed.append(name)
            if len(closed) == 3:
                all_closed.set()

        obj.aclose = aclose
        return obj

    build, reader, sink = _shard.build_engine, _shard.worker_reader, _shard.open_worker_sink
    monkeypatch.setattr(_shard, "build_engine", lambda *a: closing("engine", build(*a)))
    monkeypatch.setattr(_shard, "worker_reader", lambda *a: closing("reader", reader(*a)))
    monkeypatch.setattr(_shard, "open_worker_sink", lambda s: closing("sink", sink(s)))
    emu = PhotoroomEmulator(credits=100, faults=Faults(latency=0.5), image_work=False)
    sources = [str(p) for p in sorted(photo_folder(tmp_path / "in", 4).iterdir())]

    async def scenario() -> None:
        shard = run_shard(
            sources, str(tmp_path / "out"), job_id="job", shard=0, lease="l", concurrency=4
        )
        with pytest.raises(TimeoutError):  # the calls are under way when the task ends
            await asyncio.wait_for(shard, 0.25)
        await asyncio.wait_for(all_closed.wait(), 30)

    with emu.serve() as url:
        monkeypatch.setenv("PHOTOROOM_BASE_URL", url)
        monkeypatch.setenv("PHOTOROOM_API_KEY", emu.api_key)
        asyncio.run(scenario())
    assert sorted(closed) == ["engine", "reader", "sink"]
    stored = [p for p in (tmp_path / "out").rglob("*.png")]
    assert len(stored) == emu.ledger.calls() == 4  # every paid call stored, none dropped


def _three_photos_with_a_fault(
    tmp_path: Path, emulator: PhotoroomEmulator, fault: str, **settings: Any
) -> ShardSummary:
    """A shard of three photos, one at a time, the first call meeting ``fault``."""
    sources = [str(p) for p in sorted(photo_folder(tmp_path / "in", 3).iterdir())]
    emulator.inject(fault)
    summary, _ = asyncio.run(
        run_shard(sources, str(tmp_path / "out"), job_id="j", shard=0, lease="l",
                  concurrency=1, retry_backoff=0.01, **settings)
    )  # fmt: skip
    return summary


def test_a_shard_retries_as_its_job_says(tmp_path: Path, emulator: PhotoroomEmulator) -> None:
    # shards always retried 5 times from 0.5 s, whatever the job (or the service's
    # PHOTOROOM_BG_MAX_RETRIES and PHOTOROOM_BG_RETRY_BACKOFF) said
    summary = _three_photos_with_a_fault(tmp_path, emulator, "503", max_retries=0)
    assert summary.count("stored_count") == 2
    assert summary.count("failed_count") == 1
    assert summary.failure_counts == {"ServerError": 1}
    params = JobParameters(
        sources=["a.jpg"], sink=str(tmp_path), job_id="j", max_retries=0, retry_backoff=2
    )
    assert params.flow_parameters()["max_retries"] == 0
    assert params.flow_parameters()["retry_backoff"] == 2
    shard = Coordinator(params, "a:1", "a", None)._params(0, ["a.jpg"], "l")
    assert (shard["max_retries"], shard["retry_backoff"]) == (0, 2)
    assert shard["max_source_bytes"] is None


@pytest.mark.parametrize("retry", [False, True])
def test_a_shard_retries_a_call_photoroom_may_have_billed_only_if_its_job_says_so(
    tmp_path: Path, emulator: PhotoroomEmulator, retry: bool
) -> None:
    # shards always retried a call the server billed and then failed (a RetryPolicy of the
    # SDK's defaults): with the service's PHOTOROOM_BG_RETRY_POSSIBLY_BILLED off, its default,
    # a job run on Prefect still paid twice for the image where a local job failed it
    summary = _three_photos_with_a_fault(
        tmp_path, emulator, "bill-500", retry_possibly_billed=retry
    )
    assert summary.count("stored_count") == (3 if retry else 2)
    assert summary.failure_counts == ({} if retry else {"ServerError": 1})
    assert summary.count("possibly_billed_calls") == 1
    per_image = sorted(emulator.ledger.billed_per_image().values())
    assert per_image == ([1, 1, 2] if retry else [1, 1, 1])
    params = JobParameters(
        sources=["a.jpg"], sink=str(tmp_path), job_id="j", retry_possibly_billed=False
    )
    assert params.flow_parameters()["retry_possibly_billed"] is False
    shard = Coordinator(params, "a:1", "a", None)._params(0, ["a.jpg"], "l")
    assert shard["retry_possibly_billed"] is False
    assert JobParameters(sources=["a.jpg"], sink=str(tmp_path)).retry_possibly_billed is True
    with pytest.raises(ConfigurationError, match="retry_possibly_billed"):
        JobParameters(sources=["a.jpg"], sink=str(tmp_path), retry_possibly_billed="no")  # type: ignore[arg-type]


def test_a_shard_waits_for_a_call_as_long_as_its_job_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a shard's calls waited 120 s (or the worker's PHOTOROOM_TIMEOUT) whatever the job (or
    # the service's PHOTOROOM_TIMEOUT) said: an AI feature that needs longer failed on
    # every worker, and nothing the job could say would raise it
    from photoroom_bg.testing import Faults

    sources = [str(p) for p in sorted(photo_folder(tmp_path / "in", 2).iterdir())]
    emu = PhotoroomEmulator(credits=10, faults=Faults(stall_seconds=2))
    with emu.serve() as url:
        monkeypatch.setenv("PHOTOROOM_BASE_URL", url)
        monkeypatch.setenv("PHOTOROOM_API_KEY", emu.api_key)
        monkeypatch.setenv("PHOTOROOM_TIMEOUT", "60")  # the worker's own: the job's wins
        emu.inject("stall")
        summary, _ = asyncio.run(
            run_shard(
                sources,
                str(tmp_path / "out"),
                job_id="j",
                shard=0,
                lease="l",
                concurrency=1,
                max_retries=0,
                call_timeout=0.5,
            )
        )
    assert summary.count("stored_count") == 1
    assert summary.failure_counts == {"APITimeoutError": 1}
    params = JobParameters(sources=["a.jpg"], sink=str(tmp_path), job_id="j", call_timeout=300)
    assert params.flow_parameters()["call_timeout"] == 300
    assert Coordinator(params, "a:1", "a", None)._params(0, [], "l")["call_timeout"] == 300
    assert JobParameters(sources=["a.jpg"], sink=str(tmp_path)).call_timeout is None


def test_a_shard_reads_no_larger_input_than_its_job_allows(
    tmp_path: Path, emulator: PhotoroomEmulator
) -> None:
    # workers read up to 50 MB whatever the job (or the service's
    # PHOTOROOM_BG_MAX_SOURCE_BYTES, 25 MB by default) allowed
    sources = [str(p) for p in sorted(photo_folder(tmp_path / "in", 2).iterdir())]
    summary, _ = asyncio.run(
        run_shard(
            sources, str(tmp_path / "out"), job_id="j", shard=0, lease="l", max_source_bytes=100
        )
    )
    assert summary.count("failed_count") == 2
    assert emulator.ledger.calls() == 0  # refused before any call
    params = JobParameters(sources=["a.jpg"], sink=str(tmp_path), job_id="j", max_source_bytes=9)
    assert Coordinator(params, "a:1", "a", None)._params(0, [], "l")["max_source_bytes"] == 9
    for bad in (
        {"max_retries": -1},
        {"retry_backoff": float("nan")},
        {"retry_backoff": -1},
        {"max_source_bytes": 0},
        {"call_timeout": 0},
        {"call_timeout": float("nan")},
        {"call_timeout": float("inf")},  # no JSON: no limit is PHOTOROOM_TIMEOUT=none
    ):
        with pytest.raises(ConfigurationError):
            JobParameters(sources=["a.jpg"], sink=str(tmp_path), **bad)


def test_a_job_record_or_manifest_line_too_deep_or_too_long_to_read_counts_as_torn(
    tmp_path: Path,
) -> None:
    """The shards' records and manifests, and the service's job manifests, skip a line they
    cannot read; one nested past the parser's recursion raised ``RecursionError`` instead,
    and one with an integer of too many digits a ``ValueError`` the service's reader missed."""
    from photoroom_bg.service._store import job_lines

    deep, digits = "[" * 100_000 + "]" * 100_000, '{"status": ' + "1" * 5_000 + "}"
    good = '{"index": 0, "status": "succeeded"}'
    store = _job_store(tmp_path)

    async def check() -> None:
        await store.sink.put(store.shard_key(0), deep.encode(), metadata={})
        assert await store.read_shard(0) is None
        lines = "\n".join([good, deep, digits, good]).encode()
        await store.sink.put(store.manifest_key(0), lines, metadata={})
        assert len(await store.read_manifest(0)) == 2
        await store.sink.aclose()

    _loop.run_sync(check())
    assert list(job_lines([good, deep, digits])) == [json.loads(good)]
