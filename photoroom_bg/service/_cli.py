"""``photoroom-bg serve`` / ``python -m photoroom_bg.service``: run the HTTP service."""

from __future__ import annotations

import os

import click

from ..errors import ConfigurationError
from ._server import serve as run_service

__all__ = ["serve"]


class _SetupError(click.ClickException):
    """A setup problem: ``Error: ...`` on one line, exit code 2 (as the other commands)."""

    exit_code = 2


@click.command(
    short_help="Run the HTTP service.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port."
)
@click.option(
    "--workers", type=click.IntRange(1), default=1, show_default=True, help="Worker processes."
)
@click.option(
    "--allow-unauthenticated",
    is_flag=True,
    help="Serve a non-loopback address without tokens (behind your own gateway only).",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug", "trace"], False),
    default="info",
    show_default=True,
    help="uvicorn's log level.",
)
def serve(host: str, port: int, workers: int, allow_unauthenticated: bool, log_level: str) -> None:
    """Run the HTTP service: the web page, /api/v1 and /api/v2 (settings from PHOTOROOM_* and
    PHOTOROOM_BG_* variables; see the service guide)."""
    if allow_unauthenticated:
        os.environ["PHOTOROOM_BG_ALLOW_UNAUTHENTICATED"] = "1"  # for every worker
    try:
        run_service(host=host, port=port, workers=workers, log_level=log_level)
    except ConfigurationError as exc:
        raise _SetupError(" ".join(str(exc).split("\n"))) from None
