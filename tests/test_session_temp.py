"""The test session keeps what lands in the temporary folder to itself."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .conftest import TEMP_ENV


def test_temporary_files_of_the_session_and_its_children_go_to_its_own_folder(
    tmp_path: Path,
) -> None:
    """A batch whose sink refuses its manifest keeps it in the temporary folder, the claims
    of batches live there, and the servers the tests start write there: all of it goes to a
    folder of the session's own, removed when it ends, never to the user's ``/tmp``."""
    folder = os.environ[TEMP_ENV]
    assert Path(folder).name.startswith("photoroom-bg-tests-")
    assert tempfile.gettempdir() == folder
    child = subprocess.run(
        [sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == folder
    assert not tmp_path.is_relative_to(folder)  # pytest's own folders stay where they were
