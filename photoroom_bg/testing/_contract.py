"""The request contract the emulator enforces, transcribed from Photoroom's published spec.

``EDIT_PARAMS`` lists every ``/v2/edit`` parameter with its type, its enumerated values and
where it may travel (query string for GET, multipart body for POST). The contract test checks
this table against the spec file itself, so it cannot drift silently.
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

__all__ = [
    "EDIT_PARAMS",
    "NOT_EMULATED",
    "SEGMENT_PARAMS",
    "Param",
    "lookup_edit_param",
]


class Param(NamedTuple):
    """One parameter: JSON-schema type(s), allowed values (empty: free) and method."""

    kind: str
    enum: tuple[str, ...]
    where: Literal["get", "post", "both"]


SEGMENT_PARAMS: dict[str, Param] = {
    "image_file": Param("string", (), "post"),
    "format": Param("string", ("png", "jpg", "webp"), "post"),
    "channels": Param("string", ("rgba", "alpha"), "post"),
    "bg_color": Param("string", (), "post"),
    "size": Param("string", ("preview", "medium", "hd", "full"), "post"),
    "crop": Param("string", ("true", "false"), "post"),
    "despill": Param("string", ("true", "false"), "post"),
}

EDIT_PARAMS: dict[str, Param] = {
    "background.blur.mode": Param("string", ("bokeh", "gaussian"), "both"),
    "background.blur.radius": Param("number", (), "both"),
    "background.color": Param("string", (), "both"),
    "background.expandPrompt": Param("object|string", ("auto", "never"), "both"),
    "background.guidance.imageFile": Param("string", (), "both"),
    "background.guidance.imageUrl": Param("string", (), "get"),
    "background.guidance.scale": Param("number", (), "both"),
    "background.imageFile": Param("string", (), "post"),
    "background.imageUrl": Param("string", (), "get"),
    "background.negativePrompt": Param("string", (), "both"),
    "background.prompt": Param("string", (), "both"),
    "background.scaling": Param("string", ("fill", "fit"), "both"),
    "background.seed": Param("number", (), "both"),
    "beautify.mode": Param("string", ("ai.auto", "ai.car", "ai.food"), "both"),
    "beautify.onSubjectMismatch": Param("string", ("error", "ignore"), "both"),
    "beautify.seed": Param("number", (), "both"),
    "colorSpace": Param("string", ("original", "sRGB"), "both"),
    "describeAnyChange.mode": Param("string", ("ai.auto",), "both"),
    "describeAnyChange.prompt": Param("string", (), "both"),
    "describeAnyChange.seed": Param("number", (), "both"),
    "editWithAI.additionalImages.{key}.imageFile": Param("string", (), "post"),
    "editWithAI.additionalImages.{key}.imageUrl": Param("string", (), "get"),
    "editWithAI.mode": Param("string", ("ai.auto",), "both"),
    "editWithAI.prompt": Param("string", (), "both"),
    "editWithAI.seed": Param("number", (), "both"),
    "expand.mode": Param("string", ("ai.auto",), "both"),
    "expand.seed": Param("number", (), "both"),
    "export.dpi": Param("number", (), "both"),
    "export.format": Param("string", ("avif", "jpeg", "jpg", "png", "webp"), "both"),
    "flatLay.mode": Param("string", ("ai.auto",), "both"),
    "flatLay.prompt": Param("string", (), "both"),
    "flatLay.size": Param(
        "string",
        (
            "LANDSCAPE_HD_16_9",
            "LANDSCAPE_HD_3_2",
            "LANDSCAPE_HD_4_3",
            "PORTRAIT_HD_16_9",
            "PORTRAIT_HD_3_2",
            "PORTRAIT_HD_4_3",
            "SQUARE_HD",
        ),
        "both",
    ),
    "ghostMannequin.mode": Param("string", ("ai.auto",), "both"),
    "ghostMannequin.prompt": Param("string", (), "both"),
    "ghostMannequin.size": Param(
        "string",
        (
            "LANDSCAPE_HD_16_9",
            "LANDSCAPE_HD_3_2",
            "LANDSCAPE_HD_4_3",
            "PORTRAIT_HD_16_9",
            "PORTRAIT_HD_3_2",
            "PORTRAIT_HD_4_3",
            "SQUARE_HD",
        ),
        "both",
    ),
    "horizontalAlignment": Param("string", ("center", "left", "right"), "both"),
    "ignorePaddingAndSnapOnCroppedSides": Param("boolean", (), "both"),
    "imageFile": Param("string", (), "post"),
    "imageFromPrompt.prompt": Param("string", (), "both"),
    "imageFromPrompt.seed": Param("number", (), "both"),
    "imageFromPrompt.size": Param(
        "string",
        ("LANDSCAPE_16_9", "LANDSCAPE_4_3", "PORTRAIT_16_9", "PORTRAIT_4_3", "SQUARE_HD"),
        "both",
    ),
    "imageUrl": Param("string", (), "get"),
    "ironing.mode": Param("string", ("ai.auto",), "both"),
    "keepExistingAlphaChannel": Param("string", ("auto", "never"), "both"),
    "layers": Param("object", (), "both"),
    "lighting.mode": Param(
        "string", ("ai.auto", "ai.optimize-portrait", "ai.preserve-hue-and-saturation"), "both"
    ),
    "margin": Param("number|string", (), "both"),
    "marginBottom": Param("number|string", (), "both"),
    "marginLeft": Param("number|string", (), "both"),
    "marginRight": Param("number|string", (), "both"),
    "marginTop": Param("number|string", (), "both"),
    "maxHeight": Param("number", (), "both"),
    "maxWidth": Param("number", (), "both"),
    "outline.blurRadius": Param("number", (), "both"),
    "outline.color": Param("string", (), "both"),
    "outline.width": Param("number", (), "both"),
    "outputSize": Param("string", (), "both"),
    "padding": Param("number|string", (), "both"),
    "paddingBottom": Param("number|string", (), "both"),
    "paddingLeft": Param("number|string", (), "both"),
    "paddingRight": Param("number|string", (), "both"),
    "paddingTop": Param("number|string", (), "both"),
    "preserveMetadata": Param(
        "string", ("exifSubset", "exifSubsetWithXmpCompatibility", "never", "xmp"), "both"
    ),
    "referenceBox": Param("string", ("originalImage", "subjectBox"), "both"),
    "removeBackground": Param("boolean", (), "both"),
    "scaling": Param("string", ("fill", "fit"), "both"),
    "segmentation.mode": Param("string", ("ignoreSalientObject", "keepSalientObject"), "both"),
    "segmentation.negativePrompt": Param("string", (), "both"),
    "segmentation.prompt": Param("string", (), "both"),
    "shadow.directionOverride": Param(
        "number|string",
        (
            "behind",
            "behindLeft",
            "behindRight",
            "front",
            "frontLeft",
            "frontRight",
            "left",
            "right",
        ),
        "both",
    ),
    "shadow.intensityOverride": Param("number", (), "both"),
    "shadow.mode": Param(
        "string",
        (
            "ai.auto-with-overrides",
            "ai.floating",
            "ai.hard",
            "ai.preset-hard",
            "ai.preset-soft",
            "ai.soft",
        ),
        "both",
    ),
    "shadow.softnessOverride": Param("number", (), "both"),
    "shadow.spreadOverride": Param("number|string", ("long", "medium", "short"), "both"),
    "shadow.subjectPoseOverride": Param("number|string", ("flatlay", "upright"), "both"),
    "templateId": Param("string", (), "both"),
    "textRemoval.mode": Param("string", ("ai.all", "ai.artificial", "ai.natural"), "both"),
    "uncrop.mode": Param("string", ("ai.auto",), "both"),
    "uncrop.seed": Param("number", (), "both"),
    "upscale.downscaleIfNeeded": Param(
        "string", ("always", "never", "skipUpscaleIfNotNeeded"), "both"
    ),
    "upscale.mode": Param("string", ("ai.fast", "ai.slow"), "both"),
    "verticalAlignment": Param("string", ("bottom", "center", "top"), "both"),
    "virtualModel.additionalProductImages": Param("array", (), "both"),
    "virtualModel.mode": Param("string", ("ai.auto",), "both"),
    "virtualModel.model": Param("object", (), "both"),
    "virtualModel.pose": Param(
        "string",
        (
            "34turn",
            "adjustingclothing",
            "back",
            "crossedarms",
            "handinpocket",
            "overtheshoulder",
            "playfulspin",
            "powerstance",
            "random",
            "seated",
            "standing",
            "walkingforward",
        ),
        "both",
    ),
    "virtualModel.prompt": Param("string", (), "both"),
    "virtualModel.quality": Param("string", ("advanced", "premium", "standard"), "both"),
    "virtualModel.scene": Param("object", (), "both"),
    "virtualModel.size": Param(
        "string",
        (
            "LANDSCAPE_HD_16_9",
            "LANDSCAPE_HD_3_2",
            "LANDSCAPE_HD_4_3",
            "PORTRAIT_HD_16_9",
            "PORTRAIT_HD_3_2",
            "PORTRAIT_HD_4_3",
            "SQUARE_HD",
        ),
        "both",
    ),
}

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

_KEYED = re.compile(r"^editWithAI\.additionalImages\.[^.]+\.(imageFile|imageUrl)$")
_OBJECTS = ("layers.", "virtualModel.model.", "virtualModel.scene.", "background.expandPrompt.")


def lookup_edit_param(name: str) -> tuple[str, Param] | None:
    """The spec entry for a wire name (``None`` when the spec does not list it).

    Keyed names (``editWithAI.additionalImages.<key>.imageFile``) and the flattened fields
    of object parameters (``layers.<...>``, ``virtualModel.model.<...>``) map to their entry.
    """
    if name in EDIT_PARAMS:
        return name, EDIT_PARAMS[name]
    match = _KEYED.match(name)
    if match:
        generic = f"editWithAI.additionalImages.{{key}}.{match.group(1)}"
        return generic, EDIT_PARAMS[generic]
    for prefix in _OBJECTS:
        if name.startswith(prefix) and len(name) > len(prefix):
            base = prefix.rstrip(".")
            return base, Param("object", (), EDIT_PARAMS[base].where)
    return None
