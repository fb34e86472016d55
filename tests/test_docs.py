"""Every public name has a docstring and a place in the API reference."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
MODULES = [
    "photoroom_bg",
    "photoroom_bg.batch",
    "photoroom_bg.engines",
    "photoroom_bg.errors",
    "photoroom_bg.sinks",
    "photoroom_bg.sources",
    "photoroom_bg.testing",
    "photoroom_bg.cli",
    "photoroom_bg.prefect",
]


def documented() -> set[str]:
    """Names the API pages render: auto* directives, and automodule ``:members:``."""
    text = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.rst"))
    names = set(re.findall(r"\.\. auto(?:class|function|data|exception):: ([\w.]+)", text))
    found = {name.rsplit(".", 1)[-1] for name in names}
    for module_name, members in re.findall(r"\.\. automodule:: ([\w.]+)\n((?:   :.*\n?)*)", text):
        found.add(module_name.rsplit(".", 1)[-1])
        listed = re.search(r":members:(.*)", members)
        if listed is None:
            continue
        if listed.group(1).strip():
            found |= {name.strip() for name in listed.group(1).split(",")}
        else:
            found |= set(importlib.import_module(module_name).__all__)
    return found


def public_names() -> list[tuple[str, str]]:
    pairs = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        pairs += [(module_name, name) for name in module.__all__]
    return pairs


@pytest.mark.parametrize(("module_name", "name"), public_names())
def test_public_name_is_documented(module_name: str, name: str) -> None:
    obj = getattr(importlib.import_module(module_name), name)
    if name.isupper() or name.startswith("__"):  # constants and __version__
        return
    assert inspect.getdoc(obj), f"{module_name}.{name} has no docstring"
    assert name in documented(), f"{module_name}.{name} is missing from docs/api/*.rst"


def toctree_entries() -> list[str]:
    """The pages of the index's toctrees, in the order the navigation shows them."""
    entries = []
    in_toctree = False
    for line in (DOCS / "index.rst").read_text().splitlines():
        if line.startswith(".. toctree::"):
            in_toctree = True
        elif in_toctree and line.startswith("   ") and not line.strip().startswith(":"):
            entries.append(line.strip())
        elif line and not line.startswith(" "):
            in_toctree = False
    return entries


def test_the_navigation_follows_the_reading_order() -> None:
    entries = toctree_entries()
    assert entries[:2] == ["guides/installation", "guides/quickstart"]
    guides = [e for e in entries if e.startswith("guides/")]
    api = [e for e in entries if e.startswith("api/")]
    assert entries.index(guides[-1]) < entries.index(api[0])  # guides, then the reference
    assert sorted(guides) == sorted(f"guides/{p.stem}" for p in (DOCS / "guides").glob("*.rst"))
    assert sorted(api) == sorted(f"api/{p.stem}" for p in (DOCS / "api").glob("*.rst"))
