"""``python -m photoroom_bg.service``: the same as ``photoroom-bg serve``."""

from ._cli import serve

serve(prog_name="photoroom-bg serve")
