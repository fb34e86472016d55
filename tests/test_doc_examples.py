"""Every Python example in README.rst and docs/ runs, and none can slip past the harness.

The docs' examples are ``testcode`` blocks that ``sphinx-build -b doctest`` runs (``tox -e
docs``). The README is shown on code hosts that know no Sphinx directive, so its examples stay
``code-block:: python`` and run here, in the same environment (``docs/_ext/doc_examples.py``):
an emulator behind ``PHOTOROOM_API_KEY`` / ``PHOTOROOM_BASE_URL``, a fresh folder with
``photos/`` as the current directory, nothing beyond loopback.

A Python block that neither runs nor says why fails :func:`test_every_python_block_runs`. A
fragment that truly cannot run (a model that is not shipped, say) opts out visibly in the
source, with a comment saying why::

    .. code-block:: python
       :class: not-run

       # not run in CI: ...
"""

from __future__ import annotations

import ast
import importlib.util
import re
import textwrap
from pathlib import Path
from types import ModuleType

import attrs
import pytest
from PIL import Image, ImageChops, ImageStat

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.rst"
DOCS = ROOT / "docs"

RUN_BY_SPHINX = {"testcode", "testsetup", "testcleanup", "doctest"}
CODE_DIRECTIVES = {"code-block", "code", "sourcecode", "literalinclude", *RUN_BY_SPHINX}
PYTHON = {"python", "python3", "py", "pycon", "ipython", "default"}
_DIRECTIVE = re.compile(r"^(?P<indent> *)\.\. (?P<name>[\w-]+)::(?: +(?P<arg>.*))?$")
_PYTHON_NODES = (ast.Import, ast.ImportFrom, ast.Call, ast.With, ast.AsyncWith, ast.Await)


@attrs.frozen
class Block:
    """A literal block of a reST file: a directive's body, or the text after ``::``."""

    path: Path
    line: int
    kind: str  # a directive name, or "literal" for "::"
    language: str
    options: dict[str, str]
    body: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} ({self.kind} {self.language})".strip()


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _body(lines: list[str], start: int, parent_indent: int) -> tuple[str, int]:
    """The lines from ``start`` indented deeper than ``parent_indent`` (blank lines included)."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > parent_indent):
        end += 1
    return textwrap.dedent("\n".join(lines[start:end])).strip("\n"), end


def blocks(path: Path) -> list[Block]:
    """Every code directive and ``::`` literal block of ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found = []
    i = 0
    while i < len(lines):
        line = lines[i]
        match = _DIRECTIVE.match(line)
        if match and match["name"] in CODE_DIRECTIVES:
            indent = len(match["indent"])
            options: dict[str, str] = {}
            j = i + 1
            while j < len(lines) and lines[j].strip().startswith(":") and lines[j].strip():
                name, _, value = lines[j].strip()[1:].partition(":")
                options[name] = value.strip()
                j += 1
            body, end = _body(lines, j, indent)
            language = (match["arg"] or "").strip()
            found.append(Block(path, i + 1, match["name"], language, options, body))
            i = end
            continue
        if line.rstrip().endswith("::") and not line.lstrip().startswith(".."):
            body, end = _body(lines, i + 1, _indent(line))
            found.append(Block(path, i + 1, "literal", "", {}, body))
            i = end
            continue
        i += 1
    return found


def looks_like_python(text: str) -> bool:
    """Parses as Python and does something (imports, calls): shell lines and prose do not."""
    try:
        tree = compile(text, "<block>", "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError:
        return False
    return any(isinstance(node, _PYTHON_NODES) for node in ast.walk(tree))


def readme_examples() -> list[Block]:
    return [b for b in blocks(README) if b.kind == "code-block" and b.language in PYTHON]


def unexecuted(path: Path) -> list[Block]:
    """Python blocks of ``path`` that nothing runs and that do not opt out."""
    found = blocks(path)
    run_text = "\n".join(b.body for b in found if b.kind in RUN_BY_SPHINX)
    missed = []
    for block in found:
        if block.kind in RUN_BY_SPHINX or "not-run" in block.options.get("class", ""):
            continue
        if path == README and block.kind == "code-block" and block.language in PYTHON:
            continue  # run by test_readme_example_runs
        if block.kind == "literalinclude":  # its argument is the file; a testcode runs it
            is_python = block.options.get("language", "") in PYTHON or block.language.endswith(
                ".py"
            )
            if is_python and Path(block.language).name not in run_text:
                missed.append(block)
            continue
        if block.language in PYTHON or (not block.language and looks_like_python(block.body)):
            missed.append(block)
    return missed


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.rst"))]


# -- the harness cannot be escaped --------------------------------------------------------------


def test_every_python_block_runs() -> None:
    missed = [str(block) for path in doc_files() for block in unexecuted(path)]
    assert not missed, (
        "Python examples that nothing runs; make them testcode (docs) or code-block:: python "
        "(README), or mark a fragment that cannot run ':class: not-run': " + ", ".join(missed)
    )


def test_the_checker_finds_blocks_that_escape(tmp_path: Path) -> None:
    page = tmp_path / "page.rst"
    page.write_text(
        textwrap.dedent(
            """\
            Title
            =====

            A literal block with Python in it::

                from photoroom_bg import BatchRemover
                BatchRemover(sink="out").submit("photos").wait()

            .. code-block:: python

                print("never run")

            .. code-block:: python
               :class: not-run

               # not run in CI: needs a model that is not shipped
               LocalEngine("isnet-general-use")

            .. testcode::

                print("run by sphinx")

            Shell commands are not Python::

                pip install ".[cli]"
                photoroom-bg remove photos -o cutouts

            .. code-block:: text

                Account(images_available=1)

            .. literalinclude:: ../_examples/test_unrun.py

            A top-level await is Python too::

                async with LocalEngine() as engine:
                    await engine.process(data, options)
            """
        )
    )
    assert [(b.line, b.kind) for b in unexecuted(page)] == [
        (4, "literal"),
        (9, "code-block"),
        (32, "literalinclude"),
        (34, "literal"),
    ]


def test_readme_and_docs_have_examples_to_run() -> None:
    assert len(readme_examples()) >= 2
    sphinx_run = [b for p in DOCS.rglob("*.rst") for b in blocks(p) if b.kind == "testcode"]
    assert len(sphinx_run) >= 15


#: the widest code line that fits the docs' column at 1280 px without a scroll bar
CODE_COLUMNS = 88


def test_code_blocks_fit_the_page() -> None:
    too_wide = [
        f"{block} line {n}: {len(line)} columns"
        for path in doc_files()
        for block in blocks(path)
        if path != README or block.kind != "literal"  # the README's one-line commands
        for n, line in enumerate(block.body.splitlines(), 1)
        if len(line) > CODE_COLUMNS
    ]
    assert not too_wide, "wrap these examples: " + "; ".join(too_wide)


# -- the README's examples, in the docs' environment -------------------------------------------


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("block", readme_examples(), ids=lambda b: f"README.rst:{b.line}")
def test_readme_example_runs(block: Block) -> None:
    doc_examples = _load(DOCS / "_ext" / "doc_examples.py", "doc_examples")
    with doc_examples.environment(guard=False) as env:  # the session guard is on already
        env.enter_page()
        exec(compile(block.body, str(block), "exec"), {"__name__": "__main__"})  # noqa: S102


# -- the picture is made by its script -----------------------------------------------------------


def test_the_committed_picture_is_what_the_script_makes() -> None:
    pytest.importorskip("onnxruntime")
    script = _load(DOCS / "_scripts" / "cutouts_figure.py", "cutouts_figure")
    committed = Image.open(script.OUTPUT).convert("RGB")
    made = script.make_figure()
    assert made.size == committed.size
    # the committed file is a JPEG: compare what it decodes to with the fresh picture
    difference = ImageChops.difference(made, committed).convert("L")
    assert ImageStat.Stat(difference).mean[0] < 4, "run docs/_scripts/cutouts_figure.py"
