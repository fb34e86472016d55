"""One cattrs converter: option objects -> wire fields, JSON bodies -> models.

Every wire-format decision lives here: lowercase booleans, plain decimals, ``#`` added for
``/v1/segment``'s ``bg_color`` and dropped from ``/v2/edit`` colours, dotted v2 field names
(taken from each attribute's ``wire`` metadata by a hook factory), object parameters
flattened into dotted names (``virtualModel.model.preset.name``), lists sent as one field per
item, file-typed fields split off for multipart bodies, and model-version options turned into
request headers. The options are checked here too, on this wire form, against the rules of
``_rules``.
"""

from __future__ import annotations

import base64
import binascii
import decimal
import fractions
import math
import mimetypes
import numbers
import operator
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, SupportsFloat, SupportsIndex

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn, override

from . import _jsonsafe, _rules
from ._numbers import shown
from ._redact import lone_surrogate, printable
from ._warnings import warn
from .errors import APIResponseValidationError, PhotoroomBGError, ValidationError
from .models import Account, Credits

if TYPE_CHECKING:
    import httpx

__all__ = [
    "Encoded",
    "as_decimal",
    "check_options",
    "converter",
    "decode_base64_image",
    "edit_fields",
    "encode",
    "multipart_body",
    "raise_or_warn",
    "segment_fields",
    "wire_value",
]

converter = cattrs.Converter()

# the longest number sent, in digits: as many as Python prints of an integer by default
_LONGEST_NUMBER = 4300


def _edit_color(value: str) -> str:
    # "#" marks hex: "#GGGGGG" is no colour, where its bare "GGGGGG" passed for a name
    bare = value.lstrip("#")
    return bare if all(c in "0123456789abcdefABCDEF" for c in bare) else value


def _segment_color(value: str) -> str:
    bare = value.lstrip("#")
    is_hex = bool(bare) and all(c in "0123456789abcdefABCDEF" for c in bare)
    return f"#{bare}" if is_hex else value


def _expand_prompt(value: str) -> Any:
    # ai.auto / ai.never are the object form {mode: ...}; auto / never the legacy text
    return {"mode": value} if value.startswith("ai.") else value


def _preset_or_custom(value: Any) -> Any:
    if isinstance(value, str):
        return {"preset": {"name": value}}
    return {"custom": converter.unstructure(value)}


def _layers(value: Mapping[str, Any]) -> Any:
    kinds = {"TextLayer": "text", "ImageLayer": "image"}
    return {
        name: {kinds[type(layer).__name__]: converter.unstructure(layer)}
        for name, layer in value.items()
    }


def _additional_images(value: Mapping[str, str | bytes]) -> Any:
    return {
        key: {"imageFile" if isinstance(image, bytes) else "imageUrl": image}
        for key, image in value.items()
    }


_ENCODERS: dict[str, Callable[[Any], Any]] = {
    "edit_color": _edit_color,
    "segment_color": _segment_color,
    "expand_prompt": _expand_prompt,
    "preset_or_custom": _preset_or_custom,
    "layers": _layers,
    "additional_images": _additional_images,
}


def _has_wire_fields(cls: type[Any]) -> bool:
    return attrs.has(cls) and any("wire" in f.metadata for f in attrs.fields(cls))


def _skip_none(hook: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else hook(value)


def _wire_name_hook(cls: type[Any]) -> Any:
    """Unstructure an options class to ``{wire name: value}``, leaving out unset fields."""
    overrides: dict[str, Any] = {}
    for field in attrs.fields(cls):
        if "wire" not in field.metadata:
            overrides[field.name] = override(omit=True)
            continue
        hook = _ENCODERS.get(field.metadata.get("encode", ""))
        overrides[field.name] = override(
            rename=field.metadata["wire"],
            omit_if_default=True,
            unstruct_hook=_skip_none(hook) if hook else None,
        )
    return make_dict_unstructure_fn(cls, converter, **overrides)


converter.register_unstructure_hook_factory(_has_wire_fields, _wire_name_hook)


def _plain(number: decimal.Decimal) -> str:
    """``number`` written out as a plain decimal, without exponent or trailing zeros."""
    if not number.is_finite():
        return "nan" if number.is_nan() else str(float(number))  # "inf" / "-inf": refused
    digits, exponent = len(number.as_tuple().digits), int(number.as_tuple().exponent)
    if max(digits + exponent, 1) + max(-exponent, 0) > _LONGEST_NUMBER:
        raise ValueError("too many digits")  # Decimal("1E+999999999") would be written out
    text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def as_decimal(value: object) -> decimal.Decimal | int:
    """The exact value of a real number: an integer as an ``int``, any other number as a
    ``Decimal``. A float is the shortest decimal that reads back as it (``0.1``, not
    ``0.1000000000000000055511151231257827``), as ``repr`` shows it; a numpy float likewise
    (its ``str``); a fraction with no finite decimal form is rounded to 28 digits."""
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return decimal.Decimal(float.__repr__(value))
    if isinstance(value, decimal.Decimal):
        return value
    if isinstance(value, SupportsIndex):  # numpy integers
        return operator.index(value)
    if isinstance(value, fractions.Fraction):
        exact = _exact_fraction(value)
        if exact is not None:
            return exact
        return decimal.Decimal(value.numerator) / decimal.Decimal(value.denominator)
    try:  # numpy floats print their shortest form; another Real may not
        return decimal.Decimal(str(value))
    except (ArithmeticError, ValueError):
        if not isinstance(value, SupportsFloat):
            raise TypeError(f"{type(value).__name__} is not a real number") from None
        return decimal.Decimal(float.__repr__(float(value)))


def _exact_fraction(value: fractions.Fraction) -> decimal.Decimal | None:
    """``value`` as an exact ``Decimal``, when its denominator has no prime factor but 2
    and 5 (so its decimal form ends)."""
    denominator, twos, fives = value.denominator, 0, 0
    while denominator % 2 == 0:
        denominator, twos = denominator // 2, twos + 1
    while denominator % 5 == 0:
        denominator, fives = denominator // 5, fives + 1
    if denominator != 1 or max(twos, fives) > _LONGEST_NUMBER:
        return None
    places = max(twos, fives)
    scaled = value.numerator * 10**places // value.denominator
    return decimal.Decimal(scaled).scaleb(-places)


def wire_value(value: object) -> str:
    """Encode one scalar the way Photoroom expects it in a form field or query string: a
    number as a plain decimal with every digit it has (``0.00000000001``, never ``1e-11``
    nor a rounded ``0``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (numbers.Real, decimal.Decimal)):
        exact = as_decimal(value)
        return str(exact) if isinstance(exact, int) else _plain(exact)
    raise ValidationError(f"cannot send {type(value).__name__} value {value!r} as a form field")


def _check_text(text: str, origin: str) -> str:
    """``text``, which UTF-8 can carry: a lone surrogate (text decoded from bytes that were
    not UTF-8, such as a file name read with ``os.fsdecode``) cannot be sent."""
    at = lone_surrogate(text)
    if at is not None:
        raise ValidationError(
            f"{origin} cannot be sent: {printable(text)} holds a character UTF-8 cannot carry "
            f"at position {at} (a lone surrogate, from bytes that were not UTF-8 text)",
            parameter=origin,
            rule="type",
        )
    return text


# what h11 lets through: a token for a name; visible ASCII, with spaces and tabs inside, for
# a value
_HEADER_NAME = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"(?:[\x21-\x7e](?:[\x20\x09\x21-\x7e]*[\x21-\x7e])?)?")
#: Headers that frame a request's body: httpx keeps a caller's, whatever the body is.
_FRAMING = frozenset({"content-length", "transfer-encoding"})


def check_headers(headers: Mapping[Any, Any], where: str, error: type[PhotoroomBGError]) -> None:
    """Refuse header names and values that cannot travel over HTTP, naming the header but
    not showing its value (it may be a credential)."""
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise error(f"{where}: {name!r} is not a header name (letters, digits, - and _)")
        if name.lower() == "x-api-key":  # it would replace the client's own key, silently
            raise error(
                f"{where}[{name!r}]: the API key goes in api_key= (or PHOTOROOM_API_KEY), "
                "not in a header (the value is not shown)"
            )
        if name.lower() in _FRAMING:  # httpx keeps the caller's: a Content-Length of 5
            raise error(  # sent a multipart body of thousands of bytes as 5 and the rest
                f"{where}[{name!r}]: {name} is the client's to set for each request (it "
                "frames the body): it cannot be an extra header"
            )
        if not isinstance(value, str):
            raise error(f"{where}[{name!r}] must be a string, not {type(value).__name__}")
        if not _HEADER_VALUE.fullmatch(value):
            raise error(
                f"{where}[{name!r}] cannot be sent: a header value is visible ASCII, without "
                "line breaks, control characters or spaces around it (the value is not shown)"
            )


@attrs.define
class Encoded:
    """Options on the wire: text fields (a list for a repeated name), file fields, headers,
    and for each wire name the option it came from (for error messages)."""

    texts: dict[str, str | list[str]] = attrs.field(factory=dict)
    files: dict[str, bytes] = attrs.field(factory=dict)
    headers: dict[str, str] = attrs.field(factory=dict)
    origins: dict[str, str] = attrs.field(factory=dict)
    values: dict[str, object] = attrs.field(factory=dict)

    def put(self, name: str, value: Any, origin: str, python: object) -> None:
        """Add one flattened field (a list of scalars repeats the name)."""
        self.texts.pop(name, None)
        self.files.pop(name, None)
        _check_text(name, origin)
        try:
            if isinstance(value, bytes):
                self.files[name] = value
            elif isinstance(value, (list, tuple)):
                self.texts[name] = [_check_text(wire_value(v), origin) for v in value]
            else:
                self.texts[name] = _check_text(wire_value(value), origin)
        except ValidationError:
            raise
        except ValueError:  # str() of an integer past 4,300 digits: none Photoroom takes
            raise ValidationError(
                f"{origin} (sent as {name}) is {shown(python)}: too long to send"
            ) from None
        self.origins[name] = origin
        self.values[name] = python

    def request(
        self,
        *,
        method: str | None = None,
        texts: Mapping[str, str] | None = None,
        files: Iterable[str] = (),
    ) -> _rules.WireRequest:
        """The :class:`~photoroom_bg._rules.WireRequest` the rules look at."""
        fields = {
            name: tuple(value) if isinstance(value, list) else (value,)
            for name, value in {**self.texts, **(texts or {})}.items()
        }
        return _rules.WireRequest(
            fields=fields,
            files=frozenset([*self.files, *files]),
            headers={k.lower(): v for k, v in self.headers.items()},
            method=method,  # type: ignore[arg-type]
        )


# a multipart form's names and file names, escaped as httpx (and browsers, after HTML5) do
_FORM_ESCAPES = {'"': "%22", "\\": "\\\\"}
_FORM_ESCAPES.update({chr(c): f"%{c:02X}" for c in range(0x20) if c != 0x1B})
_FORM_ESCAPE = re.compile("|".join(re.escape(c) for c in _FORM_ESCAPES))


def _form_param(name: str, value: str) -> bytes:
    escaped = _FORM_ESCAPE.sub(lambda match: _FORM_ESCAPES[match.group(0)], value)
    return f'{name}="{escaped}"'.encode()


def multipart_body(
    data: Mapping[str, Any],
    files: Iterable[tuple[str, tuple[str | None, Any, str | None]]],
    boundary: bytes | None = None,
) -> tuple[str, bytes] | None:
    """A ``multipart/form-data`` body and its content type: the text fields, then the
    files, byte for byte as httpx encodes them (a test holds it to that), in one buffer.
    httpx gets there through a stream object per field and a second pass to join them
    (with the request around it, 45 microseconds of CPU per request on a small VM where
    this and a request built directly take 13). ``None`` for a value this does not
    encode (not ``str`` text or ``bytes`` content): the caller then lets httpx encode it."""
    if boundary is None:
        boundary = os.urandom(16).hex().encode("ascii")
    start = b"--" + boundary + b"\r\n"
    parts: list[bytes] = []
    for name, value in data.items():
        for item in value if isinstance(value, list) else (value,):
            if not isinstance(item, str):
                return None
            parts += (start, b"Content-Disposition: form-data; ", _form_param("name", name))
            parts += (b"\r\n\r\n", item.encode(), b"\r\n")
    for name, (filename, content, content_type) in files:
        if not isinstance(content, bytes):
            return None
        parts += (start, b"Content-Disposition: form-data; ", _form_param("name", name))
        if filename:
            parts += (b"; ", _form_param("filename", filename))
            if content_type is None:
                content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if content_type is not None:
            parts += (b"\r\nContent-Type: ", content_type.encode())
        parts += (b"\r\n\r\n", content, b"\r\n")
    parts.append(b"--" + boundary + b"--\r\n")
    return f"multipart/form-data; boundary={boundary.decode('ascii')}", b"".join(parts)


def _flatten(prefix: str, value: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _flatten(f"{prefix}.{key}" if prefix else str(key), inner)
    else:
        yield prefix, value


def encode(options: Any) -> Encoded:
    """Every field ``options`` sends, with its origin."""
    encoded = Encoded()
    raw: dict[str, Any] = converter.unstructure(options)
    by_wire = {
        f.metadata["wire"]: f.name for f in attrs.fields(type(options)) if "wire" in f.metadata
    }
    for wire, value in raw.items():
        attribute = by_wire[wire]
        for name, item in _flatten(wire, value):
            encoded.put(name, item, attribute, getattr(options, attribute))
    typed = dict(encoded.origins)  # wire name: the attribute that sends it
    # an "imageUrl" there replaced the image the call was given, and another was billed
    typed.update(dict.fromkeys(getattr(type(options), "_image_fields", ()), "the image argument"))
    for key, value in options.extra_params.items():
        for name, item in _flatten(str(key), value):
            if name in typed:  # it would replace the typed value, which was checked, unsent
                raise ValidationError(
                    f"extra_params[{key!r}] sends {name}, which {typed[name]} sends too: give "
                    "one of them",
                    parameter=f"extra_params[{key!r}]",
                    rule="type",
                )
            encoded.put(name, item, f"extra_params[{key!r}]", value)
    typed_headers: dict[str, str] = {}  # lower-case name: the attribute that sends it
    for field in attrs.fields(type(options)):
        header = field.metadata.get("header")
        value = getattr(options, field.name)
        if header and value is not None:
            encoded.headers[header] = str(value)
            encoded.origins[header] = field.name
            encoded.values[header] = value
            typed_headers[header.lower()] = field.name
    # refused when the options are made: a value that is not ASCII raised UnicodeEncodeError
    # out of the call, and a line break or a bad name failed as it was sent
    check_headers(options.extra_headers, "extra_headers", ValidationError)
    for name, value in options.extra_headers.items():
        if name.lower() in typed_headers:
            raise ValidationError(
                f"extra_headers[{name!r}] sends a header which {typed_headers[name.lower()]} "
                "sends too: give one of them",
                parameter=f"extra_headers[{name!r}]",
                rule="type",
            )
        encoded.headers[name] = value
        encoded.origins[name.lower()] = f"extra_headers[{name!r}]"
        encoded.values[name.lower()] = value
    return encoded


def raise_or_warn(
    violations: Iterable[tuple[_rules.Rule, str]],
    encoded: Encoded,
    request: _rules.WireRequest,
    *,
    error: type[ValidationError] = ValidationError,
) -> None:
    """Raise :class:`ValidationError` for the first broken ``error`` rule, else warn about each
    broken ``warning`` rule.

    A value given through ``extra_params`` / ``extra_headers`` is not refused: they are the
    way to send what this release does not know yet (a new enumeration value...), so a rule
    on values they break is a warning. Rules on the request's shape (an input image, files
    only in a POST) hold for them too: such a request cannot be sent as asked.
    """
    found = list(violations)
    for rule, name in found:
        if rule.level == "error" and (rule.needs_request or not _passed_through(name, encoded)):
            raise error(
                _message(rule, name, encoded, request),
                parameter=_origin(name, encoded),
                rule=rule.id,
            )
    for rule, name in found:
        note = (
            " (sent as given: extra_params and extra_headers are not refused)"
            if rule.level == "error"
            else ""
        )
        warn(_message(rule, name, encoded, request) + note)


def _passed_through(name: str, encoded: Encoded) -> bool:
    return _origin(name, encoded).startswith(("extra_params[", "extra_headers["))


def _origin(name: str, encoded: Encoded) -> str:
    return encoded.origins.get(name) or encoded.origins.get(name.lower()) or name


def _message(rule: _rules.Rule, name: str, encoded: Encoded, request: _rules.WireRequest) -> str:
    origin = _origin(name, encoded)
    sent = request.fields.get(name)
    shown = sent[0] if sent and len(sent) == 1 else (list(sent) if sent else request.header(name))
    python = encoded.values.get(name, encoded.values.get(name.lower()))
    if origin != name and python is not None and not isinstance(python, (Mapping, bytes, tuple)):
        same = isinstance(python, str) and python == shown
        subject = f"{origin}={python!r}" + ("" if same else f" (sent as {name}={shown!r})")
    elif shown is not None:
        subject = f"{origin} ({name}={shown!r})" if origin != name else f"{name}={shown!r}"
    else:
        subject = origin if origin == name else f"{origin} ({name})"
    verb = "must be" if rule.kind == "value" else "breaks the rule:"
    return f"{subject} {verb} {rule.message} [rule {rule.id}]"


def check_options(options: Any, rules: tuple[_rules.Rule, ...]) -> None:
    """Check ``options`` alone (the input is not known yet) against ``rules``."""
    encoded = encode(options)
    request = encoded.request()
    raise_or_warn(_rules.violations(rules, request, per_call=False), encoded, request)


def segment_fields(
    options: Any,
) -> tuple[dict[str, str | list[str]], dict[str, bytes], dict[str, str]]:
    """Return ``(text fields, file fields, headers)`` for ``POST /v1/segment`` (file fields
    come from ``extra_params``), from one :func:`encode`: a call builds them for every image."""
    encoded = encode(options)
    headers = dict(encoded.headers)
    if options.base64:
        headers["accept"] = "application/json"
    return encoded.texts, encoded.files, headers


def edit_fields(
    options: Any,
) -> tuple[dict[str, str | list[str]], dict[str, bytes], dict[str, str]]:
    """Return ``(text fields, file fields, headers)`` for ``/v2/edit``.

    File fields (``background.imageFile``...) can only travel in a multipart POST; the caller
    refuses them for GET.
    """
    encoded = encode(options)
    return encoded.texts, encoded.files, encoded.headers


def _usage(data: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise TypeError("account body is not an object")
    usage = data.get(key)
    if not isinstance(usage, Mapping):
        raise TypeError(f"account body has no {key!r} object")
    return usage


def _count(usage: Mapping[str, Any], key: str) -> float:
    """``usage[key]``, a JSON number a float holds: ``true``, ``"10"``, ``NaN`` or a number
    past a float's range is no count (``float()`` read them as 1.0, 10.0, nan or raised
    ``OverflowError``)."""
    value = usage.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{key!r} is {type(value).__name__}, not a number")
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{key!r} is a number past what a float holds") from None
    if not math.isfinite(number):
        raise ValueError(f"{key!r} is {number!r}, not a finite number")
    return number


def _structure_account(data: Any, _: type[Account]) -> Account:
    # a proxy answering with the older {"credits": ...} view is read the same way
    usage = _usage(
        data, "credits" if isinstance(data, Mapping) and "images" not in data else "images"
    )
    plan = data.get("plan")
    if plan is not None and not isinstance(plan, str):
        raise TypeError(f"'plan' is {type(plan).__name__}, not a string")
    return Account(
        images_available=_count(usage, "available"),
        images_subscription=_count(usage, "subscription"),
        plan=plan,
    )


def _structure_credits(data: Any, _: type[Credits]) -> Credits:
    usage = _usage(data, "credits")
    return Credits(available=_count(usage, "available"), subscription=_count(usage, "subscription"))


converter.register_structure_hook(Account, _structure_account)
converter.register_structure_hook(Credits, _structure_credits)


def decode_base64_image(body: bytes, response: httpx.Response | None = None) -> bytes:
    """Decode the JSON body of a base64 ``/v1/segment`` answer (``base64img`` or ``result_b64``)."""
    try:
        data = _jsonsafe.loads_answer(body)
        encoded = data.get("base64img") or data.get("result_b64")
        if not isinstance(encoded, str):
            raise KeyError("base64img")
        if encoded.startswith("data:"):
            encoded = encoded.split(",", 1)[1]
        return base64.b64decode(encoded, validate=True)
    except (ValueError, KeyError, AttributeError, binascii.Error) as exc:
        raise APIResponseValidationError(
            "no usable image in the answer: its JSON body holds no decodable "
            "'base64img'/'result_b64' image; the call may have been billed",
            status_code=200 if response is None else response.status_code,
            response=response,
        ) from exc
