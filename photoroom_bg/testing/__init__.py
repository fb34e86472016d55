"""Offline tools for testing code that uses photoroom_bg: the Photoroom emulator.

:class:`PhotoroomEmulator` speaks Photoroom's API on a loopback port (``/v1/segment``,
``/v2/edit``, ``/v1/render``, ``/v1/account``, ``/v2/account``), holds requests to the same
rules of the spec as the SDK, does real image work with a model-free
segmenter, keeps a credit ledger, enforces a rate limit and injects the faults real networks
produce. The ``photoroom_emulator`` pytest fixture (registered automatically when this package
is installed) yields a running one. Needs the ``testing`` extra.
"""

from ._app import EmulatorApp, LoggedRequest
from ._contract import EDIT_PARAMS, NOT_EMULATED, SEGMENT_PARAMS, Param
from ._faults import BILLED_FAULTS, FAULTS, Faults, parse_duration
from ._imaging import BorderColorSegmenter, Segmenter
from ._ledger import KeyAccount, Ledger
from ._server import DEFAULT_API_KEY, PhotoroomEmulator

__all__ = [
    "BILLED_FAULTS",
    "DEFAULT_API_KEY",
    "EDIT_PARAMS",
    "FAULTS",
    "NOT_EMULATED",
    "SEGMENT_PARAMS",
    "BorderColorSegmenter",
    "EmulatorApp",
    "Faults",
    "KeyAccount",
    "Ledger",
    "LoggedRequest",
    "Param",
    "PhotoroomEmulator",
    "Segmenter",
    "parse_duration",
]
