"""Options as JSON-ready dicts: what a flow or task parameter may carry.

A flow run's parameters are stored by Prefect and shown in its UI, so options travel as a small
dict (``{"type": "edit", "background_color": "FFFFFF"}``) and are validated into
:class:`~photoroom_bg.SegmentOptions` / :class:`~photoroom_bg.EditOptions` on both sides: when
the run is created (a typo fails before anything is listed or billed) and in each shard.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ..errors import ValidationError
from ..options import EditOptions, SegmentOptions

__all__ = ["options_from_dict", "options_to_dict"]

_KINDS: dict[str, type[SegmentOptions] | type[EditOptions]] = {
    "segment": SegmentOptions,
    "edit": EditOptions,
}
# image bytes never travel in a parameter: these options have URL twins
_FILE_FIELDS = frozenset({"background_image_file", "background_guidance_image_file"})


def options_from_dict(data: Mapping[str, Any] | None) -> SegmentOptions | EditOptions:
    """Build options from ``{"type": "segment" | "edit", <field>: <value>, ...}``.

    ``type`` defaults to ``"segment"``; an empty or ``None`` dict gives default
    :class:`~photoroom_bg.SegmentOptions`.

    Raises:
        ValidationError: unknown type or field, a file field (pass its ``..._url`` twin), or
            a value the options class rejects.
    """
    fields = dict(data or {})
    kind = fields.pop("type", "segment")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValidationError(f"options type {kind!r} is not one of 'segment', 'edit'")
    files = sorted(_FILE_FIELDS & fields.keys())
    if files:
        raise ValidationError(
            f"{', '.join(files)}: image bytes cannot travel in job parameters; "
            "use the matching ..._url option"
        )
    known = attrs.fields_dict(cls)
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ValidationError(f"unknown {kind} option(s) {unknown}")
    try:
        return cls(**fields)
    except TypeError as exc:  # a wrong shape the validators did not catch
        raise ValidationError(f"invalid {kind} options: {exc}") from None


def options_to_dict(
    options: SegmentOptions | EditOptions | Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The JSON-ready dict of ``options`` (only the fields that differ from the defaults).

    A dict is validated and returned in canonical form, so ``options_to_dict`` accepts
    whatever :func:`options_from_dict` does.

    Raises:
        ValidationError: a file field is set (bytes never go into a parameter).
    """
    if options is None or isinstance(options, Mapping):
        options = options_from_dict(options)
    kind = "edit" if isinstance(options, EditOptions) else "segment"
    out: dict[str, Any] = {"type": kind}
    for field in attrs.fields(type(options)):
        value = getattr(options, field.name)
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        if value == default:
            continue
        if field.name in _FILE_FIELDS:
            raise ValidationError(
                f"{field.name}: image bytes cannot travel in job parameters; "
                "use the matching ..._url option"
            )
        out[field.name] = dict(value) if isinstance(value, Mapping) else value
    return out
