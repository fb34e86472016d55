"""Tests that use the photoroom_emulator fixture: offline, free, over real sockets."""

import pytest

from photoroom_bg.errors import OutOfCreditsError
from photoroom_bg.testing import Faults


def test_cutout(photoroom_emulator):
    with photoroom_emulator.client() as client:  # base_url and key preset
        result = client.remove_background("photos/coffee.jpg")
    assert result.content_type == "image/png"
    assert photoroom_emulator.ledger.calls() == 1


@pytest.mark.asyncio  # pytest-asyncio runs it (not needed with asyncio_mode = "auto")
@pytest.mark.photoroom_emulator(
    credits=1, requests_per_minute=60, faults=Faults(rates={"503": 0.2}, seed=1)
)
async def test_out_of_credits(photoroom_emulator):
    async with photoroom_emulator.async_client() as client:
        await client.remove_background("photos/coffee.jpg")  # 503s are retried
        with pytest.raises(OutOfCreditsError):
            await client.remove_background("photos/coffee.jpg")
