"""One connection budget spread over several small httpx pools.

httpcore's connection pool (1.0.x) re-examines its connections for every queued request each
time a request starts or its response is closed, and counts its idle connections in quadratic
time. With C requests in flight on one pool, each request costs O(C^2) bookkeeping: past a few
dozen concurrent requests a single pool spends more CPU on that than on HTTP, and a batch
becomes CPU-bound long before the server is busy. :class:`ShardedTransport` splits the same
budget over pools of a few connections each, which keeps every scan short.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import ssl
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

import httpx

from . import _netio
from ._redact import redact_text

__all__ = [
    "DEFAULT_LIMITS",
    "ShardedTransport",
    "environment_proxies",
    "proxy_mounts",
    "split_budget",
    "tls_context",
]

#: Connections per shard when the shard count is not given. httpcore's bookkeeping per
#: request grows with the square of a pool's size, the cost of one more pool is a few objects;
#: at 256 requests in flight, pools of 4 measured better than pools of 8, 16 or 32.
CONNECTIONS_PER_SHARD = 4
#: The SDK's budget: as many kept-alive connections as connections (see ShardedTransport).
DEFAULT_LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=256)


def tls_context(verify: str | bool = True, trust_env: bool = True) -> ssl.SSLContext:
    """The SSL context httpx would make for ``verify`` and ``trust_env``, made once per
    process and shared: loading the CA bundle takes 25-30 ms of CPU, which every client, and
    so every batch run, paid again. A context is safe to share between connections, threads
    and event loops; a change of ``SSL_CERT_FILE``, ``SSL_CERT_DIR`` or ``SSLKEYLOGFILE``
    makes a new one.

    Raises:
        OSError, ssl.SSLError: the certificates named cannot be read.
    """
    if isinstance(verify, str):  # a path: deprecated in httpx, rare, made each time
        return httpx.create_ssl_context(verify=verify, trust_env=trust_env)
    # SSLKEYLOGFILE is read by ssl.create_default_context itself, whatever trust_env says
    names = ("SSL_CERT_FILE", "SSL_CERT_DIR", "SSLKEYLOGFILE") if trust_env else ("SSLKEYLOGFILE",)
    return _tls_context(verify, trust_env, tuple(os.environ.get(name) for name in names))


@functools.lru_cache(maxsize=8)
def _tls_context(verify: bool, trust_env: bool, env: tuple[str | None, ...]) -> ssl.SSLContext:
    return httpx.create_ssl_context(verify=verify, trust_env=trust_env)


def split_budget(total: int | None, parts: int) -> list[int | None]:
    """``total`` split into ``parts`` shares differing by at most one (``None``: no limit)."""
    if total is None:
        return [None] * parts
    share, extra = divmod(total, parts)
    return [share + (1 if i < extra else 0) for i in range(parts)]


class ShardedTransport(httpx.AsyncBaseTransport):
    """An :class:`httpx.AsyncBaseTransport` over several :class:`httpx.AsyncHTTPTransport`
    pools that share one connection budget.

    Each request goes to the first shard with no request in flight, else to the shard with the
    most free connections (the first such): no request waits for a connection while another
    shard has one free, each shard's pool stays as small as the load allows, and a few requests
    at a time keep reusing the same kept-alive connections. (Ties once went to the next shard
    in turn, so requests one after another each opened a connection of their own: a TLS
    handshake apiece, and at a pace slower than the keep-alive expiry, for every request.)
    When every shard is full, requests queue on the shards in turn. Under asyncio the shards
    read and write through asyncio's own transports rather than anyio's streams, which cost
    a third of a request's CPU (see ``_netio``); through a proxy, and under trio, they use
    httpcore's network as it comes. Like any httpx transport it belongs to the event loop
    that first uses it; create it where the :class:`httpx.AsyncClient` is created.

    Args:
        limits: the budget of all shards together: ``max_connections`` and
            ``max_keepalive_connections`` are split among them, ``keepalive_expiry`` applies
            to each. Keep ``max_keepalive_connections`` equal to ``max_connections``: httpcore
            closes an idle connection whenever a pool holds more connections than its
            keep-alive share, so a smaller share makes busy shards reconnect all the time.
        shards: how many pools (default: one per 4 connections, at most ``max_connections``).
        verify: as for :class:`httpx.AsyncHTTPTransport`; one SSL context is made and shared
            by every shard (making one takes tens of milliseconds).
        trust_env: read ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when making that context.
        **kwargs: other :class:`httpx.AsyncHTTPTransport` arguments, given to every shard.
    """

    def __init__(
        self,
        limits: httpx.Limits = DEFAULT_LIMITS,
        *,
        shards: int | None = None,
        verify: ssl.SSLContext | str | bool = True,
        trust_env: bool = True,
        **kwargs: Any,
    ) -> None:
        budget = limits.max_connections
        if shards is None:
            shards = math.ceil(budget / CONNECTIONS_PER_SHARD) if budget else 1
        if shards < 1:
            raise ValueError("shards must be at least 1")
        if budget is not None:
            if budget < 1:
                raise ValueError("max_connections must be at least 1")
            shards = min(shards, budget)  # no shard without a connection
        context = verify if isinstance(verify, ssl.SSLContext) else tls_context(verify, trust_env)
        self._capacity = split_budget(budget, shards)
        keepalive = split_budget(limits.max_keepalive_connections, shards)
        self._shards = [
            httpx.AsyncHTTPTransport(
                verify=context,
                trust_env=trust_env,
                limits=httpx.Limits(
                    max_connections=capacity,
                    max_keepalive_connections=kept,
                    keepalive_expiry=limits.keepalive_expiry,
                ),
                **kwargs,
            )
            for capacity, kept in zip(self._capacity, keepalive, strict=True)
        ]
        for shard in self._shards:
            _netio.install(shard)  # not through a proxy: see there
        self._limit = [sys.maxsize if c is None else c for c in self._capacity]
        self._busy = [0] * shards
        self._turn = itertools.cycle(range(shards))

    def __repr__(self) -> str:
        return f"ShardedTransport(shards={len(self._shards)}, connections={self._capacity})"

    @property
    def load(self) -> tuple[int, ...]:
        """Requests each shard is serving now (from sending until the response is closed)."""
        return tuple(self._busy)

    def _pick(self) -> int:
        busy, limit = self._busy, self._limit
        best, most = 0, 0
        for index, count in enumerate(busy):
            if count == 0:
                return index  # the first idle shard: light loads keep using the same ones
            free = limit[index] - count
            if free > most:
                best, most = index, free
        return best if most else next(self._turn)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on the least busy shard; the shard counts as busy with it until
        the response is closed."""
        index = self._pick()
        self._busy[index] += 1
        release = _once(lambda: self._release(index))
        try:
            response = await self._shards[index].handle_async_request(request)
        except BaseException:
            release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_ReleasingStream(response.stream, release),
            extensions=response.extensions,
        )

    def _release(self, index: int) -> None:
        self._busy[index] -= 1

    async def aclose(self) -> None:
        """Close every shard's connections (all of them, even if closing one fails)."""
        async with contextlib.AsyncExitStack() as stack:
            for shard in reversed(self._shards):
                stack.push_async_callback(shard.aclose)

    async def __aenter__(self) -> ShardedTransport:
        for shard in self._shards:
            await shard.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        await self.aclose()


def _once(action: Callable[[], None]) -> Callable[[], None]:
    done = False

    def run() -> None:
        nonlocal done
        if not done:
            done = True
            action()

    return run


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that frees its shard's slot when closed."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._release()


def environment_proxies() -> dict[str, str | None]:
    """The proxies the environment names, read as httpx reads them for a client of its own
    (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, upper or lower case): URL
    patterns (``"https://"``, ``"all://*.example.com"``) mapped to a proxy URL, or to
    ``None`` for hosts that ``NO_PROXY`` sends straight to the server."""
    found = urllib.request.getproxies()
    patterns: dict[str, str | None] = {}
    for scheme in ("http", "https", "all"):
        if found.get(scheme):
            url = found[scheme]
            patterns[f"{scheme}://"] = url if "://" in url else f"http://{url}"
    for host in (part.strip() for part in found.get("no", "").split(",")):
        if host == "*":  # NO_PROXY=*: no proxy at all
            return {}
        if not host:
            continue
        if "://" in host:
            patterns[host] = None
        elif _netio.is_address(host):
            patterns[f"all://[{host}]" if ":" in host else f"all://{host}"] = None
        elif host.lower() == "localhost":
            patterns[f"all://{host}"] = None
        else:  # "example.com" also covers "www.example.com"
            patterns[f"all://*{host}"] = None
    return patterns


def proxy_mounts(
    limits: httpx.Limits = DEFAULT_LIMITS, **kwargs: Any
) -> dict[str, httpx.AsyncBaseTransport | None]:
    """``mounts=`` for an :class:`httpx.AsyncClient` whose ``transport`` is a
    :class:`ShardedTransport`: given a transport, httpx no longer reads the environment's
    proxies, so here they are, each proxy a :class:`ShardedTransport` of its own (``kwargs``
    as for it), ``NO_PROXY`` hosts mapped to ``None`` (the client's own transport).

    Raises:
        ValueError: a proxy httpx cannot use (an unknown scheme; SOCKS without ``socksio``),
            named without its user name or password.
    """
    mounts: dict[str, httpx.AsyncBaseTransport | None] = {}
    made: dict[str, httpx.AsyncBaseTransport] = {}  # one pool per proxy, whatever the scheme
    for pattern, url in environment_proxies().items():
        if url is None:
            mounts[pattern] = None
            continue
        if url not in made:
            try:
                made[url] = ShardedTransport(limits, proxy=url, **kwargs)
            except PROXY_ERRORS as exc:
                raise ValueError(proxy_problem(exc)) from None
        mounts[pattern] = made[url]
    return mounts


#: What httpx raises for a proxy it cannot use.
PROXY_ERRORS = (ValueError, ImportError, httpx.InvalidURL)


def proxy_problem(exc: BaseException) -> str:
    """Why a proxy the environment names cannot be used, without its user name or password
    (httpx's own message may quote the proxy's URL)."""
    reason = redact_text(str(exc))
    if "@" in reason:  # a URL in a spelling the redaction does not know: keep it all out
        reason = type(exc).__name__
    return f"a proxy named by HTTP_PROXY, HTTPS_PROXY or ALL_PROXY cannot be used: {reason}"
