"""Golden wire format: the exact fields and headers each option produces."""

from __future__ import annotations

import pytest

from photoroom_bg import EditOptions, SegmentOptions
from photoroom_bg._wire import edit_fields, segment_fields, wire_value
from photoroom_bg.errors import ValidationError


def test_segment_defaults_send_no_fields_and_no_accept_header() -> None:
    assert segment_fields(SegmentOptions()) == ({}, {}, {})


def test_segment_every_option_golden() -> None:
    options = SegmentOptions(
        format="webp", channels="alpha", bg_color="FF00FF", size="hd", crop=True, despill=True
    )
    assert segment_fields(options) == (
        {
            "format": "webp",
            "channels": "alpha",
            "bg_color": "#FF00FF",
            "size": "hd",
            "crop": "true",
            "despill": "true",
        },
        {},
        {},
    )


@pytest.mark.parametrize(
    ("given", "sent"), [("#00ff00", "#00ff00"), ("00ff00", "#00ff00"), ("white", "white")]
)
def test_segment_bg_color_keeps_or_adds_hash(given: str, sent: str) -> None:
    assert segment_fields(SegmentOptions(bg_color=given))[0] == {"bg_color": sent}


def test_segment_base64_asks_for_json_and_extra_params_pass_through() -> None:
    fields, files, headers = segment_fields(
        SegmentOptions(base64=True, extra_params={"new_flag": False}, extra_headers={"x-a": "1"})
    )
    assert fields == {"new_flag": "false"}
    assert files == {}
    assert headers == {"x-a": "1", "accept": "application/json"}


def test_edit_background_family_golden() -> None:
    texts, files, headers = edit_fields(
        EditOptions(
            ai_background_model_version="2",
            remove_background=True,
            background_color="#FFFFFF",
            background_prompt="a beach",
            background_seed=42,
            background_blur_mode="bokeh",
            background_blur_radius=0.02,
            background_expand_prompt="ai.auto",
            background_guidance_scale=0.5,
            background_negative_prompt="people",
        )
    )
    assert texts == {
        "removeBackground": "true",
        "background.color": "FFFFFF",
        "background.prompt": "a beach",
        "background.seed": "42",
        "background.blur.mode": "bokeh",
        "background.blur.radius": "0.02",
        "background.expandPrompt.mode": "ai.auto",
        "background.guidance.scale": "0.5",
        "background.negativePrompt": "people",
    }
    assert files == {}
    assert headers == {"pr-ai-background-model-version": "2"}


def test_edit_positioning_family_golden() -> None:
    texts, _, _ = edit_fields(
        EditOptions(
            padding=0.1,
            padding_top="30%",
            padding_bottom="100px",
            padding_left=0,
            padding_right=0.25,
            margin="5%",
            margin_top=0.01,
            margin_bottom="8px",
            margin_left=0.2,
            margin_right=0.3,
            output_size="originalImage",
            max_width=800,
            max_height=600,
            scaling="fill",
            horizontal_alignment="left",
            vertical_alignment="bottom",
            reference_box="originalImage",
            ignore_padding_and_snap_on_cropped_sides=False,
        )
    )
    assert texts == {
        "padding": "0.1",
        "paddingTop": "30%",
        "paddingBottom": "100px",
        "paddingLeft": "0",
        "paddingRight": "0.25",
        "margin": "5%",
        "marginTop": "0.01",
        "marginBottom": "8px",
        "marginLeft": "0.2",
        "marginRight": "0.3",
        "outputSize": "originalImage",
        "maxWidth": "800",
        "maxHeight": "600",
        "scaling": "fill",
        "horizontalAlignment": "left",
        "verticalAlignment": "bottom",
        "referenceBox": "originalImage",
        "ignorePaddingAndSnapOnCroppedSides": "false",
    }


def test_edit_shadow_lighting_and_model_headers_golden() -> None:
    texts, _, headers = edit_fields(
        EditOptions(
            shadow_mode="ai.auto-with-overrides",
            shadow_direction_override="frontLeft",
            shadow_intensity_override=0.7,
            shadow_softness_override=1,
            shadow_spread_override=45,
            shadow_subject_pose_override="upright",
            lighting_mode="ai.preserve-hue-and-saturation",
            ai_shadows_model_version="2026-04-15",
            background_removal_model_version="2024-09-26",
            ai_background_model_version="background-studio-beta-2025-03-17",
            hd_background_removal="auto",
        )
    )
    assert texts == {
        "shadow.mode": "ai.auto-with-overrides",
        "shadow.directionOverride": "frontLeft",
        "shadow.intensityOverride": "0.7",
        "shadow.softnessOverride": "1",
        "shadow.spreadOverride": "45",
        "shadow.subjectPoseOverride": "upright",
        "lighting.mode": "ai.preserve-hue-and-saturation",
    }
    assert headers == {
        "pr-ai-shadows-model-version": "2026-04-15",
        "pr-background-removal-model-version": "2024-09-26",
        "pr-ai-background-model-version": "background-studio-beta-2025-03-17",
        "pr-hd-background-removal": "auto",
    }


def test_edit_export_outline_and_ai_features_golden() -> None:
    texts, _, _ = edit_fields(
        EditOptions(
            export_format="webp",
            export_dpi=300,
            preserve_metadata="xmp",
            color_space="sRGB",
            outline_color="#000000",
            outline_width=0.05,
            outline_blur_radius=0.01,
            text_removal_mode="ai.all",
            uncrop_mode="ai.auto",
            uncrop_seed=3,
            upscale_mode="ai.fast",
            upscale_downscale_if_needed="always",
            beautify_mode="ai.food",
            beautify_seed=1,
            beautify_on_subject_mismatch="error",
            expand_mode="ai.auto",
            expand_seed=9,
            edit_with_ai_mode="ai.auto",
            edit_with_ai_prompt="make it blue",
            edit_with_ai_seed=5,
            ironing_mode="ai.auto",
            segmentation_prompt="the shoe",
            segmentation_negative_prompt="the box",
            segmentation_mode="keepSalientObject",
            keep_existing_alpha_channel="auto",
            template_id="0b5f7a3e-0000-0000-0000-000000000000",
        )
    )
    assert texts == {
        "export.format": "webp",
        "export.dpi": "300",
        "preserveMetadata": "xmp",
        "colorSpace": "sRGB",
        "outline.color": "000000",
        "outline.width": "0.05",
        "outline.blurRadius": "0.01",
        "textRemoval.mode": "ai.all",
        "uncrop.mode": "ai.auto",
        "uncrop.seed": "3",
        "upscale.mode": "ai.fast",
        "upscale.downscaleIfNeeded": "always",
        "beautify.mode": "ai.food",
        "beautify.seed": "1",
        "beautify.onSubjectMismatch": "error",
        "expand.mode": "ai.auto",
        "expand.seed": "9",
        "editWithAI.mode": "ai.auto",
        "editWithAI.prompt": "make it blue",
        "editWithAI.seed": "5",
        "ironing.mode": "ai.auto",
        "segmentation.prompt": "the shoe",
        "segmentation.negativePrompt": "the box",
        "segmentation.mode": "keepSalientObject",
        "keepExistingAlphaChannel": "auto",
        "templateId": "0b5f7a3e-0000-0000-0000-000000000000",
    }


def test_edit_generators_golden() -> None:
    texts, _, _ = edit_fields(
        EditOptions(
            image_from_prompt_prompt="a red shoe",
            image_from_prompt_seed=2,
            image_from_prompt_size="SQUARE_HD",
            flat_lay_mode="ai.auto",
            flat_lay_prompt="studio",
            flat_lay_size="PORTRAIT_HD_4_3",
            ghost_mannequin_mode="ai.auto",
            ghost_mannequin_prompt="clean",
            ghost_mannequin_size="SQUARE_HD",
            virtual_model_mode="ai.auto",
            virtual_model_pose="seated",
            virtual_model_prompt="summer",
            virtual_model_quality="premium",
            virtual_model_size="LANDSCAPE_HD_16_9",
        )
    )
    assert texts == {
        "imageFromPrompt.prompt": "a red shoe",
        "imageFromPrompt.seed": "2",
        "imageFromPrompt.size": "SQUARE_HD",
        "flatLay.mode": "ai.auto",
        "flatLay.prompt": "studio",
        "flatLay.size": "PORTRAIT_HD_4_3",
        "ghostMannequin.mode": "ai.auto",
        "ghostMannequin.prompt": "clean",
        "ghostMannequin.size": "SQUARE_HD",
        "virtualModel.mode": "ai.auto",
        "virtualModel.pose": "seated",
        "virtualModel.prompt": "summer",
        "virtualModel.quality": "premium",
        "virtualModel.size": "LANDSCAPE_HD_16_9",
    }


def test_edit_files_are_split_off_and_extra_params_pass_through() -> None:
    texts, files, headers = edit_fields(
        EditOptions(
            background_image_file=b"\x89PNG...",
            extra_params={"layers.logo.image.imageUrl": "https://x/y.png", "future.flag": True},
            extra_headers={"pr-new-header": "v"},
        )
    )
    assert files == {"background.imageFile": b"\x89PNG..."}
    assert texts == {"layers.logo.image.imageUrl": "https://x/y.png", "future.flag": "true"}
    assert headers == {"pr-new-header": "v"}


def test_an_unset_edit_option_is_never_sent() -> None:
    assert edit_fields(EditOptions()) == ({}, {}, {})


@pytest.mark.parametrize(
    ("value", "text"), [(True, "true"), (False, "false"), (0.000001, "0.000001"), (3, "3")]
)
def test_scalar_encoding(value: object, text: str) -> None:
    assert wire_value(value) == text


def test_wire_value_refuses_containers() -> None:
    with pytest.raises(ValidationError, match="cannot send list"):
        wire_value([1, 2])


@pytest.mark.parametrize(
    ("make", "parameter"),
    [
        (lambda: EditOptions(background_prompt="a shoe on \udcff sand"), "background_prompt"),
        (lambda: SegmentOptions(extra_params={"someParam": "\udcff"}), "extra_params['someParam']"),
        (lambda: EditOptions(extra_params={"x.\udcff": "1"}), "extra_params['x.\\udcff']"),
        (lambda: EditOptions(extra_params={"tags": ["ok", "\udcff"]}), "extra_params['tags']"),
    ],
)
def test_text_utf8_cannot_carry_is_refused_when_the_options_are_made(
    make: object, parameter: str
) -> None:
    # a lone surrogate (a file name read with os.fsdecode, say) passed every check and then
    # raised a raw UnicodeEncodeError from the call, outside the SDK's errors
    with pytest.raises(ValidationError, match="UTF-8 cannot carry") as caught:
        make()  # type: ignore[operator]
    assert caught.value.parameter == parameter


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1e-11, "0.00000000001"),
        (0.05000000000001, "0.05000000000001"),
        (1e-7, "0.0000001"),
        (0.3, "0.3"),
        (300.0, "300"),
        (-0.0, "0"),
        (12345678901234567890, "12345678901234567890"),
        (1.5e20, "150000000000000000000"),
    ],
)
def test_a_float_is_sent_with_every_digit_it_has(value: object, text: str) -> None:
    # floats were written with ten fixed decimals: 1e-11 went as "0" and 0.05000000000001
    # as "0.05", another value than the one given
    assert wire_value(value) == text


def test_a_tiny_value_in_range_is_sent_as_given() -> None:
    # the range check read the ten-decimal wire form: 1e-11, inside (0, 0.05], was refused
    # as 0, and 0.05000000000001, past 0.05, went through as 0.05
    texts = edit_fields(EditOptions(background_blur_radius=1e-11, background_seed=1e-11))[0]
    assert texts == {"background.blur.radius": "0.00000000001", "background.seed": "0.00000000001"}
    with pytest.raises(ValidationError, match=r"background.blur.radius:range"):
        EditOptions(background_blur_radius=0.05000000000001)
