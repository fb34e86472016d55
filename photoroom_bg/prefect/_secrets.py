"""Where a worker gets the Photoroom key: a Prefect ``Secret`` block, or its own environment.

A run's parameters only ever carry the *name* of the block. The value is loaded inside the
task, handed to the engine, and never logged, returned or put in an artifact.
"""

from __future__ import annotations

import os
from typing import Any, cast

from ..errors import ConfigurationError

__all__ = ["resolve_api_key"]


async def resolve_api_key(secret_block: str | None) -> str | None:
    """The Photoroom key: the value of the ``Secret`` block named ``secret_block``, or, without
    one, ``$PHOTOROOM_API_KEY`` (``None`` if unset).

    Raises:
        ConfigurationError: the block does not exist or holds no usable key (the message
            names the block, never its value).
    """
    if secret_block is None:
        return os.environ.get("PHOTOROOM_API_KEY") or None
    from prefect.blocks.system import Secret

    try:
        block = await Secret.aload(secret_block)
    except ValueError:
        raise ConfigurationError(
            f"no Secret block named {secret_block!r}: create it with "
            f"Secret(value=...).save({secret_block!r})"
        ) from None
    value: Any = cast(Any, block).get()
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"the Secret block {secret_block!r} holds no API key string")
    return value.strip()
