"""Errors as RFC 9457 problem details, with a stable ``code`` per SDK error type.

One table maps every class of :mod:`photoroom_bg.errors` (by name, so that error types read
back from a manifest map the same way) to an HTTP status and a code; an error class added
later maps through its nearest mapped base class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .. import errors
from .._logs import get_logger

__all__ = [
    "PROBLEM_CODES",
    "Problem",
    "error_code",
    "is_storage_code",
    "problem_for",
    "storage_detail",
]

PROBLEM_TYPE = "urn:photoroom-bg:problem:"

logger = get_logger("photoroom_bg.service")

#: SDK error class name -> (HTTP status, code, title)
PROBLEM_CODES: dict[str, tuple[int, str, str]] = {
    "InvalidImageError": (422, "invalid_image", "The image cannot be processed"),
    "ValidationError": (422, "invalid_options", "A value was rejected"),
    "UnsafeURLError": (422, "unsafe_url", "The URL was refused"),
    "SourceTooLargeError": (422, "source_too_large", "The image is too large"),
    "SourceNotFoundError": (422, "source_not_found", "The image was not found"),
    "InvalidSourceError": (422, "invalid_source", "The image URL is not valid"),
    "SourceTimeoutError": (422, "source_timeout", "The image took too long to fetch"),
    "SourceError": (422, "source_unreadable", "The image could not be read"),
    "OutOfCreditsError": (
        503,
        "photoroom_out_of_credits",
        "The Photoroom account is out of credits",
    ),
    "AuthenticationError": (503, "photoroom_auth_failed", "Photoroom refused the service's key"),
    "RateLimitError": (503, "photoroom_rate_limited", "Photoroom is rate limiting the service"),
    "BadRequestError": (422, "photoroom_rejected", "Photoroom rejected the image or options"),
    "NotFoundError": (502, "photoroom_not_found", "Photoroom answered 404"),
    "ServerError": (502, "photoroom_server_error", "Photoroom failed"),
    "APIResponseValidationError": (
        502,
        "photoroom_bad_answer",
        "Photoroom's answer held no usable image",
    ),
    "APIStatusError": (502, "photoroom_error", "Photoroom answered with an error"),
    "APITimeoutError": (504, "photoroom_timeout", "Photoroom did not answer in time"),
    "APIConnectionError": (502, "photoroom_unreachable", "Photoroom could not be reached"),
    "PhotoroomError": (502, "photoroom_error", "Photoroom failed"),
    "StorageFullError": (507, "storage_full", "The storage is full"),
    "StorageAuthError": (503, "storage_auth_failed", "The storage refused the credentials"),
    "StorageUnavailableError": (503, "storage_unreachable", "The storage cannot be reached"),
    "BucketNotFoundError": (503, "storage_bucket_missing", "The storage bucket does not exist"),
    "UnsafeKeyError": (500, "storage_unsafe_key", "An output key was refused"),
    "ObjectNotFoundError": (404, "output_not_found", "No such output"),
    "StorageError": (503, "storage_unavailable", "The storage failed"),
    "ConfigurationError": (500, "configuration_error", "The service is misconfigured"),
    "UnexpectedError": (500, "internal_error", "Unexpected error"),
    "PhotoroomBGError": (500, "internal_error", "Unexpected error"),
}
_FALLBACK = PROBLEM_CODES["PhotoroomBGError"]


class Problem(Exception):
    """An error response: ``application/problem+json`` with ``type``, ``title``, ``status``,
    ``detail`` and ``code``, plus any ``extra`` members."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self, instance: str | None = None) -> dict[str, Any]:
        """The JSON members."""
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE + self.code,
            "title": self.title,
            "status": self.status,
            "code": self.code,
        }
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


def _lookup(error_type: str | None) -> tuple[int, str, str]:
    """The mapping of an error class name, walking up the class tree for unknown names."""
    if error_type is None:
        return _FALLBACK
    if error_type in PROBLEM_CODES:
        return PROBLEM_CODES[error_type]
    cls = getattr(errors, error_type, None)
    if isinstance(cls, type):
        for base in cls.__mro__:
            if base.__name__ in PROBLEM_CODES:
                return PROBLEM_CODES[base.__name__]
    return _FALLBACK


def _mapping_of(error: BaseException) -> tuple[int, str, str]:
    for cls in type(error).__mro__:
        if cls.__name__ in PROBLEM_CODES and getattr(errors, cls.__name__, None) is cls:
            return PROBLEM_CODES[cls.__name__]
    return _FALLBACK


def error_code(error: BaseException | str | None) -> str:
    """The stable code of an SDK error, or of an error class name read from a manifest."""
    if isinstance(error, BaseException):
        return _mapping_of(error)[1]
    return _lookup(error)[1]


def retry_after(error: BaseException) -> int | None:
    """Seconds a client should wait before retrying, for rate limits."""
    if isinstance(error, errors.RateLimitError):
        return max(1, math.ceil(error.retry_after or 1))
    if isinstance(error, errors.APIStatusError) and error.status_code == 503:
        return 1
    if isinstance(error, errors.StorageUnavailableError):  # an outage, worth waiting out
        return 5
    return None


def problem_for(error: BaseException) -> Problem:
    """The problem response of an SDK error (its message never holds a secret)."""
    status, code, title = _mapping_of(error)
    headers: dict[str, str] = {}
    wait = retry_after(error)
    if wait is not None:
        headers["Retry-After"] = str(wait)
    detail = str(error) if isinstance(error, errors.PhotoroomBGError) else None
    if is_storage_code(code):  # one rule with the job items' (see _serialize)
        logger.warning("answered %s (%s): %s", status, code, error)
        detail = storage_detail(code)
    # Photoroom may have made and billed the image: a caller's retry may pay for it again
    extra = {"possibly_billed": True} if getattr(error, "possibly_billed", False) else None
    return Problem(status, code, title, detail, headers=headers, extra=extra)


def is_storage_code(code: str) -> bool:
    """Whether ``code`` is that of a storage error (whose text is for the log only)."""
    return code.startswith("storage_") or code == "output_not_found"


def storage_detail(code: str) -> str:
    """What a caller is told of a storage error: its text names the service's folders,
    bucket or endpoint, which are for the operator's log, not for callers."""
    return STORAGE_DETAILS.get(code, "the service's storage failed; its log says why")


#: What a caller is told of a storage error, by code (the log has the error itself).
STORAGE_DETAILS = {
    "output_not_found": "the output is not in the storage (deleted or expired since it was "
    "stored?)",
    "storage_full": "the service's storage is full; its operator must make room",
}
