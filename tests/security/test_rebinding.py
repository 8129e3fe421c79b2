"""Finding 1: DNS rebinding must not carry a peer call past the URL guard.

The attacker's name answers a public address first and 127.0.0.1 second. The
guard used to resolve and check, then httpx resolved again and connected to
what it got: 127.0.0.1, where a service of this site's own network (here
``internal``) got the call. Private URLs are refused in every test here.
Now the name is resolved once per connection, at connect time, and only the
checked address is dialled; the test's network routes that public address
to the peer's real server on loopback, which sees the Host header and TLS
SNI of the name.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Callable

import pytest
from falcon import testing

from api.app import create_app
from shared.context import Site
from shared.control import healing, notices
from shared.control.peer import PeerClient, PeerRefused, PeerUnavailable
from shared.state.models import Connection
from tests.helpers import configure, make_settings
from tests.security.kit import (
    PUBLIC,
    HostilePeer,
    Network,
    Receiver,
    Resolver,
    json_answer,
    sender,
)

NAME = "peer.rebind.test"
GUARDED = {"SYNC_ALLOW_PRIVATE_URLS": "false", "SYNC_ALLOW_PLAIN_HTTP": "true"}
CLOSE = {"connection": "close"}  # every call opens a connection, and so resolves


@pytest.fixture
def rebinding(
    peers: Callable[..., HostilePeer], resolver: Resolver, network: Network
) -> tuple[HostilePeer, HostilePeer]:
    """(internal, public): a service on 127.0.0.1 the attacker aims at, and
    the peer's server that the public address reaches.

    The URL names the internal service's port; the network routes the public
    address on that port to the public server.
    """
    internal = peers(lambda seen: json_answer({"success": True, "internal": True}))
    public = peers(lambda seen: json_answer({"success": True}, headers=CLOSE))
    network.route((PUBLIC, internal.port), ("127.0.0.1", public.port))
    resolver.script(NAME, PUBLIC, "127.0.0.1")
    return internal, public


def test_a_call_goes_to_the_checked_address_and_a_rebound_one_is_refused(
    rebinding: tuple[HostilePeer, HostilePeer], resolver: Resolver, network: Network
) -> None:
    internal, public = rebinding
    client = PeerClient(make_settings("sqlite://", **GUARDED))
    url = f"http://{NAME}:{internal.port}"
    try:
        first = client.post(url, "verify-connection", {"auth_token_hash": "h"})
        with pytest.raises(PeerRefused, match="resolves to an address that is not"):
            client.post(url, "verify-connection", {"auth_token_hash": "h"})
    finally:
        client.close()
    assert (first.status, first.body) == (200, {"success": True})
    assert internal.connections == 0 and internal.requests == []
    assert [seen.headers["host"] for seen in public.requests] == [
        f"{NAME}:{internal.port}"
    ]
    assert network.attempts == [(PUBLIC, internal.port)]
    assert resolver.lookups == [(NAME, PUBLIC), (NAME, "127.0.0.1")]


@pytest.fixture
def auto_accepting(sites: Callable[..., Site]) -> Site:
    """A receiver site that accepts every registration, private URLs refused."""
    site = sites(SYNC_SITE_URL="https://receiver.example", **GUARDED)
    configure(site, mode="auto_accept")
    return site


def test_register_connection_then_the_worker_calls_only_the_checked_address(
    auto_accepting: Site,
    rebinding: tuple[HostilePeer, HostilePeer],
    resolver: Resolver,
    clients: Callable[[Site], PeerClient],
) -> None:
    """A stranger registers a URL on an auto_accept site; the worker polls it at
    once (a notice) and at every verify. Neither call reaches 127.0.0.1."""
    site = auto_accepting
    internal, public = rebinding
    url = f"http://{NAME}:{internal.port}"
    answer = testing.TestClient(create_app(site)).simulate_post(
        "/sync/api/register-connection",
        json={"sender_url": url, "connection_name": "x", "auth_token": "t" * 43},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json["connection_status"] == "active"

    resolver.script(NAME, PUBLIC, "127.0.0.1")  # afresh for the worker's calls
    client = clients(site)
    (notice_id,) = site.dispatcher.notices
    assert notices.deliver(site, client, notice_id).state == "delivered"
    conn_id = str(answer.json["connection_uuid"])
    assert healing.verify(site, client, conn_id) == "unreachable"

    assert internal.connections == 0 and internal.requests == []
    assert public.endpoints() == ["get-connection-status"]
    assert public.requests[0].headers["host"] == f"{NAME}:{internal.port}"
    with site.db.session() as session:
        conn = session.get_one(Connection, uuid.UUID(conn_id))
        assert conn.last_verify_error == (
            "peer URL refused: host resolves to an address that is not public"
        )


def test_a_pull_dials_only_the_checked_address(
    receivers: Callable[..., Receiver],
    peers: Callable[..., HostilePeer],
    resolver: Resolver,
    network: Network,
    clients: Callable[[Site], PeerClient],
) -> None:
    """The public sender is down; its name rebinds to the internal service.
    The pull fails with the reason, and the internal service is never called."""
    internal = peers(sender(lambda seen: json_answer({"success": True, "data": []})))
    resolver.script(NAME, PUBLIC, "127.0.0.1")
    receiver = receivers(
        f"http://{NAME}:{internal.port}", SYNC_PULL_MAX_ATTEMPTS="1", **GUARDED
    )
    keep = receiver.checksum("keep")
    state, transfer = receiver.pull(clients(receiver.site))
    assert (state, transfer.status) == ("failed", "failed")
    assert transfer.error_message == "Sender unreachable: list-tables: ConnectError"
    assert internal.connections == 0 and internal.requests == []
    assert network.attempts == [(PUBLIC, internal.port)]
    assert receiver.count("t") == 0 and receiver.checksum("keep") == keep


def _tls(pem: str, names: list[str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)

    def record(sock: object, name: str | None, ctx: object) -> None:
        names.append(str(name))

    context.sni_callback = record
    return context


def test_https_dials_the_checked_address_with_the_name_for_sni_and_certificate(
    peers: Callable[..., HostilePeer],
    resolver: Resolver,
    network: Network,
    certificate: Callable[[str], object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pem = str(certificate(NAME))
    monkeypatch.setenv("SSL_CERT_FILE", pem)  # trust the test's certificate
    names: list[str] = []
    internal = peers(lambda seen: json_answer({"success": True, "internal": True}))
    public = peers(lambda seen: json_answer({"success": True}), tls=_tls(pem, names))
    network.route((PUBLIC, internal.port), ("127.0.0.1", public.port))
    resolver.script(NAME, PUBLIC, "127.0.0.1")
    client = PeerClient(make_settings("sqlite://", SYNC_ALLOW_PRIVATE_URLS="false"))
    try:
        answer = client.post(
            f"https://{NAME}:{internal.port}", "verify-connection", {"x": 1}
        )
    finally:
        client.close()
    assert (answer.status, answer.body) == (200, {"success": True})
    assert names == [NAME]
    assert public.requests[0].headers["host"] == f"{NAME}:{internal.port}"
    assert internal.connections == 0
    assert network.attempts == [(PUBLIC, internal.port)]


def test_a_certificate_for_another_name_is_refused_though_the_address_was_checked(
    peers: Callable[..., HostilePeer],
    resolver: Resolver,
    network: Network,
    certificate: Callable[[str], object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pem = str(certificate("other.rebind.test"))
    monkeypatch.setenv("SSL_CERT_FILE", pem)
    names: list[str] = []
    internal = peers()
    public = peers(tls=_tls(pem, names))
    network.route((PUBLIC, internal.port), ("127.0.0.1", public.port))
    resolver.script(NAME, PUBLIC, "127.0.0.1")
    client = PeerClient(make_settings("sqlite://", SYNC_ALLOW_PRIVATE_URLS="false"))
    try:
        with pytest.raises(PeerUnavailable, match="verify-connection: ConnectError"):
            client.post(f"https://{NAME}:{internal.port}", "verify-connection", {})
    finally:
        client.close()
    assert names == [NAME]
    assert public.requests == [] and internal.connections == 0
