"""The endpoints: the original service's paths and bodies, each a thin layer over BatchRemover."""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials

from .. import __version__
from .._images import sniff_format
from .._logs import get_logger
from .._redact import redact_url
from ..batch import JobResult, JobStatus
from ..errors import ObjectNotFoundError, PhotoroomBGError
from ..options import EditOptions, SegmentOptions
from ..sinks import Sink
from ..sources import ImageSource
from ._events import event_stream
from ._http import RequestBody, read_body
from ._openapi import A_FEW_IMAGES, A_JOB, JOB_PROBLEMS, ONE_IMAGE, PROBLEMS, RESULTS, bearer
from ._options import parse_options
from ._outputs import archive, ext, media
from ._problems import Problem, problem_for, storage_detail
from ._recent import RecentSession
from ._serialize import item_from_result
from ._state import ServiceState
from ._store import JobRecord

__all__ = ["add_routes"]

logger = get_logger("photoroom_bg.service")

# what the service's keys are: a stem as safe_stem() makes it (brackets, accents... but no
# separator, "%", space or control character: nothing that leaves outputs/) and a digest
_OUTPUT_KEY = re.compile(
    r"outputs/[^\x00-\x1f\x7f/\\?#%*:|\"<>\s]{1,160}-[0-9a-f]{12}\.(png|jpg|webp|avif)"
)
_ITEM_INDEX = re.compile(r"[0-9]{1,9}")
_STATIC = {"app.js": "text/javascript", "app.css": "text/css", "index.html": "text/html"}
#: The longest image URL taken from a caller, in characters (what browsers, servers and CDNs
#: commonly allow; presigned URLs fit well within it)
MAX_URL_LENGTH = 8192
_UPLOAD_EXT = {"png": "png", "jpeg": "jpg", "webp": "webp", "heic": "heic", "avif": "avif"}


def state_of(request: Request) -> ServiceState:
    """The running service's state (set by the router's lifespan)."""
    state = getattr(request.state, "photoroom_bg", None)
    if state is None:
        raise Problem(503, "not_started", "The service is starting", "try again shortly")
    return state  # type: ignore[no-any-return]


async def caller(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> str:
    """Authenticate the request and count it against the caller's rate limit."""
    state = state_of(request)
    owner = state.auth.owner(request.headers.get("authorization"))
    host = request.client.host if request.client else "unknown"
    state.limiter.admit(owner if state.auth.required else f"ip:{host}")
    return owner


Caller = Annotated[str, Depends(caller)]


def _check_urls(urls: list[str]) -> None:
    """Only http(s) URLs come from callers: a path, ``file:`` or ``s3://`` would read the
    service's own disk or buckets. Addresses are checked when fetched (SSRF guard)."""
    for url in urls:
        if len(url) > MAX_URL_LENGTH:  # echoed back, a 5 MB URL made a 5 MB answer
            raise Problem(
                422,
                "invalid_source",
                "The image URL is not valid",
                f"{redact_url(url[:200])[:100]!r}...: the URL is longer than "
                f"{MAX_URL_LENGTH:,} characters",
            )
        scheme, colon, rest = url.partition(":")
        # "http:a.png" (no "//") is no URL to the SDK but a path: it would read this disk
        if not colon or scheme.lower() not in ("http", "https") or not rest.startswith("//"):
            raise Problem(
                422,
                "unsafe_url",
                "The URL was refused",
                f"{redact_url(url)[:200]!r}: only http and https URLs "
                "(http://host/...) are accepted",
            )


async def _run(
    state: ServiceState,
    sources: list[Any],
    options: SegmentOptions | EditOptions,
    sink: Sink,
) -> list[JobResult]:
    """Run a small batch on this event loop; one result per source, in order."""
    results: list[JobResult] = []
    remover = state.context.remover(
        options,
        sink=sink,
        concurrency=min(state.settings.concurrency, max(1, len(sources))),
        on_result=results.append,
        keep_results=False,
        # what the sink or the recent outputs hold was paid for: a retry finds it there
        skip_existing=sink is state.sink or isinstance(sink, RecentSession),
    )
    # the batch outlives a request cancelled by a stopping server: its calls are paid for
    await state.outliving_request(remover.run(sources))
    return sorted(results, key=lambda r: r.index)


async def _urls_for(request: Request, state: ServiceState, key: str) -> dict[str, str | None]:
    """Where a stored output can be downloaded: through the service, and presigned."""
    presigned: str | None = None
    try:
        url = await state.sink.url(key, expires=state.settings.url_expires)
        presigned = url if url.startswith(("http://", "https://")) else None
    except PhotoroomBGError:
        presigned = None
    return {
        "download_url": str(request.url_for("download_output", key=key)),
        "presigned_url": presigned,
    }


#: The statuses an item can have, as ``?status=`` filters by them.
ITEM_STATUSES = tuple(status.value for status in JobStatus)


def _statuses(given: list[str] | None) -> tuple[str, ...] | None:
    """The item statuses a ``?status=`` filter names (repeated or comma-separated); a name
    that is not a status is refused, since it would match nothing and look like an empty
    answer."""
    if not given:
        return None
    names = [name.strip().lower() for text in given for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ITEM_STATUSES]
    if unknown:
        raise Problem(
            422,
            "invalid_request",
            "The request is not valid",
            f"status={','.join(unknown)[:200]!r} is not an item status; use "
            f"{', '.join(ITEM_STATUSES)} (several: status=failed,cancelled)",
        )
    return tuple(dict.fromkeys(names)) or None


def _one_source(body: RequestBody) -> Any:
    urls = body.urls("image_url", "image_urls")
    count = len(urls) + len(body.uploads)
    if count != 1:
        raise Problem(
            422,
            "invalid_request",
            "The request is not valid",
            f"send exactly one image (image_url or an image_file upload), not {count}",
        )
    if urls:
        _check_urls(urls)
        return urls[0]
    name, data = body.uploads[0]
    stem = os.path.splitext(os.path.basename(name))[0] or "upload"
    return ImageSource("bytes", f"upload:{name}", stem, data)


def add_routes(router: APIRouter) -> None:
    """Add every endpoint to ``router``."""

    # -- the page and health --------------------------------------------------------------

    @router.get("/", response_model=None, summary="The web page, or the service's status")
    async def index(request: Request) -> Response:
        """HTML for browsers; JSON (the original service's ``GET /``) for everyone else."""
        if "text/html" in request.headers.get("accept", ""):
            page = resources.files(__package__).joinpath("static/index.html").read_text("utf-8")
            return HTMLResponse(page, headers=_page_headers())
        state = state_of(request)
        return JSONResponse(
            {
                "service": "photoroom-bg",
                "version": __version__,
                "status": "ok",
                "auth_required": state.auth.required,
                "executor": state.executor.name,
                "docs": "/docs",
                "limits": {
                    "max_urls_per_request": state.settings.max_urls_per_request,
                    "max_images_per_job": state.settings.max_images_per_job,
                    "max_jobs_per_token": state.settings.max_jobs_per_token,
                    "max_body_bytes": state.settings.max_body_bytes,
                },
            }
        )

    @router.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in _STATIC:
            raise Problem(404, "not_found", "Not Found")
        data = resources.files(__package__).joinpath(f"static/{name}").read_bytes()
        return Response(data, media_type=_STATIC[name], headers=_page_headers())

    @router.get("/health", summary="Liveness")
    async def health() -> dict[str, str]:
        """Answers at once while the process runs; checks nothing else."""
        return {"status": "ok"}

    @router.get("/health/ready", summary="Readiness", response_model=None)
    async def ready(request: Request) -> JSONResponse:
        """Writes, reads and deletes a probe in the sink, checks the engine's configuration
        and the executor; 503 with each check's detail when one fails."""
        state = state_of(request)
        checks: dict[str, dict[str, Any]] = {}
        probe = f"health/{uuid.uuid4().hex}"
        try:
            await state.sink.put(probe, b"ok", content_type="text/plain", metadata={})
            if await state.sink.get(probe) != b"ok":
                raise ObjectNotFoundError("the probe read back differently")
            await state.sink.delete(probe)
            checks["sink"] = {"ok": True}
        except PhotoroomBGError as exc:
            # the error names the service's folders, bucket or endpoint: for its log only
            logger.warning("readiness: the sink failed its probe: %s", exc)
            p = problem_for(exc)
            checks["sink"] = {"ok": False, "code": p.code, "detail": storage_detail(p.code)}
        except Exception as exc:  # a storage library's own error, not translated by the sink
            checks["sink"] = {
                "ok": False,
                "code": "storage_unavailable",
                "detail": f"{type(exc).__name__} from the storage client",
            }
        engine = None if state.client is not None else "no Photoroom API key (PHOTOROOM_API_KEY)"
        checks["engine"] = {"ok": engine is None, **({"detail": engine} if engine else {})}
        problem = await state.executor.check()
        checks["executor"] = {
            "ok": problem is None,
            "name": state.executor.name,
            **({"detail": problem} if problem else {}),
        }
        ok = all(c["ok"] for c in checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not_ready", "checks": checks},
            status_code=200 if ok else 503,
        )

    # -- v1: answers within the request ---------------------------------------------------

    @router.post(
        "/api/v1/remove-background",
        response_model=None,
        summary="One image",
        openapi_extra=ONE_IMAGE,
        responses=PROBLEMS,
    )
    async def remove_background(request: Request, owner: Caller) -> Response:
        """``{"image_url": ..., "options": {...}}`` or a multipart ``image_file`` upload.

        Returns the cut-out's bytes, or with ``"store": true`` JSON with its key and URLs.
        """
        state = state_of(request)
        one = "send exactly one image (image_url or an image_file upload), not more"
        refused = Problem(422, "invalid_request", "The request is not valid", one)
        body = await read_body(request, max_files=1, too_many_files=refused)
        source = _one_source(body)
        _, options = parse_options(body.mapping("options"), body.mapping("edit_options"))
        store = body.flag("store")
        sink: Sink = state.sink if store else state.unstored_sink()
        try:
            result = (await _run(state, [source], options, sink))[0]
            if not result.ok:
                if result.error is not None:
                    raise problem_for(result.error)
                # cancelled, or made but not stored (spilled): the status is the code
                raise Problem(503, result.status.value, "The image was not stored", result.reason)
            if store:
                assert result.key is not None
                return JSONResponse(
                    {
                        "status": result.status.value,
                        "key": result.key,
                        "content_type": media(result.key),
                        "size": result.output.size if result.output else None,
                        **await _urls_for(request, state, result.key),
                    }
                )
            assert result.key is not None
            data = await sink.get(result.key)
            filename = f"background_removed.{ext(result.key)}"
            return Response(
                data,
                media_type=media(result.key),
                headers={"Content-Disposition": f'attachment; filename="{filename}"'},
            )
        finally:  # the cut-out is read back: held in memory no longer
            if sink is not state.sink:
                await sink.aclose()

    @router.post(
        "/api/v1/remove-backgrounds",
        response_model=None,
        summary="A few images",
        openapi_extra=A_FEW_IMAGES,
        responses=PROBLEMS,
    )
    async def remove_backgrounds(request: Request, owner: Caller) -> Response:
        """``{"image_urls": [...]}``: one result per URL, never all-or-nothing. JSON by
        default (outputs stored, with URLs); ``Accept: application/zip`` returns a ZIP of the
        cut-outs plus ``errors.json``."""
        state = state_of(request)
        body = await read_body(request, max_files=0)
        urls = body.urls("image_urls")
        limit = state.settings.max_urls_per_request
        if not urls:
            raise Problem(422, "invalid_request", "The request is not valid", "no image_urls")
        if len(urls) > limit:
            raise Problem(
                422,
                "too_many_urls",
                "Too many URLs",
                f"at most {limit} URLs per request; use /api/v2/remove-backgrounds for more",
            )
        _check_urls(urls)
        _, options = parse_options(body.mapping("options"), body.mapping("edit_options"))
        want_zip = "application/zip" in request.headers.get("accept", "")
        sink = state.unstored_sink() if want_zip and not body.flag("store") else state.sink
        try:
            results = await _run(state, list(urls), options, sink)
            items = []
            for result, url in zip(results, urls, strict=True):
                item = item_from_result(result)
                item.update(
                    # shown as every other field shows it: no password, query or fragment
                    url=redact_url(url),
                    original_url=result.source,
                    success=result.ok,
                    storage_url=None,
                )
                if item["stored"]:
                    links = await _urls_for(request, state, result.key or "")
                    item.update(links, storage_url=links["download_url"])
                items.append(item)
            if want_zip:
                return await archive(sink, items, filename="background_removed_images.zip")
            succeeded = sum(1 for item in items if item["success"])
            return JSONResponse(
                {
                    "total_count": len(items),
                    "success_count": succeeded,
                    "failed_count": len(items) - succeeded,
                    "results": items,
                }
            )
        finally:  # the ZIP is written: its cut-outs held in memory no longer
            if sink is not state.sink:
                await sink.aclose()

    @router.get(
        "/api/v1/outputs/{key:path}",
        name="download_output",
        response_model=None,
        responses=JOB_PROBLEMS,
    )
    async def download_output(request: Request, key: str, owner: Caller) -> Response:
        """A stored cut-out, by the key a response gave."""
        if not _OUTPUT_KEY.fullmatch(key):
            raise Problem(404, "output_not_found", "No such output")
        data = await state_of(request).sink.get(key)
        return Response(data, media_type=media(key))

    # -- v2: jobs -------------------------------------------------------------------------

    @router.post(
        "/api/v2/remove-backgrounds",
        status_code=202,
        summary="Start a job",
        openapi_extra=A_JOB,
        responses=PROBLEMS,
    )
    async def start_job(request: Request, owner: Caller) -> JSONResponse:
        """``{"image_urls": [...], "options": {...}}`` or a multipart form with ``files``:
        202 with ``job_id``, ``status``, ``image_count`` and ``status_url``."""
        state = state_of(request)
        limit = state.settings.max_images_per_job
        too_many = Problem(
            422, "too_many_images", "Too many images", f"at most {limit} images per job"
        )
        body = await read_body(request, max_files=limit, too_many_files=too_many)
        urls = body.urls("image_urls", "image_url")
        count = len(urls) + len(body.uploads)
        if count == 0:
            raise Problem(422, "invalid_request", "The request is not valid", "no images")
        if count > limit:
            raise too_many
        _check_urls(urls)
        doc, _ = parse_options(body.mapping("options"), body.mapping("edit_options"))
        sources = [await _save_upload(state, name, data) for name, data in body.uploads]
        sources += [{"kind": "url", "url": url} for url in urls]
        record = await state.jobs.create(owner, sources, doc)
        return JSONResponse(_started(request, record), status_code=202)

    @router.post(
        "/api/v2/remove-backgrounds/results",
        summary="Results by id (original shape)",
        openapi_extra=RESULTS,
        responses=PROBLEMS,
    )
    async def results_by_id(request: Request, owner: Caller) -> dict[str, Any]:
        """``{"job_ids": [...]}`` (or the original ``{"flow_ids": [...]}``, or a bare list):
        ids are job ids, or the item ids (``<job_id>.<index>``) a start returned as
        ``flow_ids``. Unknown ids say so; pending ones are never mistaken for failures."""
        state = state_of(request)
        body = await read_body(request, max_files=0)
        ids = body.urls("job_ids", "flow_ids", "image_urls", what="a job or item id")
        if not ids:
            raise Problem(422, "invalid_request", "The request is not valid", "no job_ids")
        if len(ids) > state.settings.max_images_per_job:
            raise Problem(422, "too_many_ids", "Too many ids", "ask for fewer ids at once")
        results: dict[str, Any] = {}
        cache: dict[str, tuple[JobRecord, list[dict[str, Any]]] | None] = {}
        for ident in ids:
            job_id, _, index = ident.partition(".")
            if job_id not in cache:
                try:
                    record = await state.jobs.get(owner, job_id)
                    cache[job_id] = (record, await state.jobs.items(record))
                except Problem:
                    cache[job_id] = None
            entry = cache[job_id]
            # a plain number: "²" passes isdigit() but not int(), nor do 5,000 digits
            number = int(index) if _ITEM_INDEX.fullmatch(index) else -1
            if entry is None or (index and not 0 <= number < len(entry[1])):
                results[ident] = {
                    "status": "not_found",
                    "success": False,
                    "error": {"code": "job_not_found", "message": f"no job or item {ident!r}"},
                    "processed_url": None,
                    "original_url": None,
                }
                continue
            record, items = entry
            chosen = [items[number]] if index else items
            for item in chosen:
                url = (
                    str(request.url_for("job_output", job_id=job_id, index=item["index"]))
                    if item.get("stored")
                    else None
                )
                results[f"{job_id}.{item['index']}"] = {
                    "job_id": job_id,
                    "index": item["index"],
                    "status": item["status"],
                    "success": bool(item.get("stored")),
                    "error": item.get("error"),
                    "processed_url": url,
                    "original_url": item.get("source"),
                }
        statuses = [r["status"] for r in results.values()]
        return {
            "total_count": len(results),
            "success_count": sum(1 for r in results.values() if r["success"]),
            "pending_count": sum(1 for s in statuses if s in ("pending", "running")),
            "failed_count": sum(1 for s in statuses if s == "failed"),
            "results": results,
        }

    @router.get(
        "/api/v2/remove-backgrounds/{job_id}",
        summary="A job's status and items",
        responses=JOB_PROBLEMS,
    )
    async def job_status(
        request: Request,
        job_id: str,
        owner: Caller,
        status: Annotated[list[str] | None, Query(max_length=200)] = None,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """State, counts per status, progress and ETA, the report once finished, and a page
        of items (``?status=failed&offset=0&limit=100``; ``?status=failed,cancelled`` or the
        parameter repeated for several), partial while running."""
        state = state_of(request)
        record = await state.jobs.get(owner, job_id)
        return await state.jobs.describe(
            record,
            status=_statuses(status),
            offset=offset,
            limit=limit,
            output_url=lambda j, i: str(request.url_for("job_output", job_id=j, index=i)),
        )

    @router.delete(
        "/api/v2/remove-backgrounds/{job_id}", summary="Cancel a job", responses=JOB_PROBLEMS
    )
    async def cancel_job(request: Request, job_id: str, owner: Caller) -> JSONResponse:
        """Start no more of its images; those running finish and are stored."""
        state = state_of(request)
        record = await state.jobs.get(owner, job_id)
        if record.finished:
            return JSONResponse({"job_id": job_id, "status": record.state})
        await state.jobs.cancel(record)
        return JSONResponse({"job_id": job_id, "status": "cancelling"}, status_code=202)

    @router.get(
        "/api/v2/remove-backgrounds/{job_id}/items/{index}/output",
        name="job_output",
        response_model=None,
        responses=JOB_PROBLEMS,
    )
    async def job_output(request: Request, job_id: str, index: int, owner: Caller) -> Response:
        """One item's cut-out."""
        state = state_of(request)
        item = await state.jobs.item(await state.jobs.get(owner, job_id), index)
        if not item.get("stored"):
            raise Problem(404, "output_not_found", "No output", f"item {index} is {item['status']}")
        data = await state.sink.get(item["key"])
        return Response(data, media_type=media(item["key"]))

    @router.get(
        "/api/v2/remove-backgrounds/{job_id}/zip", response_model=None, responses=JOB_PROBLEMS
    )
    async def job_zip(request: Request, job_id: str, owner: Caller) -> Response:
        """The job's cut-outs so far, plus ``errors.json``, as a ZIP."""
        state = state_of(request)
        record = await state.jobs.get(owner, job_id)
        items = await state.jobs.items(record)
        return await archive(state.sink, items, filename=f"cutouts-{job_id[:8]}.zip")

    @router.get(
        "/api/v2/remove-backgrounds/{job_id}/events",
        response_model=None,
        responses=JOB_PROBLEMS,
    )
    async def job_events(request: Request, job_id: str, owner: Caller) -> Response:
        """Server-Sent Events: ``item`` as each image finishes, ``progress``, then ``done``."""
        state = state_of(request)
        record = await state.jobs.get(owner, job_id)

        def url_for(index: int) -> str:
            return str(request.url_for("job_output", job_id=job_id, index=index))

        return StreamingResponse(
            event_stream(state, record, url_for),
            media_type="text/event-stream",
            # no-cache, not no-store: Chromium reports a no-store stream read to its end
            # as aborted (playwright issue 42742)
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def _page_headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": (
            "default-src 'self'; img-src 'self' blob: data: https: http:; "
            "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }


def _started(request: Request, record: JobRecord) -> dict[str, Any]:
    job_id = record.job_id
    return {
        "job_id": job_id,
        "status": record.state,
        "image_count": record.image_count,
        "status_url": str(request.url_for("job_status", job_id=job_id)),
        "events_url": str(request.url_for("job_events", job_id=job_id)),
        "zip_url": str(request.url_for("job_zip", job_id=job_id)),
        "flow_ids": [f"{job_id}.{i}" for i in range(record.image_count)],
        "message": f"Started processing {record.image_count} images",
    }


async def _save_upload(state: ServiceState, name: str, data: bytes) -> dict[str, str]:
    """Keep an uploaded image in the sink (by content) so that a resumed job finds it."""
    limit = state.settings.max_source_bytes
    if len(data) > limit:
        raise Problem(
            422, "source_too_large", "The image is too large", f"{name}: over {limit:,} bytes"
        )
    kind = sniff_format(data[:32]) if data else None
    if kind not in _UPLOAD_EXT:
        raise Problem(
            422, "invalid_image", "The image cannot be processed", f"{name}: not an image"
        )
    key = f"uploads/{hashlib.sha256(data).hexdigest()}.{_UPLOAD_EXT[kind]}"
    if not await state.sink.exists(key):
        await state.sink.put(key, data, content_type=f"image/{kind}", metadata={})
    return {"kind": "upload", "key": key, "name": os.path.basename(name)[:200]}
