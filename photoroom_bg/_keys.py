"""Deterministic, collision-free output keys: the basis of "never pay twice".

An output key is rendered from a template such as ``{stem}-{digest12}.{ext}``, where
``digest`` hashes the input's bytes *and* the canonical options. The same input with the same
options always gets the same key, so a re-run finds its earlier output and skips it; two
different inputs (even with the same file name) never share one.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable
from typing import Any

import attrs

from ._redact import printable
from .errors import UnsafeKeyError, ValidationError

__all__ = ["DEFAULT_TEMPLATE", "KeyTemplate", "content_digest", "options_digest", "safe_stem"]

DEFAULT_TEMPLATE = "{stem}-{digest12}.{ext}"
_FIELDS = frozenset(
    {"stem", "digest", "digest12", "ext", "options_digest", "content_digest", "engine"}
)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\?#%*:|\"<>\s]+")


def content_digest(data: bytes) -> str:
    """SHA-256 of the input bytes, hex."""
    return hashlib.sha256(data).hexdigest()


def _default(field: attrs.Attribute[Any]) -> Any:
    default: Any = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return default.factory(None) if default.takes_self else default.factory()
    return default


def _canonical(value: Any) -> Any:
    if attrs.has(type(value)):
        # only what differs from the defaults: a field added in a later version (with a
        # default that changes nothing) leaves every stored output's key as it was
        return {
            f.name: _canonical(getattr(value, f.name))
            for f in attrs.fields(type(value))
            if getattr(value, f.name) != _default(f)
        }
    if isinstance(value, bytes):
        return {"sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def options_digest(options: object) -> str:
    """SHA-256 of the options as canonical JSON: the fields set to something other than their
    default, sorted, file options by their hash. Options that mean the same thing digest the
    same, and new fields in later versions do not change the digest of existing options."""
    payload = {"type": type(options).__name__, "fields": _canonical(options)}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


#: The longest part of a key a format template makes, in UTF-8 bytes: a file system's
#: 255-byte name, less what FileSystemSink adds to the last part for its temporary and
#: metadata files. A key whose part is longer gets a shorter stem (keys that fit keep theirs).
KEY_PART_BYTES = 255 - len("..123456789abc.tmp") - len(".meta.json")


def safe_stem(name: str, *, max_length: int = 80, max_bytes: int = 160) -> str:
    """A file-name stem safe in any sink.

    No separators, ``?``, ``#``, ``%``, whitespace or control characters; no invisible format
    characters (Unicode category Cf: bidirectional overrides such as U+202E, which make
    ``photo\u202egnp.exe`` look like ``photoexe.png``, zero-width spaces...); undecodable
    file-name bytes shown as ``_xNN``; at most ``max_length`` characters and ``max_bytes``
    UTF-8 bytes, so a key fits a file system's 255-byte names.
    """
    text = printable(name)
    if not text.isascii():  # ASCII is NFC already, and has no format characters
        text = unicodedata.normalize("NFC", text)
        text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    text = _UNSAFE.sub("_", text).strip("._-")[:max_length]
    while len(text.encode("utf-8")) > max_bytes:
        text = text[:-1]
    return text.rstrip("._-") or "image"


KeyFunction = Callable[..., str]


@attrs.frozen
class KeyTemplate:
    """Renders output keys.

    Args:
        template: a format string with the fields ``{stem}`` (sanitised input name),
            ``{digest}`` / ``{digest12}`` (hash of input bytes + options, full / 12 hex
            digits), ``{content_digest}``, ``{options_digest}``, ``{engine}`` and ``{ext}``
            (``png``, ``jpg``...), or a callable taking those as keyword arguments. Keys may
            contain ``/`` to make folders, e.g. ``"{options_digest:.8}/{stem}-{digest12}.{ext}"``.

    Raises:
        ValidationError: the template names an unknown field, cannot tell inputs apart (it
            uses neither ``digest`` nor ``content_digest``), or cannot make a key for every
            input: it is malformed, gives a field an attribute or an index
            (``{stem.upper}``), a format spec or conversion the field does not take, or
            makes keys with a part too long for a file name whatever the input's name.
    """

    template: str | KeyFunction = DEFAULT_TEMPLATE
    #: whether every key holds the whole ``{digest}`` or ``{digest12}``, so that no two
    #: images can share one (a callable, or ``{digest:.4}``, may give two images one key)
    _distinct: bool = attrs.field(init=False, default=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if callable(self.template):
            return
        import string

        try:
            parsed = [
                (field, spec, conversion)
                for _, field, spec, conversion in string.Formatter().parse(self.template)
                if field is not None
            ]
        except ValueError as exc:  # "{digest", "{digest}}"
            raise ValidationError(f"key template {self.template!r}: {exc}") from None
        for field, _, _ in parsed:
            # "{stem.upper}" would put a method's repr, with its memory address, in every
            # key: keys that change with each process, so nothing stored is found again
            if field not in _FIELDS and field.split(".")[0].split("[")[0] in _FIELDS:
                raise ValidationError(
                    f"key template {self.template!r}: {{{field}}}: a field is a plain name, "
                    "without attributes or indexes (shorten one with a format spec: "
                    "{digest:.8})"
                )
        names = {field.split(".")[0].split("[")[0] for field, _, _ in parsed}
        distinct = any(
            field in ("digest", "digest12") and not spec and conversion is None
            for field, spec, conversion in parsed
        )
        object.__setattr__(self, "_distinct", distinct)
        unknown = names - _FIELDS
        if unknown:
            raise ValidationError(
                f"unknown key template field(s) {sorted(unknown)} in {self.template!r}; use "
                f"{sorted(_FIELDS)}"
            )
        if not names & {"digest", "digest12", "content_digest"}:
            raise ValidationError(
                "a key template must contain {digest}, {digest12} or {content_digest}, "
                "or different images would overwrite each other"
            )
        self._check_renders()

    def _check_renders(self) -> None:
        """Render a key for a one-letter name: a format spec or conversion that fails does so
        now, not in every job, and so does a template whose keys are too long whatever the
        input's name."""
        assert isinstance(self.template, str)
        try:
            made = self.render(
                stem="x", content_digest="0" * 64, options_digest="0" * 64, ext="png"
            )
        except (ValueError, TypeError, OverflowError, MemoryError) as exc:  # "{stem:d}"
            reason = str(exc) or "a key would not fit in memory"  # "{stem:>99999999999}"
            raise ValidationError(f"key template {self.template!r}: {reason}") from None
        if max(len(part.encode()) for part in made.split("/")) > KEY_PART_BYTES:
            raise ValidationError(
                f"key template {self.template!r} makes keys with a part of over "
                f"{KEY_PART_BYTES} bytes (a file name or an S3 key's part) whatever the "
                "input's name; pad or repeat less"
            )
        from .sinks._common import check_key  # (sinks import this module)

        try:
            check_key(made)
        except UnsafeKeyError as exc:
            raise ValidationError(
                f"key template {self.template!r} makes keys no sink takes: {exc}"
            ) from None

    def render(
        self,
        *,
        stem: str,
        content_digest: str,
        options_digest: str,
        ext: str,
        engine: str = "photoroom",
    ) -> str:
        """Return the key for one input.

        The digest covers the input's bytes, the options and the engine: a cut-out from one
        engine never stands in for another's. (The Photoroom engine's digests leave its name
        out, so that outputs stored before engines were told apart keep their keys.)

        Raises:
            ValidationError: a callable template returned something other than a ``str``.
        """
        identity = f"{content_digest}:{options_digest}"
        if engine != "photoroom":
            identity += f":{engine}"
        digest = hashlib.sha256(identity.encode()).hexdigest()
        fields = {
            "stem": safe_stem(stem),
            "digest": digest,
            "digest12": digest[:12],
            "content_digest": content_digest,
            "options_digest": options_digest,
            "ext": ext.lstrip("."),
            "engine": safe_stem(engine),
        }
        if callable(self.template):
            key = self.template(**fields)
            if not isinstance(key, str):  # str(None) would be the key "None" for every image
                raise ValidationError(
                    f"the key template returned {type(key).__name__}, not a str (an output "
                    "key such as 'cutouts/{stem}-{digest12}.{ext}')"
                )
            return key
        key = self.template.format(**fields)
        over = max(len(part.encode()) for part in key.split("/")) - KEY_PART_BYTES
        if over > 0:  # a long stem beside the whole {digest}, say: the stem gives way
            room = len(fields["stem"].encode()) - over
            fields["stem"] = safe_stem(fields["stem"], max_bytes=max(room, 1))
            key = self.template.format(**fields)
        return key
