"""Request options -> SDK options, accepting only what is safe to take from a caller."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ..errors import PhotoroomBGError
from ..options import EditOptions, SegmentOptions
from ._problems import Problem

__all__ = ["build_options", "parse_options"]

# never from a caller: raw headers and fields could override the service's key or reach
# parameters the service does not vet; file options are bytes that JSON cannot carry
_REFUSED = frozenset({"extra_params", "extra_headers", "base64"})
_KINDS: dict[str, type[SegmentOptions] | type[EditOptions]] = {
    "segment": SegmentOptions,
    "edit": EditOptions,
}


def _allowed(cls: type[Any]) -> set[str]:
    return {
        f.name for f in attrs.fields(cls) if f.name not in _REFUSED and not f.name.endswith("_file")
    }


def parse_options(
    options: Mapping[str, Any] | None, edit_options: Mapping[str, Any] | None
) -> tuple[dict[str, Any], SegmentOptions | EditOptions]:
    """Validate a request's ``options`` (``/v1/segment``) or ``edit_options`` (``/v2/edit``).

    Returns the stored form (``{"kind", "fields"}``) and the options object.

    Raises:
        Problem: 422 ``invalid_options`` for unknown or invalid fields.
    """
    if options and edit_options:
        raise Problem(
            422, "invalid_options", "A value was rejected", "send options or edit_options, not both"
        )
    kind = "edit" if edit_options else "segment"
    fields = dict(edit_options or options or {})
    doc = {"kind": kind, "fields": fields}
    return doc, build_options(doc)


def build_options(doc: Mapping[str, Any]) -> SegmentOptions | EditOptions:
    """The options object of a stored ``{"kind", "fields"}`` form."""
    cls = _KINDS.get(str(doc.get("kind")))
    if cls is None:
        raise Problem(422, "invalid_options", "A value was rejected", "unknown options kind")
    fields = dict(doc.get("fields") or {})
    unknown = sorted(set(fields) - _allowed(cls))
    if unknown:
        raise Problem(
            422,
            "invalid_options",
            "A value was rejected",
            f"unknown or refused option(s) {unknown}; allowed: {sorted(_allowed(cls))}",
        )
    try:
        return cls(**fields)
    except (PhotoroomBGError, TypeError, ValueError) as exc:
        raise Problem(422, "invalid_options", "A value was rejected", str(exc)) from None
