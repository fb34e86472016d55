"""PrefectJobs, the API a service uses: start, status, results, cancel, resume."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from prefect.client.orchestration import get_client
from prefect.states import Running

from photoroom_bg import FileSystemSink, SegmentOptions
from photoroom_bg.errors import ConfigurationError, ObjectNotFoundError, ValidationError
from photoroom_bg.prefect import JobStore, PrefectJobs, remove_backgrounds
from photoroom_bg.testing import Faults, PhotoroomEmulator

from .conftest import photo_folder

pytestmark = pytest.mark.usefixtures("prefect_api")


def sources(folder: Path) -> list[str]:
    return [str(p) for p in sorted(folder.iterdir())]


async def test_a_job_runs_to_its_end_and_lists_every_input(
    tmp_path: Path, emulator: PhotoroomEmulator
) -> None:
    photos = sources(photo_folder(tmp_path / "in", 9))
    out = str(tmp_path / "out")
    async with PrefectJobs(out, deferred=False, shard_size=4, heartbeat_timeout=5) as jobs:
        started = await jobs.start(photos, SegmentOptions(size="hd"))
        assert started.state == "scheduled"
        assert started.flow_run_id is not None
        with anyio.fail_after(120):
            info = await jobs.wait(started.job_id, interval=0.2)
        records = [r async for r in jobs.results(started.job_id)]
    assert info.state == "completed"
    assert info.flow_run_state == "COMPLETED"
    assert info.counts["stored_count"] == 9
    assert info.summary is not None
    assert info.summary.shards == 3
    assert sorted(r["source"] for r in records) == photos
    assert {r["status"] for r in records} == {"succeeded"}
    assert all(r["uri"].startswith("file://") for r in records)
    assert emulator.ledger.calls() == 9


async def test_cancel_stops_a_job_and_resume_finishes_it_without_paying_twice(
    tmp_path: Path,
) -> None:
    emu = PhotoroomEmulator(credits=100, faults=Faults(latency=0.2))
    photos = sources(photo_folder(tmp_path / "in", 16))
    with emu.serve() as url, pytest.MonkeyPatch.context() as env:
        env.setenv("PHOTOROOM_BASE_URL", url)
        env.setenv("PHOTOROOM_API_KEY", emu.api_key)
        async with PrefectJobs(
            str(tmp_path / "out"),
            deferred=False,
            shard_size=2,
            concurrency=1,
            max_running_shards=1,
            heartbeat_timeout=3,
        ) as jobs:
            job = await jobs.start(photos)
            with anyio.fail_after(120):
                while emu.ledger.calls() < 3:  # the job is under way
                    await anyio.sleep(0.05)
            assert await jobs.cancel(job.job_id, "the customer changed their mind")
            with anyio.fail_after(120):
                info = await jobs.wait(job.job_id, interval=0.2)
            assert info.state == "cancelled"
            assert info.flow_run_state == "CANCELLED"
            assert info.stop_reason == "the customer changed their mind"
            assert info.counts["cancelled_count"] > 0
            assert not await jobs.cancel(job.job_id)  # already over
            paid = emu.ledger.calls()
            assert paid < 16

            await jobs.resume(job.job_id)
            with anyio.fail_after(120):
                info = await jobs.wait(job.job_id, interval=0.2)
            # one current record per input: the first run's "cancelled" records, and the
            # resume's "skipped" ones of what it had made, were listed beside them
            records = [r async for r in jobs.results(job.job_id)]
    assert sorted(r["source"] for r in records) == photos
    assert {r["status"] for r in records} == {"succeeded"}
    assert info.state == "completed"
    assert info.counts["skipped_count"] == paid
    assert emu.ledger.calls() == 16
    assert set(emu.ledger.billed_per_image().values()) == {1}


async def test_bad_requests_are_refused_before_anything_is_created(tmp_path: Path) -> None:
    async with PrefectJobs(str(tmp_path / "out"), deferred=False) as jobs:
        with pytest.raises(ValidationError):
            await jobs.start(["a.jpg"], {"size": "giant"})
        with pytest.raises(ConfigurationError):
            await jobs.start(["a.jpg"], sink="memory://")
        with pytest.raises(ObjectNotFoundError):
            await jobs.status("no-such-job")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigurationError, match="not a default job parameter"):
        PrefectJobs(str(tmp_path / "out"), api_key="never-here")
    with pytest.raises(ConfigurationError, match="deferred must be True or False, not 'no'"):
        PrefectJobs(str(tmp_path / "out"), deferred="no")  # type: ignore[arg-type]


async def test_a_job_whose_coordinator_died_is_reported_crashed_never_running(
    tmp_path: Path,
) -> None:
    async with get_client() as client:
        flow_run = await client.create_flow_run(
            remove_backgrounds, parameters={"sources": ["a.jpg"], "sink": "out"}, state=Running()
        )
    job_id = "orphan-" + uuid.uuid4().hex[:6]
    sink = FileSystemSink(tmp_path / "out")
    store = JobStore(sink, job_id)
    await store.write(
        store.job_key,
        {
            "job_id": job_id,
            "state": "running",
            "flow_run_id": str(flow_run.id),
            "heartbeat_timeout": 5,
            "updated": time.time() - 60,  # the coordinator has not written for a minute
        },
    )
    jobs = PrefectJobs(str(tmp_path / "out"))
    info = await jobs.status(job_id)
    assert info.state == "crashed"
    assert info.done
    async with get_client() as client:
        state = (await client.read_flow_run(flow_run.id)).state
    assert state is not None
    assert state.is_crashed()


async def test_jobs_can_run_as_flow_runs_of_a_deployment(tmp_path: Path) -> None:
    name = f"jobs-{uuid.uuid4().hex[:6]}"
    deployment = await remove_backgrounds.ato_deployment(name=name)
    await deployment.apply()
    jobs = PrefectJobs(str(tmp_path / "out"), deployment=f"remove-backgrounds/{name}")
    job = await jobs.start(["s3://raw/a.jpg", "s3://raw/b.jpg"], {"type": "edit", "padding": 0.1})
    async with get_client() as client:
        flow_run = await client.read_flow_run(uuid.UUID(str(job.flow_run_id)))
    parameters: dict[str, Any] = flow_run.parameters
    assert parameters["sources"] == ["s3://raw/a.jpg", "s3://raw/b.jpg"]
    assert parameters["options"] == {"type": "edit", "padding": 0.1}
    assert parameters["job_id"] == job.job_id
    assert parameters["deferred"] is True
    assert (await jobs.status(job.job_id)).state == "scheduled"
    assert await jobs.cancel(job.job_id)
    info = await jobs.status(job.job_id)
    assert info.state == "cancelled"  # it never started: Prefect cancels the run itself
    assert info.flow_run_state == "CANCELLED"


async def test_a_job_cancelled_before_its_flow_run_begins_never_calls_photoroom(
    tmp_path: Path, emulator: PhotoroomEmulator
) -> None:
    from prefect.flow_engine import run_flow_async

    photos = sources(photo_folder(tmp_path / "in", 4))
    parameters = {"sources": photos, "sink": str(tmp_path / "out"), "job_id": "early"}
    async with get_client() as client:
        flow_run = await client.create_flow_run(remove_backgrounds, parameters=parameters)
    store = JobStore(FileSystemSink(tmp_path / "out"), "early")
    await store.write(
        store.job_key, {"job_id": "early", "state": "scheduled", "flow_run_id": str(flow_run.id)}
    )
    assert await PrefectJobs(str(tmp_path / "out")).cancel("early", "changed my mind")
    state = await run_flow_async(
        remove_backgrounds, flow_run=flow_run, parameters=parameters, return_type="state"
    )
    assert state.is_cancelled()
    assert "changed my mind" in (state.message or "")
    assert [r.path for r in emulator.requests if r.path != "/v2/account"] == []
