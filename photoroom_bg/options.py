"""Typed, validated options for ``/v1/segment`` (:class:`SegmentOptions`) and ``/v2/edit``
(:class:`EditOptions`), and the objects some ``/v2/edit`` parameters take
(:class:`CustomImage`, :class:`TextLayer`, :class:`ImageLayer`...).

Options are checked when they are built, against the rules of Photoroom's spec (the table in
``photoroom_bg._rules``, listed in the client guide): what the spec forbids raises
:class:`~photoroom_bg.errors.ValidationError` naming the option and the rule, so a typo never
costs a request or a credit; what only Photoroom's documentation describes is sent with a
:class:`~photoroom_bg.PhotoroomWarning`. Anything the API adds later can be passed through
``extra_params`` / ``extra_headers`` until it gets a typed attribute here.

Options are frozen and hashable; their ``repr`` shows an image file's format and size, never
its bytes.
"""

# Every default below is an attrs field() whose own default is None or a literal; ruff cannot
# see through the Literal aliases that the values are immutable.
# ruff: noqa: RUF009

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, ClassVar, Literal, NoReturn, TypeVar

import attrs

from . import _rules, _spec, _wire
from ._images import sniff_format
from ._numbers import shown
from .errors import ValidationError

__all__ = [
    "AIBackgroundModel",
    "BackgroundRemovalModel",
    "CustomImage",
    "EditOptions",
    "FrozenDict",
    "ImageLayer",
    "LayerSegmentation",
    "PromptImage",
    "PromptSize",
    "SceneName",
    "SegmentChannels",
    "SegmentFormat",
    "SegmentOptions",
    "SegmentSize",
    "ShadowMode",
    "ShadowsModel",
    "SizePreset",
    "Spacing",
    "TextLayer",
    "VirtualModelName",
    "VirtualModelPose",
]

K = TypeVar("K")
V = TypeVar("V")

SegmentFormat = Literal["png", "jpg", "webp"]
SegmentChannels = Literal["rgba", "alpha"]
SegmentSize = Literal["preview", "medium", "hd", "full"]
#: Output presets of flat lay, ghost mannequin and virtual model.
SizePreset = Literal[
    "PORTRAIT_HD_16_9",
    "PORTRAIT_HD_4_3",
    "PORTRAIT_HD_3_2",
    "SQUARE_HD",
    "LANDSCAPE_HD_3_2",
    "LANDSCAPE_HD_4_3",
    "LANDSCAPE_HD_16_9",
]
#: Sizes of an image generated from a prompt.
PromptSize = Literal[
    "LANDSCAPE_16_9", "LANDSCAPE_4_3", "PORTRAIT_16_9", "PORTRAIT_4_3", "SQUARE_HD"
]
VirtualModelPose = Literal[
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
]
#: The preset people of ``virtual_model_model``.
VirtualModelName = Literal[
    "avery",
    "sam",
    "taylor",
    "kendall",
    "jordan",
    "casey",
    "alex",
    "maya",
    "reece",
    "lena",
    "julia",
    "jackson",
    "sophia",
    "emma",
    "ava",
    "zoe",
    "fiona",
]
#: The preset scenes of ``virtual_model_scene``.
SceneName = Literal[
    "random",
    "street",
    "bedroom",
    "sunset",
    "factory",
    "studio",
    "coloredstudio",
    "concretestudio",
    "beach",
    "tropical",
    "library",
    "forest",
    "businessdistrict",
    "countryside",
    "flowers",
    "goldenlight",
    "mountain",
    "pool",
    "latincity",
    "cafe",
    "asiancity",
    "nightlights",
    "desert",
]
ShadowMode = Literal[
    "ai.soft",
    "ai.hard",
    "ai.floating",
    "ai.preset-soft",
    "ai.preset-hard",
    "ai.auto-with-overrides",
]
BackgroundRemovalModel = Literal["2023-06-01", "2024-09-26"]
AIBackgroundModel = Literal["2", "3", "background-studio-beta-2025-03-17"]
ShadowsModel = Literal["2026-04-15"]
#: Padding and margin: a ratio (0..0.49), or a string: ``"0.3"``, ``"30%"``, ``"100px"``.
Spacing = float | str


class FrozenDict(dict[K, V]):
    """A ``dict`` that cannot change, so options holding one stay hashable. Its ``repr``
    summarises ``bytes`` values (format and size) instead of dumping them."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(f"{type(self).__name__} cannot be changed; build a new one")

    __setitem__ = _refuse
    __delitem__ = _refuse
    __ior__ = _refuse
    clear = _refuse
    pop = _refuse
    popitem = _refuse
    setdefault = _refuse
    update = _refuse

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (dict(self),))

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: {_blob_repr(v)}" for k, v in self.items()) + "}"


def _blob_repr(value: object) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        kind = sniff_format(bytes(value[:16]))
        return f"<{kind.upper() + ' image' if kind else 'bytes'}, {len(value):,} bytes>"
    return shown(value)  # repr() of an integer past 4,300 digits raises


def _frozen(value: Mapping[Any, Any] | None) -> FrozenDict[Any, Any]:
    if isinstance(value, FrozenDict):
        return value
    return FrozenDict({k: _hashable(v) for k, v in (value or {}).items()})


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, Mapping):
        return _frozen(value)
    return value


def _tuple(value: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise ValidationError(
            f"expected a list of URLs, got one {type(value).__name__}: wrap it in a list",
            rule="type",
        )
    return tuple(value)


def _bytes(value: Any) -> Any:
    return bytes(value) if isinstance(value, (bytearray, memoryview)) else value


def _type_error(attribute: attrs.Attribute[Any], kind: str, value: object) -> ValidationError:
    return ValidationError(
        f"{attribute.name} must be {kind}, got {type(value).__name__} {_blob_repr(value)}",
        parameter=attribute.name,
        rule="type",
    )


def _expect(*types: type, kind: str) -> Any:
    def check(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and (
            (isinstance(value, bool) and bool not in types) or not isinstance(value, types)
        ):
            raise _type_error(attribute, kind, value)

    return check


_STR = _expect(str, kind="a string")
# a Decimal is no numbers.Real (it does not mix with floats) but a number all the same
_NUM = _expect(numbers.Real, Decimal, kind="a number")
_BOOL = _expect(bool, kind="True or False")
_BYTES = _expect(bytes, kind="the bytes of an image file")
_NUM_OR_STR = _expect(numbers.Real, Decimal, str, kind="a number or a string")


def _strings(_: Any, attribute: attrs.Attribute[Any], value: tuple[Any, ...] | None) -> None:
    if value is not None and not all(isinstance(item, str) for item in value):
        raise _type_error(attribute, "a list of URLs (strings)", value)


def _field(wire: str, validator: Any = _STR, *, encode: str | None = None, **kwargs: Any) -> Any:
    """An option sent under ``wire`` when it is not ``None``."""
    metadata = {"wire": wire, **({"encode": encode} if encode else {})}
    kwargs.setdefault("default", None)
    return attrs.field(validator=validator, metadata=metadata, **kwargs)


def _file(wire: str) -> Any:
    return _field(wire, _BYTES, converter=_bytes, repr=_blob_repr)


def _header(name: str) -> Any:
    return attrs.field(default=None, validator=_STR, metadata={"header": name})


def _mapping(**kwargs: Any) -> Any:
    return attrs.field(factory=FrozenDict, converter=_frozen, **kwargs)


def _header_names(headers: Mapping[str, str]) -> str:
    """``extra_headers`` in a repr: their names, not their values (a gateway's token)."""
    return "{" + ", ".join(f"{name!r}: <set>" for name in headers) + "}"


def _repr(self: Any) -> str:
    """Only the options that differ from their default (file bytes summarised)."""
    shown = []
    for field in attrs.fields(type(self)):
        value = getattr(self, field.name)
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        if field.repr and value != default:
            show = field.repr if callable(field.repr) else repr
            shown.append(f"{field.name}={show(value)}")
    return f"{type(self).__name__}({', '.join(shown)})"


def _check(options: Any, rules: tuple[_rules.Rule, ...]) -> None:
    if not attrs.validators.get_disabled():
        _wire.check_options(options, rules)


# -- objects some /v2/edit parameters take -------------------------------------------------------


@attrs.frozen(kw_only=True, repr=False)
class CustomImage:
    """Your own image for ``virtual_model_model`` / ``virtual_model_scene``: a URL or the
    bytes of a file (a file needs a local input image: it travels in the POST body).

    Sent as ``<parameter>.custom.imageUrl`` or ``<parameter>.custom.imageFile``.
    """

    image_url: str | None = _field("imageUrl")
    image_file: bytes | None = _file("imageFile")

    def __attrs_post_init__(self) -> None:
        if (self.image_url is None) == (self.image_file is None):
            raise ValidationError(
                "CustomImage takes image_url or image_file (one of them)",
                parameter="image_url",
                rule="type",
            )


@attrs.frozen(kw_only=True, repr=False)
class PromptImage:
    """An image generated from a prompt, for an :class:`ImageLayer`
    (``layers.<name>.image.imageFromPrompt.*``)."""

    prompt: str = attrs.field(validator=_STR, metadata={"wire": "prompt"})
    seed: float | None = _field("seed", _NUM)
    size: PromptSize | None = _field("size")


@attrs.frozen(kw_only=True, repr=False)
class LayerSegmentation:
    """Text-guided segmentation of an :class:`ImageLayer`'s image
    (``layers.<name>.image.segmentation.*``)."""

    prompt: str = attrs.field(validator=_STR, metadata={"wire": "prompt"})
    negative_prompt: str | None = _field("negativePrompt")
    mode: Literal["keepSalientObject", "ignoreSalientObject"] | None = _field("mode")


@attrs.frozen(kw_only=True, repr=False)
class TextLayer:
    """A text layer of ``EditOptions.layers``, sent as ``layers.<name>.text.<field>``."""

    content: str | None = _field("content")
    font: str | None = _field("font")
    foreground_color: str | None = _field("foregroundColor")
    background_color: str | None = _field("backgroundColor")


@attrs.frozen(kw_only=True, repr=False)
class ImageLayer:
    """An image layer of ``EditOptions.layers``, sent as ``layers.<name>.image.<field>``.

    The image is a URL (``image_url``), file bytes (``image_file``, POST only) or generated
    (``image_from_prompt``); positioned like the main subject (``padding*``, ``margin*``,
    alignments).
    """

    image_url: str | None = _field("imageUrl")
    image_file: bytes | None = _file("imageFile")
    image_from_prompt: PromptImage | None = _field(
        "imageFromPrompt", _expect(PromptImage, kind="a PromptImage")
    )
    remove_background: Literal["auto", "never"] | None = _field("removeBackground")
    use_for_ai_background: Literal["auto", "never"] | None = _field("useForAIBackground")
    segmentation: LayerSegmentation | None = _field(
        "segmentation", _expect(LayerSegmentation, kind="a LayerSegmentation")
    )
    padding: float | str | None = _field("padding", _NUM_OR_STR)
    padding_top: float | str | None = _field("paddingTop", _NUM_OR_STR)
    padding_bottom: float | str | None = _field("paddingBottom", _NUM_OR_STR)
    padding_left: float | str | None = _field("paddingLeft", _NUM_OR_STR)
    padding_right: float | str | None = _field("paddingRight", _NUM_OR_STR)
    margin: float | str | None = _field("margin", _NUM_OR_STR)
    margin_top: float | str | None = _field("marginTop", _NUM_OR_STR)
    margin_bottom: float | str | None = _field("marginBottom", _NUM_OR_STR)
    margin_left: float | str | None = _field("marginLeft", _NUM_OR_STR)
    margin_right: float | str | None = _field("marginRight", _NUM_OR_STR)
    horizontal_alignment: Literal["left", "center", "right"] | None = _field("horizontalAlignment")
    vertical_alignment: Literal["top", "center", "bottom"] | None = _field("verticalAlignment")


def _layers(_: Any, attribute: attrs.Attribute[Any], value: Mapping[str, Any]) -> None:
    for name, layer in value.items():
        if not isinstance(name, str) or not name or "." in name:
            raise ValidationError(
                f"layers: {name!r} is not a layer name (a non-empty string without '.')",
                parameter="layers",
                rule="type",
            )
        if not isinstance(layer, (TextLayer, ImageLayer)):
            raise _type_error(attribute, "a mapping of names to TextLayer or ImageLayer", layer)


def _additional_images(_: Any, attribute: attrs.Attribute[Any], value: Mapping[str, Any]) -> None:
    for key, image in value.items():
        if not isinstance(key, str) or not key or "." in key:
            raise ValidationError(
                f"{attribute.name}: {key!r} is not a key (a non-empty string without '.')",
                parameter=attribute.name,
                rule="type",
            )
        if not isinstance(image, (str, bytes)):
            raise _type_error(attribute, "a mapping of keys to URLs or file bytes", image)


def _preset_or_custom(kind: str) -> Any:
    return _expect(str, CustomImage, kind=f"a preset {kind} name or a CustomImage")


# -- /v1/segment ---------------------------------------------------------------------------------


@attrs.frozen(kw_only=True, repr=False)
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

    format: SegmentFormat = _field("format", default="png")
    channels: SegmentChannels = _field("channels", default="rgba")
    bg_color: str | None = _field("bg_color", encode="segment_color")
    size: SegmentSize = _field("size", default="full")
    crop: bool = _field("crop", _BOOL, default=False)
    despill: bool = _field("despill", _BOOL, default=False)
    base64: bool = attrs.field(default=False, validator=_BOOL)
    extra_params: Mapping[str, Any] = _mapping()
    extra_headers: Mapping[str, str] = _mapping(repr=_header_names)
    #: the fields that carry the call's image: never sent from ``extra_params``
    _image_fields: ClassVar[tuple[str, ...]] = ("image_file",)

    def __attrs_post_init__(self) -> None:
        _check(self, _rules.SEGMENT_RULES)


# -- /v2/edit ------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True, repr=False)
class EditOptions:
    """Options of ``/v2/edit`` (Image Editing), grouped as Photoroom documents them.

    Every attribute defaults to ``None``, meaning "not sent, use Photoroom's default". The
    wire name of each attribute is the dotted or camelCase name from the API reference
    (``background_color`` -> ``background.color``, ``output_size`` -> ``outputSize``).

    Background: ``remove_background``, ``background_color`` (hex without ``#``, or a name; a
    leading ``#`` is dropped for you), ``background_image_url``, ``background_image_file``
    (bytes, POST only), ``background_prompt``, ``background_negative_prompt``,
    ``background_seed``, ``background_scaling``, ``background_blur_mode``,
    ``background_blur_radius``, ``background_expand_prompt`` (``"ai.auto"`` / ``"ai.never"``
    are sent as ``background.expandPrompt.mode``, the legacy ``"auto"`` / ``"never"`` as
    ``background.expandPrompt``), ``background_guidance_image_url``,
    ``background_guidance_image_file``, ``background_guidance_scale``.

    Positioning: ``padding``, ``padding_top``/``_bottom``/``_left``/``_right``, ``margin`` and its
    per-side variants (a ratio 0..0.49, ``"0.3"``, ``"30%"`` or ``"100px"``), ``output_size``
    (``auto``, ``WIDTHxHEIGHT``, ``originalImage``, ``croppedSubject``), ``max_width``,
    ``max_height``, ``scaling``, ``horizontal_alignment``, ``vertical_alignment``,
    ``reference_box``, ``ignore_padding_and_snap_on_cropped_sides``.

    Effects: ``shadow_mode`` and the ``shadow_*_override`` values (a number or a named
    preset), ``lighting_mode``, ``outline_color``/``_width``/``_blur_radius``,
    ``text_removal_mode``, ``uncrop_mode``, ``uncrop_seed``, ``upscale_mode``,
    ``upscale_downscale_if_needed``, ``beautify_mode``, ``beautify_seed``,
    ``beautify_on_subject_mismatch``, ``expand_mode``, ``expand_seed``,
    ``edit_with_ai_mode``/``_prompt``/``_seed``, ``edit_with_ai_additional_images`` (a mapping
    of your keys to URLs or file bytes: ``editWithAI.additionalImages.<key>.imageUrl`` /
    ``.imageFile``), ``ironing_mode``, ``segmentation_prompt``,
    ``segmentation_negative_prompt``, ``segmentation_mode``, ``keep_existing_alpha_channel``,
    ``template_id``, ``image_from_prompt_prompt``/``_seed``/``_size``, ``flat_lay_*``,
    ``ghost_mannequin_*``.

    Virtual model: ``virtual_model_mode``, ``virtual_model_pose``, ``virtual_model_prompt``,
    ``virtual_model_quality``, ``virtual_model_size``, ``virtual_model_model`` (a preset name,
    sent as ``virtualModel.model.preset.name``, or a :class:`CustomImage`, sent as
    ``virtualModel.model.custom.imageUrl``/``.imageFile``), ``virtual_model_scene`` (likewise),
    ``virtual_model_additional_product_images`` (1 to 4 URLs, one
    ``virtualModel.additionalProductImages`` field each).

    Layers: ``layers``, a mapping of layer names to :class:`TextLayer` / :class:`ImageLayer`,
    sent as ``layers.<name>.text.<field>`` / ``layers.<name>.image.<field>``.

    Export: ``export_format`` (png, jpeg, jpg, webp, avif), ``export_dpi`` (72..1200),
    ``preserve_metadata``, ``color_space``.

    Model versions (sent as request headers): ``background_removal_model_version``,
    ``ai_background_model_version``, ``ai_shadows_model_version`` (``"2026-04-15"``, needed by
    the ``ai.preset-*`` and ``ai.auto-with-overrides`` shadow modes), ``hd_background_removal``.

    Pass-through: ``extra_params`` (more fields by their wire name; a list is sent as one field
    per item, a nested mapping as dotted names, bytes as a file) and ``extra_headers``. They
    are checked by the same rules as the typed options.
    """

    # background
    remove_background: bool | None = _field("removeBackground", _BOOL)
    background_color: str | None = _field("background.color", encode="edit_color")
    background_image_url: str | None = _field("background.imageUrl")
    background_image_file: bytes | None = _file("background.imageFile")
    background_prompt: str | None = _field("background.prompt")
    background_negative_prompt: str | None = _field("background.negativePrompt")
    background_seed: float | None = _field("background.seed", _NUM)
    background_scaling: Literal["fit", "fill"] | None = _field("background.scaling")
    background_blur_mode: Literal["gaussian", "bokeh"] | None = _field("background.blur.mode")
    background_blur_radius: float | None = _field("background.blur.radius", _NUM)
    background_expand_prompt: Literal["ai.auto", "ai.never", "auto", "never"] | None = _field(
        "background.expandPrompt", encode="expand_prompt"
    )
    background_guidance_image_url: str | None = _field("background.guidance.imageUrl")
    background_guidance_image_file: bytes | None = _file("background.guidance.imageFile")
    background_guidance_scale: float | None = _field("background.guidance.scale", _NUM)
    # positioning
    padding: float | str | None = _field("padding", _NUM_OR_STR)
    padding_top: float | str | None = _field("paddingTop", _NUM_OR_STR)
    padding_bottom: float | str | None = _field("paddingBottom", _NUM_OR_STR)
    padding_left: float | str | None = _field("paddingLeft", _NUM_OR_STR)
    padding_right: float | str | None = _field("paddingRight", _NUM_OR_STR)
    margin: float | str | None = _field("margin", _NUM_OR_STR)
    margin_top: float | str | None = _field("marginTop", _NUM_OR_STR)
    margin_bottom: float | str | None = _field("marginBottom", _NUM_OR_STR)
    margin_left: float | str | None = _field("marginLeft", _NUM_OR_STR)
    margin_right: float | str | None = _field("marginRight", _NUM_OR_STR)
    output_size: str | None = _field("outputSize")
    max_width: float | None = _field("maxWidth", _NUM)
    max_height: float | None = _field("maxHeight", _NUM)
    scaling: Literal["fit", "fill"] | None = _field("scaling")
    horizontal_alignment: Literal["left", "center", "right"] | None = _field("horizontalAlignment")
    vertical_alignment: Literal["top", "center", "bottom"] | None = _field("verticalAlignment")
    reference_box: Literal["subjectBox", "originalImage"] | None = _field("referenceBox")
    ignore_padding_and_snap_on_cropped_sides: bool | None = _field(
        "ignorePaddingAndSnapOnCroppedSides", _BOOL
    )
    # shadow and lighting
    shadow_mode: ShadowMode | None = _field("shadow.mode")
    shadow_direction_override: (
        float
        | Literal[
            "behind",
            "behindLeft",
            "left",
            "frontLeft",
            "front",
            "frontRight",
            "right",
            "behindRight",
        ]
        | None
    ) = _field("shadow.directionOverride", _NUM_OR_STR)
    shadow_intensity_override: float | None = _field("shadow.intensityOverride", _NUM)
    shadow_softness_override: float | None = _field("shadow.softnessOverride", _NUM)
    shadow_spread_override: float | Literal["short", "medium", "long"] | None = _field(
        "shadow.spreadOverride", _NUM_OR_STR
    )
    shadow_subject_pose_override: float | Literal["flatlay", "upright"] | None = _field(
        "shadow.subjectPoseOverride", _NUM_OR_STR
    )
    lighting_mode: (
        Literal["ai.auto", "ai.preserve-hue-and-saturation", "ai.optimize-portrait"] | None
    ) = _field("lighting.mode")
    # outline
    outline_color: str | None = _field("outline.color", encode="edit_color")
    outline_width: float | None = _field("outline.width", _NUM)
    outline_blur_radius: float | None = _field("outline.blurRadius", _NUM)
    # AI features
    text_removal_mode: Literal["ai.artificial", "ai.natural", "ai.all"] | None = _field(
        "textRemoval.mode"
    )
    uncrop_mode: Literal["ai.auto"] | None = _field("uncrop.mode")
    uncrop_seed: float | None = _field("uncrop.seed", _NUM)
    upscale_mode: Literal["ai.fast", "ai.slow"] | None = _field("upscale.mode")
    upscale_downscale_if_needed: Literal["never", "always", "skipUpscaleIfNotNeeded"] | None = (
        _field("upscale.downscaleIfNeeded")
    )
    beautify_mode: Literal["ai.auto", "ai.food", "ai.car"] | None = _field("beautify.mode")
    beautify_seed: float | None = _field("beautify.seed", _NUM)
    beautify_on_subject_mismatch: Literal["ignore", "error"] | None = _field(
        "beautify.onSubjectMismatch"
    )
    expand_mode: Literal["ai.auto"] | None = _field("expand.mode")
    expand_seed: float | None = _field("expand.seed", _NUM)
    edit_with_ai_mode: Literal["ai.auto"] | None = _field("editWithAI.mode")
    edit_with_ai_prompt: str | None = _field("editWithAI.prompt")
    edit_with_ai_seed: float | None = _field("editWithAI.seed", _NUM)
    edit_with_ai_additional_images: Mapping[str, str | bytes] = _mapping(
        validator=_additional_images,
        metadata={"wire": "editWithAI.additionalImages", "encode": "additional_images"},
    )
    ironing_mode: Literal["ai.auto"] | None = _field("ironing.mode")
    segmentation_prompt: str | None = _field("segmentation.prompt")
    segmentation_negative_prompt: str | None = _field("segmentation.negativePrompt")
    segmentation_mode: Literal["keepSalientObject", "ignoreSalientObject"] | None = _field(
        "segmentation.mode"
    )
    keep_existing_alpha_channel: Literal["auto", "never"] | None = _field(
        "keepExistingAlphaChannel"
    )
    template_id: str | None = _field("templateId")
    image_from_prompt_prompt: str | None = _field("imageFromPrompt.prompt")
    image_from_prompt_seed: float | None = _field("imageFromPrompt.seed", _NUM)
    image_from_prompt_size: PromptSize | None = _field("imageFromPrompt.size")
    flat_lay_mode: Literal["ai.auto"] | None = _field("flatLay.mode")
    flat_lay_prompt: str | None = _field("flatLay.prompt")
    flat_lay_size: SizePreset | None = _field("flatLay.size")
    ghost_mannequin_mode: Literal["ai.auto"] | None = _field("ghostMannequin.mode")
    ghost_mannequin_prompt: str | None = _field("ghostMannequin.prompt")
    ghost_mannequin_size: SizePreset | None = _field("ghostMannequin.size")
    # virtual model
    virtual_model_mode: Literal["ai.auto"] | None = _field("virtualModel.mode")
    virtual_model_pose: VirtualModelPose | None = _field("virtualModel.pose")
    virtual_model_prompt: str | None = _field("virtualModel.prompt")
    virtual_model_quality: Literal["standard", "advanced", "premium"] | None = _field(
        "virtualModel.quality"
    )
    virtual_model_size: SizePreset | None = _field("virtualModel.size")
    virtual_model_model: VirtualModelName | CustomImage | None = _field(
        "virtualModel.model", _preset_or_custom("model"), encode="preset_or_custom"
    )
    virtual_model_scene: SceneName | CustomImage | None = _field(
        "virtualModel.scene", _preset_or_custom("scene"), encode="preset_or_custom"
    )
    virtual_model_additional_product_images: Sequence[str] | None = _field(
        "virtualModel.additionalProductImages", _strings, converter=_tuple
    )
    # layers
    layers: Mapping[str, TextLayer | ImageLayer] = _mapping(
        validator=_layers, metadata={"wire": "layers", "encode": "layers"}
    )
    # export
    export_format: Literal["png", "jpeg", "jpg", "webp", "avif"] | None = _field("export.format")
    export_dpi: float | None = _field("export.dpi", _NUM)
    preserve_metadata: (
        Literal["never", "xmp", "exifSubset", "exifSubsetWithXmpCompatibility"] | None
    ) = _field("preserveMetadata")
    color_space: Literal["original", "sRGB"] | None = _field("colorSpace")
    # model versions (request headers)
    background_removal_model_version: BackgroundRemovalModel | None = _header(
        "pr-background-removal-model-version"
    )
    ai_background_model_version: AIBackgroundModel | None = _header(
        "pr-ai-background-model-version"
    )
    ai_shadows_model_version: ShadowsModel | None = _header(_spec.SHADOWS_HEADER)
    hd_background_removal: Literal["auto"] | None = _header("pr-hd-background-removal")
    # pass-through
    extra_params: Mapping[str, Any] = _mapping()
    extra_headers: Mapping[str, str] = _mapping(repr=_header_names)
    #: the fields that carry the call's image: never sent from ``extra_params``
    _image_fields: ClassVar[tuple[str, ...]] = ("imageFile", "imageUrl")

    def __attrs_post_init__(self) -> None:
        _check(self, _rules.EDIT_RULES)


for _cls in (
    CustomImage,
    PromptImage,
    LayerSegmentation,
    TextLayer,
    ImageLayer,
    SegmentOptions,
    EditOptions,
):
    _cls.__repr__ = _repr  # type: ignore[method-assign]
