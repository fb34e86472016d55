"""``python -m photoroom_bg.service``: the same as ``photoroom-bg serve``."""

import sys

from ..cli import main

main(["serve", *sys.argv[1:]], prog_name="photoroom-bg serve")
