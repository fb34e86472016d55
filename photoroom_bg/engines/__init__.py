"""Engines: what turns an image into a cut-out (the Photoroom API, or a local model)."""

from ._base import Engine
from .local import LocalEngine
from .photoroom import PhotoroomEngine

__all__ = ["Engine", "LocalEngine", "PhotoroomEngine"]
