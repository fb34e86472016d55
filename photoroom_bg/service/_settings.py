"""ServiceSettings: everything the service reads from its environment, in one place.

Settings are read when the app is created (never at import time), from arguments or from
``PHOTOROOM_BG_*`` variables. :data:`ENVIRONMENT` maps each setting to its variable; the docs,
``.env.example`` and the compose file are checked against it.
"""

from __future__ import annotations

import math
import os
import re
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .._images import UnreadableFile, read_file
from .._numbers import check_float_range, check_type, flag_validator, shown
from .._redact import printable
from ..errors import ConfigurationError
from ..sinks._open import sink_uri
from ..sinks._s3 import presign_seconds

__all__ = ["ENVIRONMENT", "ServiceSettings"]

#: setting name -> environment variable. ``api_key`` and ``tokens`` also have ``*_FILE``
#: variants (read from a file, e.g. a Docker or Kubernetes secret).
ENVIRONMENT: dict[str, str] = {
    "api_key": "PHOTOROOM_API_KEY",
    "base_url": "PHOTOROOM_BASE_URL",
    "timeout": "PHOTOROOM_TIMEOUT",
    "sink": "PHOTOROOM_BG_SINK",
    "s3_endpoint_url": "PHOTOROOM_BG_S3_ENDPOINT_URL",
    "state_dir": "PHOTOROOM_BG_STATE_DIR",
    "tokens": "PHOTOROOM_BG_TOKENS",
    "allow_unauthenticated": "PHOTOROOM_BG_ALLOW_UNAUTHENTICATED",
    "cors_origins": "PHOTOROOM_BG_CORS_ORIGINS",
    "max_body_bytes": "PHOTOROOM_BG_MAX_BODY_BYTES",
    "max_source_bytes": "PHOTOROOM_BG_MAX_SOURCE_BYTES",
    "max_urls_per_request": "PHOTOROOM_BG_MAX_URLS_PER_REQUEST",
    "max_images_per_job": "PHOTOROOM_BG_MAX_IMAGES_PER_JOB",
    "recent_outputs_bytes": "PHOTOROOM_BG_RECENT_OUTPUTS_BYTES",
    "max_jobs_per_token": "PHOTOROOM_BG_MAX_JOBS_PER_TOKEN",
    "requests_per_minute_per_token": "PHOTOROOM_BG_REQUESTS_PER_MINUTE_PER_TOKEN",
    "concurrency": "PHOTOROOM_BG_CONCURRENCY",
    "photoroom_requests_per_minute": "PHOTOROOM_BG_PHOTOROOM_REQUESTS_PER_MINUTE",
    "max_retries": "PHOTOROOM_BG_MAX_RETRIES",
    "retry_backoff": "PHOTOROOM_BG_RETRY_BACKOFF",
    "retry_possibly_billed": "PHOTOROOM_BG_RETRY_POSSIBLY_BILLED",
    "allow_networks": "PHOTOROOM_BG_ALLOW_NETWORKS",
    "executor": "PHOTOROOM_BG_EXECUTOR",
    "prefect_deferred": "PHOTOROOM_BG_PREFECT_DEFERRED",
    "prefect_deployment": "PHOTOROOM_BG_PREFECT_DEPLOYMENT",
    "prefect_shard_size": "PHOTOROOM_BG_PREFECT_SHARD_SIZE",
    "prefect_api_key_secret": "PHOTOROOM_BG_PREFECT_API_KEY_SECRET",
    "url_expires": "PHOTOROOM_BG_URL_EXPIRES",
    "replica_id": "PHOTOROOM_BG_REPLICA_ID",
    "lease_seconds": "PHOTOROOM_BG_LEASE_SECONDS",
    "heartbeat_seconds": "PHOTOROOM_BG_HEARTBEAT_SECONDS",
}
#: variables holding a file name instead of the value
FILE_VARIANTS = {"api_key": "PHOTOROOM_API_KEY_FILE", "tokens": "PHOTOROOM_BG_TOKENS_FILE"}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


_TOKEN = re.compile(r"[\x21-\x7e]+")


def _words(value: Any) -> Any:
    """A comma or space separated str, or a list of str, as a tuple; anything else as it is
    (for the field's type check to refuse, naming the field)."""
    if isinstance(value, str):
        return tuple(w for w in value.replace(",", " ").split() if w)
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return value


def _sendable(_: object, attribute: attrs.Attribute[Any], tokens: object) -> None:
    """Each token a client can send as ``Authorization: Bearer <token>``: visible ASCII. A
    token is never shown: it is a secret."""
    if not isinstance(tokens, tuple):
        return  # the type check's to refuse
    for number, token in enumerate(tokens, 1):
        if isinstance(token, str) and not _TOKEN.fullmatch(token):
            raise ConfigurationError(
                f"{ENVIRONMENT[attribute.name]}: token {number} of {len(tokens)} cannot be sent "
                "in an Authorization header (it holds a space, a control character or a "
                "character that is not ASCII): no client could use it"
            )


def _of_type(kind: str) -> Callable[[object, attrs.Attribute[Any], object], None] | None:
    """A check that a setting given from Python has its annotated type (the environment's
    values are parsed into it): a str is truthy whatever it says, a bare TypeError or a
    value taken as it is fails later and elsewhere."""
    if kind == "bool":
        return flag_validator
    wanted: dict[str, tuple[tuple[type, ...], str]] = {
        "str": ((str,), "a str"),
        "str | None": ((str, type(None)), "a str or None"),
        "int": ((int,), "a whole number"),
        "float": ((int, float), "a number"),
        "tuple[str, ...]": ((tuple,), "a str or a list of str"),
    }
    if kind not in wanted:
        return None
    types, what = wanted[kind]

    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        check_type(attribute.name, value, types, what, optional=False)

    return check


def _typed(_: type, fields: list[attrs.Attribute[Any]]) -> list[attrs.Attribute[Any]]:
    """Each field's type check first, then its own validators."""
    typed = []
    for field in fields:
        check = _of_type(str(field.type))
        if check is not None:
            rest = [] if field.validator is None else [field.validator]
            field = field.evolve(validator=attrs.validators.and_(check, *rest))
        typed.append(field)
    return typed


def _home(value: Any) -> Any:
    """A folder from ``~`` in the home folder, as the sink's folder is taken (a ``.env`` file
    or a compose file passes "~/state" on unexpanded): never a folder named "~"."""
    return os.path.expanduser(value) if isinstance(value, str) and value.startswith("~") else value


def _file_name(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if "\x00" in value:  # os.makedirs raises ValueError: the service would not start
        raise ConfigurationError(f"{attribute.name} {value!r} holds a NUL byte: no folder can")


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    check_float_range(attribute.name, value)
    if not value > 0:  # NaN too
        raise ConfigurationError(f"{attribute.name} must be positive, not {shown(value)}")


def _whole(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):  # 2.5 images, True tokens
        raise ConfigurationError(f"{attribute.name} must be a whole number, not {value!r}")
    if value > sys.maxsize:  # the batch each request makes refuses it: every request failed
        raise ConfigurationError(
            f"{attribute.name} must be a whole number up to {sys.maxsize:,}, not {shown(value)}"
        )


def _presignable(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    presign_seconds(value, attribute.name)  # S3 refuses a presigned URL that lives longer


def _not_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    check_float_range(attribute.name, value)
    if not value >= 0:  # NaN too
        raise ConfigurationError(f"{attribute.name} must be 0 or more, not {shown(value)}")


def _finite(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if math.isinf(value):  # a delay or a lease of forever: a job never retried or recovered
        raise ConfigurationError(f"{attribute.name} must be finite seconds, not {value}")


@attrs.frozen(kw_only=True, field_transformer=_typed)
class ServiceSettings:
    """The service's configuration; see the service guide for each setting's variable.

    Attributes:
        api_key: the Photoroom key (``PHOTOROOM_API_KEY`` or ``PHOTOROOM_API_KEY_FILE``).
            Never shown in a repr, a response, a log line or a job record.
        base_url: send Photoroom calls here instead (a proxy, or the emulator).
        timeout: seconds one Photoroom call may take (``inf``: no limit); raise it for large
            images or AI features. Prefect workers read ``PHOTOROOM_TIMEOUT`` from their own
            environment, as they read the key.
        sink: where cut-outs, job records and manifests go: a folder, ``s3://bucket/prefix``
            or ``memory://`` (tests; nothing survives a restart).
        s3_endpoint_url: an S3-compatible server for an ``s3://`` sink (MinIO). Credentials
            come from the standard AWS variables (``AWS_ACCESS_KEY_ID``...).
        state_dir: a local folder for this host's job claims and running manifests.
        tokens: accepted bearer tokens (``PHOTOROOM_BG_TOKENS``, comma or space separated,
            or one per line in ``PHOTOROOM_BG_TOKENS_FILE``). Without tokens the service only
            binds to loopback unless ``allow_unauthenticated`` is set.
        allow_unauthenticated: serve without tokens on a non-loopback address.
        cors_origins: origins allowed by CORS (none by default: CORS is off).
        max_body_bytes: the largest request body.
        max_source_bytes: the largest image read from a URL or upload.
        max_urls_per_request: images in one ``/api/v1/remove-backgrounds`` request.
        max_images_per_job: images in one ``/api/v2`` job.
        recent_outputs_bytes: memory for the cut-outs ``/api/v1`` made without storing them
            (``0``: none), kept 15 minutes so that a caller's retry after its timeout is
            answered without paying for the image again.
        max_jobs_per_token: ``/api/v2`` jobs running at once per token (per replica).
        requests_per_minute_per_token: the service's own rate limit (429 beyond it).
        concurrency: images processed at once per request or job.
        photoroom_requests_per_minute: Photoroom calls per minute per job (``0``: no limit).
        max_retries, retry_backoff: retries of unbilled Photoroom failures, base delay (s).
        retry_possibly_billed: also retry failures Photoroom may have billed (a 5xx other
            than 503, a dropped connection or a timeout after the upload, a spoiled answer);
            off by default: such a retry may pay for the image again, so the image fails
            with its error marked ``possibly_billed`` and retrying it is the caller's choice.
        allow_networks: networks image URLs may reach although not public (``10.0.0.0/8``);
            everything else that is not public is refused.
        executor: what runs ``/api/v2`` jobs: ``local`` (in this process) or ``prefect``
            (Prefect flow runs whose shards go to ``prefect task serve`` workers; needs the
            ``prefect`` extra, ``PREFECT_API_URL``, and a sink every worker can reach).
        prefect_deferred: with ``executor=prefect``, send shards to task workers (default);
            ``false`` runs them in the service's own process.
        prefect_deployment: with ``executor=prefect``, run each job's flow as a run of this
            deployment (``remove-backgrounds/<name>``) instead of coordinating it in the
            service's process.
        prefect_shard_size: with ``executor=prefect``, images per shard (one task run).
        prefect_api_key_secret: with ``executor=prefect``, the name of the Prefect ``Secret``
            block holding the Photoroom key; without it, workers read ``PHOTOROOM_API_KEY``
            from their own environment. The key itself never becomes a parameter.
        url_expires: lifetime in seconds of presigned output URLs (at most 7 days).
        replica_id: this replica's name in job records (default: the host name); unique per
            host, as a job whose replica id is this one's is resumed from this host's claims.
        lease_seconds: a running job whose replica has not reported for this long is taken
            over by the replica asked about it.
        heartbeat_seconds: how often a running job's record is updated in the sink.
    """

    api_key: str | None = attrs.field(default=None, repr=False)
    base_url: str | None = None
    timeout: float = attrs.field(default=120.0, validator=_positive)
    sink: str = attrs.field(default="./photoroom-bg-data", converter=sink_uri)
    s3_endpoint_url: str | None = None
    state_dir: str = attrs.field(
        default="./.photoroom-bg-state", converter=_home, validator=_file_name
    )
    tokens: tuple[str, ...] = attrs.field(
        default=(), converter=_words, validator=_sendable, repr=False
    )
    allow_unauthenticated: bool = False
    cors_origins: tuple[str, ...] = attrs.field(default=(), converter=_words)
    max_body_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=[_whole, _positive])
    max_source_bytes: int = attrs.field(default=25 * 1024 * 1024, validator=[_whole, _positive])
    max_urls_per_request: int = attrs.field(default=10, validator=[_whole, _positive])
    max_images_per_job: int = attrs.field(default=1000, validator=[_whole, _positive])
    recent_outputs_bytes: int = attrs.field(
        default=128 * 1024 * 1024, validator=[_whole, _not_negative]
    )
    max_jobs_per_token: int = attrs.field(default=4, validator=[_whole, _positive])
    requests_per_minute_per_token: int = attrs.field(default=600, validator=[_whole, _positive])
    concurrency: int = attrs.field(default=16, validator=[_whole, _positive])
    photoroom_requests_per_minute: float = attrs.field(default=500, validator=_not_negative)
    max_retries: int = attrs.field(default=5, validator=[_whole, _not_negative])
    retry_backoff: float = attrs.field(default=0.5, validator=[_not_negative, _finite])
    retry_possibly_billed: bool = False
    allow_networks: tuple[str, ...] = attrs.field(default=(), converter=_words)
    executor: str = "local"
    prefect_deferred: bool = True
    prefect_deployment: str | None = None
    prefect_shard_size: int = attrs.field(default=100, validator=[_whole, _positive])
    prefect_api_key_secret: str | None = None
    url_expires: int = attrs.field(default=3600, validator=[_whole, _positive, _presignable])
    replica_id: str = attrs.field(factory=socket.gethostname)
    lease_seconds: float = attrs.field(default=60.0, validator=[_positive, _finite])
    heartbeat_seconds: float = attrs.field(default=2.0, validator=[_positive, _finite])

    def __attrs_post_init__(self) -> None:
        # a replica that beats less often than this looks gone to the others between two
        # beats: another one would take its running job over and pay for its images again
        if self.heartbeat_seconds > self.lease_seconds / 2:
            raise ConfigurationError(
                f"PHOTOROOM_BG_HEARTBEAT_SECONDS ({self.heartbeat_seconds:g}) must be at most "
                f"half of PHOTOROOM_BG_LEASE_SECONDS ({self.lease_seconds:g})"
            )

    @property
    def auth_required(self) -> bool:
        """True when requests must carry one of :attr:`tokens`."""
        return bool(self.tokens)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> ServiceSettings:
        """Read the settings from ``environ`` (default ``os.environ``); ``overrides`` win.

        Raises:
            ConfigurationError: a value cannot be parsed, or a ``*_FILE`` cannot be read.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        fields = attrs.fields_dict(cls)
        for name, variable in ENVIRONMENT.items():
            raw = env.get(variable)
            file_variable = FILE_VARIANTS.get(name)
            if raw is None and file_variable and env.get(file_variable):
                raw = _read_file(file_variable, env[file_variable])
                if not raw:  # a secret that was never filled in: no key, or no tokens at all
                    raise ConfigurationError(
                        f"{file_variable}={env[file_variable]} names an empty file"
                    )
            if raw is None or (raw == "" and name != "allow_unauthenticated"):
                continue
            values[name] = _parse(name, variable, raw, fields[name].type)
            if name == "tokens" and raw.strip() and not values[name]:
                # "," would turn authentication off where tokens were meant
                raise ConfigurationError(f"{variable}={raw!r} names no token")
        values.update(overrides)
        return cls(**values)


#: The most a secret's file may hold (a key, or tokens one per line).
SECRET_FILE_BYTES = 1 << 20


def _read_file(variable: str, path: str) -> str:
    try:
        return read_file(path, SECRET_FILE_BYTES).decode("utf-8").strip()
    except UnreadableFile as exc:
        raise ConfigurationError(f"cannot read {variable}={printable(path)}: {exc}") from None
    except UnicodeDecodeError as exc:  # a secret: its bytes are not shown
        raise ConfigurationError(
            f"{variable}={printable(path)}: the file is not UTF-8 text (byte {exc.start}); "
            "save it as UTF-8"
        ) from None


def _parse(name: str, variable: str, raw: str, kind: Any) -> Any:
    text = raw.strip()
    kind = str(kind)
    try:
        if kind == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(text)
        if kind == "int":
            return int(text)
        if kind == "float":
            if name == "timeout" and text.lower() == "none":  # as the client reads it
                return math.inf
            return float(text)
    except ValueError:
        raise ConfigurationError(f"{variable}={raw!r} is not a valid {kind}") from None
    if name == "tokens":
        return tuple(line.strip() for line in text.replace(",", "\n").split() if line.strip())
    return text
