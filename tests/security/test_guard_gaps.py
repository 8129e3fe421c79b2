"""Finding 13: IPv6 forms that embed a private IPv4, and a port policy.

6to4 (2002::/16) and ISATAP interface ids carry an IPv4 address that the
guard never looked at: 2002:7f00:1:: (127.0.0.1) and 2002:a9fe:a9fe::
(169.254.169.254, the cloud metadata service) passed. Now every IPv4 address
an IPv6 address embeds must be public (IPv4-mapped, NAT64 64:ff9b::/96,
6to4, ISATAP), and forms no public peer uses are refused outright
(IPv4-compatible, SIIT, Teredo, NAT64 local use 64:ff9b:1::/48).

Port policy: 80, 443, and 1024-65535 except the ports browsers refuse to
fetch from (the Fetch standard's bad ports: 1719, 1720, 1723, 2049, 3659,
4045, 4190, 5060, 5061, 6000, 6566, 6665-6669, 6679, 6697, 10080). Other
ports below 1024 (SSH, SMTP, ...) are refused. The same checks run when a
URL is stored and when a connection is opened (the addresses a name
resolves to then), private URLs allowed or not for the port.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from falcon import testing

from api.app import create_app
from shared.context import Site
from shared.control.peer import PeerClient, PeerRefused
from shared.security import UnsafeURL, check_url
from tests.helpers import configure, make_settings
from tests.security.kit import PUBLIC, Network, Resolver

EMBEDDED_PRIVATE = [
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:a00:1::",  # 6to4 of 10.0.0.1
    "2002:c0a8:101:1::1",  # 6to4 of 192.168.1.1
    "2600::5efe:a00:1",  # ISATAP id with 10.0.0.1
    "2600::200:5efe:c0a8:101",  # ISATAP id (universal bit) with 192.168.1.1
]
OTHER_FORMS = [
    "::ffff:127.0.0.1",  # IPv4-mapped
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::808:808",  # NAT64, local-use prefix
    "::7f00:1",  # IPv4-compatible
    "::ffff:0:7f00:1",  # SIIT
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
]


@pytest.mark.parametrize("address", EMBEDDED_PRIVATE)
def test_an_ipv6_address_embedding_a_private_ipv4_is_refused(address: str) -> None:
    with pytest.raises(UnsafeURL, match=r"^address .* is not public$"):
        check_url(f"https://[{address}]/", allow_private=False)


@pytest.mark.parametrize("address", OTHER_FORMS)
def test_other_embedding_forms_are_refused(address: str) -> None:
    with pytest.raises(UnsafeURL, match=r"^address .* is not public$"):
        check_url(f"https://[{address}]/", allow_private=False)


@pytest.mark.parametrize(
    "address",
    ["2002:808:808::1", "64:ff9b::808:808", "::ffff:8.8.8.8", "2001:4860:4860::8888"],
)
def test_forms_embedding_a_public_ipv4_pass(address: str) -> None:
    assert check_url(f"https://[{address}]/", allow_private=False) == (
        f"https://[{address}]"
    )


def test_a_name_resolving_to_6to4_of_loopback_is_never_dialled(
    resolver: Resolver, network: Network
) -> None:
    resolver.script("peer.sixtofour.test", "2002:7f00:1::")
    client = PeerClient(make_settings("sqlite://", SYNC_ALLOW_PRIVATE_URLS="false"))
    try:
        with pytest.raises(
            PeerRefused,
            match=r"^peer URL refused: host resolves to an address that is not public$",
        ):
            client.post("https://peer.sixtofour.test:8443", "verify-connection", {})
    finally:
        client.close()
    assert network.attempts == []


@pytest.mark.parametrize("port", [0, 1, 22, 25, 111, 1023, 1720, 6000, 6667, 10080])
def test_ports_outside_the_policy_are_refused(port: int) -> None:
    with pytest.raises(UnsafeURL, match=rf"^port {port} is not allowed"):
        check_url(f"https://{PUBLIC}:{port}/", allow_private=False)
    with pytest.raises(UnsafeURL, match=rf"^port {port} is not allowed"):
        check_url(f"http://127.0.0.1:{port}/", allow_private=True)


@pytest.mark.parametrize("port", [80, 443, 1024, 8000, 8443, 65535])
def test_ports_inside_the_policy_pass(port: int) -> None:
    assert check_url(f"https://{PUBLIC}:{port}/", allow_private=False) == (
        f"https://{PUBLIC}:{port}"
    )


def test_a_call_to_a_refused_port_is_never_dialled(
    resolver: Resolver, network: Network
) -> None:
    resolver.script("peer.ports.test", PUBLIC)
    client = PeerClient(make_settings("sqlite://", SYNC_ALLOW_PRIVATE_URLS="false"))
    try:
        with pytest.raises(PeerRefused, match=r"^peer URL refused: port 25 is not"):
            client.post("https://peer.ports.test:25", "verify-connection", {})
    finally:
        client.close()
    assert network.attempts == []


def test_register_connection_refuses_embedded_private_addresses_and_bad_ports(
    sites: Callable[..., Site], resolver: Resolver
) -> None:
    site = sites(
        SYNC_SITE_URL="https://receiver.example", SYNC_ALLOW_PRIVATE_URLS="false"
    )
    configure(site, mode="auto_accept")
    client = testing.TestClient(create_app(site))
    resolver.script("sender.sixtofour.test", "2002:a9fe:a9fe::1")
    for url in (
        "https://[2002:7f00:1::]",
        "https://sender.sixtofour.test",
        f"https://{PUBLIC}:22",
    ):
        answer = client.simulate_post(
            "/sync/api/register-connection",
            json={"sender_url": url, "connection_name": "x", "auth_token": "t" * 43},
        )
        assert (answer.status_code, answer.json) == (
            400,
            {"success": False, "error": "Invalid sender_url"},
        ), url
