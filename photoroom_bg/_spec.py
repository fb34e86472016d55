"""Photoroom's request contract as its published OpenAPI document states it: the parameters
of each endpoint (:data:`EDIT_PARAMS`, :data:`OBJECT_PARAMS`, :data:`SEGMENT_PARAMS`,
:data:`RENDER_PARAMS`) with their type, enumerated values, bounds, pattern and where each may
travel (query string for GET, multipart body for POST).

The contract test checks these tables against the spec file itself; ``_rules`` derives the
rules on values from them.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Literal, NamedTuple

__all__ = [
    "EDIT_PARAMS",
    "LAYER_IMAGE",
    "MODEL_HEADERS",
    "OBJECT_PARAMS",
    "RENDER_PARAMS",
    "SEGMENT_PARAMS",
    "SHADOWS_HEADER",
    "SHADOWS_MODEL",
    "Param",
    "compile_pattern",
    "lookup_edit_param",
]

Where = Literal["get", "post", "both"]


class Param(NamedTuple):
    """One parameter as the spec describes it.

    ``kind`` is the JSON-schema type (``number|string`` for either); ``enum`` the allowed
    text values (empty: free); ``where`` the method(s) that list it. The other fields mirror
    the schema keywords of the same name; ``format`` also takes ``spacing`` and ``color``
    for the formats the spec states in prose (padding/margin, colours).
    """

    kind: str
    enum: tuple[str, ...] = ()
    where: Where = "both"
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    min_length: int | None = None
    pattern: str | None = None
    format: str | None = None
    min_items: int | None = None
    max_items: int | None = None
    required: bool = False


_SIZES = (
    "LANDSCAPE_HD_16_9",
    "LANDSCAPE_HD_3_2",
    "LANDSCAPE_HD_4_3",
    "PORTRAIT_HD_16_9",
    "PORTRAIT_HD_3_2",
    "PORTRAIT_HD_4_3",
    "SQUARE_HD",
)
_PROMPT_SIZES = ("LANDSCAPE_16_9", "LANDSCAPE_4_3", "PORTRAIT_16_9", "PORTRAIT_4_3", "SQUARE_HD")
_FILE = Param("string", format="binary", where="post")
_NUMBER = Param("number")
_TEXT = Param("string")
_SPACING = Param("number|string", format="spacing")
_ALIGN_X = Param("string", ("center", "left", "right"))
_ALIGN_Y = Param("string", ("bottom", "center", "top"))
_AI_AUTO = Param("string", ("ai.auto",))

SEGMENT_PARAMS: dict[str, Param] = {
    "image_file": Param("string", format="binary", where="post", required=True),
    "format": Param("string", ("png", "jpg", "webp"), "post"),
    "channels": Param("string", ("rgba", "alpha"), "post"),
    "bg_color": Param("string", (), "post", format="color"),
    "size": Param("string", ("preview", "medium", "hd", "full"), "post"),
    "crop": Param("string", ("true", "false"), "post"),
    "despill": Param("string", ("true", "false"), "post"),
}

EDIT_PARAMS: dict[str, Param] = {
    "background.blur.mode": Param("string", ("bokeh", "gaussian")),
    "background.blur.radius": Param("number", exclusive_minimum=0, maximum=0.05),
    "background.color": Param("string", format="color"),
    "background.expandPrompt": Param("object|string", ("auto", "never")),
    # listed among GET's query parameters too: a spec quirk, a file cannot travel in a query
    "background.guidance.imageFile": Param("string", format="binary"),
    "background.guidance.imageUrl": Param("string", where="get"),
    "background.guidance.scale": Param("number", minimum=0, maximum=1),
    "background.imageFile": _FILE,
    "background.imageUrl": Param("string", where="get"),
    "background.negativePrompt": _TEXT,
    "background.prompt": _TEXT,
    "background.scaling": Param("string", ("fill", "fit")),
    "background.seed": _NUMBER,
    "beautify.mode": Param("string", ("ai.auto", "ai.car", "ai.food")),
    "beautify.onSubjectMismatch": Param("string", ("error", "ignore")),
    "beautify.seed": _NUMBER,
    "colorSpace": Param("string", ("original", "sRGB")),
    "describeAnyChange.mode": _AI_AUTO,
    "describeAnyChange.prompt": Param("string", min_length=1),
    "describeAnyChange.seed": _NUMBER,
    "editWithAI.additionalImages.{key}.imageFile": _FILE,
    "editWithAI.additionalImages.{key}.imageUrl": Param("string", where="get"),
    "editWithAI.mode": _AI_AUTO,
    "editWithAI.prompt": Param("string", min_length=1),
    "editWithAI.seed": _NUMBER,
    "expand.mode": _AI_AUTO,
    "expand.seed": _NUMBER,
    "export.dpi": Param("number", minimum=72, maximum=1200),
    "export.format": Param("string", ("avif", "jpeg", "jpg", "png", "webp")),
    "flatLay.mode": _AI_AUTO,
    "flatLay.prompt": _TEXT,
    "flatLay.size": Param("string", _SIZES),
    "ghostMannequin.mode": _AI_AUTO,
    "ghostMannequin.prompt": _TEXT,
    "ghostMannequin.size": Param("string", _SIZES),
    "horizontalAlignment": _ALIGN_X,
    "ignorePaddingAndSnapOnCroppedSides": Param("boolean"),
    "imageFile": _FILE,
    "imageFromPrompt.prompt": Param("string", min_length=1),
    "imageFromPrompt.seed": _NUMBER,
    "imageFromPrompt.size": Param("string", _PROMPT_SIZES),
    "imageUrl": Param("string", where="get"),
    "ironing.mode": _AI_AUTO,
    "keepExistingAlphaChannel": Param("string", ("auto", "never")),
    "layers": Param("object"),
    "lighting.mode": Param(
        "string", ("ai.auto", "ai.optimize-portrait", "ai.preserve-hue-and-saturation")
    ),
    "margin": _SPACING,
    "marginBottom": _SPACING,
    "marginLeft": _SPACING,
    "marginRight": _SPACING,
    "marginTop": _SPACING,
    "maxHeight": _NUMBER,
    "maxWidth": _NUMBER,
    "outline.blurRadius": Param("number", minimum=0, maximum=0.025),
    "outline.color": Param("string", format="color"),
    "outline.width": Param("number", minimum=0, maximum=0.1),
    "outputSize": Param("string", pattern=r"^(auto|\d+x\d+|originalImage|croppedSubject)$"),
    "padding": _SPACING,
    "paddingBottom": _SPACING,
    "paddingLeft": _SPACING,
    "paddingRight": _SPACING,
    "paddingTop": _SPACING,
    "preserveMetadata": Param(
        "string", ("exifSubset", "exifSubsetWithXmpCompatibility", "never", "xmp")
    ),
    "referenceBox": Param("string", ("originalImage", "subjectBox")),
    "removeBackground": Param("boolean"),
    "scaling": Param("string", ("fill", "fit")),
    "segmentation.mode": Param("string", ("ignoreSalientObject", "keepSalientObject")),
    "segmentation.negativePrompt": _TEXT,
    "segmentation.prompt": _TEXT,
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
    ),
    "shadow.intensityOverride": Param("number", minimum=0, maximum=1),
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
    ),
    "shadow.softnessOverride": Param("number", minimum=0, maximum=1),
    "shadow.spreadOverride": Param("number|string", ("long", "medium", "short")),
    "shadow.subjectPoseOverride": Param("number|string", ("flatlay", "upright")),
    "templateId": Param("string", format="uuid"),
    "textRemoval.mode": Param("string", ("ai.all", "ai.artificial", "ai.natural")),
    "uncrop.mode": _AI_AUTO,
    "uncrop.seed": _NUMBER,
    "upscale.downscaleIfNeeded": Param("string", ("always", "never", "skipUpscaleIfNotNeeded")),
    "upscale.mode": Param("string", ("ai.fast", "ai.slow")),
    "verticalAlignment": _ALIGN_Y,
    "virtualModel.additionalProductImages": Param("array", min_items=1, max_items=4),
    "virtualModel.mode": _AI_AUTO,
    "virtualModel.model": Param("object"),
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
    ),
    "virtualModel.prompt": _TEXT,
    "virtualModel.quality": Param("string", ("advanced", "premium", "standard")),
    "virtualModel.scene": Param("object"),
    "virtualModel.size": Param("string", _SIZES),
}

_MODEL_NAMES = (
    "alex",
    "ava",
    "avery",
    "casey",
    "emma",
    "fiona",
    "jackson",
    "jordan",
    "julia",
    "kendall",
    "lena",
    "maya",
    "reece",
    "sam",
    "sophia",
    "taylor",
    "zoe",
)
_SCENE_NAMES = (
    "asiancity",
    "beach",
    "bedroom",
    "businessdistrict",
    "cafe",
    "coloredstudio",
    "concretestudio",
    "countryside",
    "desert",
    "factory",
    "flowers",
    "forest",
    "goldenlight",
    "latincity",
    "library",
    "mountain",
    "nightlights",
    "pool",
    "random",
    "street",
    "studio",
    "sunset",
    "tropical",
)

LAYER_IMAGE = "layers.{name}.image."
#: The fields of the object parameters, flattened into the dotted names they travel under
#: (``virtualModel.model.preset.name=avery``). The spec models these as objects and does not
#: say how to flatten them; dotted keys are the convention every other parameter follows.
OBJECT_PARAMS: dict[str, Param] = {
    "background.expandPrompt.mode": Param("string", ("ai.auto", "ai.never"), required=True),
    "virtualModel.model.preset.name": Param("string", _MODEL_NAMES, required=True),
    "virtualModel.model.custom.imageUrl": _TEXT,
    "virtualModel.model.custom.imageFile": _FILE,
    "virtualModel.scene.preset.name": Param("string", _SCENE_NAMES, required=True),
    "virtualModel.scene.custom.imageUrl": _TEXT,
    "virtualModel.scene.custom.imageFile": _FILE,
    "layers.{name}.text.backgroundColor": _TEXT,
    "layers.{name}.text.content": _TEXT,
    "layers.{name}.text.font": _TEXT,
    "layers.{name}.text.foregroundColor": _TEXT,
    LAYER_IMAGE + "horizontalAlignment": _ALIGN_X,
    LAYER_IMAGE + "imageFile": _FILE,
    LAYER_IMAGE + "imageFromPrompt.prompt": Param("string", min_length=1, required=True),
    LAYER_IMAGE + "imageFromPrompt.seed": _NUMBER,
    LAYER_IMAGE + "imageFromPrompt.size": Param("string", _PROMPT_SIZES),
    LAYER_IMAGE + "imageUrl": _TEXT,
    **{
        LAYER_IMAGE + side: Param("number|string")
        for side in (
            "margin",
            "marginBottom",
            "marginLeft",
            "marginRight",
            "marginTop",
            "padding",
            "paddingBottom",
            "paddingLeft",
            "paddingRight",
            "paddingTop",
        )
    },
    LAYER_IMAGE + "removeBackground": Param("string", ("auto", "never")),
    LAYER_IMAGE + "segmentation.mode": Param(
        "string", ("ignoreSalientObject", "keepSalientObject")
    ),
    LAYER_IMAGE + "segmentation.negativePrompt": _TEXT,
    LAYER_IMAGE + "segmentation.prompt": Param("string", required=True),
    LAYER_IMAGE + "useForAIBackground": Param("string", ("auto", "never")),
    LAYER_IMAGE + "verticalAlignment": _ALIGN_Y,
}

RENDER_PARAMS: dict[str, Param] = {
    "apiKey": Param("string", where="get"),
    "conceptUrl": Param("string", where="get", format="uri"),
    "imageFile": _FILE,
    "imageUrl": Param("string", format="uri"),
    "templateId": Param("string", required=True),
}

#: The AI Shadows model the spec names; ``shadow.mode``'s preset modes need it.
SHADOWS_MODEL = "2026-04-15"
SHADOWS_HEADER = "pr-ai-shadows-model-version"
#: Model-selection headers and their documented values. The spec does not list them (only
#: ``pr-ai-background-model-version: 2`` appears, in a description): values come from
#: Photoroom's documentation.
MODEL_HEADERS: dict[str, tuple[str, ...]] = {
    "pr-background-removal-model-version": ("2023-06-01", "2024-09-26"),
    "pr-ai-background-model-version": ("2", "3", "background-studio-beta-2025-03-17"),
    SHADOWS_HEADER: (SHADOWS_MODEL,),
    "pr-hd-background-removal": ("auto",),
}


@cache
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A wire-name pattern (``{name}`` / ``{key}`` for one dotted segment) as a regex."""
    parts = re.split(r"\{(?:name|key)\}", pattern)
    return re.compile("^" + "[^.]+".join(re.escape(p) for p in parts) + r"\Z")


_KEYED = re.compile(r"^editWithAI\.additionalImages\.[^.]+\.(imageFile|imageUrl)\Z")


def lookup_edit_param(name: str) -> tuple[str, Param] | None:
    """The spec entry for a ``/v2/edit`` wire name (``None`` when the spec does not list it).

    Keyed names (``editWithAI.additionalImages.<key>.imageFile``) and the flattened fields of
    object parameters (``layers.<name>.image.imageUrl``) map to their entry.
    """
    if name in EDIT_PARAMS:
        return name, EDIT_PARAMS[name]
    if name in OBJECT_PARAMS:
        return name, OBJECT_PARAMS[name]
    match = _KEYED.match(name)
    if match:
        generic = f"editWithAI.additionalImages.{{key}}.{match.group(1)}"
        return generic, EDIT_PARAMS[generic]
    for pattern, param in OBJECT_PARAMS.items():
        if "{" in pattern and compile_pattern(pattern).match(name):
            return pattern, param
    return None
