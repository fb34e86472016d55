"""Sphinx configuration for the photoroom_bg documentation.

``sphinx-build -b html docs docs/_build/html`` builds the pages; ``sphinx-build -b doctest docs
docs/_build/doctest`` runs every Python example in them against the emulator (see
``_ext/doc_examples.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE / "_ext"))
# The scale-out examples start Prefect's temporary server: no usage reports from it or from
# Prefect's SDK (set before autodoc imports prefect, which reads its settings once)
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# ... and 180 s for it to start, as the tests give it (tests/prefect/conftest.py): Prefect's
# 20 s ran out in CI, where the docs build shares two cores with the test workers
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

project = "photoroom_bg"
author = "photoroom_bg developers"
copyright = "2026, photoroom_bg developers"
release = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "doc_examples",
    "photoroom_rules",
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
exclude_patterns = ["_build", "_scripts", "_ext"]

# -- HTML -------------------------------------------------------------------------------------

html_theme = "furo"
html_title = "photoroom_bg"
html_static_path = ["_static"]
html_theme_options = {"navigation_with_keys": True}
# "::" blocks are shell commands and program output; Python examples say so (testcode)
highlight_language = "none"
pygments_style = "friendly"
pygments_dark_style = "monokai"

# -- every example runs -----------------------------------------------------------------------

# Each page's examples run in one namespace, in a fresh folder holding photos/, against an
# emulator that PHOTOROOM_API_KEY and PHOTOROOM_BASE_URL point at; nothing leaves loopback.
doctest_global_setup = "import doc_examples as _doc_examples\n_doc_examples.enter_page()\n"
doctest_global_cleanup = "_doc_examples.leave_page()\n"
doctest_test_doctest_blocks = ""  # plain >>> blocks are not examples to run; testcode is
trim_doctest_flags = True

FIGURE = HERE / "_static" / "cutouts.jpg"


def _make_figure(app: Any) -> None:
    """The photos-and-cut-outs picture is made by a script, never by hand."""
    if not FIGURE.exists():
        subprocess.run([sys.executable, str(HERE / "_scripts" / "cutouts_figure.py")], check=True)


def setup(app: Any) -> None:
    """Make the generated picture before the pages are read."""
    app.connect("builder-inited", _make_figure)
