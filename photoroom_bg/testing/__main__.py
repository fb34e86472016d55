"""``python -m photoroom_bg.testing``: run the Photoroom emulator."""

from ._cli import run_emulator

raise SystemExit(run_emulator(prog_name="python -m photoroom_bg.testing"))
