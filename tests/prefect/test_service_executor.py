"""The service's ``prefect`` executor: ``/api/v2`` jobs as Prefect flow runs, items read back
from shard manifests by input index, restarts resumed without paying twice, cancels, readiness.

Here the service's parts run in the test's process (JobService over the executor, an
ephemeral Prefect API, shards in the flow's task runner); ``test_fleet.py``'s processes and
the live service tests cover the same parts across processes.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from prefect.client.orchestration import get_client

from photoroom_bg import FileSystemSink
from photoroom_bg.errors import ConfigurationError
from photoroom_bg.prefect import JobParameters
from photoroom_bg.service import (
    ExecutorContext,
    JobService,
    JobStore,
    LocalClaims,
    PrefectExecutor,
    ServiceSettings,
    make_executor,
    shared_sink_uri,
)
from photoroom_bg.sources import SourceReader
from photoroom_bg.testing import Faults, PhotoroomEmulator

from ..service.live import ImageServer, image_server, photo

pytestmark = pytest.mark.usefixtures("prefect_api")

SERVICE_KEY = "svc-key-for-v1-requests-7d1c"  # the service's own key: never a flow parameter


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with image_server() as server:
        yield server


@pytest.fixture(autouse=True)
def _loopback_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards in this process read the test's image server like the service's reader does."""
    monkeypatch.setenv("PHOTOROOM_BG_ALLOW_NETWORKS", "127.0.0.1/32")


class Service:
    """The parts of one running service that jobs touch, opened over one state folder."""

    def __init__(self, root: Path, **settings: Any) -> None:
        self.settings = ServiceSettings(
            sink=str(root / "sink"),
            state_dir=str(root / "state"),
            executor="prefect",
            prefect_deferred=False,
            api_key=SERVICE_KEY,
            heartbeat_seconds=0.2,
            **settings,
        )
        self.sink = FileSystemSink(root / "sink")
        self.sink_root = str(root / "sink")
        self.reader = SourceReader(allow_networks=["127.0.0.1/32"])
        context = ExecutorContext(
            settings=self.settings, sink=self.sink, client=None, reader=self.reader
        )
        self.executor = make_executor(context)
        assert isinstance(self.executor, PrefectExecutor)
        self.claims = LocalClaims(self.settings.state_dir)
        self.claims.prepare()
        self.store = JobStore(self.sink)
        self.jobs = JobService(self.settings, self.store, self.claims, self.executor)

    async def upload(self, data: bytes, name: str) -> dict[str, str]:
        key = f"uploads/{abs(hash(data)):x}.png"
        await self.sink.put(key, data, content_type="image/png", metadata={})
        return {"kind": "upload", "key": key, "name": name}

    async def finished(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        with anyio.fail_after(timeout):
            while True:
                record = await self.store.load(job_id)
                assert record is not None
                if record.finished:
                    return await self.jobs.describe(record, limit=1000)
                await anyio.sleep(0.1)

    async def close(self, *, died: bool = False) -> None:
        """Stop as the service does; ``died``: also drop the claims as the OS would."""
        await self.executor.aclose()
        if died:
            for job_id in self.claims.held():
                self.claims.release(job_id, finished=False)
        await self.reader.aclose()
        await self.sink.aclose()


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    svc = Service(tmp_path, prefect_shard_size=3)
    try:
        yield svc
    finally:
        await svc.close()


def url_sources(images: ImageServer, numbers: range) -> list[dict[str, str]]:
    return [{"kind": "url", "url": images.image(n)} for n in numbers]


@contextlib.contextmanager
def photoroom(monkeypatch: pytest.MonkeyPatch, latency: float) -> Iterator[PhotoroomEmulator]:
    """An emulator answering after ``latency`` seconds, which the shards in this process use."""
    emu = PhotoroomEmulator(credits=1_000, faults=Faults(latency=latency))
    with emu.serve() as url:
        monkeypatch.setenv("PHOTOROOM_BASE_URL", url)
        monkeypatch.setenv("PHOTOROOM_API_KEY", emu.api_key)
        yield emu


async def test_a_job_runs_on_prefect_and_each_item_is_its_own_input(
    service: Service, images: ImageServer, emulator: PhotoroomEmulator
) -> None:
    sources = url_sources(images, range(100, 105))
    sources.insert(2, await service.upload(photo(900), "shoe.png"))
    sources.append(await service.upload(photo(901), "bag.png"))
    record = await service.jobs.create("alice", sources, {"kind": "segment", "fields": {}})
    body = await service.finished(record.job_id)

    assert body["status"] == "completed", body
    assert body["executor"] == "prefect"
    items = body["items"]
    assert [i["index"] for i in items] == list(range(7))
    assert {i["status"] for i in items} == {"succeeded"}
    # item i is input i: its source as the client gave it, its key named after that input
    for item, source in zip(items, sources, strict=True):
        if source["kind"] == "url":
            assert item["source"] == source["url"]
            assert Path(source["url"]).stem in item["key"]
        else:
            assert item["source"] == f"upload:{source['name']}"
        assert await service.sink.exists(item["key"])
    # 3 shards of at most 3 inputs; one Photoroom call per input
    assert body["report"]["shards"] == 3
    assert service.sink_root not in json.dumps(body)  # no server path anywhere
    assert body["report"]["counts"]["stored_count"] == 7
    assert emulator.ledger.calls() == 7

    # the flow run's parameters hold references, never a key
    flow_run_id = (await service.executor.jobs.status(record.job_id)).flow_run_id
    assert flow_run_id is not None
    async with get_client() as client:
        run = await client.read_flow_run(flow_run_id)  # type: ignore[arg-type]
    parameters = json.dumps(run.parameters)
    assert SERVICE_KEY not in parameters
    assert emulator.api_key not in parameters
    assert "shoe.png" not in parameters  # uploads are sink objects, named by content
    assert SERVICE_KEY not in repr(service.executor)


async def test_a_job_the_service_stopped_is_resumed_at_its_next_start_without_paying_twice(
    tmp_path: Path, images: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with photoroom(monkeypatch, 0.15) as emu:
        first = Service(tmp_path, prefect_shard_size=4, concurrency=2)
        sources = url_sources(images, range(200, 260))
        record = await first.jobs.create("alice", sources, {"kind": "segment", "fields": {}})
        with anyio.fail_after(60):
            while emu.ledger.calls() < 4:
                await anyio.sleep(0.05)
        await first.close(died=True)  # the process goes away mid-job
        stopped = await first.store.load(record.job_id)
        assert stopped is not None
        assert not stopped.finished
        made = emu.ledger.calls()
        assert made < len(sources)

        second = Service(tmp_path, prefect_shard_size=4, concurrency=2)
        try:
            assert await second.jobs.resume_orphans() == [record.job_id]
            body = await second.finished(record.job_id)
        finally:
            await second.close()
    assert body["status"] == "completed", body
    assert set(body["counts"]) <= {"succeeded", "skipped"}, body["counts"]
    assert body["stored_count"] == len(sources)
    # every input paid for once: the resumed run skipped what the first one stored
    assert emu.ledger.calls() == len(sources)


async def test_a_cancelled_job_stops_and_says_which_inputs_never_ran(
    tmp_path: Path, images: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with photoroom(monkeypatch, 0.15) as emu:
        svc = Service(tmp_path, prefect_shard_size=3, concurrency=1)
        try:
            sources = url_sources(images, range(300, 330))
            record = await svc.jobs.create("alice", sources, {"kind": "segment", "fields": {}})
            with anyio.fail_after(60):
                while emu.ledger.calls() < 2:
                    await anyio.sleep(0.05)
            await svc.jobs.cancel(record)
            body = await svc.finished(record.job_id)
            calls = emu.ledger.calls()
        finally:
            await svc.close()
    assert body["status"] == "cancelled", body
    assert body["counts"].get("succeeded", 0) == calls  # what was paid for was stored
    assert calls < len(sources)
    never = [i for i in body["items"] if i["status"] == "cancelled"]
    assert never
    assert all(i["error"]["code"] == "cancelled" for i in never)


async def test_the_event_stream_sends_each_item_as_its_shard_finishes(
    tmp_path: Path, images: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from photoroom_bg.service._auth import RateLimiter, TokenAuth
    from photoroom_bg.service._events import event_stream
    from photoroom_bg.service._state import ServiceState

    with photoroom(monkeypatch, 0.25):
        svc = Service(tmp_path, prefect_shard_size=3, concurrency=1)
        svc.executor.jobs.defaults["max_running_shards"] = 1  # one shard after another
        state = ServiceState(
            settings=svc.settings,
            auth=TokenAuth(()),
            limiter=RateLimiter(600),
            sink=svc.sink,
            client=None,
            reader=svc.reader,
            executor=svc.executor,
            jobs=svc.jobs,
            context=svc.executor.context,
        )
        try:
            sources = url_sources(images, range(600, 612))
            record = await svc.jobs.create("alice", sources, {"kind": "segment", "fields": {}})
            events: list[tuple[str, Any]] = []
            first_item_while_running = None
            with anyio.fail_after(120):
                async for chunk in event_stream(state, record, lambda i: f"/out/{i}"):
                    if chunk.startswith(b":"):
                        continue  # a keep-alive
                    name, _, data = chunk.decode().partition("\ndata: ")
                    events.append((name.removeprefix("event: "), json.loads(data)))
                    if events[-1][0] == "item" and first_item_while_running is None:
                        fresh = await svc.store.load(record.job_id)
                        assert fresh is not None
                        first_item_while_running = not fresh.finished
        finally:
            await svc.close()
    items = [data for name, data in events if name == "item"]
    assert sorted(i["index"] for i in items) == list(range(12))  # each once
    assert all(i["stored"] and i["output_url"] == f"/out/{i['index']}" for i in items)
    assert first_item_while_running  # items came as shards finished, not all at the end
    assert events[-1][0] == "done"
    assert events[-1][1]["status"] == "completed"


async def test_readiness_names_an_unreachable_prefect_api(service: Service) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    assert await service.executor.check() is None
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{closed}/api"}):
        problem = await service.executor.check()
    assert problem is not None
    assert "Prefect" in problem


async def test_a_job_prefect_cannot_take_is_refused_and_recorded_failed_never_running(
    service: Service, images: ImageServer
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from photoroom_bg.service import Problem

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with (
        temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{closed}/api"}),
        pytest.raises(Problem) as raised,
    ):
        await service.jobs.create(
            "alice", url_sources(images, range(400, 402)), {"kind": "segment", "fields": {}}
        )
    problem = raised.value
    assert problem.status == 503
    assert problem.code == "executor_unavailable"
    assert problem.headers["Retry-After"] == "5"
    record = await service.store.load(problem.extra["job_id"])
    assert record is not None
    assert record.state == "failed"
    assert record.error is not None
    assert record.error["code"] == "executor_unavailable"
    assert service.jobs.running_for("alice") == 0  # the per-token cap is not held by it
    assert service.claims.held() == []


def test_workers_must_reach_the_sink(tmp_path: Path) -> None:
    assert shared_sink_uri("s3://bucket/prefix/") == "s3://bucket/prefix"
    assert shared_sink_uri("file://" + str(tmp_path)) == str(tmp_path)
    assert Path(shared_sink_uri("relative/out")).is_absolute()
    with pytest.raises(ConfigurationError, match="memory://"):
        shared_sink_uri("memory://")
    settings = ServiceSettings(sink="memory://", executor="prefect")
    context = ExecutorContext(
        settings=settings,
        sink=FileSystemSink(tmp_path),
        client=None,
        reader=SourceReader(),
    )
    with pytest.raises(ConfigurationError, match="workers can reach"):
        make_executor(context)


async def test_the_services_retry_and_size_settings_reach_its_jobs_shards(tmp_path: Path) -> None:
    # PHOTOROOM_BG_MAX_RETRIES, PHOTOROOM_BG_RETRY_BACKOFF and PHOTOROOM_BG_MAX_SOURCE_BYTES
    # held for local jobs only: shards on workers retried 5 times from 0.5 s and read up to
    # 50 MB whatever they said
    svc = Service(tmp_path, max_retries=0, retry_backoff=0.1, max_source_bytes=1000)
    try:
        defaults = svc.executor.jobs.defaults
        assert (defaults["max_retries"], defaults["retry_backoff"]) == (0, 0.1)
        assert defaults["max_source_bytes"] == 1000
        # PHOTOROOM_BG_RETRY_POSSIBLY_BILLED (off by default) did not reach them either: a
        # shard retried, and paid again for, a call Photoroom billed and then failed
        assert defaults["retry_possibly_billed"] is False
    finally:
        await svc.close()
    svc = Service(tmp_path / "again", retry_possibly_billed=True)
    try:
        assert svc.executor.jobs.defaults["retry_possibly_billed"] is True
    finally:
        await svc.close()


@pytest.mark.parametrize(("setting", "passed"), [(300.0, 300.0), (math.inf, None)])
async def test_the_services_photoroom_timeout_reaches_its_jobs_shards(
    tmp_path: Path, setting: float, passed: float | None
) -> None:
    # PHOTOROOM_TIMEOUT held for the service's own calls and local jobs: shards on workers
    # waited 120 s (or their own environment's value) whatever the service said. "none" (no
    # limit) is no JSON: the workers' own setting applies then
    svc = Service(tmp_path, timeout=setting)
    try:
        assert svc.executor.jobs.defaults["call_timeout"] == passed
        params = JobParameters(sources=["a.jpg"], sink=str(tmp_path), **svc.executor.jobs.defaults)
        assert params.flow_parameters()["call_timeout"] == passed
    finally:
        await svc.close()
