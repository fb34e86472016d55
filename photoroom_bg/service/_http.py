"""HTTP plumbing: problem responses, the body cap, and reading JSON or multipart requests."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import attrs
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from .. import _jsonsafe
from ..errors import PhotoroomBGError
from ._outputs import temporary_folder_error
from ._problems import Problem, problem_for

__all__ = ["ProblemRoute", "RequestBody", "problem_response", "read_body"]

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def problem_response(problem: Problem, request: Request | None = None) -> JSONResponse:
    """``application/problem+json`` with the problem's headers."""
    return JSONResponse(
        problem.body(request.url.path if request is not None else None),
        status_code=problem.status,
        headers=problem.headers,
        media_type="application/problem+json",
    )


def to_problem(exc: BaseException) -> Problem | None:
    """The problem an exception stands for, or ``None`` for a bug (a 500 is logged)."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, RequestValidationError):
        return Problem(
            422,
            "invalid_request",
            "The request is not valid",
            "see errors",
            extra={"errors": _plain(exc.errors())},
        )
    if isinstance(exc, StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return Problem(exc.status_code, code, str(exc.detail), headers=exc.headers)
    if isinstance(exc, PhotoroomBGError):
        return problem_for(exc)
    return None


def _plain(errors: Any) -> Any:
    return json.loads(json.dumps(errors, default=str))


class BodyTooLarge(Problem):
    """The request body is over ``max_body_bytes``."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, "body_too_large", "The request body is too large", f"the limit is {limit:,} bytes"
        )


class ProblemRoute(APIRoute):
    """A route whose errors are problem details and whose body is capped, wherever the
    router is included (the service's app or an application's own)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                _cap_body(request)
                return await handler(request)
            except ClientDisconnect:  # the caller hung up mid-body: nobody to answer
                return Response(status_code=499)
            except Exception as exc:
                problem = to_problem(exc)
                if problem is None:
                    raise
                return problem_response(problem, request)

        return route


def _cap_body(request: Request) -> None:
    state = getattr(request.state, "photoroom_bg", None)
    if state is None or request.method in ("GET", "HEAD", "DELETE", "OPTIONS"):
        return
    limit = state.settings.max_body_bytes
    declared = request.headers.get("content-length", "")
    # ASCII digits only ("²" passes isdigit() but not int()), and a number too long for
    # int() (past 4,300 digits) is too large all the same
    if declared.isascii() and declared.isdigit() and (len(declared) > 20 or int(declared) > limit):
        raise BodyTooLarge(limit)
    receive = request._receive
    seen = 0

    async def capped() -> Any:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    request._receive = capped


def _json_type(value: object) -> str:
    """What a JSON value is, as a caller would say it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


@attrs.define
class RequestBody:
    """What a create request carries, from JSON or from a multipart form."""

    data: dict[str, Any]
    uploads: list[tuple[str, bytes]] = attrs.field(factory=list)

    def urls(self, *names: str, what: str = "a URL") -> list[str]:
        """The URL fields among ``names`` (a string or a list of strings each; ``what``
        names an entry in messages). A blank string on its own is no entry; a blank entry in
        a list is refused, as dropping it would shift every later position, and results are
        reported by position."""
        urls: list[str] = []
        for name in names:
            value = self.data.get(name)
            if value is None:
                continue
            listed = isinstance(value, list)
            for index, item in enumerate(value if listed else [value]):
                where = f"{name}[{index}]" if listed else name
                if not isinstance(item, str):
                    raise Problem(
                        422,
                        "invalid_request",
                        "The request is not valid",
                        f"{where}: {what} is a string, not {_json_type(item)}",
                    )
                text = item.strip()
                if not text and listed:
                    raise Problem(
                        422,
                        "invalid_request",
                        "The request is not valid",
                        f"{where}: empty; each entry must be {what} (results are given by "
                        "position)",
                    )
                if text:
                    urls.append(text)
        return urls

    def flag(self, name: str) -> bool:
        """A boolean field (``true``/``1`` in forms)."""
        value = self.data.get(name, False)
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)

    def mapping(self, name: str) -> dict[str, Any] | None:
        """A JSON object field (a JSON string in forms)."""
        value = self.data.get(name)
        if value in (None, ""):
            return None
        if isinstance(value, str):
            try:
                value = _jsonsafe.loads_text(value)
            except ValueError as exc:  # malformed, too deep, too many digits, no text
                detail = "not text" if isinstance(exc, _jsonsafe.NotTextError) else "not JSON"
                raise Problem(
                    422, "invalid_request", "The request is not valid", f"{name}: {detail}"
                ) from None
        if not isinstance(value, dict):
            raise Problem(
                422, "invalid_request", "The request is not valid", f"{name}: not an object"
            )
        return value


def _form_refused(detail: str, too_many_files: Problem) -> Problem:
    """The problem of a form the parser refused: over the endpoint's file cap, or not
    readable (no boundary, a part cut short...), as a JSON body that cannot be read is."""
    if detail.startswith("Too many files"):
        return too_many_files
    return Problem(
        422,
        "invalid_request",
        "The request is not valid",
        f"the multipart/form-data form cannot be read: {detail[:200]}",
    )


async def read_body(
    request: Request, *, max_files: int, too_many_files: Problem | None = None
) -> RequestBody:
    """Parse a JSON object, a JSON list (taken as ``image_urls``) or a multipart form.

    A form with more than ``max_files`` uploads is refused with ``too_many_files`` (by
    default: the endpoint takes no uploads, or that many at most)."""
    if too_many_files is None:
        too_many_files = Problem(
            422,
            "invalid_request",
            "The request is not valid",
            f"at most {max_files} uploads" if max_files else "send image_urls: no uploads here",
        )
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        try:  # a large upload is spooled to a temporary file
            form = await request.form(max_files=max_files, max_fields=max_files + 16)
        except OSError as exc:
            raise temporary_folder_error(exc, "an upload") from None
        except StarletteHTTPException as exc:  # the parser's refusal, as a bare 400
            raise _form_refused(str(exc.detail), too_many_files) from None
        except MultiPartException as exc:  # (outside an app, it is raised as it is)
            raise _form_refused(exc.message, too_many_files) from None
        data: dict[str, Any] = {}
        uploads: list[tuple[str, bytes]] = []
        try:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    uploads.append((value.filename or "upload", await value.read()))
                elif name in ("image_urls", "image_url"):
                    data.setdefault(name, []).extend(v for v in value.split() if v)
                else:
                    data[name] = value
        finally:
            await form.close()
        return RequestBody(data, uploads)
    raw = await request.body()
    if not raw.strip():
        return RequestBody({})
    try:  # UnicodeDecodeError and JSONDecodeError are ValueErrors, as is nesting too deep
        parsed = _jsonsafe.loads_text(raw)
    except ValueError as exc:
        no_text = isinstance(exc, _jsonsafe.NotTextError)
        raise Problem(
            415 if content_type not in ("application/json", "") else 422,
            "invalid_request",
            "The request is not valid",
            "a string of the body is not text: it holds a \\ud800-\\udfff escape of no character"
            if no_text
            else "send a JSON object or a multipart/form-data form",
        ) from None
    if isinstance(parsed, list):
        parsed = {"image_urls": parsed}
    if not isinstance(parsed, dict):
        raise Problem(422, "invalid_request", "The request is not valid", "expected a JSON object")
    return RequestBody(parsed)
