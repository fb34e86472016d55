"""The contract against Photoroom's published OpenAPI document (../shared/photoroom/).

Two halves. The parameter tables (``photoroom_bg._spec``) are checked against the spec file
itself: names, methods, enumerations, bounds, patterns, formats, object fields. Then every
rule of the rule table is proven on both sides: an allowed value goes through the SDK to the
emulator and is accepted; a forbidden value is refused by the SDK before sending, with a
ValidationError naming the parameter and the rule; the same forbidden value sent raw to the
emulator is refused by it with the same rule (a warning rule is sent, with a warning).
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from photoroom_bg import (
    CustomImage,
    EditOptions,
    ImageLayer,
    LayerSegmentation,
    PhotoroomClient,
    PhotoroomWarning,
    PromptImage,
    SegmentOptions,
    TextLayer,
)
from photoroom_bg._rules import EDIT_RULES, RENDER_RULES, SEGMENT_RULES, Rule
from photoroom_bg._spec import EDIT_PARAMS, OBJECT_PARAMS, RENDER_PARAMS, SEGMENT_PARAMS, Param
from photoroom_bg._wire import edit_fields, segment_fields
from photoroom_bg.errors import BadRequestError, InvalidImageError, ValidationError
from photoroom_bg.testing import NOT_EMULATED, PhotoroomEmulator

from ..sources.conftest import ImageServer, png_bytes

ROOT = Path(__file__).resolve().parents[2]
SPEC_PATH = ROOT.parent / "shared" / "photoroom" / "openapi.yaml"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    assert SPEC_PATH.is_file(), f"the spec is expected at {SPEC_PATH}"
    return json.loads(SPEC_PATH.read_text())  # the file is JSON despite its name


# -- the parameter tables against the spec file ------------------------------------------------


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].split("/")[-1]]
    return schema


def _values(spec: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    """The string values a schema enumerates (objects inside ``anyOf`` excluded)."""
    schema = _resolve(spec, schema)
    if schema.get("type") == "object":
        return set()
    found = {str(v) for v in schema.get("enum", []) if not isinstance(v, bool)}
    if "const" in schema:
        found.add(str(schema["const"]))
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            found |= _values(spec, sub)
    return found


_KEYWORDS = {
    "minimum": "minimum",
    "maximum": "maximum",
    "exclusive_minimum": "exclusiveMinimum",
    "min_length": "minLength",
    "pattern": "pattern",
    "format": "format",
    "min_items": "minItems",
    "max_items": "maxItems",
}

# constraints the spec states in a description rather than in schema keywords: each must be
# backed by its quoted phrase in that description
DESCRIBED = {
    ("background.guidance.scale", "minimum"): "between 0 and 1",
    ("background.color", "format"): "hex color without the hash sign",
    ("outline.color", "format"): "hex color without the hash sign",
    ("bg_color", "format"): "Can be a hex code",
    **{(name, "format"): "between 0 and 0.49" for name in ("padding", "margin")},
    **{
        (f"{base}{side}", "format"): f"Accepts the same formats as `{base}`"
        for base in ("padding", "margin")
        for side in ("Top", "Bottom", "Left", "Right")
    },
}


def _edit_spec(spec: dict[str, Any]) -> dict[str, tuple[set[str], dict[str, Any], str]]:
    """``{name: (methods, schema, description)}`` for ``/v2/edit`` from the spec."""
    found: dict[str, tuple[set[str], dict[str, Any], str]] = {}
    for param in spec["paths"]["/v2/edit"]["get"]["parameters"]:
        if param.get("in") == "query":
            found[param["name"]] = ({"get"}, param.get("schema", {}), param.get("description", ""))
    body = spec["paths"]["/v2/edit"]["post"]["requestBody"]["content"]["multipart/form-data"]
    for name, schema in _resolve(spec, body["schema"])["properties"].items():
        methods, known, text = found.get(name, (set(), {}, ""))
        found[name] = (methods | {"post"}, known or schema, text + schema.get("description", ""))
    return found


def _check_constraints(name: str, param: Param, schema: dict[str, Any], text: str) -> None:
    for field, keyword in _KEYWORDS.items():
        ours, theirs = getattr(param, field), schema.get(keyword)
        if ours == theirs:
            continue
        phrase = DESCRIBED.get((name, field))
        assert phrase is not None, f"{name}.{field}: ours {ours!r}, the spec's {theirs!r}"
        assert theirs is None, f"{name}.{field} contradicts the spec's {theirs!r}"
        assert phrase in text, f"{name}.{field}: {phrase!r} is not in the spec's description"


def test_the_edit_table_matches_the_spec(spec: dict[str, Any]) -> None:
    edit = _edit_spec(spec)
    assert set(EDIT_PARAMS) == set(edit)
    for name, (methods, schema, text) in edit.items():
        param = EDIT_PARAMS[name]
        assert ({"get", "post"} if param.where == "both" else {param.where}) == methods, name
        assert set(param.enum) == _values(spec, schema), name
        _check_constraints(name, param, schema, text)


def test_the_segment_and_render_tables_match_the_spec(spec: dict[str, Any]) -> None:
    body = spec["paths"]["/v1/segment"]["post"]["requestBody"]["content"]["multipart/form-data"]
    segment = _resolve(spec, body["schema"])
    assert set(SEGMENT_PARAMS) == set(segment["properties"])
    for name, schema in segment["properties"].items():
        assert set(SEGMENT_PARAMS[name].enum) == _values(spec, schema), name
        assert SEGMENT_PARAMS[name].required == (name in segment["required"]), name
        _check_constraints(name, SEGMENT_PARAMS[name], schema, schema.get("description", ""))
    render: dict[str, set[str]] = {}
    for param in spec["paths"]["/v1/render"]["get"]["parameters"]:
        render.setdefault(param["name"], set()).add("get")
        assert RENDER_PARAMS[param["name"]].required == param.get("required", False)
    body = spec["paths"]["/v1/render"]["post"]["requestBody"]["content"]["multipart/form-data"]
    post = _resolve(spec, body["schema"])
    for name in post["properties"]:
        render.setdefault(name, set()).add("post")
    assert post["required"] == ["templateId"]
    assert set(RENDER_PARAMS) == set(render)
    for name, methods in render.items():
        where = RENDER_PARAMS[name].where
        assert ({"get", "post"} if where == "both" else {where}) == methods, name


def _flatten(
    spec: dict[str, Any], prefix: str, schema: dict[str, Any], required: bool
) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """The leaves of an object schema as ``(dotted name, schema, required in its object)``."""
    schema = _resolve(spec, schema)
    if "anyOf" in schema:
        for sub in schema["anyOf"]:
            if _resolve(spec, sub).get("type") == "object":
                yield from _flatten(spec, prefix, sub, required)
        return
    if schema.get("type") == "object":
        if "properties" in schema:
            needed = set(schema.get("required", []))
            for name, sub in schema["properties"].items():
                yield from _flatten(spec, f"{prefix}.{name}", sub, name in needed)
        elif isinstance(schema.get("additionalProperties"), dict):
            yield from _flatten(spec, prefix + ".{name}", schema["additionalProperties"], False)
        return
    yield prefix, schema, required


def test_the_object_parameters_match_the_spec(spec: dict[str, Any]) -> None:
    leaves: dict[str, tuple[dict[str, Any], bool]] = {}
    for param in spec["paths"]["/v2/edit"]["get"]["parameters"]:
        for name, schema, required in _flatten(spec, param["name"], param.get("schema", {}), False):
            if name != param["name"]:
                leaves[name] = (schema, required)
    assert set(OBJECT_PARAMS) == set(leaves)
    for name, (schema, required) in leaves.items():
        param = OBJECT_PARAMS[name]
        assert set(param.enum) == _values(spec, schema), name
        assert param.required == required, name
        assert param.min_length == schema.get("minLength"), name
        assert (param.format == "binary") == (schema.get("format") == "binary"), name
        assert (param.where == "post") == (schema.get("format") == "binary"), name


def test_every_operation_of_the_spec_is_served(spec: dict[str, Any]) -> None:
    operations = {(m.upper(), p) for p, item in spec["paths"].items() for m in item}
    assert operations == {
        ("POST", "/v1/segment"),
        ("GET", "/v2/edit"),
        ("POST", "/v2/edit"),
        ("GET", "/v1/render"),
        ("POST", "/v1/render"),
        ("GET", "/v1/account"),
        ("GET", "/v2/account"),
    }


def test_the_typed_options_offer_exactly_the_spec_values() -> None:
    """Each Literal-typed option lists the values its parameter enumerates, so mypy catches a
    typo the spec would refuse."""
    from typing import get_args, get_type_hints

    import photoroom_bg.options as module

    for cls, table in ((EditOptions, EDIT_PARAMS), (SegmentOptions, SEGMENT_PARAMS)):
        hints = get_type_hints(cls, vars(module))
        for field in attrs.fields(cls):
            wire = field.metadata.get("wire")
            if wire not in table or not table[wire].enum or wire == "background.expandPrompt":
                continue
            literal = {a for arg in get_args(hints[field.name]) for a in get_args(arg) or [arg]}
            literal -= {type(None), float}
            if not literal:  # the boolean flags crop/despill
                continue
            assert literal == set(table[wire].enum), field.name
    presets = {
        "virtual_model_model": OBJECT_PARAMS["virtualModel.model.preset.name"].enum,
        "virtual_model_scene": OBJECT_PARAMS["virtualModel.scene.preset.name"].enum,
    }
    hints = get_type_hints(EditOptions, vars(module))
    for name, values in presets.items():
        literal = {a for arg in get_args(hints[name]) for a in get_args(arg)}
        assert literal == set(values), name


def test_not_emulated_parameters_are_spec_names_listed_in_the_docs() -> None:
    guide = (ROOT / "docs" / "guides" / "testing.rst").read_text()
    assert set(EDIT_PARAMS) >= NOT_EMULATED
    missing = sorted(name for name in NOT_EMULATED if f"``{name}``" not in guide)
    assert missing == []


# -- every rule, on both sides -------------------------------------------------------------------

UUID = str(uuid.UUID(int=7))
URL = "https://example.com/picture.png"  # never fetched: the emulator does not emulate these
SHADOWS = {"ai_shadows_model_version": "2026-04-15"}


@attrs.frozen
class Case:
    """One rule's proof: ``ok`` passes, ``bad`` breaks it (options keyword arguments).

    ``image``: ``url`` (a GET; the served picture), ``file`` (a POST) or ``none``.
    ``parameter``: what the ValidationError must name.
    """

    ok: Mapping[str, Any]
    bad: Mapping[str, Any]
    parameter: str
    image: str = "url"
    bad_image: str | None = None
    options: type = EditOptions


def _typed_attributes(cls: type) -> dict[str, str]:
    return {f.metadata["wire"]: f.name for f in attrs.fields(cls) if "wire" in f.metadata}


# what a parameter needs beside it for an allowed value to be allowed
CONTEXT: dict[str, dict[str, Any]] = {
    "maxWidth": {"output_size": "originalImage"},
    "maxHeight": {"output_size": "originalImage"},
    "shadow.mode": SHADOWS,
    **{
        name: {"shadow_mode": "ai.auto-with-overrides", **SHADOWS}
        for name in EDIT_PARAMS
        if name.startswith("shadow.") and name.endswith("Override")
    },
    "background.scaling": {"background_image_url": URL},
    "beautify.onSubjectMismatch": {"beautify_mode": "ai.food"},
    "layers.{name}.image.segmentation.mode": {
        "extra_params": {"layers.x.image.segmentation.prompt": "the logo"}
    },
    "layers.{name}.image.segmentation.negativePrompt": {
        "extra_params": {"layers.x.image.segmentation.prompt": "the logo"}
    },
    "layers.{name}.image.imageFromPrompt.seed": {
        "extra_params": {"layers.x.image.imageFromPrompt.prompt": "a logo"}
    },
    "layers.{name}.image.imageFromPrompt.size": {
        "extra_params": {"layers.x.image.imageFromPrompt.prompt": "a logo"}
    },
}


def _good_and_bad(rule: Rule, param: Param) -> tuple[Any, Any]:
    kind = rule.id.rsplit(":", 1)[1]
    if kind == "boolean":
        return True, "yes"
    if kind == "one-of":
        return rule.values[0], "not-a-value"
    if kind == "number-or-preset":
        return 90, "sideways"
    if kind == "number":
        return -1.5, float("nan")
    if kind == "range":
        low = param.minimum if param.minimum is not None else param.exclusive_minimum
        assert low is not None
        assert param.maximum is not None
        # the lower bound is the sharper probe: an exclusive minimum refuses the bound itself
        too_low = param.exclusive_minimum if param.exclusive_minimum is not None else low - 1
        return (low + param.maximum) / 2, too_low
    if kind == "spacing":
        return "30%", "50%"
    if kind == "color":
        return "FF0000EE", "#12"
    if kind == "uuid":
        return UUID, "42"
    if kind == "pattern":
        return "123456x7", "big"
    if kind == "min-length":
        return "x", ""
    if kind == "count":
        return (URL,), tuple(f"{URL}?{i}" for i in range(5))
    raise AssertionError(f"no generated example for {rule.id}")


def _typed_object(cls: type, path: str, value: Any) -> Any:
    """Build ``cls`` (an ImageLayer, a PromptImage...) with ``value`` at the dotted wire
    ``path``, its required prompts filled in."""
    from typing import get_args, get_type_hints

    import photoroom_bg.options as module

    head, _, rest = path.partition(".")
    fields = {f.metadata.get("wire"): f for f in attrs.fields(cls)}
    field = fields[head]
    if rest:
        (inner,) = [
            t for t in get_args(get_type_hints(cls, vars(module))[field.name]) if attrs.has(t)
        ]
        value = _typed_object(inner, rest, value)
    kwargs = {field.name: value}
    if "prompt" in fields and field.name != "prompt":
        kwargs["prompt"] = "the logo"
    return cls(**kwargs)


def _typed_nested(wire: str, value: Any) -> tuple[str, Any] | None:
    """Typed options that send ``value`` under a nested wire name, as ``(option, value)``."""
    if wire in ("virtualModel.model.preset.name", "virtualModel.scene.preset.name"):
        return ("virtual_model_model" if ".model." in wire else "virtual_model_scene"), value
    if wire == "background.expandPrompt.mode":
        return "background_expand_prompt", value if value.startswith("ai.") else f"ai.{value}"
    if wire.startswith("layers.{name}.image."):
        layer = _typed_object(ImageLayer, wire.removeprefix("layers.{name}.image."), value)
        return "layers", {"x": layer}
    return None


def _value_case(rule: Rule, cls: type, params: Mapping[str, Param]) -> Case:
    """A generated case: the typed option when one sends this very field, else extra_params."""
    (wire,) = rule.params
    good, bad = _good_and_bad(rule, params[wire])
    name = wire.replace("{name}", "x").replace("{key}", "x")
    if wire in OBJECT_PARAMS and (typed := _typed_nested(wire, good)) is not None:
        typed_bad = _typed_nested(wire, bad)
        assert typed_bad is not None
        return Case(dict([typed]), dict([typed_bad]), typed[0])
    context = dict(CONTEXT.get(wire, {}))
    extra = dict(context.pop("extra_params", {}))
    attribute = _typed_attributes(cls).get(wire)
    if wire in ("crop", "despill"):
        attribute = None  # typed, these are bools: sent as true/false, never this value

    def build(value: Any, typed: bool) -> dict[str, Any]:
        if typed:
            assert attribute is not None
            return {**context, attribute: value, **({"extra_params": extra} if extra else {})}
        return {**context, "extra_params": {**extra, name: value}}

    # a typed bool cannot hold a wrong value: that one can only come through extra_params
    bad_typed = attribute is not None and not rule.id.endswith(":boolean")
    return Case(
        build(good, attribute is not None),
        build(bad, bad_typed),
        attribute if bad_typed and attribute else f"extra_params[{name!r}]",
        image="file" if cls is SegmentOptions else "url",
        options=cls,
    )


COMBINATIONS: dict[str, Case] = {
    "background:one-source": Case(
        {"background_prompt": "a beach"},
        {"background_prompt": "a beach", "background_image_url": URL},
        "background_image_url",
    ),
    "removeBackground:false-forbids": Case(
        # background.prompt is allowed without background removal (the spec bans only these)
        {"remove_background": False, "background_prompt": "a beach", "background_color": "FFF"},
        {"remove_background": False, "background_guidance_image_url": URL},
        "background_guidance_image_url",
    ),
    "background.scaling:needs-image": Case(
        {"background_scaling": "fit", "background_image_url": URL},
        {"background_scaling": "fit"},
        "background_scaling",
    ),
    "maxWidth:needs-output-size": Case(
        {"max_width": 800.5, "output_size": "croppedSubject"}, {"max_height": 800}, "max_height"
    ),
    "shadow:overrides-need-mode": Case(
        {"shadow_mode": "ai.auto-with-overrides", "shadow_direction_override": 90, **SHADOWS},
        {"shadow_mode": "ai.preset-soft", "shadow_intensity_override": 0.5, **SHADOWS},
        "shadow_intensity_override",
    ),
    "shadow.mode:needs-model": Case(
        {"shadow_mode": "ai.preset-soft", **SHADOWS},
        {"shadow_mode": "ai.preset-hard", "extra_headers": {"pr-ai-shadows-model-version": "3"}},
        "shadow_mode",
    ),
    "shadow.mode:legacy-model": Case(
        {"shadow_mode": "ai.floating"}, {"shadow_mode": "ai.floating", **SHADOWS}, "shadow_mode"
    ),
    "colorSpace:original-conflicts": Case(
        {"color_space": "original", "export_format": "png"},
        {"color_space": "original", "export_format": "jpeg"},
        "export_format",
    ),
    "colorSpace:original-geometry": Case(
        {"color_space": "original"},
        {"color_space": "original", "output_size": "originalImage"},
        "output_size",
    ),
    "beautify.onSubjectMismatch:needs-food": Case(
        {"beautify_mode": "ai.food", "beautify_on_subject_mismatch": "error"},
        {"beautify_mode": "ai.car", "beautify_on_subject_mismatch": "error"},
        "beautify_on_subject_mismatch",
    ),
    "background.expandPrompt:one-form": Case(
        {"background_prompt": "a beach", "background_expand_prompt": "ai.never"},
        {
            "background_expand_prompt": "auto",
            "extra_params": {"background.expandPrompt.mode": "ai.auto"},
        },
        "extra_params['background.expandPrompt.mode']",
    ),
    "virtualModel.model:one-form": Case(
        {"virtual_model_mode": "ai.auto", "virtual_model_model": CustomImage(image_url=URL)},
        {
            "virtual_model_model": "avery",
            "extra_params": {"virtualModel.model.custom.imageUrl": URL},
        },
        "virtual_model_model",
    ),
    "virtualModel.scene:one-form": Case(
        {"virtual_model_mode": "ai.auto", "virtual_model_scene": "beach"},
        {
            "virtual_model_scene": CustomImage(image_url=URL),
            "extra_params": {"virtualModel.scene.preset.name": "beach"},
        },
        "virtual_model_scene",
    ),
    "layers:one-kind": Case(
        {"layers": {"logo": TextLayer(content="SALE", foreground_color="red")}},
        {
            "layers": {"logo": TextLayer(content="SALE")},
            "extra_params": {"layers.logo.image.imageUrl": URL},
        },
        "extra_params['layers.logo.image.imageUrl']",
    ),
    "layers.image.segmentation:needs-prompt": Case(
        {
            "layers": {
                "cut": ImageLayer(
                    image_url=URL,
                    segmentation=LayerSegmentation(prompt="the shoe", mode="keepSalientObject"),
                )
            }
        },
        {
            "extra_params": {
                "layers.cut.image.imageUrl": URL,
                "layers.cut.image.segmentation.mode": "keepSalientObject",
            }
        },
        "extra_params['layers.cut.image.segmentation.mode']",
    ),
    "layers.image.imageFromPrompt:needs-prompt": Case(
        {"layers": {"gen": ImageLayer(image_from_prompt=PromptImage(prompt="a logo", seed=3))}},
        {"extra_params": {"layers.gen.image.imageFromPrompt.seed": 3}},
        "extra_params['layers.gen.image.imageFromPrompt.seed']",
    ),
    "scaling:needs-input": Case(
        {"scaling": "fit"},
        {"scaling": "fit", "image_from_prompt_prompt": "a red shoe"},
        "scaling",
        bad_image="none",
    ),
    "input:required": Case(
        {"image_from_prompt_prompt": "a red shoe"}, {}, "image", image="none", bad_image="none"
    ),
    "files:post-only": Case(
        {"background_guidance_image_file": png_bytes()},
        {"background_guidance_image_file": png_bytes()},
        "background_guidance_image_file",
        image="file",
        bad_image="url",
    ),
    "urls:get-only": Case(
        {"background_image_url": URL},
        {"background_image_url": URL},
        "background_image_url",
        bad_image="file",
    ),
    "background.negativePrompt:needs-model-2": Case(
        {
            "background_prompt": "a beach",
            "background_negative_prompt": "people",
            "ai_background_model_version": "2",
        },
        {"background_prompt": "a beach", "background_negative_prompt": "people"},
        "background_negative_prompt",
    ),
    "pr-background-removal-model-version:documented": Case(
        {"background_removal_model_version": "2024-09-26"},
        {"background_removal_model_version": "2020-01-01"},
        "background_removal_model_version",
    ),
    "pr-ai-background-model-version:documented": Case(
        {"ai_background_model_version": "background-studio-beta-2025-03-17"},
        {"ai_background_model_version": "9"},
        "ai_background_model_version",
    ),
    "pr-ai-shadows-model-version:documented": Case(
        SHADOWS, {"ai_shadows_model_version": "2027-01-01"}, "ai_shadows_model_version"
    ),
    "pr-hd-background-removal:documented": Case(
        {"hd_background_removal": "auto"},
        {"extra_headers": {"pr-hd-background-removal": "always"}},
        "extra_headers['pr-hd-background-removal']",
    ),
}

RENDER_CASES: dict[str, Case] = {
    "templateId:required": Case(
        {"template_id": UUID}, {"template_id": None}, "template_id", "file"
    ),
    "render:needs-image": Case(
        {"template_id": UUID}, {"template_id": UUID}, "image", image="url", bad_image="none"
    ),
}


def _all_cases() -> list[tuple[str, Rule, Case]]:
    cases: list[tuple[str, Rule, Case]] = []
    for rule in EDIT_RULES:
        if rule.kind == "value":
            params = OBJECT_PARAMS if rule.params[0] in OBJECT_PARAMS else EDIT_PARAMS
            cases.append(("edit", rule, _value_case(rule, EditOptions, params)))
        else:
            cases.append(("edit", rule, COMBINATIONS[rule.id]))
    for rule in SEGMENT_RULES:
        cases.append(("segment", rule, _value_case(rule, SegmentOptions, SEGMENT_PARAMS)))
    for rule in RENDER_RULES:
        cases.append(("render", rule, RENDER_CASES[rule.id]))
    return cases


CASES = _all_cases()


def test_every_rule_has_a_case_and_no_case_is_orphaned() -> None:
    ids = [rule.id for _, rule, _ in CASES]
    assert len(ids) == len(set(ids)), "rule ids must be unique"
    combinations = {r.id for r in EDIT_RULES if r.kind == "combination"}
    assert set(COMBINATIONS) == combinations
    assert set(RENDER_CASES) == {r.id for r in RENDER_RULES}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[PhotoroomEmulator, str, PhotoroomClient, httpx.Client]]:
    emulator = PhotoroomEmulator(credits=1_000_000, image_work=False)
    images = ImageServer()
    images.start()
    with (
        emulator.serve() as url,
        emulator.client(max_retries=0) as client,
        httpx.Client(base_url=url, headers={"x-api-key": emulator.api_key}) as http,
    ):
        yield emulator, f"{images.url}/img.png", client, http
    images.stop()


def _input(kind: str, image_url: str) -> Any:
    return {"url": image_url, "file": png_bytes(), "none": None}[kind]


def _call(endpoint: str, case: Case, kwargs: Mapping[str, Any], image: Any, client: Any) -> Any:
    if endpoint == "render":
        return client.render(image, kwargs["template_id"])
    options = case.options(**kwargs)
    if endpoint == "segment":
        return client.remove_background(image, options)
    return client.edit(image, options)


def _rule_warnings(caught: list[warnings.WarningMessage], rule: Rule) -> list[str]:
    return [str(w.message) for w in caught if f"[rule {rule.id}]" in str(w.message)]


@pytest.mark.parametrize(("endpoint", "rule", "case"), CASES, ids=[r.id for _, r, _ in CASES])
def test_the_allowed_value_passes_the_sdk_and_the_emulator(
    served: tuple[PhotoroomEmulator, str, PhotoroomClient, httpx.Client],
    endpoint: str,
    rule: Rule,
    case: Case,
) -> None:
    _, image_url, client, _ = served
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _call(endpoint, case, case.ok, _input(case.image, image_url), client)
    assert result.content
    assert _rule_warnings(caught, rule) == []


@pytest.mark.parametrize(("endpoint", "rule", "case"), CASES, ids=[r.id for _, r, _ in CASES])
def test_the_forbidden_value_is_refused_locally_and_by_the_emulator(
    served: tuple[PhotoroomEmulator, str, PhotoroomClient, httpx.Client],
    endpoint: str,
    rule: Rule,
    case: Case,
) -> None:
    emulator, image_url, client, http = served
    image = _input(case.bad_image or case.image, image_url)
    before = len(emulator.requests)
    passed_through = case.parameter.startswith(("extra_params[", "extra_headers["))
    if rule.level == "error" and not passed_through:
        expected = InvalidImageError if rule.id == "input:required" else ValidationError
        with pytest.raises(expected) as refused:
            _call(endpoint, case, case.bad, image, client)
        assert refused.value.rule == rule.id
        assert refused.value.parameter == case.parameter
        assert f"[rule {rule.id}]" in str(refused.value)
        assert len(emulator.requests) == before  # nothing was sent
    elif rule.level == "error":
        # extra_params are a pass-through: sent, with a warning; the emulator refuses them
        with pytest.warns(PhotoroomWarning) as caught, pytest.raises(BadRequestError) as answered:
            _call(endpoint, case, case.bad, image, client)
        (message,) = _rule_warnings(list(caught), rule)
        assert message.startswith(case.parameter)
        assert answered.value.response is not None
        assert answered.value.response.headers["x-emulator-rule"] == rule.id
    else:
        with pytest.warns(PhotoroomWarning) as caught:
            _call(endpoint, case, case.bad, image, client)
        (message,) = _rule_warnings(list(caught), rule)
        assert message.startswith(case.parameter)
    answer = _send_raw(http, endpoint, case, image)
    if rule.level == "warning":
        assert answer.status_code == 200, answer.text
    else:
        assert answer.status_code == 400, answer.text
        assert answer.headers["x-emulator-rule"] == rule.id


def _send_raw(http: httpx.Client, endpoint: str, case: Case, image: Any) -> httpx.Response:
    """The forbidden request as the SDK would have sent it, built with validation off."""
    if endpoint == "render":
        texts: dict[str, Any] = {}
        if case.bad["template_id"] is not None:
            texts["templateId"] = case.bad["template_id"]
        files: dict[str, bytes] = {}
        headers: dict[str, str] = {}
        path = "/v1/render"
    else:
        with attrs.validators.disabled():
            options = case.options(**case.bad)
        if endpoint == "segment":
            texts, _, headers = segment_fields(options)
            files = {}
            path = "/v1/segment"
        else:
            texts, files, headers = edit_fields(options)
            path = "/v2/edit"
    main = "image_file" if endpoint == "segment" else "imageFile"
    if isinstance(image, str):
        params = {"imageUrl": image, **texts, **{name: "binary" for name in files}}
        return http.get(path, params=params, headers=headers)
    parts = [(name, (name, blob)) for name, blob in files.items()]
    if image is not None:
        parts.append((main, ("image.png", image)))
    parts += [
        (name, (None, value))
        for name, values in texts.items()
        for value in ([values] if isinstance(values, str) else values)
    ]
    # a form needs one part; an unknown one is only reported, as Photoroom does
    return http.post(path, files=parts or [("comment", (None, "-"))], headers=headers)


def test_segment_accepts_every_value_and_reports_unknown_fields(
    served: tuple[PhotoroomEmulator, str, PhotoroomClient, httpx.Client],
) -> None:
    _, _, _, http = served
    for name, param in SEGMENT_PARAMS.items():
        for value in param.enum or (("#FF0000",) if name == "bg_color" else ()):
            answer = http.post(
                "/v1/segment", files={"image_file": ("a.png", png_bytes())}, data={name: value}
            )
            assert answer.status_code == 200, (name, value, answer.text)
            assert "pr-unsupported-attributes" not in answer.headers
    segment = http.post(
        "/v1/segment", files={"image_file": ("a.png", png_bytes())}, data={"scale": "2"}
    )
    assert segment.headers["pr-unsupported-attributes"] == "Unsupported attributes: scale"


def test_parameters_outside_the_spec_or_on_the_wrong_method_are_reported(
    served: tuple[PhotoroomEmulator, str, PhotoroomClient, httpx.Client],
) -> None:
    _, image_url, _, http = served
    unknown = http.get("/v2/edit", params={"imageUrl": image_url, "background.colour": "red"})
    assert unknown.status_code == 200
    assert (
        unknown.headers["pr-unsupported-attributes"] == "Unsupported attributes: background.colour"
    )
    post_only = http.get("/v2/edit", params={"imageUrl": image_url, "imageFile": "x"})
    assert "imageFile" in post_only.headers["pr-unsupported-attributes"]
    nested = http.get(
        "/v2/edit", params={"imageUrl": image_url, "virtualModel.model.preset.colour": "red"}
    )
    assert "virtualModel.model.preset.colour" in nested.headers["pr-unsupported-attributes"]
    not_boolean = http.get("/v2/edit", params={"imageUrl": image_url, "removeBackground": "yes"})
    assert not_boolean.status_code == 400
    assert not_boolean.json()["error"]["message"].startswith("removeBackground must be a boolean")


def test_object_parameters_are_accepted_flattened(
    served: tuple[PhotoroomEmulator, str, PhotoroomClient, httpx.Client],
) -> None:
    _, image_url, _, http = served
    for name, value in (
        ("layers.logo.image.imageUrl", URL),
        ("virtualModel.model.preset.name", "avery"),
        ("background.expandPrompt.mode", "ai.auto"),
    ):
        answer = http.get("/v2/edit", params={"imageUrl": image_url, name: value})
        assert answer.status_code == 200, answer.text
        assert "pr-unsupported-attributes" not in answer.headers


def _context_for(wire: str, value: str) -> dict[str, Any]:
    if wire == "shadow.mode":
        return SHADOWS if value.startswith(("ai.preset", "ai.auto")) else {}
    return {k: v for k, v in CONTEXT.get(wire, {}).items() if k != "extra_params"}


def test_every_enumerated_value_passes_the_sdk_and_the_emulator(
    served: tuple[PhotoroomEmulator, str, PhotoroomClient, httpx.Client],
) -> None:
    _, image_url, client, _ = served
    typed = _typed_attributes(EditOptions)
    sent = 0
    for wire, param in EDIT_PARAMS.items():
        if not param.enum or wire not in typed or wire == "background.expandPrompt":
            continue
        for value in param.enum:
            options = EditOptions(**_context_for(wire, value), **{typed[wire]: value})
            assert client.edit(image_url, options).content, (wire, value)
            sent += 1
    assert sent > 100
