"""The remove_backgrounds flow on an ephemeral Prefect API, shards in the flow's task runner."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
    TaskRunFilter,
)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import MissingResult

from photoroom_bg.batch import _run
from photoroom_bg.prefect import (
    JobFailed,
    JobStore,
    RunSummary,
    artifact_key,
    ensure_rate_limit,
    remove_backgrounds,
)
from photoroom_bg.sinks import FileSystemSink
from photoroom_bg.testing import Faults, PhotoroomEmulator

from ..s3server import S3Server
from .conftest import photo_folder

pytestmark = pytest.mark.usefixtures("prefect_api")


def run_flow(**parameters: Any) -> Any:
    """Run the flow to its end; return its final state."""
    return asyncio.run(remove_backgrounds(**parameters, return_state=True))  # type: ignore[call-overload]


def summary_of(state: Any) -> RunSummary:
    data = state.result(raise_on_failure=False)
    if isinstance(data, JobFailed):
        return data.summary
    return RunSummary.from_dict(data)


def stored_outputs(sink: Path) -> list[Path]:
    return [p for p in sink.rglob("*.png") if "_photoroom_bg" not in p.parts]


def test_every_image_is_stored_once_and_reported(
    tmp_path: Path, emulator: PhotoroomEmulator
) -> None:
    photos = photo_folder(tmp_path / "in", 23)
    state = run_flow(
        sources=str(photos),
        sink=str(tmp_path / "out"),
        shard_size=5,
        concurrency=3,
        job_id="every-image",
    )
    assert state.is_completed(), state
    summary = summary_of(state)
    assert summary.state == "completed"
    assert summary.shards == 5
    assert summary.shard_outcomes == {"completed": 5}
    assert summary.count("total_count") == summary.count("stored_count") == 23
    assert summary.count("billed_calls") == 23
    assert summary.credits_spent == 23
    assert len(stored_outputs(tmp_path / "out")) == 23
    assert emulator.ledger.calls() == 23
    assert set(emulator.ledger.billed_per_image().values()) == {1}

    async def artifacts() -> list[Any]:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[artifact_key("every-image")])
                )
            )

    (report,) = asyncio.run(artifacts())
    assert "23 of 23 images stored" in report.data
    assert str(tmp_path / "out") in report.data  # where the outputs are


def test_running_a_job_again_skips_what_is_stored_and_bills_nothing(
    tmp_path: Path, emulator: PhotoroomEmulator
) -> None:
    photos = photo_folder(tmp_path / "in", 12)
    common = {"sources": str(photos), "sink": str(tmp_path / "out"), "shard_size": 4}
    assert run_flow(**common, job_id="twice").is_completed()
    again = summary_of(run_flow(**common, job_id="twice"))
    assert again.count("skipped_count") == 12
    assert again.count("billed_calls") == 0
    other_job = summary_of(run_flow(**common))  # a new job id: the sink still has the outputs
    assert other_job.count("skipped_count") == 12
    assert emulator.ledger.calls() == 12


def test_a_job_run_again_into_a_folder_inside_its_inputs_never_takes_cut_outs_for_inputs(
    tmp_path: Path, emulator: PhotoroomEmulator
) -> None:
    # the sink inside the folder listed: the second run listed the first one's cut-outs
    # (and the job's own records) as inputs, and paid for cut-outs of them
    photos = photo_folder(tmp_path / "in", 6)
    common = {"sources": str(photos), "sink": str(photos / "cutouts"), "shard_size": 4}
    first = summary_of(run_flow(**common, job_id="inside"))
    again = summary_of(run_flow(**common, job_id="inside-again"))
    assert first.count("total_count") == again.count("total_count") == 6
    assert again.count("billed_calls") == 0
    assert emulator.ledger.calls() == 6


def test_out_of_credits_stops_every_shard_and_a_rerun_finishes_without_paying_twice(
    tmp_path: Path,
) -> None:
    emu = PhotoroomEmulator(credits=7)
    photos = photo_folder(tmp_path / "in", 30)
    with emu.serve() as url, pytest.MonkeyPatch.context() as env:
        env.setenv("PHOTOROOM_BASE_URL", url)
        env.setenv("PHOTOROOM_API_KEY", emu.api_key)
        common = {
            "sources": str(photos),
            "sink": str(tmp_path / "out"),
            "shard_size": 3,
            "concurrency": 1,
            "max_running_shards": 2,
            "job_id": "credits",
        }
        state = run_flow(**common)
        assert state.is_failed()
        summary = summary_of(state)
        assert "OutOfCreditsError" in (summary.stop_reason or "")
        # the guide's "stopped: shard 3: OutOfCreditsError: ...": the shard went unnamed
        assert re.search(r"; stopped: shard \d+: OutOfCreditsError: ", state.message or "")
        assert summary.count("stored_count") == 7
        assert summary.count("total_count") == 30
        assert summary.count("cancelled_count") > 0  # shards not started never called Photoroom
        refused = [r for r in emu.requests if r.status == 402 and r.path == "/v1/segment"]
        # no hammering: at most one refused call per shard in flight
        assert 1 <= len(refused) <= 2
        emu.ledger.accounts[emu.api_key].credits += 100  # the account is topped up
        state = run_flow(**common)
        assert state.is_completed(), state
        assert summary_of(state).count("skipped_count") == 7
    assert emu.ledger.calls() == 30
    assert set(emu.ledger.billed_per_image().values()) == {1}


def test_a_refused_key_stops_the_job_with_the_reason(tmp_path: Path) -> None:
    emu = PhotoroomEmulator(["the-real-key"])
    photos = photo_folder(tmp_path / "in", 20)
    with emu.serve() as url, pytest.MonkeyPatch.context() as env:
        env.setenv("PHOTOROOM_BASE_URL", url)
        env.setenv("PHOTOROOM_API_KEY", "a-revoked-key")
        state = run_flow(
            sources=str(photos),
            sink=str(tmp_path / "out"),
            shard_size=2,
            concurrency=1,
            max_running_shards=2,
        )
    assert state.is_failed()
    assert "AuthenticationError" in (summary_of(state).stop_reason or "")
    # at most one refused call per shard in flight (the flow's own balance check aside)
    assert len([r for r in emu.requests if r.path == "/v1/segment"]) <= 2


def test_a_balance_that_does_not_come_holds_no_job_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The flow reads the balance before and after the job, to report credits_spent: a
    # balance read that hung held the whole job back for the client's timeout, twice.
    monkeypatch.setattr(_run, "BALANCE_WAIT", 0.3)
    emu = PhotoroomEmulator(credits=100, faults=Faults(stall_seconds=8))
    photos = photo_folder(tmp_path / "in", 4)
    with emu.serve() as url:
        monkeypatch.setenv("PHOTOROOM_BASE_URL", url)
        monkeypatch.setenv("PHOTOROOM_API_KEY", emu.api_key)
        emu.inject("stall")  # the flow's first request: the balance before the job
        started = time.monotonic()
        state = run_flow(sources=str(photos), sink=str(tmp_path / "out"), shard_size=2)
        took = time.monotonic() - started
    assert state.is_completed(), state
    summary = summary_of(state)
    assert summary.count("stored_count") == 4
    assert summary.credits_spent is None  # not known: never a guess
    assert took < 6, took  # the stall lasts 8 s


def test_the_key_comes_from_a_secret_block_and_never_reaches_prefect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_key = "pr-" + uuid.uuid4().hex  # nothing else in the test session has this
    emu = PhotoroomEmulator([secret_key])
    block = f"photoroom-key-{uuid.uuid4().hex[:8]}"
    asyncio.run(Secret(value=secret_key).asave(block))
    monkeypatch.delenv("PHOTOROOM_API_KEY", raising=False)
    photos = photo_folder(tmp_path / "in", 6)
    with emu.serve() as url:
        monkeypatch.setenv("PHOTOROOM_BASE_URL", url)
        state = run_flow(
            sources=str(photos), sink=str(tmp_path / "out"), shard_size=3, api_key_secret=block
        )
    assert state.is_completed(), state
    assert emu.ledger.calls(secret_key) == 6
    assert secret_key not in everything_prefect_recorded(state.state_details.flow_run_id)


def everything_prefect_recorded(flow_run_id: Any) -> str:
    """The flow run's and its task runs' parameters, states, results and logs, and every
    artifact, as Prefect's API returns them."""

    async def read() -> str:
        parts: list[str] = []
        async with get_client() as client:
            flow_run = await client.read_flow_run(flow_run_id)
            parts.append(flow_run.model_dump_json())
            task_runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                task_run_filter=TaskRunFilter(),
            )
            states = [run.state for run in task_runs] + [flow_run.state]
            parts += [run.model_dump_json() for run in task_runs]
            for state in states:
                assert state is not None
                with contextlib.suppress(MissingResult):  # not persisted: nothing to leak
                    parts.append(repr(await state.aresult(raise_on_failure=False)))
            # logs are shipped in batches: wait for the flow's last line to arrive
            deadline = time.monotonic() + 60
            while True:
                logs = await client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
                )
                if any("images stored" in log.message for log in logs):
                    break
                assert time.monotonic() < deadline, "the flow's logs never reached the API"
                await asyncio.sleep(0.2)
            parts += [log.message for log in logs]
            parts += [a.model_dump_json() for a in await client.read_artifacts()]
        return "\n".join(parts)

    return asyncio.run(read())


def test_a_missing_secret_block_fails_each_shard_once_and_stops_the_job(
    tmp_path: Path, emulator: PhotoroomEmulator
) -> None:
    photos = photo_folder(tmp_path / "in", 6)
    state = run_flow(
        sources=str(photos),
        sink=str(tmp_path / "out"),
        shard_size=2,
        api_key_secret="no-such-block",
        max_running_shards=1,
    )
    assert state.is_failed()
    summary = summary_of(state)
    assert "no Secret block named 'no-such-block'" in (summary.stop_reason or "")
    assert summary.shard_outcomes.get("failed") == 1  # the others were never started
    assert emulator.requests == []

    async def attempts() -> list[int]:
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
                )
            )
            return [run.run_count for run in runs]

    assert asyncio.run(attempts()) == [1]  # a configuration error is not retried


def test_bad_parameters_fail_the_flow_before_anything_is_listed(
    tmp_path: Path, emulator: PhotoroomEmulator
) -> None:
    photos = photo_folder(tmp_path / "in", 2)
    state = run_flow(sources=str(photos), sink=str(tmp_path / "out"), options={"size": "giant"})
    assert state.is_failed()
    assert not (tmp_path / "out").exists()
    state = run_flow(sources=str(photos), sink="memory://")
    assert state.is_failed()
    assert emulator.requests == []


def test_a_transient_sink_failure_is_retried_by_the_task_without_paying_twice(
    tmp_path: Path, emulator: PhotoroomEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from photoroom_bg.errors import StorageError

    original = JobStore.write_shard
    failures = {"left": 1}

    async def flaky(self: JobStore, shard: int, record: dict[str, Any]) -> None:
        if record.get("state") == "completed" and failures["left"]:
            failures["left"] -= 1
            raise StorageError("the sink hiccuped")
        await original(self, shard, record)

    monkeypatch.setattr(JobStore, "write_shard", flaky)
    photos = photo_folder(tmp_path / "in", 4)
    state = run_flow(sources=str(photos), sink=str(tmp_path / "out"), shard_size=4)
    assert state.is_completed(), state
    summary = summary_of(state)
    assert summary.count("skipped_count") == 4  # the retry found the outputs stored
    assert emulator.ledger.calls() == 4


def test_the_fleet_rate_limit_spaces_billed_calls_of_all_shards(
    tmp_path: Path, emulator: PhotoroomEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[float] = []
    charge = emulator.ledger.charge

    def timed(key: str, endpoint: str, image_digest: str | None) -> None:
        seen.append(time.monotonic())
        charge(key, endpoint, image_digest)

    monkeypatch.setattr(emulator.ledger, "charge", timed)
    limit = f"test-{uuid.uuid4().hex[:8]}"
    photos = photo_folder(tmp_path / "in", 8)
    state = run_flow(
        sources=str(photos),
        sink=str(tmp_path / "out"),
        shard_size=2,
        concurrency=2,
        max_running_shards=4,  # 8 calls could all start at once
        requests_per_minute=60,  # 1 per second for the whole fleet, bursts of 1
        rate_limit=limit,
    )
    assert state.is_completed(), state
    seen.sort()
    assert len(seen) == 8
    # load can only spread calls further apart; without the shared limit they all go at once
    assert seen[-1] - seen[0] >= 5.5


def test_ensure_rate_limit_sets_the_decay_from_requests_per_minute() -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"

    async def limit() -> Any:
        await ensure_rate_limit(name, 600)
        await ensure_rate_limit(name, 1500)  # updating an existing one
        async with get_client() as client:
            return await client.read_global_concurrency_limit_by_name(name)

    found = asyncio.run(limit())
    assert found.slot_decay_per_second == pytest.approx(25.0)
    assert found.limit == 25


def test_a_shard_that_stops_the_job_is_visibly_failed(tmp_path: Path) -> None:
    emu = PhotoroomEmulator(credits=1)
    photos = photo_folder(tmp_path / "in", 4)
    with emu.serve() as url, pytest.MonkeyPatch.context() as env:
        env.setenv("PHOTOROOM_BASE_URL", url)
        env.setenv("PHOTOROOM_API_KEY", emu.api_key)
        state = run_flow(
            sources=str(photos), sink=str(tmp_path / "out"), shard_size=4, concurrency=1
        )

    async def states() -> list[StateType]:
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
                )
            )
            return [run.state.type for run in runs if run.state is not None]

    assert state.is_failed()
    deadline = time.monotonic() + 60
    while (found := asyncio.run(states())) != [StateType.FAILED]:
        assert time.monotonic() < deadline, found
        time.sleep(0.2)
    store = JobStore(FileSystemSink(tmp_path / "out"), summary_of(state).job_id)
    record = asyncio.run(store.read_shard(0))
    assert record is not None
    assert record["state"] == "stopped"


def test_a_refused_key_in_the_secret_block_stops_the_job_before_any_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = PhotoroomEmulator(["the-real-key"])
    block = f"revoked-{uuid.uuid4().hex[:8]}"
    asyncio.run(Secret(value="a-revoked-key").asave(block))
    photos = photo_folder(tmp_path / "in", 6)
    with emu.serve() as url:
        monkeypatch.setenv("PHOTOROOM_BASE_URL", url)
        state = run_flow(
            sources=str(photos), sink=str(tmp_path / "out"), shard_size=2, api_key_secret=block
        )
    assert state.is_failed()
    summary = summary_of(state)
    assert f"Secret block {block!r} is refused" in (summary.stop_reason or "")
    assert summary.count("cancelled_count") == 6
    assert [r.path for r in emu.requests] == ["/v2/account"]  # no shard called Photoroom


@pytest.mark.s3
def test_sources_that_cannot_be_listed_fail_the_job_without_calling_photoroom(
    tmp_path: Path,
    emulator: PhotoroomEmulator,
    s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_REGION", s3_server.region)
    state = run_flow(sources=f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/raw/", sink=str(tmp_path))
    assert state.is_failed()
    assert "could not list the sources" in (summary_of(state).stop_reason or "")
    assert [r.path for r in emulator.requests if r.path != "/v2/account"] == []
