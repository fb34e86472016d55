"""The request contract the emulator enforces: Photoroom's published spec, as transcribed in
:mod:`photoroom_bg._spec` and :mod:`photoroom_bg._rules` (the same tables and rules the SDK
checks before sending).

``EDIT_PARAMS`` lists every ``/v2/edit`` parameter with its type, its enumerated values and
where it may travel (query string for GET, multipart body for POST); ``EDIT_RULES`` every
constraint on their values. The contract test checks the table against the spec file itself
and each rule on both sides, so neither can drift silently.
"""

from __future__ import annotations

from .._rules import EDIT_RULES, RENDER_RULES, SEGMENT_RULES, Rule, WireRequest, violations
from .._spec import (
    EDIT_PARAMS,
    OBJECT_PARAMS,
    RENDER_PARAMS,
    SEGMENT_PARAMS,
    Param,
    lookup_edit_param,
)

__all__ = [
    "EDIT_PARAMS",
    "EDIT_RULES",
    "NOT_EMULATED",
    "OBJECT_PARAMS",
    "RENDER_PARAMS",
    "RENDER_RULES",
    "SEGMENT_PARAMS",
    "SEGMENT_RULES",
    "Param",
    "Rule",
    "WireRequest",
    "lookup_edit_param",
    "violations",
]

#: Parameters the emulator accepts and validates but whose effect it does not reproduce (they
#: need Photoroom's AI models): the image comes back as if they were absent.
NOT_EMULATED: frozenset[str] = frozenset(
    name
    for name in EDIT_PARAMS
    if name.split(".")[0]
    in {
        "beautify",
        "describeAnyChange",
        "editWithAI",
        "expand",
        "flatLay",
        "ghostMannequin",
        "imageFromPrompt",
        "ironing",
        "layers",
        "lighting",
        "outline",
        "segmentation",
        "shadow",
        "textRemoval",
        "uncrop",
        "upscale",
        "virtualModel",
    }
    or name
    in {
        "background.blur.mode",
        "background.blur.radius",
        "background.expandPrompt",
        "background.guidance.imageFile",
        "background.guidance.imageUrl",
        "background.guidance.scale",
        "background.imageFile",
        "background.imageUrl",
        "background.negativePrompt",
        "background.scaling",
        "colorSpace",
        "export.dpi",
        "horizontalAlignment",
        "ignorePaddingAndSnapOnCroppedSides",
        "keepExistingAlphaChannel",
        "maxHeight",
        "maxWidth",
        "preserveMetadata",
        "referenceBox",
        "scaling",
        "templateId",
        "verticalAlignment",
    }
)
