"""A thousand images through every fault at once: nothing lost, nothing paid for unaccounted."""

from __future__ import annotations

import hashlib
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from photoroom_bg import (
    BatchRemover,
    JobStatus,
    PhotoroomEngine,
    RetryPolicy,
    S3Sink,
    _loop,
)
from photoroom_bg.errors import PhotoroomBGError
from photoroom_bg.testing import BILLED_FAULTS, Faults, PhotoroomEmulator

from ..s3server import S3Server
from ..tcpproxy import running_proxy
from .conftest import photo

IMAGES = 1000
FAULTS = {
    "429": 0.03,
    "500": 0.02,
    "502": 0.02,
    "503": 0.03,
    "reset": 0.02,
    "truncate": 0.02,
    "stall": 0.003,
    **{fault: 0.012 for fault in BILLED_FAULTS},
}


@pytest.mark.slow
def test_a_thousand_images_through_every_fault_cancels_and_a_sink_outage(
    s3_server: S3Server, s3_prefix: str, tmp_path: Path
) -> None:
    chance = random.Random(7)
    folder = tmp_path / "in"
    folder.mkdir()
    digests: dict[str, str] = {}  # input name -> sha256 of its bytes, as the ledger keys it
    for i in range(IMAGES):
        data = photo()
        (folder / f"p{i:04d}.png").write_bytes(data)
        digests[f"p{i:04d}"] = hashlib.sha256(data).hexdigest()
    faults = Faults(latency=(0.0, 0.01), rates=FAULTS, retry_after=0, stall_seconds=1.0, seed=11)
    emulator = PhotoroomEmulator(credits=100_000, faults=faults, image_work=False)
    host, port = s3_server.endpoint_url.rsplit("/", 1)[1].split(":")
    manifest = tmp_path / "run.jsonl"
    billed = possibly = 0
    runs: list[Any] = []
    with running_proxy((host, int(port))) as proxy, emulator.serve():
        sink = S3Sink(s3_prefix, **{**s3_server.sink_options(), "endpoint_url": proxy.url})
        client = emulator.async_client(timeout=0.5)  # a stall outlasts it: billed, then lost
        batch = BatchRemover(
            PhotoroomEngine(client), sink=sink, manifest=manifest, concurrency=32,
            requests_per_minute=None, max_retries=8, keep_results=True,
            retry_policy=RetryPolicy(initial_delay=0.01, max_delay=0.1, max_retry_after=0.1),
            sink_outage_budget=30, track_credits=False,
        )  # fmt: skip
        outage_done = False
        while True:
            handle = batch.submit(str(folder))
            cancel_after = chance.randrange(50, 400) if len(runs) < 3 else None
            for count, _ in enumerate(handle.as_completed(timeout=60), start=1):
                if not outage_done and len(runs) == 1 and count == 100:
                    proxy.cut()  # the bucket goes away for a moment, mid-run
                    threading.Timer(1.5, proxy.restore).start()
                    outage_done = True
                if cancel_after is not None and count == cancel_after:
                    handle.cancel("a random cancel")
            report = handle.wait(timeout=120)
            runs.append(report)
            billed += report.billed_calls
            possibly += report.possibly_billed_calls
            jobs = handle.results()
            if cancel_after is None:
                break
        _loop.run_sync(client.aclose())
        keys = _loop.run_sync(_list_keys(sink))
        _loop.run_sync(sink.aclose())
    assert outage_done
    assert len(runs) == 4
    final = runs[-1]
    # every input ended somewhere, and every failure is one of ours, typed
    assert final.total_count == IMAGES
    assert final.stored_count + final.failed_count + final.cancelled_count == IMAGES
    assert final.spilled_count == 0
    assert all(isinstance(job.error, PhotoroomBGError) for job in jobs if job.error)
    assert final.stored_count >= IMAGES - 2  # eight retries: failing all nine is rare
    # the money: the account was charged at least what the reports call billed, and at most
    # that plus what they call possibly billed
    charged = emulator.ledger.calls()
    assert billed <= charged <= billed + possibly
    assert charged > IMAGES  # the billed-then-lost faults did happen
    # no output the ledger billed was lost
    stored_stems = {key.rsplit("-", 1)[0] for key in keys}
    by_digest = {digest: name for name, digest in digests.items()}
    for digest in emulator.ledger.billed_per_image():
        assert by_digest[digest] in stored_stems
    assert sum(job.status is JobStatus.SUCCEEDED for job in jobs) + final.skipped_count >= 1


async def _list_keys(sink: S3Sink) -> list[str]:
    client = await sink._s3()  # the test reads the bucket back directly
    keys: list[str] = []
    paginator = client.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=sink.bucket, Prefix=sink.prefix):
        keys += [str(item["Key"])[len(sink.prefix) :] for item in page.get("Contents", [])]
    return keys
