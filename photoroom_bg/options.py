"""Typed, validated options for ``/v1/segment`` (:class:`SegmentOptions`) and ``/v2/edit``
(:class:`EditOptions`).

Values are checked when an options object is built, so a typo never costs a request or a
credit. Anything the API adds later can be passed through ``extra_params`` /
``extra_headers`` until it gets a typed attribute here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

import attrs

from .errors import ValidationError

__all__ = ["EditOptions", "SegmentOptions"]

T = TypeVar("T")

_HEX = re.compile(r"^#?(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})$")
_NAME = re.compile(r"^[a-zA-Z]{3,30}$")
_SPACING = re.compile(r"^(?:\d+(?:\.\d+)?%|\d+px)$")
_OUTPUT_SIZE = re.compile(r"^(?:auto|originalImage|croppedSubject|\d{1,5}x\d{1,5})$")


def _one_of(*allowed: object) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and value not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            raise ValidationError(f"{attribute.name}={value!r} is not one of {choices}")

    return check


def _color(_: Any, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not (_HEX.match(value) or _NAME.match(value)):
        raise ValidationError(
            f"{attribute.name}={value!r} is not a colour: use hex such as 'FF00FF' or a "
            "colour name such as 'white'"
        )


def _number(low: float | None = None, high: float | None = None, *, integer: bool = False) -> Any:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            kind = "an integer" if integer else "a number"
            raise ValidationError(f"{attribute.name} must be {kind}, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValidationError(f"{attribute.name}={value!r} is outside [{low}, {high}]")

    return check


def _spacing(_: Any, attribute: attrs.Attribute[Any], value: float | str | None) -> None:
    if value is None:
        return
    if isinstance(value, bool):
        raise ValidationError(f"{attribute.name} must be a number or a string, got {value!r}")
    if isinstance(value, (int, float)):
        if not 0 <= value <= 0.49:
            raise ValidationError(
                f"{attribute.name}={value!r}: a ratio must be within 0..0.49 "
                "(or pass a string such as '30%' or '100px')"
            )
        return
    if not isinstance(value, str) or not _SPACING.match(value):
        raise ValidationError(
            f"{attribute.name}={value!r} must be a ratio (0..0.49), a percentage such as "
            "'30%' or pixels such as '100px'"
        )


def _bool(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise ValidationError(f"{attribute.name} must be True or False, got {value!r}")


def _text(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValidationError(f"{attribute.name} must be a non-empty string, got {value!r}")


def _opt(wire: str, validator: Any = None, default: Any = None) -> Any:
    """An optional option sent as ``wire`` when it is not ``None``."""
    return attrs.field(default=default, validator=validator, metadata={"wire": wire})


def _header(name: str, *allowed: str) -> Any:
    return attrs.field(
        default=None, validator=_one_of(*allowed) if allowed else _text, metadata={"header": name}
    )


def _mapping(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value or {})


SegmentFormat = Literal["png", "jpg", "webp"]
SegmentChannels = Literal["rgba", "alpha"]
SegmentSize = Literal["preview", "medium", "hd", "full"]


@attrs.frozen(kw_only=True)
class SegmentOptions:
    """Options of ``POST https://sdk.photoroom.com/v1/segment`` (Remove Background).

    Attributes:
        format: output encoding, ``png`` (default), ``jpg`` or ``webp``.
        channels: ``rgba`` (cut-out) or ``alpha`` (the mask only, white = subject).
        bg_color: a background colour instead of transparency: hex (``#FF00FF``; the ``#`` is
            added if missing) or an HTML colour name.
        size: ``preview`` (0.25 MP), ``medium`` (1.5 MP), ``hd`` (4 MP) or ``full`` (default).
        crop: crop the output to the subject's bounding box.
        despill: remove green-screen colour spill.
        base64: ask for a JSON response with the image in base64 (``Accept: application/json``);
            the result is decoded for you, so this only matters behind proxies that mangle
            binary bodies.
        extra_params: more form fields, sent as given (booleans as ``true``/``false``).
        extra_headers: more request headers.
    """

    format: SegmentFormat = attrs.field(default="png", validator=_one_of("png", "jpg", "webp"))
    channels: SegmentChannels = attrs.field(default="rgba", validator=_one_of("rgba", "alpha"))
    bg_color: str | None = attrs.field(default=None, validator=_color)
    size: SegmentSize = attrs.field(
        default="full", validator=_one_of("preview", "medium", "hd", "full")
    )
    crop: bool = attrs.field(default=False, validator=_bool)
    despill: bool = attrs.field(default=False, validator=_bool)
    base64: bool = attrs.field(default=False, validator=_bool)
    extra_params: Mapping[str, Any] = attrs.field(factory=dict, converter=_mapping)
    extra_headers: Mapping[str, str] = attrs.field(factory=dict, converter=_mapping)


_SIZE_PRESETS = (
    "PORTRAIT_HD_16_9",
    "PORTRAIT_HD_4_3",
    "PORTRAIT_HD_3_2",
    "SQUARE_HD",
    "LANDSCAPE_HD_3_2",
    "LANDSCAPE_HD_4_3",
    "LANDSCAPE_HD_16_9",
)


@attrs.frozen(kw_only=True)
class EditOptions:
    """Options of ``/v2/edit`` (Image Editing), grouped as Photoroom documents them.

    Every attribute defaults to ``None``, meaning "not sent, use Photoroom's default". The
    wire name of each attribute is the dotted or camelCase name from the API reference
    (``background_color`` -> ``background.color``, ``output_size`` -> ``outputSize``).

    Background: ``remove_background``, ``background_color`` (hex without ``#``, or a name; a
    leading ``#`` is dropped for you), ``background_image_url``, ``background_image_file``
    (bytes, POST only), ``background_prompt``, ``background_negative_prompt``,
    ``background_seed``, ``background_scaling``, ``background_blur_mode``,
    ``background_blur_radius``, ``background_expand_prompt``, ``background_guidance_image_url``,
    ``background_guidance_image_file``, ``background_guidance_scale``.

    Positioning: ``padding``, ``padding_top``/``_bottom``/``_left``/``_right``, ``margin`` and its
    per-side variants (a ratio 0..0.49, ``"30%"`` or ``"100px"``), ``output_size``
    (``auto``, ``WIDTHxHEIGHT``, ``originalImage``, ``croppedSubject``), ``max_width``,
    ``max_height``, ``scaling``, ``horizontal_alignment``, ``vertical_alignment``,
    ``reference_box``, ``ignore_padding_and_snap_on_cropped_sides``.

    Effects: ``shadow_mode`` and the ``shadow_*_override`` values, ``lighting_mode``,
    ``outline_color``/``_width``/``_blur_radius``, ``text_removal_mode``, ``uncrop_mode``,
    ``uncrop_seed``, ``upscale_mode``, ``upscale_downscale_if_needed``, ``beautify_mode``,
    ``beautify_seed``, ``beautify_on_subject_mismatch``, ``expand_mode``, ``expand_seed``,
    ``edit_with_ai_mode``/``_prompt``/``_seed``, ``ironing_mode``, ``segmentation_prompt``,
    ``segmentation_negative_prompt``, ``segmentation_mode``, ``keep_existing_alpha_channel``,
    ``template_id``, ``image_from_prompt_prompt``/``_seed``/``_size``, ``flat_lay_*``,
    ``ghost_mannequin_*``, ``virtual_model_*``.

    Export: ``export_format`` (png, jpeg, jpg, webp, avif), ``export_dpi`` (72..1200),
    ``preserve_metadata``, ``color_space``.

    Model versions (sent as request headers): ``background_removal_model_version``,
    ``ai_background_model_version``, ``ai_shadows_model_version``, ``hd_background_removal``.

    Pass-through: ``extra_params`` (more fields, e.g. ``{"layers.logo.image.imageUrl": ...}``)
    and ``extra_headers``.
    """

    # background
    remove_background: bool | None = _opt("removeBackground", _bool)
    background_color: str | None = _opt("background.color", _color)
    background_image_url: str | None = _opt("background.imageUrl", _text)
    background_image_file: bytes | None = _opt("background.imageFile")
    background_prompt: str | None = _opt("background.prompt", _text)
    background_negative_prompt: str | None = _opt("background.negativePrompt", _text)
    background_seed: int | None = _opt("background.seed", _number(0, integer=True))
    background_scaling: Literal["fit", "fill"] | None = _opt(
        "background.scaling", _one_of("fit", "fill")
    )
    background_blur_mode: Literal["gaussian", "bokeh"] | None = _opt(
        "background.blur.mode", _one_of("gaussian", "bokeh")
    )
    background_blur_radius: float | None = _opt("background.blur.radius", _number(0, 0.05))
    background_expand_prompt: Literal["auto", "never", "ai.auto", "ai.never"] | None = _opt(
        "background.expandPrompt", _one_of("auto", "never", "ai.auto", "ai.never")
    )
    background_guidance_image_url: str | None = _opt("background.guidance.imageUrl", _text)
    background_guidance_image_file: bytes | None = _opt("background.guidance.imageFile")
    background_guidance_scale: float | None = _opt("background.guidance.scale", _number(0, 1))
    # positioning
    padding: float | str | None = _opt("padding", _spacing)
    padding_top: float | str | None = _opt("paddingTop", _spacing)
    padding_bottom: float | str | None = _opt("paddingBottom", _spacing)
    padding_left: float | str | None = _opt("paddingLeft", _spacing)
    padding_right: float | str | None = _opt("paddingRight", _spacing)
    margin: float | str | None = _opt("margin", _spacing)
    margin_top: float | str | None = _opt("marginTop", _spacing)
    margin_bottom: float | str | None = _opt("marginBottom", _spacing)
    margin_left: float | str | None = _opt("marginLeft", _spacing)
    margin_right: float | str | None = _opt("marginRight", _spacing)
    output_size: str | None = _opt("outputSize")
    max_width: int | None = _opt("maxWidth", _number(1, integer=True))
    max_height: int | None = _opt("maxHeight", _number(1, integer=True))
    scaling: Literal["fit", "fill"] | None = _opt("scaling", _one_of("fit", "fill"))
    horizontal_alignment: Literal["left", "center", "right"] | None = _opt(
        "horizontalAlignment", _one_of("left", "center", "right")
    )
    vertical_alignment: Literal["top", "center", "bottom"] | None = _opt(
        "verticalAlignment", _one_of("top", "center", "bottom")
    )
    reference_box: Literal["subjectBox", "originalImage"] | None = _opt(
        "referenceBox", _one_of("subjectBox", "originalImage")
    )
    ignore_padding_and_snap_on_cropped_sides: bool | None = _opt(
        "ignorePaddingAndSnapOnCroppedSides", _bool
    )
    # shadow and lighting
    shadow_mode: (
        Literal[
            "ai.soft",
            "ai.hard",
            "ai.floating",
            "ai.preset-soft",
            "ai.preset-hard",
            "ai.auto-with-overrides",
        ]
        | None
    ) = _opt(
        "shadow.mode",
        _one_of(
            "ai.soft",
            "ai.hard",
            "ai.floating",
            "ai.preset-soft",
            "ai.preset-hard",
            "ai.auto-with-overrides",
        ),
    )
    shadow_direction_override: float | str | None = _opt("shadow.directionOverride")
    shadow_intensity_override: float | None = _opt("shadow.intensityOverride", _number(0, 1))
    shadow_softness_override: float | None = _opt("shadow.softnessOverride", _number(0, 1))
    shadow_spread_override: float | str | None = _opt("shadow.spreadOverride")
    shadow_subject_pose_override: float | str | None = _opt("shadow.subjectPoseOverride")
    lighting_mode: (
        Literal["ai.auto", "ai.preserve-hue-and-saturation", "ai.optimize-portrait"] | None
    ) = _opt(
        "lighting.mode",
        _one_of("ai.auto", "ai.preserve-hue-and-saturation", "ai.optimize-portrait"),
    )
    # outline
    outline_color: str | None = _opt("outline.color", _color)
    outline_width: float | None = _opt("outline.width", _number(0, 0.1))
    outline_blur_radius: float | None = _opt("outline.blurRadius", _number(0, 0.025))
    # AI features
    text_removal_mode: Literal["ai.artificial", "ai.natural", "ai.all"] | None = _opt(
        "textRemoval.mode", _one_of("ai.artificial", "ai.natural", "ai.all")
    )
    uncrop_mode: Literal["ai.auto"] | None = _opt("uncrop.mode", _one_of("ai.auto"))
    uncrop_seed: int | None = _opt("uncrop.seed", _number(0, integer=True))
    upscale_mode: Literal["ai.fast", "ai.slow"] | None = _opt(
        "upscale.mode", _one_of("ai.fast", "ai.slow")
    )
    upscale_downscale_if_needed: Literal["never", "always", "skipUpscaleIfNotNeeded"] | None = _opt(
        "upscale.downscaleIfNeeded", _one_of("never", "always", "skipUpscaleIfNotNeeded")
    )
    beautify_mode: Literal["ai.auto", "ai.food", "ai.car"] | None = _opt(
        "beautify.mode", _one_of("ai.auto", "ai.food", "ai.car")
    )
    beautify_seed: int | None = _opt("beautify.seed", _number(0, integer=True))
    beautify_on_subject_mismatch: Literal["ignore", "error"] | None = _opt(
        "beautify.onSubjectMismatch", _one_of("ignore", "error")
    )
    expand_mode: Literal["ai.auto"] | None = _opt("expand.mode", _one_of("ai.auto"))
    expand_seed: int | None = _opt("expand.seed", _number(0, integer=True))
    edit_with_ai_mode: Literal["ai.auto"] | None = _opt("editWithAI.mode", _one_of("ai.auto"))
    edit_with_ai_prompt: str | None = _opt("editWithAI.prompt", _text)
    edit_with_ai_seed: int | None = _opt("editWithAI.seed", _number(0, integer=True))
    ironing_mode: Literal["ai.auto"] | None = _opt("ironing.mode", _one_of("ai.auto"))
    segmentation_prompt: str | None = _opt("segmentation.prompt", _text)
    segmentation_negative_prompt: str | None = _opt("segmentation.negativePrompt", _text)
    segmentation_mode: Literal["keepSalientObject", "ignoreSalientObject"] | None = _opt(
        "segmentation.mode", _one_of("keepSalientObject", "ignoreSalientObject")
    )
    keep_existing_alpha_channel: Literal["auto", "never"] | None = _opt(
        "keepExistingAlphaChannel", _one_of("auto", "never")
    )
    template_id: str | None = _opt("templateId", _text)
    image_from_prompt_prompt: str | None = _opt("imageFromPrompt.prompt", _text)
    image_from_prompt_seed: int | None = _opt("imageFromPrompt.seed", _number(0, integer=True))
    image_from_prompt_size: (
        Literal["LANDSCAPE_16_9", "LANDSCAPE_4_3", "PORTRAIT_16_9", "PORTRAIT_4_3", "SQUARE_HD"]
        | None
    ) = _opt(
        "imageFromPrompt.size",
        _one_of("LANDSCAPE_16_9", "LANDSCAPE_4_3", "PORTRAIT_16_9", "PORTRAIT_4_3", "SQUARE_HD"),
    )
    flat_lay_mode: Literal["ai.auto"] | None = _opt("flatLay.mode", _one_of("ai.auto"))
    flat_lay_prompt: str | None = _opt("flatLay.prompt", _text)
    flat_lay_size: str | None = _opt("flatLay.size", _one_of(*_SIZE_PRESETS))
    ghost_mannequin_mode: Literal["ai.auto"] | None = _opt(
        "ghostMannequin.mode", _one_of("ai.auto")
    )
    ghost_mannequin_prompt: str | None = _opt("ghostMannequin.prompt", _text)
    ghost_mannequin_size: str | None = _opt("ghostMannequin.size", _one_of(*_SIZE_PRESETS))
    virtual_model_mode: Literal["ai.auto"] | None = _opt("virtualModel.mode", _one_of("ai.auto"))
    virtual_model_pose: str | None = _opt(
        "virtualModel.pose",
        _one_of(
            "random",
            "standing",
            "34turn",
            "powerstance",
            "walkingforward",
            "handinpocket",
            "crossedarms",
            "back",
            "overtheshoulder",
            "seated",
            "adjustingclothing",
            "playfulspin",
        ),
    )
    virtual_model_prompt: str | None = _opt("virtualModel.prompt", _text)
    virtual_model_quality: Literal["standard", "advanced", "premium"] | None = _opt(
        "virtualModel.quality", _one_of("standard", "advanced", "premium")
    )
    virtual_model_size: str | None = _opt("virtualModel.size", _one_of(*_SIZE_PRESETS))
    # export
    export_format: Literal["png", "jpeg", "jpg", "webp", "avif"] | None = _opt(
        "export.format", _one_of("png", "jpeg", "jpg", "webp", "avif")
    )
    export_dpi: int | None = _opt("export.dpi", _number(72, 1200, integer=True))
    preserve_metadata: (
        Literal["never", "xmp", "exifSubset", "exifSubsetWithXmpCompatibility"] | None
    ) = _opt(
        "preserveMetadata",
        _one_of("never", "xmp", "exifSubset", "exifSubsetWithXmpCompatibility"),
    )
    color_space: Literal["original", "sRGB"] | None = _opt(
        "colorSpace", _one_of("original", "sRGB")
    )
    # model versions (request headers)
    background_removal_model_version: Literal["2023-06-01", "2024-09-26"] | None = _header(
        "pr-background-removal-model-version", "2023-06-01", "2024-09-26"
    )
    ai_background_model_version: str | None = _header("pr-ai-background-model-version")
    ai_shadows_model_version: str | None = _header("pr-ai-shadows-model-version")
    hd_background_removal: Literal["auto"] | None = _header("pr-hd-background-removal", "auto")
    # pass-through
    extra_params: Mapping[str, Any] = attrs.field(factory=dict, converter=_mapping)
    extra_headers: Mapping[str, str] = attrs.field(factory=dict, converter=_mapping)

    def __attrs_post_init__(self) -> None:
        if self.output_size is not None and not _OUTPUT_SIZE.match(self.output_size):
            raise ValidationError(
                f"output_size={self.output_size!r} must be 'auto', 'originalImage', "
                "'croppedSubject' or 'WIDTHxHEIGHT' such as '1000x1000'"
            )
        backgrounds = [
            name
            for name in ("background_prompt", "background_image_url", "background_image_file")
            if getattr(self, name) is not None
        ]
        if len(backgrounds) > 1:
            raise ValidationError(f"{' and '.join(backgrounds)} are mutually exclusive")
        if self.background_scaling is not None and not (
            self.background_image_url or self.background_image_file
        ):
            raise ValidationError("background_scaling needs a background image")
        if (self.max_width is not None or self.max_height is not None) and (
            self.output_size not in ("originalImage", "croppedSubject")
        ):
            raise ValidationError(
                "max_width/max_height need output_size='originalImage' or 'croppedSubject'"
            )
        overrides = [
            f.name
            for f in attrs.fields(EditOptions)
            if f.name.startswith("shadow_") and f.name.endswith("_override")
            if getattr(self, f.name) is not None
        ]
        if overrides and self.shadow_mode != "ai.auto-with-overrides":
            raise ValidationError(
                f"{', '.join(overrides)} need shadow_mode='ai.auto-with-overrides'"
            )
        new_modes = ("ai.preset-soft", "ai.preset-hard", "ai.auto-with-overrides")
        if self.shadow_mode in new_modes and self.ai_shadows_model_version is None:
            raise ValidationError(
                f"shadow_mode={self.shadow_mode!r} needs ai_shadows_model_version='2026-04-15'"
            )
        if self.remove_background is False:
            for name in (
                "background_prompt",
                "background_image_url",
                "background_image_file",
                "reference_box",
                "ignore_padding_and_snap_on_cropped_sides",
            ):
                if getattr(self, name) is not None:
                    raise ValidationError(f"{name} is not allowed with remove_background=False")
