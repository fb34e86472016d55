"""Deterministic, collision-free keys (the old service's keys collided and overwrote)."""

from __future__ import annotations

import pytest

from photoroom_bg import EditOptions, SegmentOptions
from photoroom_bg.errors import ValidationError
from photoroom_bg.sinks import KeyTemplate, content_digest, options_digest, safe_stem


def key(
    data: bytes, options: object, stem: str = "shoe", template: KeyTemplate | None = None
) -> str:
    return (template or KeyTemplate()).render(
        stem=stem,
        content_digest=content_digest(data),
        options_digest=options_digest(options),
        ext="png",
    )


def test_same_input_and_options_always_get_the_same_key() -> None:
    assert key(b"image", SegmentOptions(crop=True)) == key(b"image", SegmentOptions(crop=True))


def test_two_images_with_the_same_name_get_different_keys() -> None:
    # the old service built keys from the second + basename: same name, same second = overwrite
    first, second = key(b"image one", SegmentOptions()), key(b"image two", SegmentOptions())
    assert first != second
    assert first.startswith("shoe-")
    assert second.startswith("shoe-")


def test_different_options_get_different_keys() -> None:
    assert key(b"x", SegmentOptions()) != key(b"x", SegmentOptions(crop=True))
    assert key(b"x", SegmentOptions()) != key(b"x", EditOptions())
    assert options_digest(EditOptions(background_image_file=b"a")) != options_digest(
        EditOptions(background_image_file=b"b")
    )


def test_digests_are_stable_values() -> None:
    assert content_digest(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert len(options_digest(SegmentOptions())) == 64


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("../../etc/passwd", "etc_passwd"),
        ("what?#x", "what_x"),
        ("a b\tc", "a_b_c"),
        ("café", "café"),
        ("", "image"),
        ("x" * 200, "x" * 80),
    ],
)
def test_stems_are_sanitised(name: str, stem: str) -> None:
    assert safe_stem(name) == stem


def test_templates_can_make_folders_or_be_callables() -> None:
    folders = KeyTemplate("{options_digest:.8}/{stem}-{digest12}.{ext}")
    rendered = key(b"x", SegmentOptions(), template=folders)
    assert rendered.split("/")[0] == options_digest(SegmentOptions())[:8]
    custom = KeyTemplate(lambda **f: f"{f['engine']}/{f['digest']}.{f['ext']}")
    assert key(b"x", SegmentOptions(), template=custom).startswith("photoroom/")


@pytest.mark.parametrize(
    ("template", "message"), [("{stem}.{ext}", "must contain"), ("{nope}-{digest}", "unknown")]
)
def test_templates_that_could_collide_are_refused(template: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        KeyTemplate(template)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        # a field's attribute is the repr of a method, with its memory address: keys that
        # change with every process, so a re-run found none stored and paid again
        ("{stem.upper}-{digest}.{ext}", r"\{stem.upper\}: a field is a plain name"),
        ("{digest[3]}/{stem}-{digest12}.{ext}", r"\{digest\[3\]\}: a field is a plain name"),
        # these failed every job at run time, as UnexpectedError, or raised a bare ValueError
        ("{stem:d}-{digest}.{ext}", "Unknown format code 'd'"),
        ("{stem!z}-{digest}.{ext}", "Unknown conversion specifier z"),
        ("{stem:>99999999999999999999}-{digest}.{ext}", "Too many decimal digits"),
        ("{stem:>99999999999}-{digest}.{ext}", "a key would not fit in memory"),
        ("{}/{digest}.{ext}", r"unknown key template field\(s\) \[''\]"),
        ("{digest", "expected '}' before end of string"),
        ("{digest}}.{ext}", "Single '}'"),
        # every key, whatever the input's name, has a part no file system or bucket takes
        ("{stem:>300}-{digest}.{ext}", "with a part of over 227 bytes"),
        # every key has what no sink takes: each job failed with UnsafeKeyError
        ("../{digest}.{ext}", "makes keys no sink takes: .*'.' or '..' segments"),
        ("/out/{digest}.{ext}", "makes keys no sink takes: .*absolute"),
        ("out//{digest}.{ext}", "makes keys no sink takes: .*empty path segment"),
        ("out\\{digest}.{ext}", "makes keys no sink takes: .*backslash"),
        ("out\x00{digest}.{ext}", "makes keys no sink takes: .*NUL byte"),
        ("out/{digest}.{ext}/", "makes keys no sink takes: .*empty path segment"),
    ],
)
def test_a_template_that_cannot_make_a_key_for_every_input_is_refused_when_made(
    template: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        KeyTemplate(template)
    assert repr(template) in str(caught.value)  # named, with what it holds escaped


@pytest.mark.parametrize(
    "template",
    ["{digest!s:.20}/{stem!r}.{ext}", "{stem:_<12}-{content_digest:.16}-{options_digest:.8}.png"],
)
def test_format_specs_and_conversions_that_make_keys_are_kept(template: str) -> None:
    made = key(b"x", SegmentOptions(), template=KeyTemplate(template))
    assert made == key(b"x", SegmentOptions(), template=KeyTemplate(template))
    assert "0x" not in made


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("invoice\u202egnp.exe", "invoicegnp.exe"),  # RIGHT-TO-LEFT OVERRIDE
        ("a\u2066b\u2069c", "abc"),  # isolates
        ("zero\u200bwidth\ufeff", "zerowidth"),  # zero-width space, BOM
        ("soft\u00adhyphen", "softhyphen"),
        ("caf\udce9", "caf_xe9"),  # an undecodable byte from os.listdir
    ],
)
def test_stems_drop_invisible_format_characters(name: str, stem: str) -> None:
    assert safe_stem(name) == stem
    safe_stem(name).encode("utf-8")


def test_stems_fit_a_file_name_in_bytes_not_only_characters() -> None:
    stem = safe_stem("写真" * 100)  # 3 bytes a character
    assert len(stem.encode("utf-8")) <= 160
    rendered = key(b"x", SegmentOptions(), stem="写真" * 100)
    assert len(rendered.encode("utf-8")) < 255 - len("..0123456789ab.tmp.meta.json")


def test_the_options_digest_covers_only_what_was_set() -> None:
    import attrs

    # the same meaning, the same digest; a field added later with a neutral default changes
    # nothing for options that do not set it
    assert options_digest(SegmentOptions()) == options_digest(SegmentOptions(crop=False))
    assert options_digest(SegmentOptions()) != options_digest(SegmentOptions(crop=True))
    grown = attrs.make_class("EditOptions", {"new_feature": attrs.field(default=None)})
    assert options_digest(grown()) == options_digest(EditOptions())
    assert options_digest(grown(new_feature="on")) != options_digest(EditOptions())
