"""The SSRF guard: which addresses a URL fetch may connect to.

By default only public unicast addresses are allowed. The ranges refused are spelled out below
(:data:`NON_PUBLIC_NETWORKS`) rather than taken from :mod:`ipaddress`, whose idea of "global"
changes between Python releases. IPv6 addresses that carry an IPv4 address (IPv4-mapped,
IPv4-compatible, SIIT, NAT64, 6to4) are judged by the IPv4 address inside; Teredo addresses,
whose real destination cannot be told, are refused. Cloud metadata addresses
(:data:`CLOUD_METADATA_NETWORKS`) stay refused even when private networks are allowed, unless an
``allow_networks`` entry names them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable

import attrs

from ._numbers import flag_validator
from .errors import ConfigurationError, UnsafeURLError

__all__ = [
    "CLOUD_METADATA_NETWORKS",
    "NON_PUBLIC_NETWORKS",
    "NetworkPolicy",
    "Resolver",
    "default_resolver",
    "embedded_ipv4",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]


def _table(rows: Iterable[tuple[str, str]]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), label) for net, label in rows)


#: Never connected to, whatever the policy: nothing unicast lives there.
NEVER_NETWORKS = _table(
    [
        ("0.0.0.0/32", "unspecified"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("::/128", "unspecified"),
        ("ff00::/8", "multicast"),
    ]
)

#: Cloud instance metadata and credential endpoints: refused even with
#: ``allow_private_networks=True``, unless an ``allow_networks`` entry contains them.
CLOUD_METADATA_NETWORKS = _table(
    [
        ("169.254.169.254/32", "cloud metadata (AWS, GCP, Azure, OpenStack, DigitalOcean...)"),
        ("169.254.170.2/32", "cloud metadata (AWS ECS task credentials)"),
        ("169.254.170.23/32", "cloud metadata (AWS EKS Pod Identity)"),
        ("169.254.0.23/32", "cloud metadata (Tencent Cloud)"),
        ("100.100.100.200/32", "cloud metadata (Alibaba Cloud)"),
        ("192.0.0.192/32", "cloud metadata (Oracle Cloud)"),
        ("168.63.129.16/32", "cloud platform endpoint (Azure WireServer)"),
        ("fd00:ec2::254/128", "cloud metadata (AWS, IPv6)"),
        ("fd00:ec2::23/128", "cloud metadata (AWS EKS Pod Identity, IPv6)"),
    ]
)

#: Not public: refused unless ``allow_private_networks=True`` or listed in ``allow_networks``.
#: IPv6 outside ``2000::/3`` is not global unicast and is refused as "reserved".
NON_PUBLIC_NETWORKS = _table(
    [
        ("0.0.0.0/8", "'this network'"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("240.0.0.0/4", "reserved"),
        ("::1/128", "loopback"),
        ("2001::/23", "IETF protocol"),
        ("2001:db8::/32", "documentation"),
        ("3fff::/20", "documentation"),
        ("fc00::/7", "private (unique local)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
    ]
)

_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_SIIT = ipaddress.IPv6Network("::ffff:0:0:0/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_6TO4 = ipaddress.IPv6Network("2002::/16")


def _bits(value: int, start: int, end: int) -> int:
    """Bits ``start``..``end`` (exclusive) of a 128-bit value, counted from the left."""
    return (value >> (128 - end)) & ((1 << (end - start)) - 1)


def _rfc6052_candidates(value: int) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address a local-use NAT64 address could carry (RFC 6052 formats).

    The prefix length of ``64:ff9b:1::/48`` is the operator's choice, so each format whose
    reserved bits (the ``u`` octet, the suffix) are zero is a possible reading.
    """
    found = [ipaddress.IPv4Address(_bits(value, 96, 128))]  # /96: any 48..96-bit prefix
    if _bits(value, 64, 72) == 0:
        if _bits(value, 104, 128) == 0:  # /64
            found.append(ipaddress.IPv4Address(_bits(value, 72, 104)))
        if _bits(value, 96, 128) == 0:  # /56
            found.append(ipaddress.IPv4Address(_bits(value, 56, 64) << 24 | _bits(value, 72, 96)))
        if _bits(value, 88, 128) == 0:  # /48
            found.append(ipaddress.IPv4Address(_bits(value, 48, 64) << 16 | _bits(value, 72, 88)))
    return list(dict.fromkeys(found))


def embedded_ipv4(ip: IPAddress) -> tuple[str, list[ipaddress.IPv4Address]] | None:
    """The IPv4 address(es) an IPv6 address carries, with the name of the form, or ``None``.

    Forms: IPv4-mapped ``::ffff:a.b.c.d``, SIIT ``::ffff:0:a.b.c.d``, IPv4-compatible
    ``::a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d`` and ``64:ff9b:1::/48``, 6to4 ``2002:AABB:CCDD::``.
    """
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    value = int(ip)
    last32 = ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if ip in _MAPPED:
        return "IPv4-mapped", [last32]
    if ip in _SIIT:
        return "IPv4-translated (SIIT)", [last32]
    if ip in _COMPATIBLE and value > 1:  # :: and ::1 are IPv6's own
        return "IPv4-compatible", [last32]
    if ip in _NAT64:
        return "NAT64", [last32]
    if ip in _NAT64_LOCAL:
        return "local-use NAT64", _rfc6052_candidates(value)
    if ip in _6TO4:
        return "6to4", [ipaddress.IPv4Address(_bits(value, 16, 48))]
    return None


def _label(ip: IPAddress, table: tuple[tuple[IPNetwork, str], ...]) -> str | None:
    for network, label in table:
        if ip.version == network.version and ip in network:
            return label
    return None


def _non_public(ip: IPAddress) -> str | None:
    label = _label(ip, NON_PUBLIC_NETWORKS)
    if label is None and isinstance(ip, ipaddress.IPv6Address) and ip not in _GLOBAL_UNICAST_V6:
        label = "reserved"
    return label


async def default_resolver(host: str, port: int) -> list[str]:
    """Resolve ``host`` with the event loop's ``getaddrinfo``; every address is returned."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _networks(values: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    if isinstance(values, (str, bytes)):  # would be read one character at a time
        raise ConfigurationError(
            f"allow_networks must be a list of networks such as [{values!r}], not a str"
        )
    networks = []
    for value in values:
        try:
            if not isinstance(value, (str, ipaddress.IPv4Network, ipaddress.IPv6Network)):
                raise TypeError(type(value).__name__)
            networks.append(ipaddress.ip_network(value, strict=False))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"allow_networks must be networks such as '10.0.0.0/8', not {value!r} ({exc})"
            ) from None
    return tuple(networks)


@attrs.frozen
class NetworkPolicy:
    """Which resolved addresses a fetch may connect to.

    Attributes:
        allow_private_networks: also allow non-public unicast addresses: loopback, private,
            link-local, CGNAT, reserved (trusted setups only). Cloud metadata addresses,
            Teredo, multicast, broadcast and unspecified addresses stay refused.
        allow_networks: networks allowed even though they are not public, e.g.
            ``["127.0.0.1/32"]`` for a test server, or a metadata address you really mean to
            reach; everything else stays refused.
        front_end: whose words a refusal's advice is in, so that it names a setting the
            reader can change: ``"sdk"`` (these arguments, the default), ``"cli"``
            (``photoroom-bg --allow-private-networks``) or ``"service"`` (the operator's
            ``PHOTOROOM_BG_ALLOW_NETWORKS``, for the service and its Prefect workers).
    """

    allow_private_networks: bool = attrs.field(default=False, validator=flag_validator)
    allow_networks: tuple[IPNetwork, ...] = attrs.field(default=(), converter=_networks)
    front_end: str = attrs.field(default="sdk", kw_only=True)

    @front_end.validator
    def _known(self, _: object, value: object) -> None:
        if value not in _ADVICE:
            raise ConfigurationError(
                f"front_end must be one of {', '.join(map(repr, _ADVICE))}, not {value!r}"
            )

    def check(self, address: str, *, host: str) -> IPAddress:
        """Return the parsed address if allowed, else raise :class:`UnsafeURLError`."""
        try:
            ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            raise UnsafeURLError(f"{host} resolved to an invalid address {address!r}") from None
        if self._listed(ip):
            return ip
        if isinstance(ip, ipaddress.IPv6Address) and ip in _TEREDO:
            raise UnsafeURLError(
                f"{host} resolves to {ip}, a Teredo address whose real destination cannot be "
                "checked: refused to prevent server-side request forgery"
            )
        carried = embedded_ipv4(ip)
        if carried is None:
            self._judge(ip, host=host, shown=str(ip))
        else:
            form, inner = carried
            for candidate in inner:
                self._judge(candidate, host=host, shown=f"{ip} ({form} for {candidate})")
        return ip

    def _listed(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self.allow_networks if net.version == ip.version)

    def _judge(self, ip: IPAddress, *, host: str, shown: str) -> None:
        if self._listed(ip):
            return
        never = _label(ip, NEVER_NETWORKS)
        if never is not None:
            raise UnsafeURLError(f"{host} resolves to {shown}, a non-unicast address: refused")
        metadata = _label(ip, CLOUD_METADATA_NETWORKS)
        if metadata is not None:
            advice = _ADVICE[self.front_end][1]
            raise UnsafeURLError(f"{host} resolves to {shown}, a {metadata} address: {advice}")
        label = _non_public(ip)
        if label is None or self.allow_private_networks:
            return
        raise UnsafeURLError(
            f"{host} resolves to {shown}, a {label} address: refused to prevent "
            f"server-side request forgery ({_ADVICE[self.front_end][0]})"
        )


#: For each front end, how to reach a non-public address, and what a metadata address's
#: refusal says: settings its user can change, not another front end's.
_ADVICE = {
    "sdk": (
        "pass allow_private_networks=True for trusted internal hosts",
        "refused, even with allow_private_networks (name it in allow_networks to reach it)",
    ),
    "cli": (
        "pass --allow-private-networks for trusted internal hosts",
        "refused, even with --allow-private-networks",
    ),
    "service": (
        "the service's operator can allow a network with PHOTOROOM_BG_ALLOW_NETWORKS",
        "refused (the service's operator can allow it with PHOTOROOM_BG_ALLOW_NETWORKS)",
    ),
}
