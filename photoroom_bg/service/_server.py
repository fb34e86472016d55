"""serve(): run the service with uvicorn, refusing an open address without tokens."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from typing import Any

from .._redact import REDACTED
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


#: a request target's query string, in an access log line ("GET /path?query HTTP/1.1")
_QUERY = re.compile(r"(?P<path>(?:^|(?<=[\s\"]))/[^\s?\"]*)\?(?P<query>[^\s\"#]*)")


def redact_query(target: str) -> str:
    """A request target with the value of every query parameter redacted: a caller may
    send a token as ``?token=...``, and a log line is no place for it."""
    path, mark, query = target.partition("?")
    if not mark:
        return target
    names = (part.split("=", 1)[0] for part in query.split("&"))
    return f"{path}?" + "&".join(f"{name}={REDACTED}" if name else REDACTED for name in names)


class AccessLogRedaction(logging.Filter):
    """Redacts the query string of each request in uvicorn's access log lines (whose
    formatter needs the record's arguments: the target among them is replaced)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; never drops it."""
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the logging module's to report
            return True
        redacted = _QUERY.sub(lambda m: redact_query(m.group(0)), message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def redact_access_log() -> None:
    """Put :class:`AccessLogRedaction` on uvicorn's access logger (idempotent), however the
    app is served."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, AccessLogRedaction) for f in access.filters):
        access.addFilter(AccessLogRedaction())


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
    # every access line's query string is redacted before any handler sees it
    config.setdefault("filters", {})["redact_query"] = {"()": AccessLogRedaction}
    config["loggers"]["uvicorn.access"].setdefault("filters", []).append("redact_query")
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
