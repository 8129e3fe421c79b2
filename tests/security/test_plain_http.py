"""Finding 12 (transit): no token in clear to a public address.

``http://`` peer URLs on public addresses used to be stored and called: the
token (register-connection) and its hash (every other call) crossed the
internet in clear. Now plain http to a public address is refused when a URL
is stored (create, register-connection) and when a connection is written to,
unless the operator sets SYNC_ALLOW_PLAIN_HTTP=true. Private addresses, which
only a site that allows private URLs reaches, may still use http.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from falcon import testing

from api.app import create_app
from shared.context import Site
from shared.control import connections
from shared.control.peer import PeerClient, PeerRefused
from shared.errors import SyncError
from tests.helpers import configure, make_settings
from tests.security.kit import PUBLIC, HostilePeer, Network, Resolver

REFUSED = (
    "plain http to a public address would carry the token in clear: use https"
    " (or set SYNC_ALLOW_PLAIN_HTTP=true)"
)
PRIVATE_OFF = {"SYNC_ALLOW_PRIVATE_URLS": "false"}


def _create(site: Site, url: str) -> str:
    with site.db.session() as session:
        conn, _ = connections.create_sender(session, site, name="n", url=url)
        return conn.site_url


def test_a_sender_connection_to_a_public_http_url_is_refused(
    sites: Callable[..., Site],
) -> None:
    site = sites(**PRIVATE_OFF)
    with pytest.raises(SyncError) as refused:
        _create(site, f"http://{PUBLIC}:8000")
    assert str(refused.value) == f"Invalid URL: {REFUSED}"
    assert _create(site, f"https://{PUBLIC}:8443") == f"https://{PUBLIC}:8443"


def test_the_operator_may_opt_in_to_plain_http(sites: Callable[..., Site]) -> None:
    site = sites(SYNC_ALLOW_PLAIN_HTTP="true", **PRIVATE_OFF)
    assert _create(site, f"http://{PUBLIC}:8000") == f"http://{PUBLIC}:8000"


def test_register_connection_refuses_a_public_http_sender_url(
    sites: Callable[..., Site],
) -> None:
    site = sites(SYNC_SITE_URL="https://receiver.example", **PRIVATE_OFF)
    configure(site, mode="auto_accept")
    client = testing.TestClient(create_app(site))

    def register(url: str) -> testing.Result:
        return client.simulate_post(
            "/sync/api/register-connection",
            json={"sender_url": url, "connection_name": "x", "auth_token": "t" * 43},
        )

    refused = register(f"http://{PUBLIC}:8000")
    assert (refused.status_code, refused.json) == (
        400,
        {"success": False, "error": "Invalid sender_url"},
    )
    assert register(f"https://{PUBLIC}:8443").status_code == 200


def test_no_byte_is_written_in_clear_to_a_name_that_resolves_public(
    peers: Callable[..., HostilePeer], resolver: Resolver, network: Network
) -> None:
    """A site that allows private URLs (a test or development set-up) calls
    http://name, and the name turns out public: the call is refused before
    its body (the token hash) is written."""
    listener = peers()
    network.route((PUBLIC, listener.port), ("127.0.0.1", listener.port))
    resolver.script("peer.plain.test", PUBLIC)
    client = PeerClient(make_settings("sqlite://"))  # private URLs allowed
    try:
        with pytest.raises(PeerRefused) as refused:
            client.post(
                f"http://peer.plain.test:{listener.port}",
                "verify-connection",
                {"auth_token_hash": "secret-hash"},
            )
        private = client.post(listener.url, "verify-connection", {"x": 1})
    finally:
        client.close()
    assert str(refused.value) == f"peer URL refused: {REFUSED}"
    assert network.attempts[0] == (PUBLIC, listener.port)
    assert [seen.body for seen in listener.requests] == [b'{"x":1}']
    assert private.status == 200


def test_opted_in_plain_http_reaches_a_public_address(
    peers: Callable[..., HostilePeer], resolver: Resolver, network: Network
) -> None:
    listener = peers()
    network.route((PUBLIC, listener.port), ("127.0.0.1", listener.port))
    resolver.script("peer.plain.test", PUBLIC)
    client = PeerClient(make_settings("sqlite://", SYNC_ALLOW_PLAIN_HTTP="true"))
    try:
        answer = client.post(
            f"http://peer.plain.test:{listener.port}", "verify-connection", {"x": 1}
        )
    finally:
        client.close()
    assert answer.status == 200
    assert listener.endpoints() == ["verify-connection"]
