"""The emulator's ASGI app: Photoroom's request contract, accounting and injected faults."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import attrs

from . import _imaging
from ._contract import (
    EDIT_RULES,
    RENDER_PARAMS,
    RENDER_RULES,
    SEGMENT_PARAMS,
    SEGMENT_RULES,
    Rule,
    WireRequest,
    lookup_edit_param,
    violations,
)
from ._faults import FaultPicker
from ._ledger import Ledger

__all__ = ["EmulatorApp", "LoggedRequest"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("photoroom_bg.testing")

MAX_SEGMENT_BYTES = 50 * 1024 * 1024
MAX_EDIT_BYTES = 30 * 1024 * 1024
MAX_SEGMENT_SIDE = 6000
#: The input formats each endpoint takes, by Pillow's names (API.md: HEIC for segment only).
SEGMENT_FORMATS = ("PNG", "JPEG", "WEBP", "HEIF")
EDIT_FORMATS = ("PNG", "JPEG", "WEBP")
_TINY_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


@attrs.frozen
class LoggedRequest:
    """One request as the emulator saw it (no API key, no file bytes)."""

    method: str
    path: str
    params: dict[str, str]
    status: int
    fault: str | None = None
    sandbox: bool = False


@attrs.define
class _Answer:
    status: int
    body: bytes
    headers: dict[str, str] = attrs.field(factory=dict)


class _Reject(Exception):
    def __init__(self, answer: _Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


def _flat(status: int, detail: str, kind: str) -> _Answer:
    body = {"detail": detail, "status_code": status, "type": kind}
    return _Answer(status, json.dumps(body).encode(), {"content-type": "application/json"})


def _nested(status: int, message: str, *, key: str = "message") -> _Answer:
    body = {"error": {key: message}}
    return _Answer(status, json.dumps(body).encode(), {"content-type": "application/json"})


def _error(host: str, status: int, message: str, kind: str = "invalid_parameter") -> _Answer:
    if host == "sdk":
        return _flat(status, message, kind)
    return _nested(status, message, key="detail" if status == 402 else "message")


_CREDITS_MESSAGE = (
    "API credits exhausted. Visit https://app.photoroom.com/api-dashboard to purchase more "
    "API credits"
)


class EmulatorApp:
    """A pure ASGI application serving both Photoroom hosts' paths."""

    def __init__(
        self,
        ledger: Ledger,
        faults: FaultPicker,
        *,
        segmenter: _imaging.Segmenter,
        image_work: bool = True,
        fetch_image_urls: bool = True,
    ) -> None:
        self.ledger = ledger
        self.faults = faults
        self.segmenter = segmenter
        self.image_work = image_work
        self.fetch_image_urls = fetch_image_urls
        self.requests: list[LoggedRequest] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        from starlette.requests import Request

        request = Request(scope, receive)
        path, method = request.url.path, request.method
        delay = self.faults.latency()
        if delay:
            if method == "POST":
                # a server has the whole upload before it works on it: a client that goes
                # away while it works still pays for the work, as with Photoroom
                with contextlib.suppress(Exception):  # gone mid-upload: answered 400 below
                    await request.body()
            await asyncio.sleep(delay)
        fault = self.faults.pick(path, request.headers.get("x-emulator-fault"))
        host = "sdk" if path == "/v1/segment" else "image-api"
        billed_fault = fault is not None and fault.startswith("bill-")
        if fault is not None and not billed_fault:
            await self._inject(fault, host, method, path, send)
            return
        params: dict[str, str] = {}
        sandbox = False
        try:
            answer, params, sandbox = await self._route(request, host)
        except _Reject as reject:
            answer = reject.answer
        if billed_fault and answer.status == 200:
            # the work is done and billed: now lose the answer
            assert fault is not None
            self.requests.append(
                LoggedRequest(method, path, _loggable(params), _fault_status(fault), fault, sandbox)
            )
            await self._inject(fault.removeprefix("bill-"), host, method, path, send, log=False)
            return
        self.requests.append(
            LoggedRequest(method, path, _loggable(params), answer.status, None, sandbox)
        )
        await _respond(send, answer)

    async def _inject(
        self, fault: str, host: str, method: str, path: str, send: Send, *, log: bool = True
    ) -> None:
        if log:
            self.requests.append(LoggedRequest(method, path, {}, _fault_status(fault), fault))
        retry = str(math.ceil(self.faults.faults.retry_after))  # 0.5 s is "1", not "0"
        if fault == "stall":
            await asyncio.sleep(self.faults.faults.stall_seconds)
            await _respond(send, _error(host, 504, "stalled"))
        elif fault in ("429", "500", "502", "503"):
            status = int(fault)
            answer = _error(host, status, "Too many requests" if status == 429 else "Server error")
            if status in (429, 503):
                answer.headers["retry-after"] = retry
            await _respond(send, answer)
        elif fault == "garble":  # a whole HTTP answer around half an image
            body = _TINY_PNG[: len(_TINY_PNG) // 2]
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"image/png"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body, "more_body": False})
        elif fault == "truncate":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"image/png"), (b"content-length", b"4096")],
                }
            )
            await send({"type": "http.response.body", "body": _TINY_PNG[:20], "more_body": False})
        else:  # reset: headers out, then the connection dies
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"image/png"), (b"content-length", b"4096")],
                }
            )
            await send({"type": "http.response.body", "body": _TINY_PNG[:10], "more_body": True})
            raise ConnectionResetError("emulated connection reset")

    async def _route(self, request: Any, host: str) -> tuple[_Answer, dict[str, str], bool]:
        path, method = request.url.path, request.method
        routes = {
            ("POST", "/v1/segment"): self._segment,
            ("GET", "/v2/edit"): self._edit,
            ("POST", "/v2/edit"): self._edit,
            ("GET", "/v1/account"): self._account,
            ("GET", "/v2/account"): self._account,
            ("GET", "/v1/render"): self._render_template,
            ("POST", "/v1/render"): self._render_template,
        }
        handler = routes.get((method, path))
        if handler is None:
            known = any(p == path for _, p in routes)
            status = 405 if known else 404
            return _error(host, status, "Method not allowed" if known else "Not found"), {}, False
        key = request.headers.get("x-api-key")
        if not key and (method, path) == ("GET", "/v1/render"):
            key = request.query_params.get("apiKey")  # the legacy GET may carry it [spec]
        if not key and path.endswith("/account"):
            raise _Reject(_nested(400, "apiKey: Required"))
        if not self.ledger.known(key):
            raise _Reject(_error(host, 403, "Forbidden: invalid API key", "forbidden"))
        wait = self.ledger.admit(key)
        if wait is not None:
            answer = _error(host, 429, "Rate limit exceeded", "rate_limit")
            answer.headers["retry-after"] = str(int(wait))
            raise _Reject(answer)
        answer, params = await handler(request, key, host)
        return answer, params, key.startswith("sandbox_")

    async def _account(self, request: Any, key: str, host: str) -> tuple[_Answer, dict[str, str]]:
        account = self.ledger.accounts[self.ledger.base_key(key)]
        usage = {
            "available": _shown(round(self.ledger.available(key), 4)),
            "subscription": _shown(account.subscription),
        }
        body = (
            {"images": usage, "plan": account.plan}
            if "v2" in request.url.path
            else {"credits": usage}
        )
        return _Answer(200, json.dumps(body).encode(), {"content-type": "application/json"}), {}

    async def _segment(self, request: Any, key: str, host: str) -> tuple[_Answer, dict[str, str]]:
        multi, files = await _form(request, host)
        params = _first(multi)
        unknown = sorted(n for n in [*multi, *files] if n not in SEGMENT_PARAMS)
        for name in unknown:
            multi.pop(name, None)
        _enforce(SEGMENT_RULES, _wire_request(multi, files, request, "POST"), host)
        fields = _first(multi)
        image = files.get("image_file")
        if not image:
            raise _Reject(_flat(400, "Please provide an image.", "missing_image"))
        if len(image) > MAX_SEGMENT_BYTES:
            raise _Reject(_flat(400, "Image file is too large (max 50MB).", "image_too_large"))
        refused = _imaging.input_problem(image, SEGMENT_FORMATS, MAX_SEGMENT_SIDE)
        if refused is not None:  # 7,000 px, a GIF or a BMP were made and billed
            raise _Reject(_flat(400, refused, "invalid_image"))
        answer = self._render("segment", image, fields, host, key)
        if "application/json" in request.headers.get("accept", ""):
            encoded = base64.b64encode(answer.body).decode()
            answer.body = json.dumps({"base64img": encoded}).encode()
            answer.headers["content-type"] = "application/json"
        _unsupported(answer, unknown)
        self.ledger.charge(key, "segment", hashlib.sha256(image).hexdigest())
        return answer, params

    async def _edit(self, request: Any, key: str, host: str) -> tuple[_Answer, dict[str, str]]:
        method = "get" if request.method == "GET" else "post"
        if method == "get":
            multi = _multi(request.query_params.multi_items())
            files: dict[str, bytes] = {}
        else:
            multi, files = await _form(request, host)
        params = _first(multi)
        unknown: list[str] = []
        for name in [*multi, *files]:
            found = lookup_edit_param(name)
            if found is None or found[1].where not in (method, "both"):
                unknown.append(name)
        for name in unknown:
            multi.pop(name, None)
            files.pop(name, None)
        _enforce(EDIT_RULES, _wire_request(multi, files, request, method.upper()), host)
        fields = _first(multi)
        image = files.get("imageFile")
        if image is None and "imageUrl" in fields:
            image = await self._download(fields["imageUrl"])
        if image is None:  # imageFromPrompt: no model here, a plain generated picture
            image = _prompt_image()
        # each input image, the background and the guidance too, is held to the same limits
        for name, data in (("imageFile", image), *files.items()):
            if len(data) > MAX_EDIT_BYTES:
                raise _Reject(_nested(400, f"{name}: image file is too large (max 30MB)."))
            refused = _imaging.input_problem(data, EDIT_FORMATS, None)
            if refused is not None:
                raise _Reject(_nested(400, f"{name}: {refused}"))
        answer = self._render("edit", image, fields, host, key)
        if "background.prompt" in fields:
            seed = fields.get("background.seed") or str(
                int(hashlib.sha256(image).hexdigest()[:6], 16)
            )
            answer.headers["pr-ai-background-seed"] = seed
        if method == "get":
            answer.headers["pr-edit-further-url"] = "https://app.photoroom.com/emulated-edit"
        _unsupported(answer, sorted(unknown))
        self.ledger.charge(key, "edit", hashlib.sha256(image).hexdigest())
        return answer, params

    async def _render_template(
        self, request: Any, key: str, host: str
    ) -> tuple[_Answer, dict[str, str]]:
        """Legacy ``/v1/render``: the emulator has no templates, so the cut-out comes back."""
        method = request.method
        if method == "GET":
            multi = _multi(request.query_params.multi_items())
            files: dict[str, bytes] = {}
        else:
            multi, files = await _form(request, host)
        multi.pop("apiKey", None)
        params = _first(multi)
        unknown = sorted(
            n
            for n in [*multi, *files]
            if n not in RENDER_PARAMS or RENDER_PARAMS[n].where not in (method.lower(), "both")
        )
        for name in unknown:
            multi.pop(name, None)
            files.pop(name, None)
        _enforce(RENDER_RULES, _wire_request(multi, files, request, method), host)
        fields = _first(multi)
        image = files.get("imageFile")
        url = fields.get("imageUrl") or fields.get("conceptUrl")
        if image is None and url:
            image = await self._download(url)
        if image is None:
            raise _Reject(_nested(400, "imageFile: must be provided"))
        answer = self._render("edit", image, {}, host, key)
        _unsupported(answer, unknown)
        self.ledger.charge(key, "edit", hashlib.sha256(image).hexdigest())
        return answer, params

    def _render(
        self, endpoint: str, image: bytes, fields: dict[str, str], host: str, key: str
    ) -> _Answer:
        if not self.ledger.can_afford(key, endpoint):
            raise _Reject(_error(host, 402, _CREDITS_MESSAGE, "unknown_error"))
        sandbox = key.startswith("sandbox_")
        if not self.image_work:
            return _Answer(
                200, _TINY_PNG, {"content-type": "image/png", "x-uncertainty-score": "0.0"}
            )
        render = _imaging.render_segment if endpoint == "segment" else _imaging.render_edit
        try:
            body, mime, score = render(image, fields, self.segmenter, sandbox=sandbox)
        except (_imaging.ImageError, ValueError) as exc:
            kind = "invalid_image"
            raise _Reject(_error(host, 400, str(exc), kind)) from None
        return _Answer(200, body, {"content-type": mime, "x-uncertainty-score": str(score)})

    async def _download(self, url: str) -> bytes:
        if not self.fetch_image_urls:
            raise _Reject(_nested(400, "imageUrl is not fetched by this emulator"))
        import httpx

        try:
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.get(url)
        except httpx.HTTPError:
            raise _Reject(_nested(400, "Could not download the image at imageUrl")) from None
        if response.status_code != 200:
            raise _Reject(
                _nested(400, f"Could not download the image at imageUrl ({response.status_code})")
            )
        return response.content


#: What an account that never runs out (``credits=inf``) shows: JSON has no infinity, and
#: ``Infinity`` in an answer is no JSON a client must read.
UNLIMITED_SHOWN = 1_000_000_000_000


def _shown(credits: float) -> float:
    return credits if math.isfinite(credits) else UNLIMITED_SHOWN


def _fault_status(fault: str) -> int:
    """The status line a fault sends (a stall ends as a 504; a garbled, truncated or reset
    answer starts as a 200)."""
    code = fault.removeprefix("bill-")
    if code.isdigit():
        return int(code)
    return 504 if code == "stall" else 200


#: Parameter names that carry a key (the request log shows no key).
_KEY_NAMES = frozenset({"apikey", "api_key", "x-api-key"})


def _loggable(params: dict[str, str]) -> dict[str, str]:
    """``params`` without any that carries a key: an ``apiKey`` in a GET's query went into
    the request log, which the docs promise never holds the key."""
    if not any(name.lower() in _KEY_NAMES for name in params):
        return params
    return {name: value for name, value in params.items() if name.lower() not in _KEY_NAMES}


def _unsupported(answer: _Answer, names: list[str]) -> None:
    if names:
        answer.headers["pr-unsupported-attributes"] = "Unsupported attributes: " + ", ".join(names)


def _prompt_image() -> bytes:
    """A stand-in for an image generated from a prompt: a dark square on a light ground."""
    from io import BytesIO

    from PIL import Image

    picture = Image.new("RGB", (64, 64), (235, 235, 235))
    picture.paste((40, 60, 160), (16, 16, 48, 48))
    out = BytesIO()
    picture.save(out, "PNG")
    return out.getvalue()


def _multi(items: Any) -> dict[str, list[str]]:
    multi: dict[str, list[str]] = {}
    for name, value in items:
        multi.setdefault(name, []).append(value)
    return multi


def _first(multi: dict[str, list[str]]) -> dict[str, str]:
    return {name: values[0] for name, values in multi.items()}


def _wire_request(
    multi: dict[str, list[str]], files: dict[str, bytes], request: Any, method: str
) -> WireRequest:
    return WireRequest(
        fields={name: tuple(values) for name, values in multi.items()},
        files=frozenset(files),
        headers={k.lower(): v for k, v in request.headers.items()},
        method=method,  # type: ignore[arg-type]
    )


def _enforce(rules: tuple[Rule, ...], wire: WireRequest, host: str) -> None:
    """Refuse, as Photoroom does, the first broken rule (warnings are Photoroom's to ignore)."""
    for rule, name in violations(rules, wire):
        if rule.level != "error":
            continue
        if rule.kind == "value":
            message = f"{name} must be {rule.message}"
        else:
            message = f"{name}: {rule.message}"
        answer = _error(host, 400, message)
        answer.headers["x-emulator-rule"] = rule.id
        raise _Reject(answer)


async def _form(request: Any, host: str) -> tuple[dict[str, list[str]], dict[str, bytes]]:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise _Reject(_error(host, 400, "Expected a multipart/form-data body"))
    try:
        form = await request.form(max_files=32, max_fields=512, max_part_size=64 * 1024 * 1024)
    except Exception:
        raise _Reject(_error(host, 400, "Malformed multipart body")) from None
    fields: dict[str, list[str]] = {}
    files: dict[str, bytes] = {}
    for name, value in form.multi_items():
        if isinstance(value, str):
            fields.setdefault(name, []).append(value)
        else:
            files[name] = await value.read()
    await form.close()
    return fields, files


async def _respond(send: Send, answer: _Answer) -> None:
    headers = [(k.encode(), v.encode()) for k, v in answer.headers.items()]
    headers.append((b"content-length", str(len(answer.body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})
