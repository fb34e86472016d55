"""The SSRF guard: which addresses a URL fetch may connect to.

By default only public (globally routable, unicast) addresses are allowed: loopback,
private ranges, link-local (including the cloud metadata address 169.254.169.254), CGNAT,
reserved, unspecified and multicast addresses are refused, and IPv4-mapped IPv6 addresses are
judged by the IPv4 address inside them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable

import attrs

from .errors import UnsafeURLError

__all__ = ["NetworkPolicy", "Resolver", "default_resolver"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def default_resolver(host: str, port: int) -> list[str]:
    """Resolve ``host`` with the event loop's ``getaddrinfo``; every address is returned."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _networks(values: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


@attrs.frozen
class NetworkPolicy:
    """Which resolved addresses a fetch may connect to.

    Attributes:
        allow_private_networks: allow loopback, private and link-local addresses (trusted
            setups only); multicast and unspecified addresses stay refused.
        allow_networks: networks allowed even though they are not public, e.g.
            ``["127.0.0.1/32"]`` for a test server; everything else stays refused.
    """

    allow_private_networks: bool = False
    allow_networks: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_networks)

    def check(self, address: str, *, host: str) -> IPAddress:
        """Return the parsed address if allowed, else raise :class:`UnsafeURLError`."""
        try:
            ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            raise UnsafeURLError(f"{host} resolved to an invalid address {address!r}") from None
        judged = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
        if any(judged in net for net in self.allow_networks if net.version == judged.version):
            return ip
        if judged.is_multicast or judged.is_unspecified:
            raise UnsafeURLError(f"{host} resolves to {judged}, a non-unicast address: refused")
        if self.allow_private_networks or judged.is_global:
            return ip
        raise UnsafeURLError(
            f"{host} resolves to {judged}, a {_describe(judged)} address: refused to prevent "
            "server-side request forgery (pass allow_private_networks=True for trusted "
            "internal hosts)"
        )


def _describe(ip: IPAddress) -> str:
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local (cloud metadata)" if str(ip) == "169.254.169.254" else "link-local"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    return "non-public"
