"""One cattrs converter: option objects -> wire fields, JSON bodies -> models.

Every wire-format decision lives here: lowercase booleans, plain decimals, ``#`` added for
``/v1/segment``'s ``bg_color`` and dropped from ``/v2/edit`` colours, dotted v2 field names
(taken from each attribute's ``wire`` metadata by a hook factory), file-typed fields split off
for multipart bodies, and model-version options turned into request headers.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn, override

from .errors import APIStatusError, ValidationError
from .models import Account
from .options import EditOptions, SegmentOptions

__all__ = ["converter", "decode_base64_image", "edit_fields", "segment_fields", "wire_value"]

converter = cattrs.Converter()

_EDIT_COLOR_FIELDS = frozenset({"background.color", "outline.color"})


def _wire_name_hook(cls: type[Any]) -> Any:
    """Unstructure an options class to ``{wire name: value}``, leaving out unset fields."""
    overrides: dict[str, Any] = {}
    for field in attrs.fields(cls):
        if "wire" in field.metadata:
            overrides[field.name] = override(rename=field.metadata["wire"], omit_if_default=True)
        else:
            overrides[field.name] = override(omit=True)
    return make_dict_unstructure_fn(cls, converter, **overrides)


converter.register_unstructure_hook_factory(
    lambda cls: cls is EditOptions,
    _wire_name_hook,
)


def wire_value(value: object) -> str:
    """Encode one scalar the way Photoroom expects it in a form field or query string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = f"{value:.10f}".rstrip("0").rstrip(".")
        return text if text not in ("", "-0") else "0"
    if isinstance(value, (int, str)):
        return str(value)
    raise ValidationError(f"cannot send {type(value).__name__} value {value!r} as a form field")


def _headers_of(options: EditOptions | SegmentOptions) -> dict[str, str]:
    headers = {
        field.metadata["header"]: str(getattr(options, field.name))
        for field in attrs.fields(type(options))
        if "header" in field.metadata and getattr(options, field.name) is not None
    }
    headers.update(options.extra_headers)
    return headers


def segment_fields(options: SegmentOptions) -> tuple[dict[str, str], dict[str, str]]:
    """Return ``(form fields, headers)`` for ``POST /v1/segment``."""
    fields: dict[str, str] = {}
    if options.format != "png":
        fields["format"] = options.format
    if options.channels != "rgba":
        fields["channels"] = options.channels
    if options.bg_color is not None:
        color = options.bg_color
        is_hex = all(c in "0123456789abcdefABCDEF" for c in color.lstrip("#"))
        fields["bg_color"] = f"#{color.lstrip('#')}" if is_hex else color
    if options.size != "full":
        fields["size"] = options.size
    if options.crop:
        fields["crop"] = "true"
    if options.despill:
        fields["despill"] = "true"
    for name, value in options.extra_params.items():
        fields[name] = wire_value(value)
    headers = _headers_of(options)
    if options.base64:
        headers["accept"] = "application/json"
    return fields, headers


def edit_fields(
    options: EditOptions,
) -> tuple[dict[str, str], dict[str, bytes], dict[str, str]]:
    """Return ``(text fields, file fields, headers)`` for ``/v2/edit``.

    File fields (``background.imageFile``...) can only travel in a multipart POST; the caller
    refuses them for GET.
    """
    raw: dict[str, Any] = converter.unstructure(options)
    texts: dict[str, str] = {}
    files: dict[str, bytes] = {}
    for name, value in raw.items():
        if value is None:
            continue
        if isinstance(value, bytes):
            files[name] = value
        elif name in _EDIT_COLOR_FIELDS:
            texts[name] = str(value).lstrip("#")
        else:
            texts[name] = wire_value(value)
    for name, value in options.extra_params.items():
        if isinstance(value, bytes):
            files[name] = value
        else:
            texts[name] = wire_value(value)
    return texts, files, _headers_of(options)


def _structure_account(data: Any, _: type[Account]) -> Account:
    if not isinstance(data, Mapping):
        raise TypeError("account body is not an object")
    usage = data.get("images")
    if usage is None:
        usage = data.get("credits")
    if not isinstance(usage, Mapping):
        raise TypeError("account body has no 'images' or 'credits' object")
    plan = data.get("plan")
    return Account(
        images_available=float(usage["available"]),
        images_subscription=float(usage["subscription"]),
        plan=str(plan) if plan is not None else None,
    )


converter.register_structure_hook(Account, _structure_account)


def decode_base64_image(body: bytes) -> bytes:
    """Decode the JSON body of a base64 ``/v1/segment`` answer (``base64img`` or ``result_b64``)."""
    try:
        data = json.loads(body)
        encoded = data.get("base64img") or data.get("result_b64")
        if not isinstance(encoded, str):
            raise KeyError("base64img")
        if encoded.startswith("data:"):
            encoded = encoded.split(",", 1)[1]
        return base64.b64decode(encoded, validate=True)
    except (ValueError, KeyError, AttributeError, binascii.Error) as exc:
        raise APIStatusError(
            "Photoroom returned a JSON body without a decodable 'base64img'/'result_b64' image",
            status_code=200,
            body=None,
        ) from exc
