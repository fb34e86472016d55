"""The whole fleet on real processes: a Prefect server, two task workers, the emulator with
faults, SeaweedFS; one worker is killed in the middle of a shard."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from photoroom_bg import _loop
from photoroom_bg.prefect import JobStore
from photoroom_bg.sinks import S3Sink
from photoroom_bg.testing import Faults, PhotoroomEmulator

from ..s3server import S3Server
from .conftest import photo_bytes
from .fleet import Fleet, child, prefect_server, task_worker, wait_for_line

IMAGES = 1000
SHARD_SIZE = 50
CONCURRENCY = 8
WORKER_LIMIT = 2  # shards a worker runs at once
SUBMIT = str(Path(__file__).with_name("submit_job.py"))
_NOT_FINAL = {"RUNNING", "PENDING", "SCHEDULED"}

pytestmark = [pytest.mark.slow, pytest.mark.s3]


@pytest.fixture(scope="module")
def fleet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One Prefect server for the tests of this module (it takes some 15 s to start); each
    test brings its own workers, job and key, and reads back only its own flow run."""
    with prefect_server(tmp_path_factory.mktemp("prefect")) as fleet:
        yield fleet


async def upload(server: S3Server, prefix: str, count: int) -> None:
    async with S3Sink(prefix, **server.sink_options()) as sink:
        semaphore = asyncio.Semaphore(32)

        async def put(i: int) -> None:
            async with semaphore:
                await sink.put(f"photo-{i:04d}.png", photo_bytes(), content_type="image/png")

        await asyncio.gather(*(put(i) for i in range(count)))


async def output_keys(server: S3Server, prefix: str) -> list[str]:
    """Every object under ``prefix`` but the job's own records."""
    from photoroom_bg.sources import SourceReader

    bucket, _, path = prefix[len("s3://") :].partition("/")
    reader = SourceReader(s3_options=server.reader_options())
    async with reader:
        client = await reader._s3()
        keys: list[str] = []
        async for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=path + "/"
        ):
            keys += [item["Key"] for item in page.get("Contents", [])]
    return [k for k in keys if "/_photoroom_bg/" not in k]


def mid_shard(store: JobStore, task_run_ids: set[str]) -> bool:
    """Whether one of these task runs is a shard that has stored some of its images, not all
    (from the shards' last beats in the sink)."""

    async def records() -> list[dict[str, Any] | None]:
        return await asyncio.gather(*(store.read_shard(n) for n in range(IMAGES // SHARD_SIZE)))

    for record in _loop.run_sync(records()):
        stored = int(((record or {}).get("progress") or {}).get("succeeded", 0))
        running = record is not None and record.get("state") == "running"
        if running and record.get("task_run_id") in task_run_ids and 5 <= stored < SHARD_SIZE:
            return True
    return False


def flow_and_task_runs(
    fleet: Fleet, flow_run_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    flow_run = fleet.api("GET", f"/flow_runs/{flow_run_id}")
    task_runs = fleet.api(
        "POST", "/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}}
    )
    return flow_run, task_runs


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_fleet_finishes_a_job_when_a_worker_dies_mid_shard_without_paying_twice(
    fleet_server: Fleet, s3_server: S3Server, s3_prefix: str, signum: signal.Signals
) -> None:
    """SIGKILL: the worker dies without a word; only its calls in flight can be paid twice.
    SIGTERM (a scale-down, a deploy): its shards end ``Crashed`` at once and are handed
    over at the next poll, with those it had taken ahead of its limit; its calls under way
    are stored as it exits, and the job completes with no image paid twice (it failed
    before: the flow took the crashed shards for failed ones and stopped the job)."""
    key = "pr-fleet-" + uuid.uuid4().hex
    emulator = PhotoroomEmulator(
        [key],
        credits=10_000,
        image_work=False,
        faults=Faults(latency=0.15, rates={"503": 0.03, "reset": 0.02, "429": 0.005}, seed=7),
    )
    sources, sink = f"{s3_prefix}/raw/", f"{s3_prefix}/out"
    job_id = "fleet-" + uuid.uuid4().hex[:8]
    secret = "photoroom-key-" + job_id  # the block of this test; the server is the module's
    started = time.monotonic()
    fleet = fleet_server
    with emulator.serve() as url:
        asyncio.run(upload(s3_server, sources, IMAGES))
        worker_env = {
            "AWS_ENDPOINT_URL_S3": s3_server.endpoint_url,
            "AWS_ACCESS_KEY_ID": s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
            "AWS_REGION": s3_server.region,
            "PHOTOROOM_BASE_URL": url,  # no key: it comes from the Secret block
        }
        with (
            task_worker(fleet, "worker-a", worker_env, WORKER_LIMIT) as worker_a,
            task_worker(fleet, "worker-b", worker_env, WORKER_LIMIT) as worker_b,
        ):
            log_a = fleet.home / "worker-a.log"
            wait_for_line(log_a, "Subscribing to runs", worker_a)
            wait_for_line(fleet.home / "worker-b.log", "Subscribing to runs", worker_b)
            spec = {
                "secret": {"name": secret, "value_env": "FLEET_TEST_KEY"},
                "parameters": {
                    "sources": sources,
                    "sink": sink,
                    "shard_size": SHARD_SIZE,
                    "concurrency": CONCURRENCY,
                    "api_key_secret": secret,
                    "deferred": True,
                    "max_running_shards": 4 * WORKER_LIMIT,  # work for both workers
                    "job_id": job_id,
                    "heartbeat_timeout": 10,
                },
            }
            submitter_log = fleet.home / "submitter.log"
            with child(
                [sys.executable, SUBMIT, json.dumps(spec)],
                {**fleet.env, **worker_env, "FLEET_TEST_KEY": key},
                submitter_log,
            ) as submitter:
                # wait until worker A is in the middle of a shard (it has stored some of its
                # images, not all), then kill it without warning
                store = JobStore(S3Sink(sink, **s3_server.sink_options()), job_id)
                deadline = time.monotonic() + 120
                while True:
                    assert submitter.poll() is None, submitter_log.read_text()[-3000:]
                    assert time.monotonic() < deadline, log_a.read_text()[-3000:]
                    received = set(
                        re.findall(r"Received task run: ([0-9a-f-]{36})", log_a.read_text())
                    )
                    if received and mid_shard(store, received):
                        break
                    time.sleep(0.3)
                calls_at_kill = emulator.ledger.calls()
                worker_a.send_signal(signum)
                worker_a.wait(timeout=30)
                _loop.run_sync(store.sink.aclose())
                submitter.wait(timeout=240)
            output = submitter_log.read_text()
            assert submitter.returncode == 0, output[-4000:]
            result = json.loads(output.rsplit("SUMMARY ", 1)[1])
        # the workers have stopped and shipped their last logs: read back what Prefect holds,
        # once it has recorded the last state changes (they travel as events, in batches)
        flow_run_id = _flow_run_id(fleet, job_id)
        deadline = time.monotonic() + 60
        while True:
            flow_run, task_runs = flow_and_task_runs(fleet, flow_run_id)
            unsettled = [r for r in task_runs if r["state"]["type"] in _NOT_FINAL]
            if not unsettled or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        unsettled_story = describe(fleet, unsettled)
        leaked = everything_recorded(fleet, flow_run, task_runs)
        keys = asyncio.run(output_keys(s3_server, sink))
    elapsed = time.monotonic() - started

    summary = result["summary"]
    assert result["state"] == "COMPLETED", summary
    assert summary["counts"]["total_count"] == IMAGES
    assert summary["counts"]["stored_count"] == IMAGES
    assert len(keys) == IMAGES  # one output per image, every one stored
    # the killed worker's shards were given to worker B; the only images paid twice are the
    # ones worker A had in flight when it died, and none when it was stopped: its calls
    # under way were stored as it exited
    in_flight_bound = WORKER_LIMIT * CONCURRENCY if signum == signal.SIGKILL else 0
    assert IMAGES <= emulator.ledger.calls() <= IMAGES + in_flight_bound
    twice = [n for n in emulator.ledger.billed_per_image().values() if n > 1]
    assert len(twice) <= in_flight_bound
    assert max(emulator.ledger.billed_per_image().values()) <= 2
    assert calls_at_kill < IMAGES
    # the flow noticed, and handed the shard over
    assert ("its worker was lost" if signum == signal.SIGKILL else "its worker stopped") in output
    # the dead worker's shard is visibly crashed, nothing is left "running"
    states = [run["state"]["type"] for run in task_runs]
    assert "CRASHED" in states
    assert not _NOT_FINAL & set(states), (states, unsettled_story)
    assert flow_run["state"]["type"] == "COMPLETED"
    # the key never reached Prefect: parameters, states, logs, results, artifacts
    assert secret in json.dumps(flow_run["parameters"])  # only the block's name
    assert key not in leaked
    assert os.environ.get("PHOTOROOM_API_KEY") != key
    print(f"fleet test: {elapsed:.1f} s, {emulator.ledger.calls()} billed calls")


def describe(fleet: Fleet, runs: list[dict[str, Any]]) -> str:
    """Each of these task runs: its name, its states in order, and which worker ran it."""
    logs = {name: (fleet.home / f"{name}.log").read_text() for name in ("worker-a", "worker-b")}
    lines = []
    for run in runs:
        history = fleet.api("GET", "/task_run_states/", params={"task_run_id": run["id"]})
        states = [(s["timestamp"], s["type"], s["name"]) for s in history]
        workers = [name for name, text in logs.items() if run["id"] in text]
        lines.append(f"{run['name']} {run['id']} {run['state']['type']} {workers} {states}")
    return "\n".join(lines)


def _flow_run_id(fleet: Fleet, job_id: str) -> str:
    runs = fleet.api("POST", "/flow_runs/filter", json={"limit": 10})
    (run,) = [r for r in runs if r["parameters"].get("job_id") == job_id]
    return str(run["id"])


def everything_recorded(
    fleet: Fleet, flow_run: dict[str, Any], task_runs: list[dict[str, Any]]
) -> str:
    """What Prefect holds about the run: flow and task runs (parameters, states), every log
    line, every artifact, every stored result and task parameter file."""
    parts = [json.dumps(flow_run), json.dumps(task_runs)]
    logs = fleet.api(
        "POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run["id"]]}}}
    )
    assert logs
    parts += [json.dumps(logs), json.dumps(fleet.api("POST", "/artifacts/filter", json={}))]
    storage = fleet.home / "storage"
    files = [p for p in storage.rglob("*") if p.is_file()]
    assert files, "deferred task parameters and results are stored here"
    parts += [p.read_bytes().decode("latin-1") for p in files]
    return "\n".join(parts)
