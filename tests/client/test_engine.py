"""PhotoroomEngine: the API behind the Engine protocol."""

from __future__ import annotations

import pytest
import respx

from photoroom_bg import AsyncPhotoroomClient, EditOptions, Engine, SegmentOptions
from photoroom_bg.engines import PhotoroomEngine
from photoroom_bg.errors import ValidationError

from .conftest import API_KEY, EDIT, SEGMENT, png


async def test_engine_dispatches_by_options_type() -> None:
    with respx.mock() as router:
        made = {name: png(2, 2, (red, 0, 0)) for red, name in enumerate("sgp")}
        seg = router.post(SEGMENT).respond(200, content=made["s"])
        get = router.get(EDIT).respond(200, content=made["g"])
        post = router.post(EDIT).respond(200, content=made["p"])
        async with PhotoroomEngine(api_key=API_KEY) as engine:
            assert isinstance(engine, Engine)
            assert engine.bills is True
            assert (await engine.process(png(), SegmentOptions())).content == made["s"]
            assert (await engine.process(png(), EditOptions(padding=0.1))).content == made["p"]
            result = await engine.process_url("https://example.com/a.jpg", EditOptions())
            assert result.content == made["g"]
        assert seg.call_count == post.call_count == get.call_count == 1
        assert engine.client._http.is_closed
        assert API_KEY not in repr(engine)


async def test_engine_leaves_a_given_client_open_and_refuses_bad_arguments() -> None:
    client = AsyncPhotoroomClient(api_key=API_KEY)
    engine = PhotoroomEngine(client)
    await engine.aclose()
    assert not client._http.is_closed
    with pytest.raises(ValidationError, match="either client"):
        PhotoroomEngine(client, api_key="x")
    with pytest.raises(ValidationError, match="not dict"):
        await engine.process(png(), {})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="only EditOptions"):
        await engine.process_url("https://x/y.png", SegmentOptions())  # type: ignore[arg-type]
    await client.aclose()
