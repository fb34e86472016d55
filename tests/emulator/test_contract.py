"""The emulator against Photoroom's published OpenAPI document (../shared/photoroom/)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from photoroom_bg.testing import EDIT_PARAMS, NOT_EMULATED, SEGMENT_PARAMS, PhotoroomEmulator

from ..sources.conftest import ImageServer, png_bytes

ROOT = Path(__file__).resolve().parents[2]
SPEC_PATH = ROOT.parent / "shared" / "photoroom" / "openapi.yaml"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    assert SPEC_PATH.is_file(), f"the spec is expected at {SPEC_PATH}"
    return json.loads(SPEC_PATH.read_text())  # the file is JSON despite its name


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].split("/")[-1]]
    return schema


def _values(spec: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    schema = _resolve(spec, schema)
    found = {str(v) for v in schema.get("enum", []) if not isinstance(v, bool)}
    if "const" in schema:
        found.add(str(schema["const"]))
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            found |= _values(spec, sub)
    return found


def _edit_spec(spec: dict[str, Any]) -> dict[str, tuple[set[str], set[str]]]:
    """``{name: (methods, values)}`` for ``/v2/edit`` from the spec."""
    found: dict[str, tuple[set[str], set[str]]] = {}
    for param in spec["paths"]["/v2/edit"]["get"]["parameters"]:
        if param.get("in") == "query":
            found[param["name"]] = ({"get"}, _values(spec, param.get("schema", {})))
    body = spec["paths"]["/v2/edit"]["post"]["requestBody"]["content"]["multipart/form-data"]
    for name, schema in _resolve(spec, body["schema"])["properties"].items():
        methods, values = found.get(name, (set(), set()))
        found[name] = (methods | {"post"}, values | _values(spec, schema))
    return found


def test_the_contract_table_matches_the_spec(spec: dict[str, Any]) -> None:
    edit = _edit_spec(spec)
    assert set(EDIT_PARAMS) == set(edit)
    for name, (methods, values) in edit.items():
        where = EDIT_PARAMS[name].where
        assert ({"get", "post"} if where == "both" else {where}) == methods, name
        assert set(EDIT_PARAMS[name].enum) == values, name
    body = spec["paths"]["/v1/segment"]["post"]["requestBody"]["content"]["multipart/form-data"]
    segment = _resolve(spec, body["schema"])["properties"]
    assert set(SEGMENT_PARAMS) == set(segment)
    for name, schema in segment.items():
        assert set(SEGMENT_PARAMS[name].enum) == _values(spec, schema), name
    operations = {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if path in ("/v1/segment", "/v2/edit", "/v1/account", "/v2/account")
    }
    assert operations == {
        ("POST", "/v1/segment"),
        ("GET", "/v2/edit"),
        ("POST", "/v2/edit"),
        ("GET", "/v1/account"),
        ("GET", "/v2/account"),
    }


def test_not_emulated_parameters_are_spec_names_listed_in_the_docs() -> None:
    guide = (ROOT / "docs" / "guides" / "testing.rst").read_text()
    assert set(EDIT_PARAMS) >= NOT_EMULATED
    missing = sorted(name for name in NOT_EMULATED if f"``{name}``" not in guide)
    assert missing == []


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[PhotoroomEmulator, str, httpx.Client]]:
    emulator = PhotoroomEmulator(credits=1_000_000, image_work=False)
    images = ImageServer()
    images.start()
    with (
        emulator.serve() as url,
        httpx.Client(base_url=url, headers={"x-api-key": emulator.api_key}) as http,
    ):
        yield emulator, f"{images.url}/img.png", http
    images.stop()


def _sample(name: str) -> str:
    kind = EDIT_PARAMS[name].kind
    if "boolean" in kind:
        return "true"
    if "number" in kind:
        return "0.1"
    if name == "outputSize":
        return "100x100"
    if name.endswith("Color") or name.endswith(".color"):
        return "FF0000"
    return "value"


def _wire(name: str) -> str:
    return name.replace("{key}", "ref1")


def test_every_segment_parameter_and_value_is_accepted(
    served: tuple[PhotoroomEmulator, str, httpx.Client],
) -> None:
    _, _, http = served
    for name, param in SEGMENT_PARAMS.items():
        for value in param.enum or ("#FF0000",) if name == "bg_color" else param.enum:
            answer = http.post(
                "/v1/segment", files={"image_file": ("a.png", png_bytes())}, data={name: value}
            )
            assert answer.status_code == 200, (name, value, answer.text)
            assert "pr-unsupported-attributes" not in answer.headers


def test_every_edit_parameter_and_value_is_accepted(
    served: tuple[PhotoroomEmulator, str, httpx.Client],
) -> None:
    _, image_url, http = served
    for name, param in EDIT_PARAMS.items():
        if name in ("imageUrl", "imageFile") or param.kind == "object":
            continue
        values = param.enum or (_sample(name),)
        for value in values:
            if param.where in ("get", "both") and not name.endswith("imageFile"):
                answer = http.get("/v2/edit", params={"imageUrl": image_url, _wire(name): value})
                assert answer.status_code == 200, (name, value, answer.text)
                assert "pr-unsupported-attributes" not in answer.headers, name
            if param.where in ("post", "both"):
                files = {"imageFile": ("a.png", png_bytes())}
                if name.endswith("imageFile"):
                    files[_wire(name)] = ("b.png", png_bytes())
                    answer = http.post("/v2/edit", files=files)
                else:
                    answer = http.post("/v2/edit", files=files, data={_wire(name): value})
                assert answer.status_code == 200, (name, value, answer.text)
                assert "pr-unsupported-attributes" not in answer.headers, name


def test_object_parameters_are_accepted_flattened(
    served: tuple[PhotoroomEmulator, str, httpx.Client],
) -> None:
    _, image_url, http = served
    for name in (
        "layers.logo.image.imageUrl",
        "virtualModel.model.preset.name",
        "background.expandPrompt.mode",
    ):
        answer = http.get("/v2/edit", params={"imageUrl": image_url, name: "avery"})
        assert answer.status_code == 200
        assert "pr-unsupported-attributes" not in answer.headers


def test_nothing_outside_the_spec_is_accepted_silently(
    served: tuple[PhotoroomEmulator, str, httpx.Client],
) -> None:
    _, image_url, http = served
    unknown = http.get("/v2/edit", params={"imageUrl": image_url, "background.colour": "red"})
    assert unknown.status_code == 200
    assert (
        unknown.headers["pr-unsupported-attributes"] == "Unsupported attributes: background.colour"
    )
    post_only = http.get("/v2/edit", params={"imageUrl": image_url, "imageFile": "x"})
    assert "imageFile" in post_only.headers["pr-unsupported-attributes"]
    segment = http.post(
        "/v1/segment", files={"image_file": ("a.png", png_bytes())}, data={"scale": "2"}
    )
    assert segment.headers["pr-unsupported-attributes"] == "Unsupported attributes: scale"
    for name, param in EDIT_PARAMS.items():
        if param.enum and param.kind == "string":
            bad = http.get("/v2/edit", params={"imageUrl": image_url, name: "not-a-value"})
            assert bad.status_code == 400, name
            assert "must be one of" in bad.json()["error"]["message"]
    not_boolean = http.get("/v2/edit", params={"imageUrl": image_url, "removeBackground": "yes"})
    assert not_boolean.json() == {"error": {"message": "removeBackground must be boolean"}}
