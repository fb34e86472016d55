"""pytest plugin: the ``photoroom_emulator`` fixture.

Registered through the ``pytest11`` entry point, so any project that installs
``photoroom-bg[testing]`` can write::

    def test_my_code(photoroom_emulator):
        with photoroom_emulator.client() as client:
            client.remove_background("shoe.jpg")
        assert photoroom_emulator.ledger.calls() == 1

Nothing is imported until the fixture is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ._server import PhotoroomEmulator


@pytest.fixture
def photoroom_emulator(request: pytest.FixtureRequest) -> Iterator[PhotoroomEmulator]:
    """A running :class:`~photoroom_bg.testing.PhotoroomEmulator` (1,000 credits, no faults).

    Configure it with ``@pytest.mark.photoroom_emulator(credits=5, requests_per_minute=10,
    faults=Faults(...))``; ``.url``, ``.api_key``, ``.client()``, ``.async_client()``,
    ``.ledger``, ``.requests`` and ``.inject(...)`` are there for the test.
    """
    from ._server import PhotoroomEmulator

    marker = request.node.get_closest_marker("photoroom_emulator")
    options = dict(marker.kwargs) if marker else {}
    emulator = PhotoroomEmulator(**options)
    with emulator.serve():
        yield emulator


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``photoroom_emulator`` marker."""
    config.addinivalue_line(
        "markers", "photoroom_emulator(**options): configure the photoroom_emulator fixture"
    )
