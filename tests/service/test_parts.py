"""The service's parts on their own: settings, bind refusal, auth, rate limit, problem codes,
serialization of results (including fields and statuses added later), job records, claims."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import re
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from click.testing import CliRunner

from photoroom_bg import errors
from photoroom_bg.batch import BatchReport, JobResult, JobStatus
from photoroom_bg.cli import main
from photoroom_bg.errors import ConfigurationError
from photoroom_bg.service import (
    ANONYMOUS,
    EXECUTORS,
    PROBLEM_CODES,
    ExecutorContext,
    JobRecord,
    LocalClaims,
    Problem,
    RateLimiter,
    ServiceSettings,
    TokenAuth,
    check_bind,
    error_code,
    make_executor,
    problem_for,
)
from photoroom_bg.service._serialize import item_from_record, item_from_result, report_json
from photoroom_bg.sinks import MemorySink
from photoroom_bg.sources import SourceReader

from ..disks import no_file_at
from .live import app_settings

# -- settings --------------------------------------------------------------------------------


def test_settings_are_read_from_the_environment_with_types(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("first-token\nsecond-token\n")
    key = tmp_path / "key"
    key.write_text("the-secret-key\n")
    settings = ServiceSettings.from_env(
        {
            "PHOTOROOM_API_KEY_FILE": str(key),
            "PHOTOROOM_BG_TOKENS_FILE": str(tokens),
            "PHOTOROOM_BG_MAX_JOBS_PER_TOKEN": "7",
            "PHOTOROOM_BG_RETRY_BACKOFF": "0.25",
            "PHOTOROOM_BG_ALLOW_UNAUTHENTICATED": "yes",
            "PHOTOROOM_BG_CORS_ORIGINS": "https://a.example, https://b.example",
        }
    )
    assert settings.api_key == "the-secret-key"
    assert settings.tokens == ("first-token", "second-token")
    assert settings.max_jobs_per_token == 7
    assert settings.retry_backoff == 0.25
    assert settings.allow_unauthenticated is True
    assert settings.cors_origins == ("https://a.example", "https://b.example")
    assert "the-secret-key" not in repr(settings)
    assert "first-token" not in repr(settings)


def test_a_state_folder_from_home_is_in_home_as_the_sinks_folder_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a .env or compose file passes "~/state" on unexpanded: the sink's folder was taken in
    # the home folder, the state folder as a folder named "~" in the working folder
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = ServiceSettings.from_env({"PHOTOROOM_BG_STATE_DIR": "~/state"})
    assert settings.state_dir == str(tmp_path / "state")
    assert ServiceSettings(state_dir="~/s").state_dir == str(tmp_path / "s")


def test_a_sink_uri_with_an_upper_case_scheme_is_that_uri() -> None:
    # PHOTOROOM_BG_SINK=S3://bucket/cut was refused at start as an unsupported sink
    settings = ServiceSettings.from_env({"PHOTOROOM_BG_SINK": "S3://bucket/cut"})
    assert settings.sink == "s3://bucket/cut"


@pytest.mark.parametrize(
    "token",
    ["s3cret\udcff", "s3cr\u00e9t", "s3cret\x7f", "s3cret\x00"],
    ids=["not-utf8", "non-ascii", "del", "nul"],
)
def test_a_token_no_client_can_send_is_refused_without_showing_it(
    tmp_path: Path, token: str
) -> None:
    # a byte that is no UTF-8 (os.environ's \udcxx) made the service's start fail with a bare
    # UnicodeEncodeError; the others started a service no client could authenticate to
    with pytest.raises(ConfigurationError, match="token 2 of 2") as caught:
        ServiceSettings(sink="memory://", state_dir=str(tmp_path), tokens=("fine", token))
    assert "s3cr" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="PHOTOROOM_BG_TOKENS: token 2 of 2"):
        ServiceSettings.from_env({"PHOTOROOM_BG_TOKENS": f"fine,{token}"})


@pytest.mark.parametrize("variable", ["PHOTOROOM_BG_TOKENS_FILE", "PHOTOROOM_API_KEY_FILE"])
def test_a_secret_file_that_is_no_utf8_text_is_refused_without_showing_it(
    tmp_path: Path, variable: str
) -> None:
    # read_text raised UnicodeDecodeError (a ValueError, where OSErrors were caught)
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cret\xff\xfe\n")
    with pytest.raises(ConfigurationError, match=f"{variable}=.*not UTF-8 text") as caught:
        ServiceSettings.from_env({variable: str(secret)})
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("variable", ["PHOTOROOM_BG_TOKENS_FILE", "PHOTOROOM_API_KEY_FILE"])
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_secret_file_that_is_a_pipe_or_a_device_is_refused_unread(
    tmp_path: Path, variable: str, kind: str
) -> None:
    # read_text on a named pipe held the service's start forever, and on /dev/zero read
    # until the memory ran out
    secret = tmp_path / "secret"
    what = re.escape(no_file_at(secret, kind))
    with pytest.raises(ConfigurationError, match=f"cannot read {variable}=.*: it is {what}"):
        ServiceSettings.from_env({variable: str(secret)})


def test_bad_settings_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="PHOTOROOM_BG_CONCURRENCY"):
        ServiceSettings.from_env({"PHOTOROOM_BG_CONCURRENCY": "many"})
    with pytest.raises(ConfigurationError, match="positive"):
        ServiceSettings.from_env({"PHOTOROOM_BG_CONCURRENCY": "0"})
    with pytest.raises(ConfigurationError, match="PHOTOROOM_BG_TOKENS_FILE"):
        ServiceSettings.from_env({"PHOTOROOM_BG_TOKENS_FILE": str(tmp_path / "missing")})
    # each of these once passed, and failed every job (or meant "no limit") later
    for name, value in [
        ("PHOTOROOM_BG_LEASE_SECONDS", "nan"),
        ("PHOTOROOM_BG_PHOTOROOM_REQUESTS_PER_MINUTE", "-5"),
        ("PHOTOROOM_BG_PHOTOROOM_REQUESTS_PER_MINUTE", "nan"),
        ("PHOTOROOM_BG_MAX_RETRIES", "-1"),
        ("PHOTOROOM_BG_RETRY_BACKOFF", "-0.5"),
        ("PHOTOROOM_BG_RETRY_BACKOFF", "inf"),  # every job failed at its first retry
        ("PHOTOROOM_BG_LEASE_SECONDS", "inf"),  # a job of a gone replica never taken over
        ("PHOTOROOM_BG_HEARTBEAT_SECONDS", "inf"),
        # past sys.maxsize, which each request's batch refuses: the service started, and
        # failed every request
        ("PHOTOROOM_BG_CONCURRENCY", "9" * 20),
        ("PHOTOROOM_BG_MAX_RETRIES", "9" * 20),
    ]:
        with pytest.raises(ConfigurationError, match="must be"):
            ServiceSettings.from_env({name: value})
    # beats further apart than the lease: other replicas took a live job over, paying twice
    for heartbeat, lease in [("90", "60"), ("31", "60")]:
        with pytest.raises(ConfigurationError, match="PHOTOROOM_BG_HEARTBEAT_SECONDS"):
            ServiceSettings.from_env(
                {"PHOTOROOM_BG_HEARTBEAT_SECONDS": heartbeat, "PHOTOROOM_BG_LEASE_SECONDS": lease}
            )
    assert ServiceSettings.from_env({"PHOTOROOM_BG_HEARTBEAT_SECONDS": "30"}).lease_seconds == 60
    # given from Python: a fraction or a bool is no count; a URL longer-lived than S3 signs
    for setting in [
        {"concurrency": 2**63},
        {"timeout": 10**5000},  # no float holds it: each request's client refuses it
        {"photoroom_requests_per_minute": -(10**5000)},
        {"concurrency": 2.5},
        {"max_images_per_job": True},
        {"max_retries": 1.5},
        {"url_expires": 8 * 24 * 3600},
        # a string is truthy whatever it says: "false" served an open address without tokens
        {"allow_unauthenticated": "false"},
        {"prefect_deferred": "no"},
        # the wrong type failed with a bare TypeError, or was taken and failed later
        {"sink": 5},
        {"base_url": 5},
        {"api_key": 5},
        {"state_dir": None},
        {"state_dir": "state\x00"},  # a bare ValueError when the service started
        {"replica_id": 5},
        {"lease_seconds": "5"},
        {"photoroom_requests_per_minute": "5"},
        {"tokens": 5},
        {"tokens": None},
        {"allow_networks": 5},
    ]:
        (name,) = setting
        with pytest.raises(ConfigurationError, match=name):
            ServiceSettings(**setting)
    with pytest.raises(ConfigurationError, match="PHOTOROOM_BG_EXECUTOR"):
        make_executor(_context(ServiceSettings(executor="nope")))


def test_an_open_address_without_tokens_is_refused() -> None:
    open_settings = ServiceSettings()
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        check_bind(open_settings, host)
    for host in ("0.0.0.0", "::", "192.0.2.10", "example.com"):
        with pytest.raises(ConfigurationError, match="without tokens"):
            check_bind(open_settings, host)
    check_bind(ServiceSettings(tokens=("t",)), "0.0.0.0")
    check_bind(ServiceSettings(allow_unauthenticated=True), "0.0.0.0")


def test_tokens_set_but_naming_none_are_refused(tmp_path: Path) -> None:
    # each turned authentication off where tokens were meant (a key file never filled in
    # left the service with no key either)
    empty = tmp_path / "tokens"
    empty.write_text("\n")
    for env, said in [
        ({"PHOTOROOM_BG_TOKENS": ","}, "PHOTOROOM_BG_TOKENS=',' names no token"),
        ({"PHOTOROOM_BG_TOKENS_FILE": str(empty)}, f"PHOTOROOM_BG_TOKENS_FILE={empty} names"),
        ({"PHOTOROOM_API_KEY_FILE": str(empty)}, f"PHOTOROOM_API_KEY_FILE={empty} names"),
    ]:
        with pytest.raises(ConfigurationError, match=re.escape(said)):
            ServiceSettings.from_env(env)
    assert not ServiceSettings.from_env({"PHOTOROOM_BG_TOKENS": " "}).auth_required  # unset


def test_serve_command_refuses_an_open_address_before_binding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("PHOTOROOM_BG_TOKENS", "PHOTOROOM_BG_TOKENS_FILE"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--port", "1"])
    assert result.exit_code == 2
    assert "without tokens" in result.output


def test_python_m_photoroom_bg_service_is_the_serve_command() -> None:
    answer = subprocess.run(
        [sys.executable, "-m", "photoroom_bg.service", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "--workers" in answer.stdout


# -- auth and rate limit ---------------------------------------------------------------------


def test_tokens_are_checked_and_owners_are_hashes() -> None:
    auth = TokenAuth(("alpha-token", "beta-token"))
    owner = auth.owner("Bearer alpha-token")
    assert owner.startswith("sha256:")
    assert "alpha-token" not in owner
    assert auth.owner("bearer beta-token") != owner
    for header in (None, "", "Bearer", "Basic alpha-token", "Bearer alpha-tokenX"):
        with pytest.raises(Problem) as refused:
            auth.owner(header)
        assert refused.value.status == 401
    assert TokenAuth(()).owner(None) == ANONYMOUS


def test_rate_limit_answers_429_with_retry_after_then_recovers() -> None:
    limiter = RateLimiter(3)
    for second in range(3):
        limiter.admit("caller", now=100.0 + second)
    with pytest.raises(Problem) as limited:
        limiter.admit("caller", now=110.0)
    assert limited.value.status == 429
    assert limited.value.headers["Retry-After"] == "50"
    limiter.admit("someone-else", now=110.0)
    limiter.admit("caller", now=161.0)


# -- problem codes ---------------------------------------------------------------------------


def test_every_sdk_error_has_a_mapping_and_the_documented_ones_hold() -> None:
    for name in errors.__all__:
        assert isinstance(getattr(errors, name), type)
        assert name in PROBLEM_CODES, name
    cases = {
        errors.InvalidImageError("bad"): (422, "invalid_image"),
        errors.UnsafeURLError("refused"): (422, "unsafe_url"),
        errors.OutOfCreditsError("no credits", status_code=402): (503, "photoroom_out_of_credits"),
        errors.RateLimitError("slow down", retry_after=2.5): (503, "photoroom_rate_limited"),
        errors.APITimeoutError(): (504, "photoroom_timeout"),
        errors.StorageFullError("full"): (507, "storage_full"),
    }
    for error, (status, code) in cases.items():
        problem = problem_for(error)
        assert (problem.status, problem.code) == (status, code)
    assert problem_for(errors.RateLimitError("x", retry_after=2.5)).headers["Retry-After"] == "3"
    codes = [c for _, c, _ in PROBLEM_CODES.values()]
    assert codes.count("photoroom_out_of_credits") == 1


def test_a_storage_error_tells_callers_no_folder_bucket_or_endpoint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    where = "/srv/photoroom-bg/outputs under http://minio.internal:9000 bucket secret-cutouts"
    for error in (
        errors.ObjectNotFoundError(f"no object 'outputs/a.png' under {where}"),
        errors.StorageFullError(f"no space left writing {where}"),
        errors.StorageUnavailableError(f"cannot reach {where}"),
        errors.StorageError(f"failed at {where}"),
    ):
        with caplog.at_level(logging.WARNING, logger="photoroom_bg.service"):
            problem = problem_for(error)
        assert problem.detail
        assert where not in problem.detail, problem.detail
        assert where in caplog.text  # the operator still reads what happened
        caplog.clear()


def test_a_job_item_failed_by_the_storage_names_no_location() -> None:
    where = "/srv/photoroom-bg/outputs"
    result = JobResult(
        0,
        "https://example.com/a.png",
        "a",
        JobStatus.FAILED,
        error=errors.StorageFullError(f"no space left writing {where}/a.png"),
    )
    item = item_from_result(result)
    assert item["error"]["code"] == "storage_full"
    assert where not in json.dumps(item)
    assert item["error"]["message"] == "the service's storage is full; its operator must make room"


def test_an_error_class_added_later_maps_through_its_base() -> None:
    class QuotaError(errors.OutOfCreditsError):
        pass

    assert problem_for(QuotaError("q", status_code=402)).code == "photoroom_out_of_credits"
    assert error_code("SomethingNew") == "internal_error"
    assert error_code("SourceTooLargeError") == "source_too_large"


# -- serialization ---------------------------------------------------------------------------


def test_items_from_results_and_from_manifests_look_the_same() -> None:
    result = JobResult(
        3, "https://example.com/a.png", "a", JobStatus.FAILED, error=errors.UnsafeURLError("no")
    )
    live = item_from_result(result)
    from photoroom_bg.batch._manifest import job_fields

    stored = item_from_record({"v": 1, "time": 1.0, "engine": "photoroom", **job_fields(result)})
    assert live["error"]["code"] == stored["error"]["code"] == "unsafe_url"
    assert {k: v for k, v in live.items() if k != "error"} == {
        k: v for k, v in stored.items() if k != "error"
    }
    assert "engine" not in stored


def test_statuses_and_fields_added_later_pass_through() -> None:
    item = item_from_record(
        {"index": 0, "status": "kept_locally", "key": "outputs/a.png", "local_path": "/x"}
    )
    assert item["status"] == "kept_locally"
    assert item["stored"] is False  # only known stored statuses are downloadable
    assert item["local_path"] == "/x"

    @attrs.frozen
    class LaterReport(BatchReport):
        possibly_billed_count: int = 0

    report = LaterReport(
        total_count=1,
        stored_count=0,
        succeeded_count=0,
        skipped_count=0,
        failed_count=1,
        cancelled_count=0,
        failures={"X": ()},
        failure_counts={"X": 1},
        billed_calls=0,
        credits_spent=None,
        stop_reason=None,
        duration=0.5,
        possibly_billed_count=1,
    )
    data = report_json(report)
    assert data["possibly_billed_count"] == 1
    assert "failures" not in data
    assert data["failure_counts"] == {"X": 1}


# -- records and claims ----------------------------------------------------------------------


def test_job_records_round_trip_and_ignore_members_from_newer_versions() -> None:
    record = JobRecord(job_id="a" * 32, owner="sha256:x", created=1.0, image_count=2, options={})
    data = record.to_json().replace(b'"v": 1,', b'"v": 2, "shard_count": 4,')
    again = JobRecord.from_json(data)
    assert again == record
    assert again.manifest_key == f"jobs/{'a' * 32}/manifest.jsonl"


def test_a_claim_is_exclusive_until_released_and_orphans_are_found(tmp_path: Path) -> None:
    job = "b" * 32
    first, second = LocalClaims(tmp_path), LocalClaims(tmp_path)
    first.prepare()
    assert first.claim(job)
    assert not second.claim(job)  # another holder (here: another open file) is alive
    assert second.orphans() == [job]  # listed, but claim() tells who may run it
    first.release(job, finished=False)
    assert second.claim(job)
    second.release(job, finished=True)
    assert first.orphans() == []


def test_executors_are_chosen_by_name() -> None:
    class Elsewhere:
        name = "elsewhere"
        in_process = False

        def __init__(self, context: ExecutorContext) -> None:
            self.context = context

    EXECUTORS["elsewhere"] = Elsewhere  # type: ignore[assignment]
    try:
        executor = make_executor(_context(ServiceSettings(executor="elsewhere")))
        assert isinstance(executor, Elsewhere)
    finally:
        del EXECUTORS["elsewhere"]


def _context(settings: ServiceSettings) -> ExecutorContext:
    return ExecutorContext(settings=settings, sink=MemorySink(), client=None, reader=SourceReader())


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient")
def test_the_router_works_inside_another_app(tmp_path: Path) -> None:
    """Its lifespan opens the service's state; its errors are problems without handlers."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from photoroom_bg.service import create_router

    app = FastAPI()
    settings = ServiceSettings(sink="memory://", state_dir=str(tmp_path), tokens=("t0ken",))
    app.include_router(create_router(settings), prefix="/backgrounds")
    with TestClient(app) as client:
        ready = client.get("/backgrounds/health/ready")
        assert ready.status_code == 503  # no Photoroom key: the engine check says so
        assert ready.json()["checks"]["engine"]["ok"] is False
        assert ready.json()["checks"]["sink"]["ok"] is True
        refused = client.get("/backgrounds/api/v2/remove-backgrounds/" + "0" * 32)
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        missing = client.get(
            "/backgrounds/api/v2/remove-backgrounds/" + "0" * 32,
            headers={"Authorization": "Bearer t0ken"},
        )
        assert missing.json()["code"] == "job_not_found"
        # the page's own URLs were absolute: under the prefix its script, its style sheet
        # and the job it starts were 404s
        page_url = "http://testserver/backgrounds/"
        page = client.get(page_url, headers={"Accept": "text/html"}).text
        script = client.get("/backgrounds/static/app.js").text
        linked = re.findall(r'(?:href|src)="(static/[^"]+|/[^"]*)"', page)
        fetched = re.findall(r'fetch\("([^"]+)"', script)
        assert len(linked) == 2, linked
        assert len(fetched) == 2, fetched
        for url in linked + fetched:
            answer = client.get(urllib.parse.urljoin(page_url, url), headers={"Accept": "*/*"})
            assert answer.status_code in (200, 401, 405), (url, answer.status_code)


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient")
def test_cors_allows_only_the_configured_origins(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from photoroom_bg.service import create_app

    settings = ServiceSettings(
        sink="memory://", state_dir=str(tmp_path), cors_origins=("https://shop.example",)
    )
    with TestClient(create_app(settings)) as client:
        allowed = client.get("/health", headers={"Origin": "https://shop.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
        other = client.get("/health", headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers
    # a page could not read a 429's Retry-After, nor a ZIP's counts: not exposed
    exposed = allowed.headers["access-control-expose-headers"].lower().split(", ")
    for name in ("retry-after", "x-success-count", "x-failed-count", "content-disposition"):
        assert name in exposed


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient")
def test_readiness_fails_with_detail_when_the_sink_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    # credentials in the environment, so botocore never asks the cloud metadata address
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-key-never-shown")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    from photoroom_bg.service import create_app

    with socket.socket() as closed:  # a loopback port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings = ServiceSettings(
        api_key="k",
        sink="s3://bucket/prefix",
        s3_endpoint_url=f"http://127.0.0.1:{port}",
        state_dir=str(tmp_path),
    )
    with TestClient(create_app(settings)) as client:
        ready = client.get("/health/ready")
    gc.collect()  # a storage client left open by the failed probe would be reported here
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["sink"]["ok"] is False
    assert checks["sink"]["code"].startswith("storage_")
    assert checks["engine"]["ok"] is True
    assert "test-secret-key-never-shown" not in ready.text
    for private in (f"127.0.0.1:{port}", "bucket", "prefix"):
        assert private not in ready.text


def test_readiness_names_none_of_the_services_folders(tmp_path: Path) -> None:
    # the sink's error text was the detail, for anyone (the check needs no token): "cannot
    # write 'health/...' under /srv/data: /srv/data cannot be the sink's folder: ... a file"
    from fastapi.testclient import TestClient

    from photoroom_bg.service import create_app

    folder = tmp_path / "private-sink-folder"
    settings = ServiceSettings(api_key="k", sink=str(folder), state_dir=str(tmp_path / "s"))
    with TestClient(create_app(settings)) as client:
        if folder.is_dir():
            folder.rmdir()
        folder.write_text("not a folder any more")
        ready = client.get("/health/ready")
    assert ready.status_code == 503
    sink = ready.json()["checks"]["sink"]
    assert sink["ok"] is False
    assert sink["detail"] == "the service's storage failed; its log says why"
    assert "private-sink-folder" not in ready.text


def test_a_job_knows_its_total_and_eta_before_the_batch_has_listed_every_source() -> None:
    from photoroom_bg.batch import Progress
    from photoroom_bg.service._serialize import progress_json

    listing = Progress(
        total=None,
        pending=8,
        running=8,
        succeeded=40,
        skipped=0,
        failed=0,
        cancelled=0,
        elapsed=10.0,
        rate=4.0,
        eta=None,
    )
    data = progress_json(listing, expected_total=100)
    assert data["total"] == 100
    assert data["eta"] == 15.0  # 60 images left at 4 a second
    assert progress_json(listing)["eta"] is None


class OneJob:
    """An in-process executor running one live job (it starts nothing)."""

    name = "local"
    in_process = True

    def __init__(self, job: Any) -> None:
        self.job = job

    def live(self, wanted: str) -> Any:
        return self.job if wanted == self.job.job_id else None

    async def records(self, wanted: str) -> None:
        return None  # its records are in this host's manifest

    def running(self) -> list[str]:
        return [self.job.job_id]

    async def cancel(self, wanted: str) -> bool:
        return False


async def test_a_heartbeat_never_writes_running_over_a_jobs_end(tmp_path: Path) -> None:
    """The heartbeat loads a running job's record and saves it with fresh progress; if the
    job ends in between, its "completed" record must be the one that stays."""
    import asyncio

    from photoroom_bg.service import JobService, JobStore, LiveJob

    job_id = "c" * 32
    sink = MemorySink()
    store = JobStore(sink)
    live = LiveJob(job_id, 1)
    claims = LocalClaims(tmp_path)
    claims.prepare()
    service = JobService(ServiceSettings(), store, claims, OneJob(live))  # type: ignore[arg-type]
    await store.save(JobRecord(job_id=job_id, owner="o", created=1.0, image_count=1, options={}))
    in_save, go_on = asyncio.Event(), asyncio.Event()
    save = store.save

    async def slow_save(record: JobRecord) -> None:
        if record.state == "running":  # the heartbeat's write
            in_save.set()
            await go_on.wait()
        await save(record)

    store.save = slow_save  # type: ignore[method-assign]
    beat = asyncio.create_task(service._beat(job_id))
    await asyncio.wait_for(in_save.wait(), 10)
    live.end(None, None)
    ended = asyncio.create_task(service._ended(live))
    for _ in range(20):  # let the end run as far as it can
        await asyncio.sleep(0)
    go_on.set()
    await asyncio.wait_for(asyncio.gather(beat, ended), 10)
    record = await store.load(job_id)
    assert record is not None
    assert record.state == "completed"


class RecordingExecutor:
    """An executor that runs nothing and records the jobs it was asked to start or follow."""

    def __init__(self, name: str, *, in_process: bool) -> None:
        self.name = name
        self.in_process = in_process
        self.started: list[str] = []
        self.followed: list[str] = []

    async def start(self, spec: object, on_end: object) -> None:
        self.started.append(str(getattr(spec, "job_id", "")))

    async def follow(self, spec: object, on_end: object) -> None:
        self.followed.append(str(getattr(spec, "job_id", "")))

    def live(self, job_id: str) -> None:
        return None

    def running(self) -> list[str]:
        return []


async def test_jobs_of_an_executor_running_elsewhere_are_never_taken_over(tmp_path: Path) -> None:
    """Only in-process jobs are claimed and resumed by the service; a job that another
    executor runs stays with it, however old its record looks."""
    from photoroom_bg.service import JobService, JobStore

    remote = RecordingExecutor("remote", in_process=False)
    started, followed = remote.started, remote.followed
    store = JobStore(MemorySink())
    claims = LocalClaims(tmp_path)
    claims.prepare()
    settings = ServiceSettings(lease_seconds=0.001, heartbeat_seconds=0.0005, replica_id="here")
    service = JobService(settings, store, claims, remote)  # type: ignore[arg-type]
    options = {"kind": "segment", "fields": {}}
    record = await service.create("owner", [{"kind": "url", "url": "https://x/y.png"}], options)
    assert started == [record.job_id]
    assert claims.orphans() == []  # nothing claimed on this host
    record.updated = 0.0
    await store.sink.put(f"jobs/{record.job_id}/job.json", record.to_json())
    again = await service.get("owner", record.job_id)
    assert again.state == "running"
    assert started == [record.job_id]  # not started a second time,
    assert followed == [record.job_id]  # but watched by the replica asked about it
    assert await service.resume_orphans() == []


async def test_a_job_of_another_executor_is_never_resumed_by_this_one(tmp_path: Path) -> None:
    """Switching PHOTOROOM_BG_EXECUTOR with jobs unfinished: the new executor does not run
    them (their items live where the old one keeps them; running them again would pay)."""
    from photoroom_bg.service import JobRecord, JobService, JobStore

    other = RecordingExecutor("prefect", in_process=True)
    started = other.started
    store = JobStore(MemorySink())
    claims = LocalClaims(tmp_path)
    claims.prepare()
    settings = ServiceSettings(replica_id="here")
    job_id = "a" * 32
    await store.save_sources(job_id, [{"kind": "url", "url": "https://x/y.png"}])
    await store.save(
        JobRecord(
            job_id=job_id,
            owner="o",
            created=1.0,
            image_count=1,
            options={"kind": "segment", "fields": {}},
            replica="here",
            executor="local",
        )
    )
    assert claims.claim(job_id)
    claims.release(job_id, finished=False)  # its process died
    service = JobService(settings, store, claims, other)  # type: ignore[arg-type]
    assert await service.resume_orphans() == []
    assert await service.get("o", job_id) is not None  # asked about: still not taken over
    assert started == []
    record = await store.load(job_id)
    assert record is not None
    assert record.state == "running"


async def test_an_item_the_batch_reported_is_stored_before_its_manifest_line_is_written(
    tmp_path: Path,
) -> None:
    """The event stream announces an item (with its output URL) from the batch's live result;
    the batch's manifest writer puts the same record on disk a moment later. A client that
    follows the URL at once must get the cut-out, not "item 1 is pending"."""
    from photoroom_bg import JobResult, JobStatus, StoredObject
    from photoroom_bg.service import JobService, JobStore, LiveJob

    job_id = "d" * 32
    live = LiveJob(job_id, 2)
    claims = LocalClaims(tmp_path)
    claims.prepare()
    service = JobService(ServiceSettings(), JobStore(MemorySink()), claims, OneJob(live))  # type: ignore[arg-type]
    record = JobRecord(job_id=job_id, owner="o", created=1.0, image_count=2, options={})
    key = "outputs/a-0123456789ab.png"
    stored = StoredObject(key=key, size=3, content_type="image/png", checksum="c", uri="u", url="u")
    live.add_result(JobResult(0, "a.png", "a", JobStatus.SUCCEEDED, key=key, output=stored))
    assert not claims.manifest_path(job_id).exists()  # the writer has not caught up
    first, second = await service.items(record)
    assert (first["status"], first["stored"], first["key"]) == ("succeeded", True, key)
    assert second["status"] == "pending"
    line = json.dumps({"index": 0, "status": "succeeded", "key": key})
    claims.manifest_path(job_id).write_text(line + "\n")  # it has now: the same item, once
    assert [item["status"] for item in await service.items(record)] == ["succeeded", "pending"]


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient")
@pytest.mark.parametrize("failure", ["full", "refused"])
def test_a_zip_that_cannot_be_written_is_a_storage_problem_not_a_bug(
    tmp_path: Path,
    images: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failure: str,
) -> None:
    # a full (or unwritable) temporary folder under a v1 ZIP answered 500 "Unexpected error",
    # logged as a bug with its traceback: the operator was not told to make room (the
    # cut-outs are paid for: a retry after that finds them among the recent outputs)
    import errno
    import tempfile
    import zipfile

    from fastapi.testclient import TestClient

    from photoroom_bg.service import create_app
    from photoroom_bg.testing import PhotoroomEmulator

    from ..disks import fill, small_disk

    def refused(*args: Any, **kwargs: Any) -> None:  # root is never refused for real
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    emulator = PhotoroomEmulator(credits=10)
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(emulator.serve())
        settings = app_settings(tmp_path, url, emulator.api_key)
        client = stack.enter_context(
            TestClient(create_app(settings), raise_server_exceptions=False)
        )
        temporary = tmp_path / "temporary"
        if failure == "full":  # a real file system with no room left
            stack.enter_context(small_disk(temporary, "256k"))
            fill(temporary)
        else:
            temporary.mkdir()
            monkeypatch.setattr(zipfile.ZipFile, "writestr", refused)
        monkeypatch.setattr(tempfile, "tempdir", str(temporary))
        request: dict[str, Any] = {
            "json": {"image_urls": [images.image(51)]},
            "headers": {"Authorization": "Bearer t0ken", "Accept": "application/zip"},
        }
        answer = client.post("/api/v1/remove-backgrounds", **request)
        left = sorted(p.name for p in temporary.iterdir())
        monkeypatch.undo()  # room made: the caller's retry gets the ZIP, paid for once
        again = client.post("/api/v1/remove-backgrounds", **request)
    assert again.status_code == 200
    assert again.headers["X-Success-Count"] == "1"
    assert emulator.ledger.calls() == 1
    if failure == "full":
        assert (answer.status_code, answer.json()["code"]) == (507, "storage_full"), answer.text
    else:
        assert (answer.status_code, answer.json()["code"]) == (503, "storage_unavailable")
    assert str(temporary) not in answer.text  # the folder is for the operator's log
    assert not [r for r in caplog.records if r.levelname == "ERROR"]  # no bug was logged
    told = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"the ZIP in the temporary folder {temporary}" in line for line in told), told
    assert left == (["filler"] if failure == "full" else [])  # no half ZIP left behind


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient")
def test_an_upload_that_cannot_be_spooled_is_a_storage_problem_not_a_bug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # a large upload goes to a temporary file while the form is read: a full temporary
    # folder answered 500 "Unexpected error", logged as a bug, and nothing told the operator
    import errno
    from tempfile import SpooledTemporaryFile

    from fastapi.testclient import TestClient

    from photoroom_bg.service import create_app
    from photoroom_bg.testing import PhotoroomEmulator

    class FullSpool(SpooledTemporaryFile):  # type: ignore[type-arg]
        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    emulator = PhotoroomEmulator(credits=10)
    with emulator.serve() as url:
        settings = app_settings(tmp_path, url, emulator.api_key)
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            monkeypatch.setattr("starlette.formparsers.SpooledTemporaryFile", FullSpool)
            answer = client.post(
                "/api/v1/remove-background",
                files={"image_file": ("shoe.png", b"\x89PNG" + bytes(1000), "image/png")},
                headers={"Authorization": "Bearer t0ken"},
            )
    assert answer.status_code == 507, answer.text
    assert answer.json()["code"] == "storage_full"
    assert not [r for r in caplog.records if r.levelname == "ERROR"]  # no bug was logged
    told = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("an upload in the temporary folder" in line for line in told), told
    assert emulator.ledger.calls() == 0


#: JSON that ``json.loads`` cannot read although it is well formed: nested past the parser's
#: recursion (a ``RecursionError``), and an integer of more digits than Python converts
#: The service's POST endpoints; the results (the last) take no options
POST_PATHS = [
    "/api/v1/remove-background",
    "/api/v1/remove-backgrounds",
    "/api/v2/remove-backgrounds",
    "/api/v2/remove-backgrounds/results",
]

UNREADABLE_JSON = {"nested": "[" * 100_000 + "]" * 100_000, "digits": "1" * 5_000}


@contextlib.contextmanager
def mounted(tmp_path: Path) -> Iterator[tuple[Any, dict[str, str]]]:
    """A test client of an application's own app that mounts the router (so no handler of
    the service's app turns a bug into a problem), and the headers that authenticate."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from photoroom_bg.service import create_router

    app = FastAPI()
    settings = ServiceSettings(sink="memory://", state_dir=str(tmp_path), tokens=("t0ken",))
    app.include_router(create_router(settings))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, {"Authorization": "Bearer t0ken"}


#: An image URL of no server (loopback, port 9): the requests below are refused before it
#: could be fetched
NO_IMAGE = "http://127.0.0.1:9/x.png"


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient")
@pytest.mark.parametrize("kind", sorted(UNREADABLE_JSON))
def test_json_too_deep_or_too_long_to_read_is_a_422_on_every_endpoint(
    tmp_path: Path, kind: str
) -> None:
    """Such a body, or such an ``options`` field of a form, raised out of the body's parse
    as a bug: a 500 from the service's app, and from an application's own app that mounts
    the router, an error its handlers never see as the caller's."""
    text = UNREADABLE_JSON[kind]
    paths = POST_PATHS
    with mounted(tmp_path) as (client, auth):
        as_json = {**auth, "Content-Type": "application/json"}
        for path in paths:
            answers = [
                client.post(path, content=text, headers=as_json),
                client.post(
                    path,
                    content=f'{{"image_urls": ["{NO_IMAGE}"], "options": {text}}}',
                    headers=as_json,
                ),
            ]
            if path != paths[-1]:  # the results take no options
                form = {"image_url": NO_IMAGE, "options": text}
                answers.append(client.post(path, data=form, headers=auth))
            for answer in answers:
                assert answer.status_code == 422, (path, answer.text[:300])
                assert answer.headers["content-type"] == "application/problem+json"
                assert answer.json()["code"] == "invalid_request"


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient")
def test_a_declared_length_too_long_for_int_is_a_body_too_large(tmp_path: Path) -> None:
    """A server in front may pass on a Content-Length of thousands of digits: ``int()``
    refuses past 4,300 of them, and the cap's check raised that as a bug (a 500)."""
    with mounted(tmp_path) as (client, auth):
        for length in ("9" * 5_000, "9" * 21):
            answer = client.post(
                "/api/v1/remove-background",
                content=b"{}",
                headers={**auth, "Content-Type": "application/json", "Content-Length": length},
            )
            assert answer.status_code == 413, answer.text[:300]
            assert answer.json()["code"] == "body_too_large"


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient")
def test_json_text_no_utf8_can_carry_is_a_422_on_every_endpoint(tmp_path: Path) -> None:
    """A ``\\ud800`` escape is valid JSON syntax but no text: echoed in an answer it failed
    the answer's own encoding (a 500), after the request had been taken."""
    url = r"http://127.0.0.1:9/\ud800.png"  # the JSON escape, as a caller sends it
    bodies = [
        f'{{"image_urls": ["{url}"]}}',
        f'["{url}"]',
        f'{{"image_url": "{url}"}}',
        f'{{"image_urls": ["{NO_IMAGE}"], "options": {{"bg_color": "\\udfff"}}}}',
        f'{{"job_ids": ["\\ud83d"], "image_urls": ["{url}"]}}',
    ]
    paths = POST_PATHS
    with mounted(tmp_path) as (client, auth):
        as_json = {**auth, "Content-Type": "application/json"}
        for path in paths:
            answers = [client.post(path, content=body, headers=as_json) for body in bodies]
            if path != paths[-1]:
                field = "image_url" if path == paths[0] else "image_urls"
                form = {field: NO_IMAGE, "options": '{"bg_color": "\\ud800"}'}
                answers.append(client.post(path, data=form, headers=auth))
            for answer in answers:
                assert answer.status_code == 422, (path, answer.text[:300])
                assert answer.json()["code"] == "invalid_request", (path, answer.text[:300])
                assert "not text" in answer.json()["detail"]


def test_the_openapi_schema_shows_the_bodies_the_token_and_the_problems(tmp_path: Path) -> None:
    # the endpoints read their bodies themselves: the schema showed no body for any POST,
    # no way to authorize in /docs, and FastAPI's HTTPValidationError for a 422 where the
    # service answers application/problem+json (401, 404 and 429 not at all)
    from photoroom_bg.service import create_app

    app = create_app(ServiceSettings(sink="memory://", state_dir=str(tmp_path), api_key="k"))
    schema = app.openapi()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "HTTPValidationError" not in json.dumps(schema)
    start = schema["paths"]["/api/v2/remove-backgrounds"]["post"]
    content = start["requestBody"]["content"]
    assert "image_urls" in content["application/json"]["schema"]["properties"]
    assert "files" in content["multipart/form-data"]["schema"]["properties"]
    assert start["security"] == [{"HTTPBearer": []}]
    for status in ("401", "422", "429"):
        assert "application/problem+json" in start["responses"][status]["content"]
    one = schema["paths"]["/api/v1/remove-background"]["post"]["requestBody"]["content"]
    assert "image_file" in one["multipart/form-data"]["schema"]["properties"]
    job = schema["paths"]["/api/v2/remove-backgrounds/{job_id}"]["get"]
    assert "application/problem+json" in job["responses"]["404"]["content"]
    assert "security" not in schema["paths"]["/health"]["get"]
