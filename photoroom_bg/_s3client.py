"""aiobotocore S3 clients for the sink and the reader: made on demand, one per event loop."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from ._numbers import check_given, check_server_url
from ._redact import install_log_redaction
from .errors import ConfigurationError

__all__ = [
    "CREDENTIALS_ADVICE",
    "check_endpoint",
    "close_s3_client",
    "configured_endpoint",
    "error_code",
    "open_s3_client",
]

#: Where S3 credentials go, for a URI or an endpoint that holds them (never shown).
CREDENTIALS_ADVICE = (
    "give them as aws_access_key_id= and aws_secret_access_key= (or AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY)"
)


def check_endpoint(name: str, endpoint_url: object) -> str | None:
    """``endpoint_url`` (the argument ``name``), the http(s) URL of a server with no
    credentials, query or fragment in it: botocore fails on those later, with errors of its
    own, and a secret there would show wherever the endpoint is shown."""
    if endpoint_url is None:
        return None
    if not isinstance(endpoint_url, str):
        raise ConfigurationError(f"{name} must be a str, not {type(endpoint_url).__name__}")
    check_given(name, endpoint_url)
    return check_server_url(
        name,
        endpoint_url,
        "http://localhost:9000",
        credentials=CREDENTIALS_ADVICE,
    )


def configured_endpoint() -> str | None:
    """The S3 endpoint botocore takes when none is given: ``$AWS_ENDPOINT_URL_S3``, else
    ``$AWS_ENDPOINT_URL`` (``None``: AWS)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


#: botocore's data loaders, by ``data_path`` setting: one per process, shared by every session.
_loaders: dict[object, Any] = {}
_loaders_lock = threading.Lock()


def _new_session() -> Any:
    """A new aiobotocore session that shares this process's botocore data loader.

    Each session parses botocore's endpoint and S3 model files (some 150 ms of CPU) into a
    loader of its own, and every sink, source reader and job record makes a session per event
    loop: a Prefect worker spent half its CPU there. The loader only reads files and caches
    what it read, so one serves every session (as it serves every client of one session);
    sessions themselves are not shared, as their credential caches are bound to an event loop.
    """
    from aiobotocore.session import get_session

    session = get_session()
    data_path = session.get_config_variable("data_path")
    with _loaders_lock:
        loader = _loaders.get(data_path)
        if loader is None:
            loader = _loaders[data_path] = session.get_component("data_loader")
    session.register_component("data_loader", loader)
    return session


async def open_s3_client(
    needs: str, config: Mapping[str, Any] | object | None = None, **options: Any
) -> tuple[Any, Any]:
    """Create and enter an S3 client; return ``(context, client)`` for :class:`PerLoop`.

    Args:
        needs: who needs the ``s3`` extra, for the error when it is missing
            (``"S3Sink needs"``).
        config: arguments for :class:`botocore.config.Config`, or a ``Config``, if any.
        options: arguments for ``create_client`` (endpoint, region, credentials...).
    """
    try:
        import aiobotocore.session  # noqa: F401
        from botocore.config import Config
    except ImportError:
        raise ConfigurationError(f"{needs} the s3 extra: pip install 'photoroom-bg[s3]'") from None
    if isinstance(config, Mapping):
        options["config"] = Config(**config)
    elif config is not None:
        options["config"] = config
    endpoint = options.get("endpoint_url")
    if isinstance(endpoint, str) and endpoint[:7].lower() == "http://":
        # no TLS on this connection: the context aiohttp would build for it, reading the CA
        # bundle (some 50 ms of CPU per client), is never used
        options.setdefault("verify", False)
    context = _new_session().create_client("s3", **options)
    client = await context.__aenter__()
    install_log_redaction()  # botocore's loggers exist now: no signature in their DEBUG lines
    return context, client


async def close_s3_client(entry: tuple[Any, Any]) -> None:
    """Exit a client made by :func:`open_s3_client`."""
    await entry[0].__aexit__(None, None, None)


def error_code(exc: Any) -> str:
    """The S3 error code of a botocore error, or ``""``: only a ``ClientError`` carries an
    answer (an ``HTTPClientError``'s ``response`` is ``None``)."""
    response = getattr(exc, "response", None)
    error = response.get("Error") if isinstance(response, Mapping) else None
    return str(error.get("Code", "")) if isinstance(error, Mapping) else ""
