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
from ..options import (
    CustomImage,
    EditOptions,
    ImageLayer,
    LayerSegmentation,
    PromptImage,
    SegmentOptions,
    TextLayer,
)

__all__ = ["options_from_dict", "options_to_dict"]

_KINDS: dict[str, type[SegmentOptions] | type[EditOptions]] = {
    "segment": SegmentOptions,
    "edit": EditOptions,
}
# image bytes never travel in a parameter: these options have URL twins
_FILE_FIELDS = frozenset({"background_image_file", "background_guidance_image_file"})
#: The objects some edit options take, as dicts: where each one goes says what it is, but
#: a layer says whether it is a text or an image layer ("type", else told by its fields)
_LAYERS: dict[str, type[TextLayer] | type[ImageLayer]] = {"text": TextLayer, "image": ImageLayer}
_OBJECT_FIELDS: dict[tuple[type[Any], str], type[Any]] = {
    (EditOptions, "virtual_model_model"): CustomImage,
    (EditOptions, "virtual_model_scene"): CustomImage,
    (ImageLayer, "image_from_prompt"): PromptImage,
    (ImageLayer, "segmentation"): LayerSegmentation,
}
_NO_BYTES = "image bytes cannot travel in job parameters; use the matching URL (image_url, ..._url)"


def _to_plain(value: Any, where: str) -> Any:
    """``value`` (an option's) as JSON-ready data: the objects as dicts of their fields
    that are set, a layer with its ``type``."""
    if isinstance(value, bytes):
        raise ValidationError(f"{where}: {_NO_BYTES}", parameter=where.split(".")[0])
    if attrs.has(type(value)):
        out: dict[str, Any] = {}
        if isinstance(value, (TextLayer, ImageLayer)):
            out["type"] = "text" if isinstance(value, TextLayer) else "image"
        for field in attrs.fields(type(value)):
            item = getattr(value, field.name)
            if item is not None:
                out[field.name] = _to_plain(item, f"{where}.{field.name}")
        return out
    if isinstance(value, Mapping):
        return {key: _to_plain(item, f"{where}[{key!r}]") for key, item in value.items()}
    return value


def _object(cls: type[Any], data: Mapping[str, Any], where: str) -> Any:
    """An option's object built from its dict (and the dicts within it)."""
    fields = dict(data)
    known = attrs.fields_dict(cls)
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ValidationError(f"{where}: unknown {cls.__name__} field(s) {unknown}")
    for name, item in fields.items():
        inner = _OBJECT_FIELDS.get((cls, name))
        if inner is not None and isinstance(item, Mapping):
            fields[name] = _object(inner, item, f"{where}.{name}")
    try:
        return cls(**fields)
    except TypeError as exc:
        raise ValidationError(f"{where}: invalid {cls.__name__}: {exc}") from None


def _layer(data: Any, where: str) -> Any:
    """A layer from its dict: ``"type": "text" | "image"``, or the only kind whose fields
    it names."""
    if not isinstance(data, Mapping):
        return data  # the options' own check names what is wrong
    fields = dict(data)
    kind = fields.pop("type", None)
    if kind is None:
        fitting = [k for k, c in _LAYERS.items() if set(fields) <= set(attrs.fields_dict(c))]
        kind = fitting[0] if len(fitting) == 1 else None
        if kind is None:
            raise ValidationError(
                f'{where}: say which layer this is with "type": "text" or "image"'
            )
    cls = _LAYERS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValidationError(f"{where}: layer type {kind!r} is not one of 'text', 'image'")
    return _object(cls, fields, where)


def options_from_dict(data: Mapping[str, Any] | None) -> SegmentOptions | EditOptions:
    """Build options from ``{"type": "segment" | "edit", <field>: <value>, ...}``.

    ``type`` defaults to ``"segment"``; an empty or ``None`` dict gives default
    :class:`~photoroom_bg.SegmentOptions`.

    Objects are given as dicts of their fields (see :func:`options_to_dict`):
    ``{"type": "edit", "layers": {"caption": {"type": "text", "content": "SALE"}}}``.

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
    for name, item in fields.items():
        if name == "layers" and isinstance(item, Mapping):
            fields[name] = {key: _layer(layer, f"layers[{key!r}]") for key, layer in item.items()}
        elif (inner := _OBJECT_FIELDS.get((cls, name))) is not None and isinstance(item, Mapping):
            fields[name] = _object(inner, item, name)
    try:
        return cls(**fields)
    except TypeError as exc:  # a wrong shape the validators did not catch
        raise ValidationError(f"invalid {kind} options: {exc}") from None


def options_to_dict(
    options: SegmentOptions | EditOptions | Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The JSON-ready dict of ``options`` (only the fields that differ from the defaults).

    A dict is validated and returned in canonical form, so ``options_to_dict`` accepts
    whatever :func:`options_from_dict` does. The objects some edit options take are dicts of
    their fields that are set: a :class:`~photoroom_bg.CustomImage`,
    :class:`~photoroom_bg.PromptImage` or :class:`~photoroom_bg.LayerSegmentation` as it
    is, a layer with ``"type": "text"`` or ``"image"``.

    Raises:
        ValidationError: image bytes are set, in a file field, a layer or a custom image
            (bytes never go into a parameter).
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
        out[field.name] = _to_plain(value, field.name)
    return out
