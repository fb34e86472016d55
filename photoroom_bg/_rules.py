"""The rules on a request, one table per endpoint: :data:`EDIT_RULES`, :data:`SEGMENT_RULES`,
:data:`RENDER_RULES`.

Each :class:`Rule` is one constraint the spec states: generated from the parameter tables of
``_spec`` for single values (an enumeration, a range, a pattern), written out here for
combinations. The SDK checks options against them before anything is sent; the emulator
checks every request against the same rules; the client guide's list of local checks is
rendered from them; and the contract test proves each rule on both sides. Rules work on the
wire form (field names and text values as sent), so the SDK and the emulator cannot disagree
about what a value means.

A rule is an ``error`` (the spec forbids it: refused before sending) or a ``warning``
(documented outside the spec, or the spec says it has no effect: sent, with a
:class:`~photoroom_bg.PhotoroomWarning`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Literal

import attrs

from ._spec import (
    EDIT_PARAMS,
    LAYER_IMAGE,
    MODEL_HEADERS,
    OBJECT_PARAMS,
    SEGMENT_PARAMS,
    SHADOWS_HEADER,
    SHADOWS_MODEL,
    Param,
    compile_pattern,
)

__all__ = [
    "EDIT_RULES",
    "RENDER_RULES",
    "SEGMENT_RULES",
    "Rule",
    "WireRequest",
    "param_rules",
    "violations",
]

# -- the request a rule looks at ---------------------------------------------------------------


@attrs.frozen
class WireRequest:
    """A request as it travels: text fields (every value of a repeated name, in order), the
    names of file parts, headers (lower-case names) and the method, ``None`` while only the
    options are known (the input image, and so GET or POST, is decided per call)."""

    fields: Mapping[str, tuple[str, ...]]
    files: frozenset[str] = frozenset()
    headers: Mapping[str, str] = attrs.field(factory=dict)
    method: Literal["GET", "POST"] | None = None

    def value(self, name: str) -> str | None:
        """The first text value sent under ``name``."""
        values = self.fields.get(name)
        return values[0] if values else None

    def has(self, name: str) -> bool:
        """``name`` is sent, as text or as a file."""
        return name in self.fields or name in self.files

    def names(self) -> list[str]:
        """Every field and file name sent."""
        return [*self.fields, *self.files]

    def header(self, name: str) -> str | None:
        """A header's value (``name`` in lower case)."""
        return self.headers.get(name)


Check = Callable[[WireRequest], "str | None"]


@attrs.frozen
class Rule:
    """One constraint on a request.

    Attributes:
        id: a short stable name, quoted in errors, logs and the docs (``shadow.mode:needs-model``).
        params: the wire names it is about (``{name}`` / ``{key}`` stand for any segment).
        text: what is required, in one sentence (reStructuredText).
        check: returns the wire name that breaks the rule, or ``None``.
        level: ``error`` (refused) or ``warning`` (sent, with a warning).
        source: ``spec``, or ``docs`` for what only Photoroom's documentation states.
        needs_request: the rule needs the input and the method, so it is checked per call.
        values: for an enumeration, the allowed values.
        kind: ``value`` for a rule on one parameter's value (``text`` says what the value must
            be), ``combination`` for a rule on several parameters.
    """

    id: str
    params: tuple[str, ...]
    text: str
    check: Check = attrs.field(eq=False, repr=False)
    level: Literal["error", "warning"] = "error"
    source: Literal["spec", "docs"] = "spec"
    needs_request: bool = False
    values: tuple[str, ...] = ()
    kind: Literal["value", "combination"] = "combination"

    @property
    def message(self) -> str:
        """:attr:`text` without reStructuredText markup."""
        return self.text.replace("``", "'")


# -- value checks --------------------------------------------------------------------------------

_NUMBER_TEXT = re.compile(r"^-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?\Z")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\Z")
_HEX = re.compile(r"^#?(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})\Z")
_COLOR_NAME = re.compile(r"^[a-zA-Z]{3,30}\Z")
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%\Z")
_PIXELS = re.compile(r"^\d+(?:\.\d+)?px\Z")


def as_number(text: str) -> float | None:
    """The number a wire value spells, or ``None`` (``nan``, ``inf``, ``1_0`` are not numbers)."""
    if not _NUMBER_TEXT.match(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def is_color(text: str) -> bool:
    """A hex colour (``FF0000``, ``FF0000EE``; a leading ``#`` tolerated) or a colour name."""
    return bool(_HEX.match(text) or _COLOR_NAME.match(text))


def is_spacing(text: str) -> bool:
    """A ratio 0..0.49, a percentage 0%..49% or pixels (``100px``)."""
    number = as_number(text)
    if number is not None:
        return 0 <= number <= 0.49
    percent = _PERCENT.match(text)
    if percent:
        return float(percent.group(1)) <= 49
    return bool(_PIXELS.match(text))


def _matching(request: WireRequest, pattern: str) -> Iterator[tuple[str, tuple[str, ...]]]:
    if "{" not in pattern:
        if pattern in request.fields:
            yield pattern, request.fields[pattern]
        return
    regex = compile_pattern(pattern)
    for name, values in request.fields.items():
        if regex.match(name):
            yield name, values


def _each_value(pattern: str, ok: Callable[[str], bool]) -> Check:
    def check(request: WireRequest) -> str | None:
        for name, values in _matching(request, pattern):
            if not all(ok(v) for v in values):
                return name
        return None

    return check


def _describe_range(param: Param) -> str:
    low = (
        f"greater than {param.exclusive_minimum:g}"
        if param.exclusive_minimum is not None
        else f"at least {param.minimum:g}"
        if param.minimum is not None
        else None
    )
    high = f"at most {param.maximum:g}" if param.maximum is not None else None
    return "a number " + " and ".join(p for p in (low, high) if p)


def _bound(value: float | None) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _in_range(param: Param) -> Callable[[str], bool]:
    # compared as the decimals they spell: 0.0500000000000000000001 reads as the float 0.05
    minimum, maximum = _bound(param.minimum), _bound(param.maximum)
    exclusive_minimum = _bound(param.exclusive_minimum)

    def ok(text: str) -> bool:
        if as_number(text) is None:
            return False
        number = Decimal(text)
        if minimum is not None and number < minimum:
            return False
        if exclusive_minimum is not None and number <= exclusive_minimum:
            return False
        return maximum is None or number <= maximum

    return ok


def _literal_list(values: Sequence[str]) -> str:
    return ", ".join(f"``{v}``" for v in values)


def _value_rule(
    id: str, params: tuple[str, ...], text: str, check: Check, *, values: tuple[str, ...] = ()
) -> Rule:
    return Rule(id, params, text, check, values=values, kind="value")


def param_rules(name: str, param: Param) -> list[Rule]:
    """The single-value rules the spec states for one parameter."""
    rules: list[Rule] = []
    kinds = set(param.kind.split("|"))
    if param.format == "binary" or kinds <= {"object"}:
        return rules
    if param.enum and kinds == {"number", "string"}:
        values = frozenset(param.enum)
        rules.append(
            _value_rule(
                f"{name}:number-or-preset",
                (name,),
                f"a number (degrees) or one of {_literal_list(param.enum)}",
                _each_value(name, lambda t: t in values or as_number(t) is not None),
                values=param.enum,
            )
        )
    elif param.enum:
        values = frozenset(param.enum)
        rules.append(
            _value_rule(
                f"{name}:one-of",
                (name,),
                f"one of {_literal_list(param.enum)}",
                _each_value(name, values.__contains__),
                values=param.enum,
            )
        )
    elif kinds == {"boolean"}:
        rules.append(
            _value_rule(
                f"{name}:boolean",
                (name,),
                "a boolean (``true`` or ``false``)",
                _each_value(name, ("true", "false").__contains__),
                values=("true", "false"),
            )
        )
    elif kinds == {"number"}:
        bounded = param.minimum is not None or param.maximum is not None
        bounded = bounded or param.exclusive_minimum is not None
        rules.append(
            _value_rule(
                f"{name}:range" if bounded else f"{name}:number",
                (name,),
                _describe_range(param) if bounded else "a number",
                _each_value(name, _in_range(param)),
            )
        )
    if param.format == "spacing":
        rules.append(
            _value_rule(
                f"{name}:spacing",
                (name,),
                'a ratio from 0 to 0.49 (``0.1``, ``"0.3"``), a percentage from 0% to 49% '
                '(``"30%"``) or pixels (``"100px"``)',
                _each_value(name, is_spacing),
            )
        )
    if param.format == "color":
        rules.append(
            _value_rule(
                f"{name}:color",
                (name,),
                "a hex colour (``FF0000``, ``FF0000EE``) or a colour name (``red``)",
                _each_value(name, is_color),
            )
        )
    if param.format == "uuid":
        rules.append(
            _value_rule(
                f"{name}:uuid", (name,), "a UUID", _each_value(name, lambda t: bool(_UUID.match(t)))
            )
        )
    if param.pattern is not None:
        # the spec's patterns are ECMA's, where "$" ends the text: Python's "$" also matches
        # before a final newline, and "200x400\n" was sent
        regex = re.compile(re.sub(r"(?<!\\)\$$", r"\\Z", param.pattern))
        rules.append(
            _value_rule(
                f"{name}:pattern",
                (name,),
                "``auto``, ``WIDTHxHEIGHT`` (``1000x1000``), ``originalImage`` or "
                "``croppedSubject``"
                if name == "outputSize"
                else f"matches ``{param.pattern}``",
                _each_value(name, lambda t: bool(regex.match(t))),
            )
        )
    if param.min_length is not None:
        length = param.min_length
        rules.append(
            _value_rule(
                f"{name}:min-length",
                (name,),
                f"at least {length} character{'s' if length > 1 else ''}",
                _each_value(name, lambda t: len(t) >= length),
            )
        )
    if param.min_items is not None or param.max_items is not None:
        low, high = param.min_items or 0, param.max_items or math.inf

        def count(request: WireRequest, name: str = name) -> str | None:
            values = request.fields.get(name)
            return name if values is not None and not low <= len(values) <= high else None

        rules.append(_value_rule(f"{name}:count", (name,), f"{low} to {high} values", count))
    return rules


# -- combinations --------------------------------------------------------------------------------

_BACKGROUND_SOURCES = ("background.prompt", "background.imageUrl", "background.imageFile")
_NOT_WITHOUT_REMOVAL = (
    "background.imageUrl",
    "background.imageFile",
    "background.guidance.imageUrl",
    "background.guidance.imageFile",
    "referenceBox",
    "ignorePaddingAndSnapOnCroppedSides",
)
_OVERRIDES = (
    "shadow.directionOverride",
    "shadow.intensityOverride",
    "shadow.softnessOverride",
    "shadow.spreadOverride",
    "shadow.subjectPoseOverride",
)
_NEW_SHADOW_MODES = ("ai.preset-soft", "ai.preset-hard", "ai.auto-with-overrides")
_LEGACY_SHADOW_MODES = ("ai.soft", "ai.hard", "ai.floating")
_GEOMETRY = (
    "outputSize",
    "padding",
    "paddingTop",
    "paddingBottom",
    "paddingLeft",
    "paddingRight",
    "margin",
    "marginTop",
    "marginBottom",
    "marginLeft",
    "marginRight",
    "maxWidth",
    "maxHeight",
    "scaling",
    "referenceBox",
    "horizontalAlignment",
    "verticalAlignment",
    "ignorePaddingAndSnapOnCroppedSides",
)
# every /v2/edit operation other than background removal, positioning and export
_OPERATIONS = (
    "background.",
    "shadow.",
    "lighting.",
    "outline.",
    "textRemoval.",
    "uncrop.",
    "upscale.",
    "beautify.",
    "expand.",
    "editWithAI.",
    "describeAnyChange.",
    "flatLay.",
    "ghostMannequin.",
    "virtualModel.",
    "ironing.",
    "imageFromPrompt.",
    "layers.",
    "templateId",
)
_GET_ONLY_URLS = (
    "background.imageUrl",
    "background.guidance.imageUrl",
    "editWithAI.additionalImages.{key}.imageUrl",
)


def _first_present(request: WireRequest, names: Sequence[str]) -> str | None:
    return next((n for n in names if request.has(n)), None)


def _one_background(request: WireRequest) -> str | None:
    present = [n for n in _BACKGROUND_SOURCES if request.has(n)]
    return present[1] if len(present) > 1 else None


def _removal_off(request: WireRequest) -> str | None:
    if request.value("removeBackground") != "false":
        return None
    return _first_present(request, _NOT_WITHOUT_REMOVAL)


def _scaling_needs_image(request: WireRequest) -> str | None:
    if request.has("background.scaling") and not (
        request.has("background.imageUrl") or request.has("background.imageFile")
    ):
        return "background.scaling"
    return None


def _max_size(request: WireRequest) -> str | None:
    if request.value("outputSize") in ("originalImage", "croppedSubject"):
        return None
    return _first_present(request, ("maxWidth", "maxHeight"))


def _overrides(request: WireRequest) -> str | None:
    if request.value("shadow.mode") == "ai.auto-with-overrides":
        return None
    return _first_present(request, _OVERRIDES)


def _new_modes(request: WireRequest) -> str | None:
    needs_model = request.value("shadow.mode") in _NEW_SHADOW_MODES
    if needs_model and request.header(SHADOWS_HEADER) != SHADOWS_MODEL:
        return "shadow.mode"
    return None


def _legacy_modes(request: WireRequest) -> str | None:
    legacy = request.value("shadow.mode") in _LEGACY_SHADOW_MODES
    if legacy and request.header(SHADOWS_HEADER) == SHADOWS_MODEL:
        return "shadow.mode"
    return None


def _color_space(request: WireRequest) -> str | None:
    if request.value("colorSpace") != "original":
        return None
    if request.value("export.format") not in (None, "png"):
        return "export.format"
    if request.value("keepExistingAlphaChannel") == "auto":
        return "keepExistingAlphaChannel"
    if request.value("preserveMetadata") in ("exifSubset", "exifSubsetWithXmpCompatibility"):
        return "preserveMetadata"
    if request.has("export.dpi"):
        return "export.dpi"
    return next((n for n in request.names() if n.startswith(_OPERATIONS)), None)


def _color_space_geometry(request: WireRequest) -> str | None:
    if request.value("colorSpace") != "original":
        return None
    return _first_present(request, _GEOMETRY)


def _subject_check(request: WireRequest) -> str | None:
    check = request.value("beautify.onSubjectMismatch") == "error"
    if check and request.value("beautify.mode") != "ai.food":
        return "beautify.onSubjectMismatch"
    return None


def _scaling_needs_input(request: WireRequest) -> str | None:
    if request.has("scaling") and not (request.has("imageUrl") or request.has("imageFile")):
        return "scaling"
    return None


def _input_required(request: WireRequest) -> str | None:
    if request.has("imageUrl") or request.has("imageFile"):
        return None
    return None if request.has("imageFromPrompt.prompt") else "imageFile"


def _files_need_post(request: WireRequest) -> str | None:
    if request.method != "GET":
        return None
    if request.files:
        return sorted(request.files)[0]
    # a file parameter spelled as a query field (the spec lists one among GET's parameters)
    return next((n for n in request.fields if n.endswith("imageFile")), None)


def _get_only_on_post(request: WireRequest) -> str | None:
    if request.method != "POST":
        return None
    for pattern in _GET_ONLY_URLS:
        for name, _ in _matching(request, pattern):
            return name
    return None


def _negative_prompt(request: WireRequest) -> str | None:
    legacy_model = request.header("pr-ai-background-model-version") == "2"
    if request.has("background.negativePrompt") and not legacy_model:
        return "background.negativePrompt"
    return None


def _one_form(base: str, forms: tuple[str, ...]) -> Check:
    def check(request: WireRequest) -> str | None:
        used = {f for f in forms for n in request.names() if n.startswith(f"{base}.{f}")}
        if len(used) > 1:
            return next(n for n in request.names() if n.startswith(base + "."))
        return None

    return check


def _flat_or_object(request: WireRequest) -> str | None:
    if request.has("background.expandPrompt") and request.has("background.expandPrompt.mode"):
        return "background.expandPrompt.mode"
    return None


_LAYER = re.compile(r"^layers\.([^.]+)\.(text|image)\.")


def _layer_kind(request: WireRequest) -> str | None:
    kinds: dict[str, set[str]] = {}
    for name in request.names():
        match = _LAYER.match(name)
        if match:
            kinds.setdefault(match.group(1), set()).add(match.group(2))
            if len(kinds[match.group(1)]) > 1:
                return name
    return None


def _required_within(group: str, required: str) -> Check:
    """``{group}.*`` given (for any layer) means ``{group}.{required}`` must be given too."""
    parts = re.split(r"\{(?:name|key)\}", group)
    prefix = re.compile("^" + "[^.]+".join(re.escape(p) for p in parts) + r"\.")

    def check(request: WireRequest) -> str | None:
        for name in request.names():
            match = prefix.match(name)
            if match and not request.has(match.group(0) + required):
                return name
        return None

    return check


def _header_values(header: str, values: tuple[str, ...]) -> Check:
    def check(request: WireRequest) -> str | None:
        value = request.header(header)
        return header if value is not None and value not in values else None

    return check


_COMBINATIONS: list[Rule] = [
    Rule(
        "background:one-source",
        _BACKGROUND_SOURCES,
        "at most one of ``background.prompt``, ``background.imageUrl`` and "
        "``background.imageFile``",
        _one_background,
    ),
    Rule(
        "removeBackground:false-forbids",
        ("removeBackground", *_NOT_WITHOUT_REMOVAL),
        "with ``removeBackground=false``, none of "
        + _literal_list(_NOT_WITHOUT_REMOVAL)
        + " (``background.prompt`` and ``background.color`` are allowed)",
        _removal_off,
    ),
    Rule(
        "background.scaling:needs-image",
        ("background.scaling", "background.imageUrl", "background.imageFile"),
        "``background.scaling`` only with ``background.imageUrl`` or ``background.imageFile``",
        _scaling_needs_image,
    ),
    Rule(
        "maxWidth:needs-output-size",
        ("maxWidth", "maxHeight", "outputSize"),
        "``maxWidth`` / ``maxHeight`` only with ``outputSize`` ``originalImage`` or "
        "``croppedSubject``",
        _max_size,
    ),
    Rule(
        "shadow:overrides-need-mode",
        (*_OVERRIDES, "shadow.mode"),
        "the ``shadow.*Override`` parameters only with ``shadow.mode=ai.auto-with-overrides``",
        _overrides,
    ),
    Rule(
        "shadow.mode:needs-model",
        ("shadow.mode", SHADOWS_HEADER),
        f"``shadow.mode`` {_literal_list(_NEW_SHADOW_MODES)} only with the {SHADOWS_MODEL} AI "
        f"Shadows model (header ``{SHADOWS_HEADER}: {SHADOWS_MODEL}``)",
        _new_modes,
    ),
    Rule(
        "shadow.mode:legacy-model",
        ("shadow.mode", SHADOWS_HEADER),
        f"``shadow.mode`` {_literal_list(_LEGACY_SHADOW_MODES)} not with the {SHADOWS_MODEL} "
        "AI Shadows model",
        _legacy_modes,
    ),
    Rule(
        "colorSpace:original-conflicts",
        ("colorSpace", "export.format", "export.dpi", "keepExistingAlphaChannel"),
        "``colorSpace=original`` only for a plain background removal with PNG output: not with "
        "another ``export.format``, ``export.dpi``, ``keepExistingAlphaChannel=auto``, an "
        "EXIF-subset ``preserveMetadata``, a background, a shadow or any AI operation",
        _color_space,
    ),
    Rule(
        "colorSpace:original-geometry",
        ("colorSpace", *_GEOMETRY),
        "``colorSpace=original`` with positioning or resizing (``outputSize``, ``padding``, "
        "``margin``...): refused by the spec, accepted by a newer version of it in some "
        "cases; sent, with a warning",
        _color_space_geometry,
        level="warning",
        source="docs",
    ),
    Rule(
        "beautify.onSubjectMismatch:needs-food",
        ("beautify.onSubjectMismatch", "beautify.mode"),
        "``beautify.onSubjectMismatch=error`` only with ``beautify.mode=ai.food`` (the only "
        "mode with a subject check)",
        _subject_check,
    ),
    Rule(
        "background.expandPrompt:one-form",
        ("background.expandPrompt", "background.expandPrompt.mode"),
        "``background.expandPrompt`` as the legacy text (``auto``, ``never``) or as the object "
        "``background.expandPrompt.mode`` (``ai.auto``, ``ai.never``), not both",
        _flat_or_object,
    ),
    Rule(
        "virtualModel.model:one-form",
        ("virtualModel.model.preset.name", "virtualModel.model.custom.imageUrl"),
        "``virtualModel.model`` is a preset or a custom image, not both",
        _one_form("virtualModel.model", ("preset", "custom")),
    ),
    Rule(
        "virtualModel.scene:one-form",
        ("virtualModel.scene.preset.name", "virtualModel.scene.custom.imageUrl"),
        "``virtualModel.scene`` is a preset or a custom image, not both",
        _one_form("virtualModel.scene", ("preset", "custom")),
    ),
    Rule(
        "layers:one-kind",
        ("layers.{name}.text", "layers.{name}.image"),
        "each layer is a text layer or an image layer, not both",
        _layer_kind,
    ),
    Rule(
        "layers.image.segmentation:needs-prompt",
        (LAYER_IMAGE + "segmentation.prompt",),
        "a layer's ``segmentation`` needs its ``prompt``",
        _required_within(LAYER_IMAGE + "segmentation", "prompt"),
    ),
    Rule(
        "layers.image.imageFromPrompt:needs-prompt",
        (LAYER_IMAGE + "imageFromPrompt.prompt",),
        "a layer's ``imageFromPrompt`` needs its ``prompt``",
        _required_within(LAYER_IMAGE + "imageFromPrompt", "prompt"),
    ),
    Rule(
        "scaling:needs-input",
        ("scaling", "imageUrl", "imageFile"),
        "``scaling`` only with an input image (``imageUrl`` or ``imageFile``), not with "
        "``imageFromPrompt``",
        _scaling_needs_input,
        needs_request=True,
    ),
    Rule(
        "input:required",
        ("imageUrl", "imageFile", "imageFromPrompt.prompt"),
        "an input image (``imageUrl`` or ``imageFile``) or ``imageFromPrompt.prompt``",
        _input_required,
        needs_request=True,
    ),
    Rule(
        "files:post-only",
        ("imageFile", "background.imageFile", "background.guidance.imageFile"),
        "image files only in a POST (a local input image), never in a GET's query string",
        _files_need_post,
        needs_request=True,
    ),
    Rule(
        "urls:get-only",
        _GET_ONLY_URLS,
        "the spec lists "
        + _literal_list(_GET_ONLY_URLS)
        + " for GET only; with a local input image they travel in the POST body, which "
        "Photoroom may ignore: sent, with a warning",
        _get_only_on_post,
        level="warning",
        source="docs",
        needs_request=True,
    ),
    Rule(
        "background.negativePrompt:needs-model-2",
        ("background.negativePrompt", "pr-ai-background-model-version"),
        "``background.negativePrompt`` only has an effect with the header "
        "``pr-ai-background-model-version: 2``: sent, with a warning",
        _negative_prompt,
        level="warning",
    ),
    *(
        Rule(
            f"{header}:documented",
            (header,),
            f"header ``{header}``: one of {_literal_list(values)} (documented values, not in "
            "the spec): another value is sent, with a warning",
            _header_values(header, values),
            level="warning",
            source="docs",
            values=values,
        )
        for header, values in MODEL_HEADERS.items()
    ),
]


def _param_rules(params: Mapping[str, Param]) -> list[Rule]:
    return [rule for name, param in params.items() for rule in param_rules(name, param)]


#: Every rule on a ``/v2/edit`` request, single values first.
EDIT_RULES: tuple[Rule, ...] = (
    *_param_rules(EDIT_PARAMS),
    *_param_rules(OBJECT_PARAMS),
    *_COMBINATIONS,
)
#: Every rule on a ``/v1/segment`` request.
SEGMENT_RULES: tuple[Rule, ...] = tuple(_param_rules(SEGMENT_PARAMS))


def _template_required(request: WireRequest) -> str | None:
    return None if request.has("templateId") else "templateId"


def _render_input(request: WireRequest) -> str | None:
    if request.method is None:
        return None
    if request.has("imageFile") or request.has("imageUrl") or request.has("conceptUrl"):
        return None
    return "imageUrl" if request.method == "GET" else "imageFile"


#: Every rule on a legacy ``/v1/render`` request.
RENDER_RULES: tuple[Rule, ...] = (
    Rule("templateId:required", ("templateId",), "``templateId`` is required", _template_required),
    Rule(
        "render:needs-image",
        ("imageUrl", "imageFile"),
        "an image: ``imageUrl`` (GET) or ``imageFile`` (POST)",
        _render_input,
        needs_request=True,
    ),
)


def violations(
    rules: Sequence[Rule], request: WireRequest, *, per_call: bool | None = None
) -> Iterator[tuple[Rule, str]]:
    """Yield ``(rule, offending wire name)`` for each rule ``request`` breaks.

    ``per_call``: ``False`` checks only the rules the options alone decide, ``True`` only
    those needing the input and method, ``None`` all of them.
    """
    for rule in rules:
        if per_call is not None and rule.needs_request != per_call:
            continue
        name = rule.check(request)
        if name is not None:
            yield rule, name
