"""The SSRF policy itself: which addresses pass, judged without any connection."""

from __future__ import annotations

import ipaddress

import pytest

from photoroom_bg._netguard import (
    CLOUD_METADATA_NETWORKS,
    NetworkPolicy,
    embedded_ipv4,
)
from photoroom_bg.errors import ConfigurationError, UnsafeURLError


@pytest.mark.parametrize(
    ("address", "form", "inner"),
    [
        ("::ffff:10.0.0.1", "IPv4-mapped", "10.0.0.1"),
        ("::ffff:0:10.0.0.1", "IPv4-translated (SIIT)", "10.0.0.1"),
        ("::10.0.0.1", "IPv4-compatible", "10.0.0.1"),
        ("64:ff9b::10.0.0.1", "NAT64", "10.0.0.1"),
        ("64:ff9b:1::10.0.0.1", "local-use NAT64", "10.0.0.1"),  # /96 format
        ("64:ff9b:1:a00:0:100::", "local-use NAT64", "10.0.0.1"),  # /48 format
        ("64:ff9b:1:0:a:0:100:0", "local-use NAT64", "10.0.0.1"),  # /64 format
        ("64:ff9b:1:a:0:1::", "local-use NAT64", "10.0.0.1"),  # /56 format
        ("2002:a00:1::1", "6to4", "10.0.0.1"),
    ],
)
def test_every_ipv4_in_ipv6_form_is_unwrapped(address: str, form: str, inner: str) -> None:
    found = embedded_ipv4(ipaddress.ip_address(address))
    assert found is not None
    assert found[0] == form
    assert ipaddress.IPv4Address(inner) in found[1]


@pytest.mark.parametrize("address", ["::", "::1", "2606:4700::1111", "10.0.0.1"])
def test_plain_addresses_carry_nothing(address: str) -> None:
    assert embedded_ipv4(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::c0a8:101",
        "2002:7f00:1::",
        "::7f00:1",
        "::ffff:0:7f00:1",
        "::ffff:7f00:1",
        "2001::1",  # Teredo
        "2001:db8::1",
        "fd00:ec2::254",
        "fe80::1",
        "100::1",
        "3fff::1",
        "198.18.0.1",
        "192.0.2.1",
        "240.0.0.1",
        "255.255.255.255",
    ],
)
def test_non_public_addresses_in_any_form_are_refused_by_default(address: str) -> None:
    with pytest.raises(UnsafeURLError, match="refused"):
        NetworkPolicy().check(address, host="h")


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::1111", "64:ff9b::5db8:d822"])
def test_public_addresses_pass(address: str) -> None:
    assert str(NetworkPolicy().check(address, host="h")) == address


@pytest.mark.parametrize("network", [str(net) for net, _ in CLOUD_METADATA_NETWORKS])
def test_metadata_addresses_need_naming_in_allow_networks(network: str) -> None:
    address = str(ipaddress.ip_network(network).network_address)
    with pytest.raises(UnsafeURLError, match="even with allow_private_networks"):
        NetworkPolicy(allow_private_networks=True).check(address, host="h")
    named = NetworkPolicy(allow_private_networks=True, allow_networks=(network,))
    assert str(named.check(address, host="h")) == address


def test_teredo_and_non_unicast_stay_refused_with_private_networks_allowed() -> None:
    policy = NetworkPolicy(allow_private_networks=True)
    assert str(policy.check("10.0.0.1", host="h")) == "10.0.0.1"
    assert str(policy.check("64:ff9b::a00:1", host="h")) == "64:ff9b::a00:1"
    for address in ["2001:0:4136:e378:8000:63bf:3fff:fdd2", "0.0.0.0", "::", "ff02::1"]:
        with pytest.raises(UnsafeURLError, match="refused"):
            policy.check(address, host="h")


def test_allow_networks_judge_the_embedded_address() -> None:
    policy = NetworkPolicy(allow_networks=("10.1.2.0/24",))
    assert str(policy.check("::ffff:10.1.2.3", host="h")) == "::ffff:a01:203"
    assert str(policy.check("64:ff9b::10.1.2.3", host="h")) == "64:ff9b::a01:203"
    with pytest.raises(UnsafeURLError, match=r"10\.1\.3\.1"):
        policy.check("64:ff9b::10.1.3.1", host="h")


@pytest.mark.parametrize(
    ("front_end", "private", "metadata"),
    [
        ("sdk", "(pass allow_private_networks=True for", "(name it in allow_networks to"),
        ("cli", "(pass --allow-private-networks for", "refused, even with --allow-private-"),
        ("service", "allow a network with PHOTOROOM_BG_ALLOW_NETWORKS)", "with PHOTOROOM_BG_"),
    ],
)
def test_a_refusal_advises_a_setting_of_the_front_end_in_use(
    front_end: str, private: str, metadata: str
) -> None:
    # the advice named the SDK's arguments everywhere: a caller of the service, or of the
    # command line, was told to pass allow_private_networks=True, which neither can
    policy = NetworkPolicy(front_end=front_end)
    for address, advice in (("10.1.2.3", private), ("169.254.169.254", metadata)):
        with pytest.raises(UnsafeURLError) as refused:
            policy.check(address, host="h")
        message = str(refused.value)
        assert advice in message
        if front_end != "sdk":
            assert "allow_private_networks" not in message
            assert "allow_networks" not in message


def test_a_front_end_of_no_known_words_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="front_end must be one of 'sdk'"):
        NetworkPolicy(front_end="web")
