"""Sphinx configuration for the photoroom_bg documentation."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
# The scale-out examples start Prefect's temporary server: no usage reports from it or from
# Prefect's SDK (set before autodoc imports prefect, which reads its settings once)
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

project = "photoroom_bg"
author = "photoroom_bg developers"
copyright = "2026, photoroom_bg developers"
release = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
html_theme = "alabaster"
html_static_path = ["_static"]
exclude_patterns = ["_build"]
