"""Options refuse exactly what the spec refuses: values it allows pass (and are encoded as the
API expects), values it forbids raise a ValidationError naming the option and the rule,
what only the documentation says is a warning, and extra_params stay a pass-through."""

from __future__ import annotations

import pickle
import uuid
import warnings
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from photoroom_bg import (
    CustomImage,
    EditOptions,
    ImageLayer,
    LayerSegmentation,
    PhotoroomWarning,
    PromptImage,
    SegmentOptions,
    TextLayer,
)
from photoroom_bg._wire import edit_fields
from photoroom_bg.errors import ValidationError
from photoroom_bg.options import FrozenDict

from .conftest import png

SHADOWS = {"ai_shadows_model_version": "2026-04-15"}


def _quietly(**kwargs: Any) -> EditOptions:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these may even warn
        return EditOptions(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "sent"),
    [
        # background.prompt is not among what removeBackground=false forbids
        (
            {"remove_background": False, "background_prompt": "a beach"},
            {"removeBackground": "false", "background.prompt": "a beach"},
        ),
        # padding and margin are number|string: a numeric string, a percentage, pixels
        ({"padding": "0.3"}, {"padding": "0.3"}),
        ({"padding": "30%", "margin_top": "12.5%"}, {"padding": "30%", "marginTop": "12.5%"}),
        ({"margin": "100px", "padding_left": "7.5px"}, {"margin": "100px", "paddingLeft": "7.5px"}),
        # numbers, not integers
        ({"export_dpi": 300.5}, {"export.dpi": "300.5"}),
        (
            {"max_width": 800.5, "max_height": 0, "output_size": "croppedSubject"},
            {"maxWidth": "800.5", "maxHeight": "0", "outputSize": "croppedSubject"},
        ),
        ({"background_seed": 1.5}, {"background.seed": "1.5"}),
        ({"background_seed": -3}, {"background.seed": "-3"}),
        # the pattern is \d+x\d+: no limit on digits
        ({"output_size": "123456x654321"}, {"outputSize": "123456x654321"}),
        # no minLength on background.prompt
        ({"background_prompt": ""}, {"background.prompt": ""}),
        ({"background_blur_radius": 0.05}, {"background.blur.radius": "0.05"}),
    ],
)
def test_values_the_spec_allows_are_accepted_and_encoded(
    kwargs: dict[str, Any], sent: dict[str, str]
) -> None:
    assert edit_fields(_quietly(**kwargs))[0] == sent


def test_additional_product_images_are_one_field_per_url() -> None:
    urls = [f"https://example.com/{i}.jpg" for i in range(4)]
    options = _quietly(virtual_model_mode="ai.auto", virtual_model_additional_product_images=urls)
    assert options.virtual_model_additional_product_images == tuple(urls)
    assert edit_fields(options)[0]["virtualModel.additionalProductImages"] == urls
    with pytest.raises(ValidationError) as refused:
        EditOptions(virtual_model_additional_product_images=[*urls, "https://example.com/5.jpg"])
    assert refused.value.rule == "virtualModel.additionalProductImages:count"
    with pytest.raises(ValidationError, match="wrap it in a list"):
        EditOptions(virtual_model_additional_product_images="https://example.com/0.jpg")


def test_object_parameters_are_typed_and_flattened_into_dotted_names() -> None:
    logo = png()
    texts, files, _ = edit_fields(
        _quietly(
            background_prompt="a beach",
            background_expand_prompt="ai.auto",
            virtual_model_mode="ai.auto",
            virtual_model_model="sophia",
            virtual_model_scene=CustomImage(image_file=logo),
            edit_with_ai_additional_images={"front": "https://example.com/f.jpg", "back": logo},
            layers={
                "title": TextLayer(content="SALE", font="Inter", foreground_color="FF0000"),
                "logo": ImageLayer(
                    image_url="https://example.com/logo.png",
                    remove_background="never",
                    segmentation=LayerSegmentation(prompt="the logo", negative_prompt="text"),
                    padding="10%",
                    horizontal_alignment="right",
                ),
                "badge": ImageLayer(
                    image_from_prompt=PromptImage(prompt="a gold badge", seed=7, size="SQUARE_HD")
                ),
            },
        )
    )
    assert texts == {
        "background.prompt": "a beach",
        "background.expandPrompt.mode": "ai.auto",
        "virtualModel.mode": "ai.auto",
        "virtualModel.model.preset.name": "sophia",
        "editWithAI.additionalImages.front.imageUrl": "https://example.com/f.jpg",
        "layers.title.text.content": "SALE",
        "layers.title.text.font": "Inter",
        "layers.title.text.foregroundColor": "FF0000",
        "layers.logo.image.imageUrl": "https://example.com/logo.png",
        "layers.logo.image.removeBackground": "never",
        "layers.logo.image.segmentation.prompt": "the logo",
        "layers.logo.image.segmentation.negativePrompt": "text",
        "layers.logo.image.padding": "10%",
        "layers.logo.image.horizontalAlignment": "right",
        "layers.badge.image.imageFromPrompt.prompt": "a gold badge",
        "layers.badge.image.imageFromPrompt.seed": "7",
        "layers.badge.image.imageFromPrompt.size": "SQUARE_HD",
    }
    assert files == {
        "virtualModel.scene.custom.imageFile": logo,
        "editWithAI.additionalImages.back.imageFile": logo,
    }


def test_the_legacy_expand_prompt_stays_a_flat_field() -> None:
    texts = edit_fields(_quietly(background_prompt="x", background_expand_prompt="never"))[0]
    assert texts == {"background.prompt": "x", "background.expandPrompt": "never"}


UUID = str(uuid.uuid4())


@pytest.mark.parametrize(
    ("kwargs", "parameter", "rule"),
    [
        (
            {"remove_background": False, "background_guidance_image_url": "https://x/g.png"},
            "background_guidance_image_url",
            "removeBackground:false-forbids",
        ),
        (
            {"remove_background": False, "background_guidance_image_file": b"\x89PNG"},
            "background_guidance_image_file",
            "removeBackground:false-forbids",
        ),
        ({"shadow_mode": "ai.floating", **SHADOWS}, "shadow_mode", "shadow.mode:legacy-model"),
        ({"shadow_mode": "ai.soft", **SHADOWS}, "shadow_mode", "shadow.mode:legacy-model"),
        ({"shadow_mode": "ai.hard", **SHADOWS}, "shadow_mode", "shadow.mode:legacy-model"),
        ({"shadow_mode": "ai.preset-soft"}, "shadow_mode", "shadow.mode:needs-model"),
        (
            {"shadow_mode": "ai.preset-soft", "ai_shadows_model_version": "2027-01-01"},
            "shadow_mode",
            "shadow.mode:needs-model",
        ),
        (
            {"shadow_intensity_override": 0.5, "shadow_mode": "ai.preset-hard", **SHADOWS},
            "shadow_intensity_override",
            "shadow:overrides-need-mode",
        ),
        ({"background_blur_radius": 0}, "background_blur_radius", "background.blur.radius:range"),
        (
            {"background_blur_radius": 0.06},
            "background_blur_radius",
            "background.blur.radius:range",
        ),
        ({"padding": "50%"}, "padding", "padding:spacing"),
        ({"margin_left": "49.5%"}, "margin_left", "marginLeft:spacing"),
        ({"padding_top": 0.5}, "padding_top", "paddingTop:spacing"),
        ({"padding": "0.5"}, "padding", "padding:spacing"),
        ({"margin": "ten px"}, "margin", "margin:spacing"),
        (
            {
                "shadow_mode": "ai.auto-with-overrides",
                "shadow_direction_override": "leftish",
                **SHADOWS,
            },
            "shadow_direction_override",
            "shadow.directionOverride:number-or-preset",
        ),
        (
            {
                "shadow_mode": "ai.auto-with-overrides",
                "shadow_spread_override": "longest",
                **SHADOWS,
            },
            "shadow_spread_override",
            "shadow.spreadOverride:number-or-preset",
        ),
        ({"template_id": "my-template"}, "template_id", "templateId:uuid"),
        (
            {"color_space": "original", "export_format": "jpeg"},
            "export_format",
            "colorSpace:original-conflicts",
        ),
        (
            {"color_space": "original", "background_color": "FFFFFF"},
            "background_color",
            "colorSpace:original-conflicts",
        ),
        (
            {"color_space": "original", "keep_existing_alpha_channel": "auto"},
            "keep_existing_alpha_channel",
            "colorSpace:original-conflicts",
        ),
        (
            {"color_space": "original", "preserve_metadata": "exifSubset"},
            "preserve_metadata",
            "colorSpace:original-conflicts",
        ),
        (
            {"color_space": "original", "export_dpi": 300},
            "export_dpi",
            "colorSpace:original-conflicts",
        ),
        (
            {"color_space": "original", "lighting_mode": "ai.auto"},
            "lighting_mode",
            "colorSpace:original-conflicts",
        ),
        (
            {"beautify_mode": "ai.auto", "beautify_on_subject_mismatch": "error"},
            "beautify_on_subject_mismatch",
            "beautify.onSubjectMismatch:needs-food",
        ),
        (
            {"beautify_on_subject_mismatch": "error"},
            "beautify_on_subject_mismatch",
            "beautify.onSubjectMismatch:needs-food",
        ),
        ({"output_size": "1000 x 1000"}, "output_size", "outputSize:pattern"),
        ({"export_dpi": 71.9}, "export_dpi", "export.dpi:range"),
        ({"background_seed": float("inf")}, "background_seed", "background.seed:number"),
        ({"edit_with_ai_prompt": ""}, "edit_with_ai_prompt", "editWithAI.prompt:min-length"),
        ({"shadow_mode": "ai.sparkly"}, "shadow_mode", "shadow.mode:one-of"),
        (
            {"background_prompt": "x", "background_image_url": "https://x/b.png"},
            "background_image_url",
            "background:one-source",
        ),
        ({"background_scaling": "fit"}, "background_scaling", "background.scaling:needs-image"),
        ({"max_width": 10}, "max_width", "maxWidth:needs-output-size"),
        ({"background_color": "#12"}, "background_color", "background.color:color"),
        # the "#" was dropped, and GGGGGG passed for a colour name
        ({"background_color": "#GGGGGG"}, "background_color", "background.color:color"),
        # Python's "$" matches before a final newline: these passed, and were sent
        ({"output_size": "200x400\n"}, "output_size", "outputSize:pattern"),
        ({"background_color": "red\n"}, "background_color", "background.color:color"),
        ({"background_color": "FF0000\n"}, "background_color", "background.color:color"),
        ({"padding": "10%\n"}, "padding", "padding:spacing"),
        ({"margin": "5px\n"}, "margin", "margin:spacing"),
        ({"padding": "0.1\n"}, "padding", "padding:spacing"),
        (
            {"template_id": "80d843f4-9a72-4b83-b972-7714219ee6dd\n"},
            "template_id",
            "templateId:uuid",
        ),
        (
            {"virtual_model_model": "nobody"},
            "virtual_model_model",
            "virtualModel.model.preset.name:one-of",
        ),
        (
            {"layers": {"logo": ImageLayer(image_url="https://x/l.png", remove_background="yes")}},  # type: ignore[arg-type]
            "layers",
            "layers.{name}.image.removeBackground:one-of",
        ),
        (
            {"background_expand_prompt": "ai.sometimes"},
            "background_expand_prompt",
            "background.expandPrompt.mode:one-of",
        ),
    ],
)
def test_values_the_spec_forbids_are_refused_naming_option_and_rule(
    kwargs: dict[str, Any], parameter: str, rule: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        EditOptions(**kwargs)
    assert refused.value.parameter == parameter
    assert refused.value.rule == rule
    assert str(refused.value).startswith(parameter)
    assert f"[rule {rule}]" in str(refused.value)


@pytest.mark.parametrize(
    ("kwargs", "rule"),
    [
        ({"format": "gif"}, "format:one-of"),
        ({"size": "huge"}, "size:one-of"),
        ({"bg_color": "#12"}, "bg_color:color"),
        ({"bg_color": "red\n"}, "bg_color:color"),  # "$" matched before the newline
        ({"bg_color": "rgb(1, 2, 3)"}, "bg_color:color"),
    ],
)
def test_segment_options_follow_the_same_rules(kwargs: dict[str, Any], rule: str) -> None:
    with pytest.raises(ValidationError) as refused:
        SegmentOptions(**kwargs)
    assert refused.value.rule == rule
    assert refused.value.parameter == next(iter(kwargs))


@pytest.mark.parametrize(
    ("kwargs", "parameter", "kind"),
    [
        ({"crop": "yes"}, "crop", "True or False"),
        ({"padding": True}, "padding", "a number or a string"),
        ({"background_seed": "42"}, "background_seed", "a number"),
        ({"background_prompt": 5}, "background_prompt", "a string"),
        ({"background_image_file": "bg.png"}, "background_image_file", "the bytes of an image"),
        ({"virtual_model_scene": 3}, "virtual_model_scene", "a preset scene name or a CustomImage"),
        ({"layers": {"logo": "https://x/l.png"}}, "layers", "TextLayer or ImageLayer"),
        ({"layers": {"a.b": TextLayer(content="x")}}, "layers", "not a layer name"),
    ],
)
def test_a_wrong_python_type_is_a_type_rule(
    kwargs: dict[str, Any], parameter: str, kind: str
) -> None:
    cls = SegmentOptions if "crop" in kwargs else EditOptions
    with pytest.raises(ValidationError, match=kind) as refused:
        cls(**kwargs)
    assert (refused.value.parameter, refused.value.rule) == (parameter, "type")


def test_custom_image_takes_a_url_or_a_file() -> None:
    for kwargs in ({}, {"image_url": "https://x/m.png", "image_file": b"x"}):
        with pytest.raises(ValidationError, match="one of them"):
            CustomImage(**kwargs)


def test_extra_params_pass_anything_through_with_a_warning() -> None:
    with pytest.warns(PhotoroomWarning) as caught:
        options = EditOptions(
            extra_params={"shadow.mode": "ai.brand-new", "background.expandPrompt": "ai.auto"}
        )
    messages = [str(w.message) for w in caught]
    assert any("[rule shadow.mode:one-of]" in m and "not refused" in m for m in messages)
    assert any("[rule background.expandPrompt:one-of]" in m for m in messages)
    assert edit_fields(options)[0] == {
        "shadow.mode": "ai.brand-new",
        "background.expandPrompt": "ai.auto",
    }


def test_extra_params_count_in_combinations() -> None:
    """A typed override next to the mode given as an extra param is allowed."""
    options = _quietly(
        shadow_direction_override="left",
        extra_params={"shadow.mode": "ai.auto-with-overrides"},
        extra_headers={"pr-ai-shadows-model-version": "2026-04-15"},
    )
    assert edit_fields(options)[0]["shadow.mode"] == "ai.auto-with-overrides"


@pytest.mark.parametrize(
    ("kwargs", "rule"),
    [
        (
            {"background_removal_model_version": "2020-01-01"},
            "pr-background-removal-model-version:documented",
        ),
        ({"ai_background_model_version": "4"}, "pr-ai-background-model-version:documented"),
        ({"ai_shadows_model_version": "2027-01-01"}, "pr-ai-shadows-model-version:documented"),
        ({"hd_background_removal": "always"}, "pr-hd-background-removal:documented"),
        ({"background_negative_prompt": "people"}, "background.negativePrompt:needs-model-2"),
        ({"color_space": "original", "padding": 0.1}, "colorSpace:original-geometry"),
    ],
)
def test_what_only_the_documentation_says_is_a_warning(kwargs: dict[str, Any], rule: str) -> None:
    with pytest.warns(PhotoroomWarning, match=rf"\[rule {rule}\]"):
        EditOptions(**kwargs)


def test_options_are_hashable_and_equal_by_value() -> None:
    def build() -> EditOptions:
        return _quietly(
            padding=0.1,
            background_image_file=png(),
            virtual_model_additional_product_images=["https://x/1.jpg"],
            layers={"t": TextLayer(content="x")},
            extra_params={"future.list": [1, 2], "future.nested": {"a": "b"}},
            extra_headers={"x-trace": "1"},
        )

    first, second = build(), build()
    assert first == second
    assert hash(first) == hash(second)
    assert len({first, second, EditOptions(), SegmentOptions(), SegmentOptions()}) == 3
    assert first.extra_params["future.list"] == (1, 2)
    assert pickle.loads(pickle.dumps(first)) == first  # noqa: S301 - our own bytes


def test_mappings_inside_options_cannot_change() -> None:
    options = _quietly(extra_params={"a": 1})
    assert isinstance(options.extra_params, FrozenDict)
    with pytest.raises(TypeError, match="cannot be changed"):
        options.extra_params["b"] = 2  # type: ignore[index]
    with pytest.raises(TypeError):
        options.layers.update({})  # type: ignore[attr-defined]


def test_repr_shows_files_by_format_and_size_never_their_bytes() -> None:
    photo = png(400, 400) + b"\x00" * 100_000
    options = _quietly(
        background_image_file=photo,
        layers={"logo": ImageLayer(image_file=photo)},
        extra_params={"future.file": photo},
    )
    text = repr(options)
    assert f"<PNG image, {len(photo):,} bytes>" in text
    assert text.count("PNG image") == 3
    assert len(text) < 400
    assert "\\x" not in text
    assert repr(EditOptions()) == "EditOptions()"
    assert repr(SegmentOptions(size="hd")) == "SegmentOptions(size='hd')"


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda n: EditOptions(max_width=n), "maxWidth"),
        (lambda n: EditOptions(background_seed=n), "background.seed"),
        (lambda n: EditOptions(padding=-n), "padding"),
        (lambda n: SegmentOptions(size=n), "size"),
    ],
    ids=["max_width", "background_seed", "padding", "segment-size"],
)
def test_an_integer_too_long_to_send_is_a_validation_error(make: Any, name: str) -> None:
    # str() of an integer past 4,300 digits raises ValueError: it left the options raw
    with pytest.raises(ValidationError, match="more than 4,300 digits") as caught:
        make(10**5000)
    assert name in str(caught.value)


@pytest.mark.parametrize("options", [SegmentOptions, EditOptions])
@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"x-trace": "caf\u00e9"}, "cannot be sent: a header value is visible ASCII"),  # non-ASCII
        ({"x-trace": "\ud800"}, "cannot be sent: a header value is visible ASCII"),
        ({"x-trace": "a\r\nx-api-key: other"}, "cannot be sent: a header value is visible ASCII"),
        ({"x-trace": "a\x00"}, "cannot be sent: a header value is visible ASCII"),
        ({"x trace": "1"}, "is not a header name"),
        ({"x-tr\u00e4ce": "1"}, "is not a header name"),
        ({"": "1"}, "is not a header name"),
        ({"x-trace": 1}, "must be a string, not int"),
        # httpx keeps a caller's framing header: a Content-Length of 5 sent a multipart body
        # of thousands of bytes as 5, and the call failed as the http_client's own error
        ({"Content-Length": "5"}, "Content-Length is the client's to set"),
        ({"transfer-encoding": "chunked"}, "transfer-encoding is the client's to set"),
    ],
)
def test_a_header_http_cannot_carry_is_refused_when_the_options_are_made(
    options: Any, headers: dict[str, Any], problem: str
) -> None:
    # a non-ASCII value raised UnicodeEncodeError out of the call; a CR LF, a NUL or a bad
    # name failed when sent, as an APIConnectionError that a batch retried
    with pytest.raises(ValidationError, match=problem) as caught:
        options(extra_headers=headers)
    assert str(caught.value).startswith("extra_headers")
    assert "other" not in str(caught.value)  # a value is never shown: it may be a secret


def test_headers_http_can_carry_are_kept() -> None:
    made = SegmentOptions(extra_headers={"X-Trace_ID.1": "a b\tc !~", "x-empty": ""})
    assert dict(made.extra_headers) == {"X-Trace_ID.1": "a b\tc !~", "x-empty": ""}
    with pytest.raises(ValidationError, match="cannot be sent"):  # spaces around: h11's rule
        SegmentOptions(extra_headers={"x-trace": " a"})


@pytest.mark.parametrize("name", ["x-api-key", "X-API-Key"])
def test_the_api_key_is_refused_as_an_extra_header_without_showing_it(name: str) -> None:
    # it went through: it replaced the client's own key (billing another account), and the
    # options' repr, which logs and job records show, printed it
    for options in (SegmentOptions, EditOptions):
        with pytest.raises(ValidationError, match="api_key=") as caught:
            options(extra_headers={name: "sk_live_s3cret"})
        assert "s3cret" not in str(caught.value)


def test_header_values_are_not_shown_in_the_options_repr() -> None:
    # a gateway's token in extra_headers was printed whole by the options' repr
    options = SegmentOptions(extra_headers={"authorization": "Bearer s3cret", "x-trace": "1"})
    assert "s3cret" not in repr(options)
    assert "authorization" in repr(options)


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: SegmentOptions(size="hd", extra_params={"size": "preview"}), "size"),
        (
            lambda: EditOptions(background_prompt="beach", extra_params={"background.prompt": ""}),
            "background_prompt",
        ),
        (
            lambda: EditOptions(shadow_mode="ai.soft", extra_params={"shadow": {"mode": "x"}}),
            "shadow_mode",
        ),
        # the image's own fields: an imageUrl replaced the image the call was given (another
        # was edited and billed), an imageFile or image_file added a second input part
        (lambda: EditOptions(extra_params={"imageUrl": "https://x/o.jpg"}), "the image argument"),
        (lambda: EditOptions(extra_params={"imageFile": "foo"}), "the image argument"),
        (lambda: SegmentOptions(extra_params={"image_file": "foo"}), "the image argument"),
    ],
)
def test_a_field_given_typed_and_as_an_extra_param_is_refused(make: Any, named: str) -> None:
    # the extra param's value replaced the typed one without a word: the typed value, which
    # the options validated and showed in their repr, was never sent
    with pytest.raises(ValidationError, match=f"which {named} sends too: give one of them"):
        make()
    with pytest.raises(ValidationError, match="which ai_shadows_model_version sends too"):
        _quietly(
            ai_shadows_model_version="2026-04-15",
            extra_headers={"PR-AI-Shadows-Model-Version": "2027-01-01"},
        )
    # an extra param alone still replaces nothing and passes through
    assert edit_fields(_quietly(extra_params={"background.prompt": "x"}))[0] == {
        "background.prompt": "x"
    }


def _real_numbers() -> list[tuple[Any, str]]:
    np = pytest.importorskip("numpy")
    return [
        (Decimal("0.01"), "0.01"),
        (Decimal("1E-11"), "0.00000000001"),
        (Fraction(1, 40), "0.025"),
        (np.float32(0.01), "0.01"),
        (np.float64(0.02), "0.02"),
        # whole numbers, as seeds are
        (Decimal("3E+2"), "300"),
        (Fraction(300, 1), "300"),
        (np.int64(42), "42"),
    ]


@pytest.mark.parametrize(
    ("field", "wire"),
    [
        ("background_blur_radius", "background.blur.radius"),
        ("background_seed", "background.seed"),
        ("padding", "padding"),
        ("shadow_spread_override", "shadow.spreadOverride"),
    ],
)
def test_any_real_number_is_a_number(field: str, wire: str) -> None:
    # Decimal, Fraction and numpy numbers were refused as "not a number", though the spec
    # types these parameters "number"
    shadow = SHADOWS | {"shadow_mode": "ai.auto-with-overrides"} if "shadow" in field else {}
    for value, text in _real_numbers():
        if field in ("background_blur_radius", "padding") and float(value) > 0.05:
            continue
        options = _quietly(**{field: value}, **shadow)
        assert edit_fields(options)[0][wire] == text
        assert hash(options) == hash(_quietly(**{field: value}, **shadow))


def test_real_numbers_are_checked_against_the_range() -> None:
    with pytest.raises(ValidationError, match=r"\[rule export.dpi:range\]"):
        EditOptions(export_dpi=Fraction(71, 1))
    with pytest.raises(ValidationError, match=r"\[rule background.blur.radius:range\]"):
        EditOptions(background_blur_radius=Decimal("0.0500000000000000000001"))
    assert edit_fields(EditOptions(export_dpi=Fraction(1200, 1)))[0] == {"export.dpi": "1200"}


@pytest.mark.parametrize(
    "value", [True, "0.01", float("nan"), float("inf"), Decimal("NaN"), Decimal("-Infinity")]
)
def test_what_is_no_finite_number_is_still_refused(value: object) -> None:
    with pytest.raises(ValidationError) as refused:
        EditOptions(background_blur_radius=value)
    assert refused.value.parameter == "background_blur_radius"


def test_a_decimal_too_long_to_send_is_a_validation_error() -> None:
    # without a limit, Decimal("1E+999999999") would be written out digit by digit
    with pytest.raises(ValidationError, match="too long to send"):
        EditOptions(background_seed=Decimal("1E+999999999"))
