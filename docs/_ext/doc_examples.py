"""The environment every Python example of the docs and the README runs in.

What a reader has after following the installation page, made safe for CI:

- one Photoroom emulator on loopback for the whole run, with ``PHOTOROOM_API_KEY`` and
  ``PHOTOROOM_BASE_URL`` pointing at it, so ``PhotoroomClient()`` works as written;
- for each page (a Sphinx doctest group), a fresh temporary folder as the current directory,
  holding ``photos/``: copies of ``examples/images/*.jpg``;
- nothing leaves loopback: the test suite's network guard (``tests/netguard.py``) is installed
  in this process and, through ``sitecustomize``, in the Python processes the examples start;
  any attempt to reach another host fails the run.

``conf.py`` loads this module as a Sphinx extension: ``sphinx-build -b doctest`` starts the
environment once, and ``doctest_global_setup`` / ``doctest_global_cleanup`` call
:func:`enter_page` and :func:`leave_page` around each page. ``tests/test_doc_examples.py``
runs the README's examples in the same environment.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT / "examples" / "images"
_GUARD = ROOT / "tests" / "netguard.py"
_GUARD_SITE = ROOT / "tests" / "_guard_site"
_LOG_ENV = "PHOTOROOM_BG_NETGUARD_LOG"


def _load_guard() -> ModuleType:
    spec = importlib.util.spec_from_file_location("photoroom_bg_docs_netguard", _GUARD)
    if spec is None or spec.loader is None:  # pragma: no cover - the file is in the repo
        raise RuntimeError(f"cannot load the network guard from {_GUARD}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Environment:
    """The emulator, the variables and the per-page folders of the examples.

    Args:
        guard: install the loopback-only network guard (leave it to the test session when
            one already guards the process).
    """

    def __init__(self, *, guard: bool = True) -> None:
        self._guard_wanted = guard
        self._guard: ModuleType | None = None
        self._stack = contextlib.ExitStack()
        self._page: Path | None = None
        self._home: str | None = None
        self.pages = 0

    def start(self) -> None:
        """Start the emulator and point the variables at it."""
        from photoroom_bg.testing import PhotoroomEmulator

        if self._guard_wanted:
            self._guard = _load_guard()
            self._guard.install()
            log = Path(tempfile.mkdtemp(prefix="photoroom-bg-docs-guard-")) / "netguard.log"
            self._stack.callback(shutil.rmtree, log.parent, True)
            self._set_env(_LOG_ENV, str(log))
            paths = [str(_GUARD_SITE), *filter(None, os.environ.get("PYTHONPATH", "").split(":"))]
            self._set_env("PYTHONPATH", os.pathsep.join(dict.fromkeys(paths)))
        emulator = PhotoroomEmulator(credits=1_000_000)
        url = self._stack.enter_context(emulator.serve())
        self._set_env("PHOTOROOM_API_KEY", emulator.api_key)
        self._set_env("PHOTOROOM_BASE_URL", url)

    def _set_env(self, name: str, value: str) -> None:
        previous = os.environ.get(name)
        os.environ[name] = value

        def restore() -> None:
            if previous is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = previous

        self._stack.callback(restore)

    def enter_page(self) -> Path:
        """A fresh folder with ``photos/`` becomes the current directory."""
        if self._page is not None:
            self.leave_page()
        page = Path(tempfile.mkdtemp(prefix="photoroom-bg-docs-"))
        (page / "photos").mkdir()
        for photo in sorted(PHOTOS.glob("*.jpg")):
            shutil.copy(photo, page / "photos" / photo.name)
        self._home = os.getcwd()
        os.chdir(page)
        self._page = page
        self.pages += 1
        return page

    def leave_page(self) -> None:
        """Go back, remove the page's folder, and fail if anything left loopback."""
        if self._page is None:
            return
        os.chdir(self._home or ROOT)
        shutil.rmtree(self._page, ignore_errors=True)
        self._page = None
        self.check_loopback()

    def check_loopback(self) -> None:
        """Raise if this process or a Python child tried to reach beyond loopback."""
        if self._guard is None:
            return
        seen: list[str] = self._guard.attempts()
        self._guard.clear()
        log = Path(os.environ.get(_LOG_ENV, ""))
        if log.is_file():
            seen += log.read_text(errors="replace").splitlines()
            log.unlink()
        if seen:
            raise RuntimeError("a docs example tried to reach beyond loopback: " + "; ".join(seen))

    def stop(self) -> None:
        """Leave the page, stop the emulator, restore the variables."""
        try:
            self.leave_page()
        finally:
            self._stack.close()


@contextlib.contextmanager
def environment(*, guard: bool = True) -> Iterator[Environment]:
    """A started :class:`Environment`, stopped on exit."""
    env = Environment(guard=guard)
    env.start()
    try:
        yield env
    finally:
        env.stop()


# -- the Sphinx side --------------------------------------------------------------------------

_current: Environment | None = None


def enter_page() -> None:
    """``doctest_global_setup``: a fresh page folder (the environment starts on first use)."""
    global _current
    if _current is None:
        _current = Environment()
        _current.start()
    _current.enter_page()


def leave_page() -> None:
    """``doctest_global_cleanup``: drop the page folder, check nothing left loopback."""
    if _current is not None:
        _current.leave_page()


def _stop(app: Any, exception: BaseException | None) -> None:
    global _current
    if _current is not None:
        _current.stop()
        _current = None


def setup(app: Any) -> dict[str, Any]:
    """Sphinx extension entry point: stop the environment when the build ends."""
    app.connect("build-finished", _stop)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
