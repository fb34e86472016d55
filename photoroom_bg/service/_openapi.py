"""What the OpenAPI schema (``/openapi.json``, ``/docs``) says of the endpoints that read
their bodies themselves: the bodies they take, the problem details they answer with, and
the bearer token they need. Without it the schema showed no body for any ``POST``, no way
to authorize, and FastAPI's own ``HTTPValidationError`` where the service answers
``application/problem+json``."""

from __future__ import annotations

from typing import Any

from fastapi.security import HTTPBearer

#: The token callers send (``Authorization: Bearer <token>``): in the schema, so ``/docs``
#: can authorize. The service checks it itself (a missing one is its own 401 problem).
bearer = HTTPBearer(auto_error=False, description="a token of PHOTOROOM_BG_TOKENS")

__all__ = [
    "A_FEW_IMAGES",
    "A_JOB",
    "JOB_PROBLEMS",
    "ONE_IMAGE",
    "PROBLEMS",
    "RESULTS",
    "bearer",
    "body",
]

_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An RFC 9457 problem detail, with a stable code.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "code": {"type": "string", "description": "what went wrong, for programs"},
        "detail": {"type": "string", "description": "what went wrong, for people"},
        "instance": {"type": "string"},
    },
    "required": ["type", "title", "status", "code"],
}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _PROBLEM_SCHEMA}},
    }


#: The problems every caller's endpoint may answer with.
PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: _problem("No token, or a token the service does not know"),
    422: _problem("The request is not valid (its body, an option, an image or a URL)"),
    429: _problem("Too many requests or jobs for this token; Retry-After says when to retry"),
}
#: The problems of the endpoints about one job or output.
JOB_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **PROBLEMS,
    404: _problem("No such job, item or output (or not this token's)"),
}

_OPTIONS = {
    "type": "object",
    "description": "segment options (SegmentOptions' fields: size, crop, format...)",
    "additionalProperties": True,
}
_EDIT_OPTIONS = {
    "type": "object",
    "description": "edit options (EditOptions' fields); the image goes to /v2/edit",
    "additionalProperties": True,
}
_URL = {"type": "string", "format": "uri", "maxLength": 8192}


def body(
    fields: dict[str, Any], *, files: str | None = None, required: list[str] | None = None
) -> dict[str, Any]:
    """``openapi_extra`` for a route that takes JSON with ``fields`` (and, when ``files``
    names a field, a multipart form with uploads in it and the same fields as text)."""
    content: dict[str, Any] = {
        "application/json": {
            "schema": {"type": "object", "properties": fields, "required": required or []}
        }
    }
    if files is not None:
        form: dict[str, Any] = {
            name: {"type": "string", "description": "JSON text"} for name in fields
        }
        form[files] = {"type": "array", "items": {"type": "string", "format": "binary"}}
        content["multipart/form-data"] = {"schema": {"type": "object", "properties": form}}
    return {"requestBody": {"required": True, "content": content}}


#: The fields of each endpoint's body.
ONE_IMAGE = body(
    {
        "image_url": _URL,
        "options": _OPTIONS,
        "edit_options": _EDIT_OPTIONS,
        "store": {"type": "boolean", "description": "store the cut-out and answer JSON"},
    },
    files="image_file",
)
A_FEW_IMAGES = body(
    {
        "image_urls": {"type": "array", "items": _URL},
        "options": _OPTIONS,
        "edit_options": _EDIT_OPTIONS,
        "store": {"type": "boolean"},
    },
    required=["image_urls"],
)
A_JOB = body(
    {"image_urls": {"type": "array", "items": _URL}, "options": _OPTIONS,
     "edit_options": _EDIT_OPTIONS},
    files="files",
)  # fmt: skip
RESULTS = body(
    {"job_ids": {"type": "array", "items": {"type": "string"}},
     "flow_ids": {"type": "array", "items": {"type": "string"}}},
)  # fmt: skip
