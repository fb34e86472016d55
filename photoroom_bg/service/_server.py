"""serve(): run the service with uvicorn, refusing an open address without tokens."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from ..errors import ConfigurationError
from ._settings import ServiceSettings

__all__ = ["GRACEFUL_SHUTDOWN_SECONDS", "check_bind", "serve"]

#: How long a stopping server lets open requests end before it cancels them; the jobs' calls
#: under way then get ``STOP_GRACE_SECONDS`` more (see ``_executor``). A supervisor must wait
#: longer than both before it kills the process (the compose file's ``stop_grace_period``).
GRACEFUL_SHUTDOWN_SECONDS = 10


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    name = host.strip("[]").lower()
    if name in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(settings: ServiceSettings, host: str) -> None:
    """Refuse to serve a non-loopback address without tokens unless told to.

    Raises:
        ConfigurationError: no tokens, ``host`` is reachable from elsewhere, and
            ``allow_unauthenticated`` is off.
    """
    if settings.tokens or is_loopback(host) or settings.allow_unauthenticated:
        return
    raise ConfigurationError(
        f"refusing to serve on {host} without tokens: anyone reaching it could spend your "
        "Photoroom credits. Set PHOTOROOM_BG_TOKENS (or PHOTOROOM_BG_TOKENS_FILE), bind to "
        "127.0.0.1, or set PHOTOROOM_BG_ALLOW_UNAUTHENTICATED=1 behind your own gateway."
    )


def app_from_env() -> Any:
    """The app with settings from the environment (each uvicorn worker calls this)."""
    from ._app import create_app

    return create_app(ServiceSettings.from_env())


def log_config(level: str = "info") -> dict[str, Any]:
    """uvicorn's logging configuration, with the SDK's own loggers (``photoroom_bg``: the
    service's job events, resumed jobs, failures) on the same handler at ``level``;
    without it they would reach only Python's last-resort handler, warnings and above."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["photoroom_bg"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


def serve(
    settings: ServiceSettings | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    log_level: str = "info",
) -> None:
    """Run the service until interrupted.

    With ``workers > 1`` each worker process reads its settings from the environment, so
    ``settings`` must then be ``None``; all workers share ``state_dir`` and the sink.
    """
    import uvicorn

    current = settings if settings is not None else ServiceSettings.from_env()
    check_bind(current, host)
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "server_header": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        # longer than clients keep idle connections (httpx: 5 s), so a client never sends a
        # request on a connection the server is closing at that moment
        "timeout_keep_alive": 30,
        "proxy_headers": False,
        # the standard asyncio loop (not uvloop): DNS lookups of image URLs go through
        # Python's resolver, where the SSRF guard and test harnesses can see them
        "loop": "asyncio",
        "log_config": log_config(log_level),
    }
    if workers > 1:
        if settings is not None:
            raise ConfigurationError("workers > 1 read their settings from the environment")
        os.environ.setdefault("PHOTOROOM_BG_REPLICA_ID", current.replica_id)
        uvicorn.run(
            "photoroom_bg.service._server:app_from_env", factory=True, workers=workers, **common
        )
        return
    from ._app import create_app

    uvicorn.run(create_app(current), **common)
