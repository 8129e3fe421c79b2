"""Someone who captured a control call replays it (issue 12, finding 12).

A real sender (gunicorn) and a receiver site in this process, each on its own
PostgreSQL database, pair as two dbsync sites do: every call between them goes
through the service's own peer client, which signs. The attacker sits on the
wire between the receiver and the sender, records what passes, and sends it
again, stripped, altered, or re-aimed. PhoenixKit peers, which never sign,
still pair and talk in the plain form.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from falcon import testing
from sqlalchemy import select

from api.app import create_app
from shared.context import Site
from shared.control import connections, notices
from shared.control.peer import PeerClient
from shared.control.signing import KeyRing
from shared.db import Database
from shared.dispatch import DeferredDispatcher
from shared.security import new_token
from shared.state.models import Connection
from tests.helpers import ScratchDatabases, configure, make_settings
from tests.security.hostile_receiver import (
    API,
    Receiver,
    Sender,
    accepted,
    receiver_url,
    run_sender,
    signed_headers,
)

pytestmark = pytest.mark.e2e

RECEIVER_URL = "http://127.0.0.1:21999"


def refused(message: str) -> dict[str, object]:
    return {"success": False, "error": message}


@pytest.fixture(scope="module")
def sender(
    tmp_path_factory: pytest.TempPathFactory, module_db_factory: ScratchDatabases
) -> Iterator[Sender]:
    workdir: Path = tmp_path_factory.mktemp("replay")
    yield from run_sender(workdir, module_db_factory.create("replay_sender"), 12)


@pytest.fixture(scope="module")
def receiver(module_db_factory: ScratchDatabases) -> Iterator[Site]:
    url = module_db_factory.create("replay_receiver", migrate=True)
    settings = make_settings(url, SYNC_SITE_URL=RECEIVER_URL)
    site = Site(settings, Database(settings.database_url), DeferredDispatcher())
    configure(site, mode="auto_accept")
    yield site
    site.db.dispose()


class Wire(httpx.HTTPTransport):
    """Real HTTP, and a copy of every request for the one listening in."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.seen.append(request)
        return super().handle_request(request)


def deliver(site: Site, client: PeerClient) -> list[str]:
    """Deliver what ``site`` owes, as its worker would."""
    ids = list(site.dispatcher.notices)  # type: ignore[attr-defined]
    site.dispatcher.notices.clear()  # type: ignore[attr-defined]
    return [notices.deliver(site, client, i).state for i in ids]


def receiver_row(site: Site) -> Connection:
    with site.db.session() as session:
        return session.scalars(select(Connection)).one()


def resend(
    sender: Sender,
    request: httpx.Request,
    endpoint: str | None = None,
    content: bytes | None = None,
    drop_signature: bool = False,
) -> httpx.Response:
    """Send a captured request again, as captured unless told otherwise."""
    headers = {
        k: v
        for k, v in request.headers.items()
        if k.lower() not in ("content-length", "host")
        and not (drop_signature and k.lower().startswith("x-dbsync-"))
    }
    path = request.url.path if endpoint is None else f"{API}/{endpoint}"
    return httpx.post(
        f"{sender.url}{path}",
        content=request.content if content is None else content,
        headers=headers,
        timeout=30,
    )


def test_a_captured_control_call_cannot_be_replayed(
    sender: Sender, receiver: Site
) -> None:
    # The sender's operator creates the connection; its worker registers it.
    conn_id, token = sender.create(RECEIVER_URL)
    to_receiver = PeerClient(
        sender.site.settings,
        transport=httpx.WSGITransport(app=create_app(receiver)),
        signing_keys=KeyRing(sender.site.db.engine),
    )
    wire = Wire()
    to_sender = PeerClient(
        receiver.settings, transport=wire, signing_keys=KeyRing(receiver.db.engine)
    )
    with closing(to_receiver), closing(to_sender):
        assert deliver(sender.site, to_receiver) == ["delivered"]
        # The receiver accepted; its poll (signed) activates the sender's side.
        assert deliver(receiver, to_sender) == ["delivered"]
        assert sender.row(conn_id, "status", "peer_signs") == ("active", True)
        assert receiver_row(receiver).peer_signs is True

        # The receiver's operator suspends, then reactivates; the sender follows.
        with receiver.db.session() as session:
            conn = session.scalars(select(Connection)).one()
            connections.suspend(session, receiver, conn, "maintenance")
        assert deliver(receiver, to_sender) == ["delivered"]
        assert sender.row(conn_id, "status")[0] == "suspended"
        with receiver.db.session() as session:
            conn = session.scalars(select(Connection)).one()
            connections.reactivate(session, receiver, conn)
        assert deliver(receiver, to_sender) == ["delivered"]
        assert sender.row(conn_id, "status")[0] == "active"

    captured = [r for r in wire.seen if r.url.path.endswith("/update-status")]
    assert [json.loads(r.content)["status"] for r in captured] == [
        "suspended",
        "active",
    ]
    suspend = captured[0]
    assert suspend.headers["x-dbsync-signature"].startswith("v1=")

    # Replayed as it was: refused, nothing changes.
    r = resend(sender, suspend)
    assert (r.status_code, r.json()) == (401, refused("Replayed request"))
    # Its signature stripped: the peer is known to sign, so refused.
    r = resend(sender, suspend, drop_signature=True)
    assert (r.status_code, r.json()) == (401, refused("Signature required"))
    # Its body changed, or sent to another endpoint: the signature does not fit.
    revoke = suspend.content.replace(b'"suspended"', b'"revoked"')
    r = resend(sender, suspend, content=revoke)
    assert (r.status_code, r.json()) == (401, refused("Invalid signature"))
    r = resend(sender, suspend, endpoint="delete-connection")
    assert (r.status_code, r.json()) == (401, refused("Invalid signature"))
    assert sender.row(conn_id, "status")[0] == "active"

    # Even with the key, a signature is good only within its window.
    body = json.loads(suspend.content)
    late = Receiver(sender, RECEIVER_URL, token)
    with closing(late):
        content = json.dumps(body).encode()
        # 10 s past the window either way: int() may drop most of a second
        # and the call takes time (a +301 s stamp was once accepted).
        for skew in (-310, 310):
            headers = signed_headers(
                token, "update-status", content, timestamp=int(time.time() + skew)
            )
            r = httpx.post(
                f"{sender.url}{API}/update-status",
                content=content,
                headers={"content-type": "application/json", **headers},
            )
            assert (r.status_code, r.json()) == (401, refused("Stale signature"))
    assert sender.row(conn_id, "status")[0] == "active"

    # The same holds the other way: the receiver refuses an unsigned call
    # claiming to come from the sender.
    http = testing.TestClient(create_app(receiver))
    r = http.simulate_post(
        f"{API}/update-status",
        json={
            "sender_url": sender.url,
            "auth_token_hash": receiver_row(receiver).auth_token_hash,
            "status": "revoked",
        },
    )
    assert (r.status_code, r.json) == (401, refused("Signature required"))
    assert receiver_row(receiver).status == "active"


def test_peers_that_never_signed_keep_the_plain_form(
    sender: Sender, receiver: Site
) -> None:
    # A PhoenixKit receiver: registered, polls and updates unsigned.
    url = receiver_url()
    conn_id, token = sender.create(url)
    assert sender.deliver_registration(accepted) == "delivered"
    phoenix = Receiver(sender, url, token)
    with closing(phoenix):
        r = phoenix.call(
            "get-connection-status",
            {"receiver_url": url, "auth_token_hash": phoenix.token_hash},
            signed=False,
        )
        assert (r.status_code, r.json()["status"]) == (200, "active")
        for status in ("suspended", "active"):
            r = phoenix.update_status(status, signed=False)
            assert (r.status_code, r.json()) == (
                200,
                {"success": True, "message": f"Status updated to {status}"},
            )
        assert phoenix.list_tables().status_code == 200
    assert sender.row(conn_id, "status", "peer_signs") == ("active", False)

    # A PhoenixKit sender registers with this receiver, and updates unsigned.
    phoenix_sender = "http://127.0.0.1:21998"
    token = new_token()
    http = testing.TestClient(create_app(receiver))
    body = {
        "sender_url": phoenix_sender,
        "connection_name": "from phoenix",
        "auth_token": token,
    }
    r = http.simulate_post(f"{API}/register-connection", json=body)
    assert (r.status_code, r.json["connection_status"]) == (200, "active")
    with receiver.db.session() as session:
        row = session.scalars(
            select(Connection).where(Connection.site_url == phoenix_sender)
        ).one()
        assert (row.status, row.peer_signs) == ("active", False)
    r = http.simulate_post(
        f"{API}/update-status",
        json={
            "sender_url": phoenix_sender,
            "auth_token_hash": row.auth_token_hash,
            "status": "suspended",
        },
    )
    assert (r.status_code, r.json) == (
        200,
        {"success": True, "message": "Status updated to suspended"},
    )


def test_a_signed_registration_with_a_wrong_signature_is_refused(
    receiver: Site,
) -> None:
    http = testing.TestClient(create_app(receiver))
    token = new_token()
    body = {
        "sender_url": "http://127.0.0.1:21997",
        "connection_name": "forged",
        "auth_token": token,
    }
    content = json.dumps(body).encode()
    headers = signed_headers(new_token(), "register-connection", content)
    r = http.simulate_post(
        f"{API}/register-connection",
        body=content,
        headers={"content-type": "application/json", **headers},
    )
    assert (r.status_code, r.json) == (401, refused("Invalid signature"))
    with receiver.db.session() as session:
        assert (
            session.scalars(select(Connection).where(Connection.name == "forged")).all()
            == []
        )
