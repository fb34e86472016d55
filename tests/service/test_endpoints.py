"""Every endpoint against a real uvicorn child, the emulator and a loopback image server."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from photoroom_bg.service._routes import MAX_URL_LENGTH
from photoroom_bg.testing import PhotoroomEmulator

from .live import ALICE, API_KEY, BOB, ImageServer, ServiceProcess, photo, poll


def wait_for_job(client: httpx.Client, job_id: str, **params: Any) -> dict[str, Any]:
    """Poll a job's status until it has finished; return the last answer."""
    params.setdefault("limit", 1000)

    def finished() -> dict[str, Any] | None:
        body = client.get(f"/api/v2/remove-backgrounds/{job_id}", params=params).json()
        return body if body["status"] != "running" else None

    return poll(finished, timeout=90, what=f"job {job_id} to finish")


def is_cutout(data: bytes) -> bool:
    """A PNG with transparent pixels (the emulator's cut-outs are)."""
    image = Image.open(io.BytesIO(data))
    return image.format == "PNG" and image.mode == "RGBA" and image.getextrema()[3][0] == 0


# -- the page, status and health -------------------------------------------------------------


def test_root_serves_the_page_to_browsers_and_json_to_clients(service: ServiceProcess) -> None:
    page = httpx.get(service.url + "/", headers={"Accept": "text/html,*/*;q=0.8"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "static/app.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    status = httpx.get(service.url + "/")  # the original service's JSON status
    assert status.json()["status"] == "ok"
    assert status.json()["auth_required"] is True
    for name in ("app.js", "app.css"):
        assert httpx.get(f"{service.url}/static/{name}").status_code == 200
    assert httpx.get(f"{service.url}/static/..%2f_app.py").status_code == 404


def test_health_is_instant_and_ready_checks_sink_and_engine(service: ServiceProcess) -> None:
    assert httpx.get(service.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(service.url + "/health/ready")
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert checks["sink"]["ok"]
    assert checks["engine"]["ok"]
    assert checks["executor"]["ok"]


# -- v1: one image ---------------------------------------------------------------------------


def test_v1_single_url_returns_the_cutout_bytes(
    service: ServiceProcess, images: ImageServer
) -> None:
    with service.client() as client:
        answer = client.post("/api/v1/remove-background", json={"image_url": images.image(1)})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png"
    assert "background_removed.png" in answer.headers["content-disposition"]
    assert is_cutout(answer.content)


def test_v1_single_upload_with_options_sets_the_content_type(service: ServiceProcess) -> None:
    with service.client() as client:
        answer = client.post(
            "/api/v1/remove-background",
            files={"image_file": ("shoe.png", photo(2), "image/png")},
            data={"options": json.dumps({"format": "webp", "bg_color": "FFFFFF"})},
        )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(answer.content)).format == "WEBP"


def test_v1_single_store_returns_key_and_download_url(
    service: ServiceProcess, images: ImageServer, service_emulator: PhotoroomEmulator
) -> None:
    with service.client() as client:
        body = {"image_url": images.image(3), "store": True}
        first = client.post("/api/v1/remove-background", json=body).json()
        calls = service_emulator.ledger.calls()
        again = client.post("/api/v1/remove-background", json=body).json()
        assert service_emulator.ledger.calls() == calls  # stored before: not paid again
        assert first["status"] == "succeeded"
        assert again["status"] == "skipped"
        assert first["key"] == again["key"]
        assert first["key"].startswith("outputs/")
        assert first["presigned_url"] is None  # a folder sink has no http URL
        download = client.get(first["download_url"])
        assert download.status_code == 200
        assert is_cutout(download.content)
        # only output keys can be downloaded, never job records or uploads
        assert client.get("/api/v1/outputs/jobs/x/job.json").json()["code"] == "output_not_found"


def test_v1_the_same_image_stored_by_requests_at_once_is_paid_for_once(
    service: ServiceProcess, images: ImageServer, service_emulator: PhotoroomEmulator
) -> None:
    # each request ran a batch of its own: all of them looked the key up, found nothing
    # yet, and paid
    body = {"image_url": images.image(4), "store": True}

    async def at_once() -> list[Any]:
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(
                    httpx.AsyncClient(
                        base_url=service.url, timeout=60, headers={"Authorization": f"Bearer {who}"}
                    )
                )
                for who in (ALICE, BOB)  # a request is a job: two per token at once
            ]
            sent = [c.post("/api/v1/remove-background", json=body) for c in clients * 2]
            return [answer.json() for answer in await asyncio.gather(*sent)]

    calls = service_emulator.ledger.calls()
    answers = asyncio.run(at_once())
    assert service_emulator.ledger.calls() == calls + 1, answers
    assert sorted(a["status"] for a in answers) == ["skipped"] * 3 + ["succeeded"]
    assert len({a["key"] for a in answers}) == 1


# -- v1: a few images ------------------------------------------------------------------------


def test_v1_batch_is_never_all_or_nothing(service: ServiceProcess, images: ImageServer) -> None:
    urls = [images.image(10), f"{images.url}/missing.png", f"{images.url}/text.txt"]
    with service.client() as client:
        answer = client.post("/api/v1/remove-backgrounds", json={"image_urls": urls})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["total_count"], body["success_count"], body["failed_count"]) == (3, 1, 2)
    ok, missing, text = body["results"]
    assert ok["success"]
    assert ok["storage_url"]
    assert ok["url"] == urls[0]
    assert missing["error"]["code"] == "source_not_found"
    assert text["error"]["code"] == "invalid_image"
    with service.client() as client:
        assert is_cutout(client.get(ok["download_url"]).content)


def test_v1_batch_zip_has_the_cutouts_and_an_errors_file(
    service: ServiceProcess, images: ImageServer
) -> None:
    urls = [images.image(11), f"{images.url}/missing.png", images.image(12)]
    with service.client() as client:
        answer = client.post(
            "/api/v1/remove-backgrounds",
            json={"image_urls": urls},
            headers={"Accept": "application/zip"},
        )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(answer.content))
    names = sorted(archive.namelist())
    assert names == ["errors.json", "image_1_11.png", "image_3_12.png"]
    assert all(is_cutout(archive.read(n)) for n in names if n.endswith(".png"))
    errors = json.loads(archive.read("errors.json"))
    assert [(e["index"], e["error"]["code"]) for e in errors] == [(1, "source_not_found")]


def test_a_job_zip_lists_an_output_deleted_since_and_names_no_storage_location(
    service: ServiceProcess, images: ImageServer
) -> None:
    urls = [images.image(n) for n in (50, 51, 52)]
    with service.client() as client:
        job = client.post("/api/v2/remove-backgrounds", json={"image_urls": urls}).json()
        done = wait_for_job(client, job["job_id"])
        sink = Path(service.env["PHOTOROOM_BG_SINK"])
        (sink / done["items"][1]["key"]).unlink()  # expired or deleted from the sink since
        answer = client.get(job["zip_url"])
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Success-Count"] == "2"
        archive = zipfile.ZipFile(io.BytesIO(answer.content))
        assert sorted(n for n in archive.namelist() if n.endswith(".png")) == [
            "image_1_50.png",
            "image_3_52.png",
        ]
        errors = json.loads(archive.read("errors.json"))
        assert [(e["index"], e["error"]["code"]) for e in errors] == [(1, "output_not_found")]
        gone = client.get(done["items"][1]["output_url"])
        assert gone.status_code == 404
        assert gone.json()["code"] == "output_not_found"
        assert str(sink) not in gone.text  # the service's own folders are not the caller's


def test_v1_batch_caps_urls_per_request(service: ServiceProcess, images: ImageServer) -> None:
    with service.client() as client:
        answer = client.post(
            "/api/v1/remove-backgrounds", json={"image_urls": [images.image(i) for i in range(4)]}
        )
    assert answer.status_code == 422
    assert answer.json()["code"] == "too_many_urls"
    assert answer.headers["content-type"] == "application/problem+json"


# -- v2: jobs --------------------------------------------------------------------------------


def test_v2_job_runs_to_completion_with_per_item_status(
    service: ServiceProcess, images: ImageServer
) -> None:
    urls = [images.image(n) for n in range(20, 26)] + [f"{images.url}/missing.png"]
    with service.client() as client:
        started = client.post("/api/v2/remove-backgrounds", json={"image_urls": urls})
        assert started.status_code == 202, started.text
        job = started.json()
        assert job["status"] == "running"
        assert job["image_count"] == 7
        assert len(job["flow_ids"]) == 7
        done = wait_for_job(client, job["job_id"])
        assert done["status"] == "completed"
        assert done["counts"] == {"succeeded": 6, "failed": 1}, [
            (i["index"], i["status"], i["error"], i.get("reason")) for i in done["items"]
        ]
        assert done["report"]["total_count"] == 7
        assert done["eta_seconds"] == 0
        failed = client.get(job["status_url"], params={"status": "failed"}).json()
        assert [i["index"] for i in failed["items"]] == [6]
        assert failed["items"][0]["error"]["code"] == "source_not_found"
        page = client.get(job["status_url"], params={"offset": 2, "limit": 2}).json()
        assert [i["index"] for i in page["items"]] == [2, 3]
        assert page["page"]["next_offset"] == 4
        assert page["page"]["total"] == 7
        output = client.get(page["items"][0]["output_url"])
        assert output.status_code == 200
        assert is_cutout(output.content)
        archive = zipfile.ZipFile(io.BytesIO(client.get(job["zip_url"]).content))
        assert len([n for n in archive.namelist() if n.endswith(".png")]) == 6


def test_v2_an_unknown_status_filter_is_refused_and_several_are_taken(
    service: ServiceProcess, images: ImageServer
) -> None:
    urls = [images.image(n) for n in (40, 41)] + [f"{images.url}/missing.png"]
    with service.client() as client:
        job = client.post("/api/v2/remove-backgrounds", json={"image_urls": urls}).json()
        wait_for_job(client, job["job_id"])
        # a typo must not read as "nothing failed"
        typo = client.get(job["status_url"], params={"status": "failure"})
        assert typo.status_code == 422, typo.text
        assert typo.json()["code"] == "invalid_request"
        assert "'failure' is not an item status" in typo.json()["detail"]
        for params in ({"status": ["failed", "succeeded"]}, {"status": "failed, succeeded"}):
            both = client.get(job["status_url"], params=params).json()
            assert [i["index"] for i in both["items"]] == [0, 1, 2], params
            assert both["page"]["status"] == "failed,succeeded"
        one = client.get(job["status_url"], params={"status": "FAILED"}).json()
        assert [i["index"] for i in one["items"]] == [2]


def test_a_blank_or_non_string_entry_is_refused_by_its_position(
    service: ServiceProcess, images: ImageServer
) -> None:
    urls = [images.image(42), " ", images.image(43)]
    with service.client() as client:
        for path in ("/api/v1/remove-backgrounds", "/api/v2/remove-backgrounds"):
            # dropping it would report the third image as the second
            answer = client.post(path, json={"image_urls": urls})
            assert answer.status_code == 422, (path, answer.text)
            assert answer.json()["detail"].startswith("image_urls[1]: empty"), answer.text
        wrong = client.post("/api/v2/remove-backgrounds/results", json={"job_ids": ["x", 5]})
        assert wrong.status_code == 422
        assert wrong.json()["detail"] == "job_ids[1]: a job or item id is a string, not a number"
        listed = client.post("/api/v1/remove-background", json=[{"image_url": images.image(1)}])
        assert listed.status_code == 422
        assert listed.json()["detail"] == "image_urls[0]: a URL is a string, not an object"


def test_v2_upload_job_and_results_by_id_in_the_original_shape(service: ServiceProcess) -> None:
    files = [("files", (f"p{n}.png", photo(n), "image/png")) for n in (30, 31)]
    with service.client() as client:
        job = client.post("/api/v2/remove-backgrounds", files=files).json()
        wait_for_job(client, job["job_id"])
        ids = [*job["flow_ids"], "0" * 32, f"{job['job_id']}.9"]
        answer = client.post("/api/v2/remove-backgrounds/results", json={"flow_ids": ids})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["success_count"] == 2, body
        results = body["results"]
        assert results[job["flow_ids"][0]]["success"] is True
        assert results[job["flow_ids"][0]]["processed_url"]
        # unknown ids say so: never the original's "success false, error null" look-alike
        assert results["0" * 32]["status"] == "not_found"
        assert results[f"{job['job_id']}.9"]["error"]["code"] == "job_not_found"
        by_job = client.post("/api/v2/remove-backgrounds/results", json=[job["job_id"]]).json()
        assert by_job["total_count"] == 2
        assert by_job["success_count"] == 2


def test_outputs_of_uploads_with_brackets_or_accents_in_their_names_can_be_downloaded(
    service: ServiceProcess,
) -> None:
    # the download route took only [A-Za-z0-9._-] stems, where keys keep what safe_stem
    # keeps: "photo (2).png" and "café.png" were stored, and their links answered 404
    names = ["photo (2).png", "café.png", "l'été & co.png"]
    with service.client() as client:
        for n, name in enumerate(names):
            stored = client.post(
                "/api/v1/remove-background",
                files={"image_file": (name, photo(40 + n), "image/png")},
                data={"store": "true"},
            ).json()
            assert stored["key"].startswith(f"outputs/{name[:3]}"), stored
            answer = client.get(stored["download_url"])
            assert answer.status_code == 200, (stored["key"], answer.text)
            assert is_cutout(answer.content)


def test_an_item_id_whose_index_is_no_plain_number_is_not_found(service: ServiceProcess) -> None:
    # "²" passes str.isdigit() but not int(), and so do 5,000 digits (Python's limit): each
    # was a 500 for a caller naming an item of a job of theirs; "٠" read as item 0
    files = [("files", ("p.png", photo(32), "image/png"))]
    with service.client() as client:
        job_id = client.post("/api/v2/remove-backgrounds", files=files).json()["job_id"]
        wait_for_job(client, job_id)
        ids = [f"{job_id}.{index}" for index in ("\u00b2", "1" * 5_000, "\u0660", "-0", " 0")]
        answer = client.post("/api/v2/remove-backgrounds/results", json={"job_ids": ids})
        assert answer.status_code == 200, answer.text[:300]
        results = answer.json()["results"]
        assert sorted(results) == sorted(ids)
        assert {r["status"] for r in results.values()} == {"not_found"}
        whole = client.post("/api/v2/remove-backgrounds/results", json=[f"{job_id}.0"]).json()
        assert whole["results"][f"{job_id}.0"]["success"] is True


def test_v2_events_stream_every_item_then_done(
    service: ServiceProcess, images: ImageServer
) -> None:
    urls = [images.image(n) for n in range(40, 45)]
    with service.client() as client:
        job = client.post("/api/v2/remove-backgrounds", json={"image_urls": urls}).json()
        events: list[tuple[str, Any]] = []
        with client.stream("GET", job["events_url"]) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            event = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    events.append((event or "", json.loads(line[6:])))
    items = [data for name, data in events if name == "item"]
    assert sorted(i["index"] for i in items) == [0, 1, 2, 3, 4]
    assert all(i["stored"] and i["output_url"] for i in items)
    assert events[-1][0] == "done"
    assert events[-1][1]["status"] == "completed"


def test_v2_cancel_stops_starting_images(
    service: ServiceProcess, images: ImageServer, service_emulator: PhotoroomEmulator
) -> None:
    service_emulator.inject(*["stall"] * 0)  # no queued faults left from other tests
    urls = [f"{images.url}/img/{n}.png?slow" for n in range(100, 140)]
    with service.client() as client:
        job = client.post(
            "/api/v2/remove-backgrounds", json={"image_urls": urls, "options": {"size": "preview"}}
        ).json()
        cancelled = client.delete(job["status_url"])
        assert cancelled.status_code in (200, 202)
        done = wait_for_job(client, job["job_id"])
        assert done["status"] == "cancelled"
        assert done["counts"].get("cancelled", 0) > 0
        assert sum(done["counts"].values()) == 40
        # every input that never ran says so the same way, error code included, whether its
        # manifest has a line for it or the job ended before reaching it
        unstarted = client.get(job["status_url"], params={"status": "cancelled", "limit": 100})
        for item in unstarted.json()["items"]:
            assert item["error"]["code"] == "cancelled", item
            assert not item["stored"]
        assert client.delete(job["status_url"]).json()["status"] == "cancelled"


# -- auth ------------------------------------------------------------------------------------


def test_requests_without_or_with_a_wrong_token_are_refused(
    service: ServiceProcess, images: ImageServer
) -> None:
    body = {"image_url": images.image(50)}
    for token in (None, "wrong-token"):
        with service.client(token) as client:
            answer = client.post("/api/v1/remove-background", json=body)
        assert answer.status_code == 401
        assert answer.json()["code"] == "unauthorized"
        assert answer.headers["www-authenticate"].startswith("Bearer")
    with service.client(None) as client:
        assert client.get("/api/v2/remove-backgrounds/" + "0" * 32).status_code == 401


def test_a_job_is_visible_only_to_the_token_that_made_it(
    service: ServiceProcess, images: ImageServer
) -> None:
    with service.client(ALICE) as alice, service.client(BOB) as bob:
        job = alice.post("/api/v2/remove-backgrounds", json={"image_urls": [images.image(51)]})
        job_id = job.json()["job_id"]
        wait_for_job(alice, job_id)
        for method, path in (
            ("GET", f"/api/v2/remove-backgrounds/{job_id}"),
            ("DELETE", f"/api/v2/remove-backgrounds/{job_id}"),
            ("GET", f"/api/v2/remove-backgrounds/{job_id}/items/0/output"),
            ("GET", f"/api/v2/remove-backgrounds/{job_id}/events"),
            ("GET", f"/api/v2/remove-backgrounds/{job_id}/zip"),
        ):
            answer = bob.request(method, path)
            assert answer.status_code == 404, (method, path)
            assert answer.json()["code"] == "job_not_found"
        results = bob.post("/api/v2/remove-backgrounds/results", json={"job_ids": [job_id]})
        assert results.json()["results"][job_id]["status"] == "not_found"
        assert alice.get(f"/api/v2/remove-backgrounds/{job_id}").status_code == 200


# -- caps and refusals -----------------------------------------------------------------------


def test_caps_on_body_size_and_images_per_job(service: ServiceProcess, images: ImageServer) -> None:
    with service.client() as client:
        big = client.post(
            "/api/v2/remove-backgrounds",
            files={"files": ("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 2_000_000, "image/png")},
        )
        assert big.status_code == 413
        assert big.json()["code"] == "body_too_large"
        chunked = client.post(
            "/api/v2/remove-backgrounds",
            content=iter([b'{"image_urls": ["', b"x" * 1_100_000, b'"]}']),
            headers={"Content-Type": "application/json"},
        )
        assert chunked.status_code == 413
        many = client.post(
            "/api/v2/remove-backgrounds", json={"image_urls": [images.image(1)] * 41}
        )
        assert many.status_code == 422
        assert many.json()["code"] == "too_many_images"


def test_concurrent_jobs_per_token_are_capped(service: ServiceProcess, images: ImageServer) -> None:
    urls = [f"{images.url}/img/{n}.png" for n in range(200, 240)]
    with service.client(BOB) as client:
        jobs = [
            client.post("/api/v2/remove-backgrounds", json={"image_urls": urls}) for _ in range(3)
        ]
        statuses = [j.status_code for j in jobs]
        assert statuses[:2] == [202, 202]
        assert statuses[2] == 429
        assert jobs[2].json()["code"] == "too_many_jobs"
        assert "retry-after" in jobs[2].headers
        for job in jobs[:2]:
            client.delete(job.json()["status_url"])
            wait_for_job(client, job.json()["job_id"])


def test_only_http_urls_are_taken_from_callers(service: ServiceProcess) -> None:
    # the refusal quoted the URL whole, its password and query token too
    secret = "ftp://user:s3cret@127.0.0.1/y.png?token=t0ken"
    with service.client() as client:
        for url in ("/etc/passwd", "file:///etc/passwd", "s3://bucket/key.png", secret):
            answer = client.post("/api/v1/remove-background", json={"image_url": url})
            assert answer.status_code == 422, url
            assert answer.json()["code"] == "unsafe_url"
            job = client.post("/api/v2/remove-backgrounds", json={"image_urls": [url]})
            assert job.json()["code"] == "unsafe_url"
            for told in (answer.text, job.text):
                assert "s3cret" not in told
                assert "t0ken" not in told
        assert "ftp://127.0.0.1/y.png" in answer.json()["detail"]
        # "http:" without "//" is a local path to the SDK: these read (and walked, and
        # globbed) the service's own disk, "../" out of its folder included, and a missing
        # one answered source_not_found, which told whether a file is there
        for url in ("http:secret.png", "HTTPS:/../../etc/", "http:*", "https:x.png"):
            answer = client.post("/api/v1/remove-background", json={"image_url": url})
            assert (answer.status_code, answer.json()["code"]) == (422, "unsafe_url"), url
            batch = client.post("/api/v1/remove-backgrounds", json={"image_urls": [url]})
            assert (batch.status_code, batch.json()["code"]) == (422, "unsafe_url"), url
            job = client.post("/api/v2/remove-backgrounds", json={"image_urls": [url]})
            assert (job.status_code, job.json()["code"]) == (422, "unsafe_url"), url


def test_private_addresses_are_refused_before_any_connection(
    service: ServiceProcess, images: ImageServer
) -> None:
    port = images.url.rsplit(":", 1)[1]
    # loopback outside the allowed 127.0.0.1/32: refused by the SSRF guard, never fetched
    url = f"http://127.0.0.2:{port}/img/1.png"
    with service.client() as client:
        answer = client.post("/api/v1/remove-background", json={"image_url": url})
        assert answer.status_code == 422
        assert answer.json()["code"] == "unsafe_url"
        batch = client.post("/api/v1/remove-backgrounds", json={"image_urls": [url]}).json()
        assert batch["results"][0]["error"]["code"] == "unsafe_url"
        job = client.post("/api/v2/remove-backgrounds", json={"image_urls": [url]}).json()
        [item] = wait_for_job(client, job["job_id"])["items"]
        assert item["error"]["code"] == "unsafe_url"
    # the advice names the operator's setting, not an SDK argument no caller can pass
    for told in (answer.json()["detail"], batch["results"][0]["error"]["message"]):
        assert "allow a network with PHOTOROOM_BG_ALLOW_NETWORKS" in told
        assert "allow_private_networks" not in told
    assert item["error"]["message"] == answer.json()["detail"]


def test_invalid_options_and_bodies_are_problems(
    service: ServiceProcess, images: ImageServer
) -> None:
    with service.client() as client:
        for options in ({"size": "gigantic"}, {"extra_headers": {"x-api-key": "mine"}}):
            answer = client.post(
                "/api/v1/remove-background",
                json={"image_url": images.image(1), "options": options},
            )
            assert answer.status_code == 422
            assert answer.json()["code"] == "invalid_options"
        garbage = client.post(
            "/api/v1/remove-background",
            content=b"{nope",
            headers={"Content-Type": "application/json"},
        )
        assert garbage.status_code == 422
        assert garbage.json()["code"] == "invalid_request"
        assert client.get("/api/v2/remove-backgrounds/not-a-job").json()["code"] == "job_not_found"


def test_a_url_longer_than_the_cap_is_refused_briefly_as_an_invalid_source(
    service: ServiceProcess, images: ImageServer
) -> None:
    # no cap: a 5 MB image_url came back in a 5 MB problem, and ten of them to the v1 batch
    # in a 250 MB answer, each URL echoed five times
    long_url = f"{images.url}/img/{'a' * (MAX_URL_LENGTH + 1)}.png"
    with service.client() as client:
        answers = [
            client.post("/api/v1/remove-background", json={"image_url": long_url}),
            client.post("/api/v1/remove-backgrounds", json={"image_urls": [long_url] * 3}),
            client.post("/api/v2/remove-backgrounds", json={"image_urls": [long_url] * 3}),
            client.post("/api/v2/remove-backgrounds", data={"image_urls": long_url}),
        ]
        at_the_cap = f"{images.url}/img/1.png?pad={'b' * (MAX_URL_LENGTH - len(images.url) - 15)}"
        assert len(at_the_cap) == MAX_URL_LENGTH
        taken = client.post("/api/v1/remove-background", json={"image_url": at_the_cap})
    for answer in answers:
        assert answer.status_code == 422, answer.text[:300]
        assert answer.json()["code"] == "invalid_source"
        assert f"{MAX_URL_LENGTH:,} characters" in answer.json()["detail"]
        assert len(answer.content) < 1000
    assert taken.status_code == 200, taken.text[:300]


def test_too_many_or_malformed_uploads_get_the_documented_codes(
    service: ServiceProcess, images: ImageServer
) -> None:
    # a form over the file cap was a 400 "bad_request" with the form parser's words, where
    # as many URLs were a 422 "too_many_images"; two files to v1 were a 400 where a file and
    # a URL were a 422; a multipart body without a boundary was a 400 "bad_request", a code
    # the guide does not list
    png = photo(1)
    files = [("files", (f"{n}.png", png, "image/png")) for n in range(41)]
    two = [("image_file", (f"{n}.png", png, "image/png")) for n in range(2)]
    with service.client() as client:
        too_many = client.post("/api/v2/remove-backgrounds", files=files)
        two_files = client.post("/api/v1/remove-background", files=two)
        file_and_url = client.post(
            "/api/v1/remove-background",
            files=two[:1],
            data={"image_url": images.image(1)},
        )
        no_boundary = client.post(
            "/api/v1/remove-background",
            content=b"--x\r\n",
            headers={"Content-Type": "multipart/form-data"},
        )
        files_to_v1_batch = client.post("/api/v1/remove-backgrounds", files=two[:1])
    assert (too_many.status_code, too_many.json()["code"]) == (422, "too_many_images")
    assert "at most 40 images per job" in too_many.json()["detail"]
    for answer in (two_files, file_and_url):
        assert (answer.status_code, answer.json()["code"]) == (422, "invalid_request")
        assert "send exactly one image" in answer.json()["detail"]
    assert (no_boundary.status_code, no_boundary.json()["code"]) == (422, "invalid_request")
    assert (files_to_v1_batch.status_code, files_to_v1_batch.json()["code"]) == (
        422,
        "invalid_request",
    )


def test_every_field_and_the_zips_errors_show_a_callers_url_without_its_secrets(
    service: ServiceProcess, images: ImageServer
) -> None:
    # the v1 batch's "url" showed the caller's password and signature, while "source" and
    # "original_url" of the same item were redacted
    port = images.url.rsplit(":", 1)[1]
    made = f"http://user:SECRETPW@127.0.0.1:{port}/img/71.png?X-Amz-Signature=SECRETSIG1"
    missing = f"http://user:SECRETPW@127.0.0.1:{port}/nope.png?token=SECRETTOK#SECRETFRAG"
    told: list[str] = []
    with service.client() as client:
        batch = client.post("/api/v1/remove-backgrounds", json={"image_urls": [made, missing]})
        assert batch.status_code == 200, batch.text
        told.append(batch.text)
        [first, second] = batch.json()["results"]
        assert first["url"] == first["original_url"] == f"http://127.0.0.1:{port}/img/71.png"
        assert second["url"] == f"http://127.0.0.1:{port}/nope.png"
        zipped = client.post(
            "/api/v1/remove-backgrounds",
            json={"image_urls": [made, missing]},
            headers={"Accept": "application/zip"},
        )
        told.append(zipfile.ZipFile(io.BytesIO(zipped.content)).read("errors.json").decode())
        job = client.post("/api/v2/remove-backgrounds", json={"image_urls": [made, missing]})
        told.append(job.text)
        job_id = job.json()["job_id"]
        told.append(json.dumps(wait_for_job(client, job_id)))
        told.append(client.post("/api/v2/remove-backgrounds/results", json=[job_id]).text)
        told.append(client.get(f"/api/v2/remove-backgrounds/{job_id}/events").text)
        job_zip = client.get(f"/api/v2/remove-backgrounds/{job_id}/zip")
        told.append(zipfile.ZipFile(io.BytesIO(job_zip.content)).read("errors.json").decode())
    assert all(told)
    for text in told:
        assert "SECRET" not in text, text[:2000]


def test_a_token_in_the_query_string_never_reaches_the_access_log(
    service: ServiceProcess,
) -> None:
    # uvicorn's access log showed "POST /api/v1/remove-background?token=<the token> ..."
    secret = "tok-in-the-query-77c1d9e2"
    with service.client(token=None) as client:
        refused = client.post(
            f"/api/v1/remove-background?token={secret}&x=1", json={"image_url": "x"}
        )
        assert refused.status_code == 401
        assert client.get(f"/health?api_key={secret}").status_code == 200

    def logged() -> str | None:
        text = service.log_text()
        return text if "/health?api_key=" in text else None

    text = poll(logged, timeout=10, what="the access log lines")
    assert secret not in text
    assert '"POST /api/v1/remove-background?token=[redacted]&x=[redacted] HTTP/1.1" 401' in text


# -- upstream errors -------------------------------------------------------------------------


def test_upstream_errors_get_distinct_codes(
    service: ServiceProcess, images: ImageServer, service_emulator: PhotoroomEmulator
) -> None:
    account = service_emulator.ledger.accounts[API_KEY]
    with service.client() as client:
        saved, account.credits = account.credits, 0
        try:
            broke = client.post("/api/v1/remove-background", json={"image_url": images.image(60)})
        finally:
            account.credits = saved
        assert broke.status_code == 503
        assert broke.json()["code"] == "photoroom_out_of_credits"
        service_emulator.inject(*["429"] * 6)  # more than the service's retries
        limited = client.post("/api/v1/remove-background", json={"image_url": images.image(61)})
        assert limited.status_code == 503
        assert limited.json()["code"] == "photoroom_rate_limited"
        assert int(limited.headers["retry-after"]) >= 1
        service_emulator.inject("500")  # one: Photoroom may have billed it, it is not retried
        failing = client.post("/api/v1/remove-background", json={"image_url": images.image(62)})
        assert failing.status_code == 502
        assert failing.json()["code"] == "photoroom_server_error"
        service_emulator.inject("bill-garble")  # a 200 whose image is cut short
        spoiled = client.post("/api/v1/remove-background", json={"image_url": images.image(63)})
        assert spoiled.status_code == 502  # was a 200 with half a PNG
        assert spoiled.json()["code"] == "photoroom_bad_answer"
        assert "no usable image" in spoiled.json()["detail"]


def test_the_service_logs_its_own_events_at_the_level_it_was_given(
    service: ServiceProcess,
) -> None:
    """``--log-level info`` shows the service's own INFO lines, not only uvicorn's."""
    assert "photoroom-bg service ready (sink " in service.log_text()
    assert "executor local, auth on)" in service.log_text()


def test_the_api_key_never_leaves_the_service(service: ServiceProcess) -> None:
    """After every other test of the module: no response, log line or stored file has it."""
    with service.client() as client:
        for path in ("/", "/health/ready", "/openapi.json", "/static/app.js"):
            assert API_KEY not in client.get(path).text
        assert API_KEY not in client.get("/", headers={"Accept": "text/html"}).text
    assert API_KEY not in service.log_text()
    sink = service.env["PHOTOROOM_BG_SINK"]
    state = service.env["PHOTOROOM_BG_STATE_DIR"]
    from pathlib import Path

    for root in (Path(sink), Path(state)):
        for path in root.rglob("*"):
            if path.is_file():
                assert API_KEY.encode() not in path.read_bytes(), path
