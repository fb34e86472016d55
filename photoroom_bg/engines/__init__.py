"""Engines: what turns an image into a cut-out (the Photoroom API, or a local model)."""

from ._base import Engine, check_engine_options
from .local import LocalEngine
from .photoroom import PhotoroomEngine

__all__ = ["Engine", "LocalEngine", "PhotoroomEngine", "check_engine_options"]
