"""Engines refuse options they can never honour up front, before any image is read."""

from __future__ import annotations

from typing import Any

import pytest

from photoroom_bg import EditOptions, PhotoroomEngine, SegmentOptions
from photoroom_bg.engines import check_engine_options
from photoroom_bg.errors import ValidationError


@pytest.fixture
def local() -> Any:
    pytest.importorskip("onnxruntime")
    from photoroom_bg.engines.local import LocalEngine

    return LocalEngine()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (SegmentOptions(despill=True), "despill=True is not available offline"),
        (EditOptions(background_color="FFFFFF"), "takes SegmentOptions, not EditOptions"),
    ],
)
def test_the_local_engine_refuses_what_it_cannot_do_before_any_image(
    local: Any, options: SegmentOptions | EditOptions, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        check_engine_options(local, options)
    assert local._session is None  # refused without loading the model


def test_the_local_engine_accepts_what_it_honours(local: Any) -> None:
    check_engine_options(local, SegmentOptions(crop=True, bg_color="white", format="jpg"))


def test_the_photoroom_engine_accepts_both_option_types_and_nothing_else() -> None:
    engine = PhotoroomEngine(api_key="k")
    check_engine_options(engine, SegmentOptions(despill=True))
    check_engine_options(engine, EditOptions(background_color="FFFFFF"))
    with pytest.raises(ValidationError, match="not dict"):
        check_engine_options(engine, {"crop": True})  # type: ignore[arg-type]


def test_an_engine_without_check_options_is_asked_nothing_up_front() -> None:
    class Plain:
        name = "plain"
        bills = False

        async def process(self, image: bytes, options: object) -> Any:
            raise AssertionError("not called by a check")

        async def aclose(self) -> None:
            return None

    check_engine_options(Plain(), SegmentOptions(despill=True))


def test_check_options_errors_propagate_from_a_user_engine() -> None:
    class Picky:
        name = "picky"
        bills = False

        def check_options(self, options: object) -> None:
            raise ValidationError("picky refuses everything")

    with pytest.raises(ValidationError, match="picky refuses everything"):
        check_engine_options(Picky(), SegmentOptions())
