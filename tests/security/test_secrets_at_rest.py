"""Secrets at rest (issue 11, finding 12): a pending registration's secrets.

A sender owes its receiver a registration carrying the raw token and the
receiver's password until it is delivered, up to a day if the receiver is
down. Someone who reads the state database meanwhile (a dump, a backup, a
read-only role, a log of rows) used to find both in plain text in the
notice's payload. They are now sealed with the site's key; the receiver (a
peer on loopback) still gets them as they were.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import text

from shared.context import Site
from shared.control import connections, notices
from shared.control.peer import PeerClient
from shared.state.models import Base
from tests.security.kit import HostilePeer, Seen, json_answer

PASSWORD = "the receiver's password, 2026"
KEY = "k" * 40
OTHER_KEY = "o" * 40


def registered(seen: Seen) -> object:
    return json_answer(
        {
            "success": True,
            "message": "Connection registered and activated",
            "connection_status": "active",
            "connection_uuid": str(uuid.uuid4()),
        }
    )


def create(site: Site, peer: HostilePeer) -> tuple[uuid.UUID, str, int]:
    """A sender connection to ``peer``: its id, raw token and register notice."""
    with site.db.session() as session:
        conn, token = connections.create_sender(
            session, site, name="to receiver", url=peer.url, password=PASSWORD
        )
        conn_id = conn.id
    (notice_id,) = site.dispatcher.notices  # type: ignore[attr-defined]
    return conn_id, token, notice_id


def whole_database(site: Site) -> str:
    """Every row of every table of the state database, as text."""
    with site.db.engine.connect() as conn:
        return "\n".join(
            str(row)
            for table in Base.metadata.sorted_tables
            for row in conn.execute(
                text(f'SELECT row_to_json(t)::text FROM "{table.name}" t')
            )
        )


def test_a_pending_registration_shows_no_token_or_password(
    sites: Callable[..., Site],
    peers: Callable[..., HostilePeer],
    clients: Callable[[Site], PeerClient],
) -> None:
    site = sites()
    peer = peers(registered)
    conn_id, token, notice_id = create(site, peer)

    stored = whole_database(site)
    assert token not in stored and PASSWORD not in stored
    with site.db.engine.connect() as conn:
        (payload,) = conn.execute(
            text("SELECT payload FROM dbsync_peer_notices WHERE id = :id"),
            {"id": notice_id},
        ).one()
    assert sorted(payload) == ["connection_name", "sealed"]
    assert payload["sealed"].startswith("gAAAAA")  # a Fernet token

    outcome = notices.deliver(site, clients(site), notice_id)
    assert outcome.state == "delivered"
    (seen,) = peer.requests
    assert seen.endpoint == "register-connection"
    assert seen.json == {
        "sender_url": site.settings.site_url,
        "connection_name": "to receiver",
        "auth_token": token,
        "password": PASSWORD,
    }
    with site.db.engine.connect() as conn:
        assert (
            conn.execute(
                text("SELECT payload FROM dbsync_peer_notices WHERE id = :id"),
                {"id": notice_id},
            ).scalar_one()
            == {}
        )


def test_a_configured_key_is_not_stored_and_only_it_opens(
    sites: Callable[..., Site],
    peers: Callable[..., HostilePeer],
    clients: Callable[[Site], PeerClient],
) -> None:
    """With SYNC_SECRET_KEY, nothing of the key is in the database; a process
    with another key cannot open the secrets, and says so."""
    keyed = sites(SYNC_SECRET_KEY=KEY)
    other = sites(SYNC_SECRET_KEY=OTHER_KEY)
    peer = peers(registered)
    conn_id, token, notice_id = create(keyed, peer)
    with keyed.db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM dbsync_site_keys")).scalar() == 0
    assert KEY not in whole_database(keyed)

    assert notices.deliver(other, clients(other), notice_id).state == "failed"
    assert peer.requests == []
    with keyed.db.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT registration_status, registration_error"
                " FROM dbsync_connections WHERE id = :id"
            ),
            {"id": conn_id},
        ).one()
    assert tuple(row) == (
        "failed",
        "cannot open the sealed token: no key of this site opens them:"
        " SYNC_SECRET_KEY differs from the one they were sealed with",
    )


def test_a_key_set_later_still_opens_what_the_generated_key_sealed(
    sites: Callable[..., Site],
    peers: Callable[..., HostilePeer],
    clients: Callable[[Site], PeerClient],
) -> None:
    unkeyed = sites()
    keyed = sites(SYNC_SECRET_KEY=KEY)
    peer = peers(registered)
    _, token, notice_id = create(unkeyed, peer)
    with unkeyed.db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM dbsync_site_keys")).scalar() == 1
    assert notices.deliver(keyed, clients(keyed), notice_id).state == "delivered"
    (seen,) = peer.requests
    assert (seen.json["auth_token"], seen.json["password"]) == (token, PASSWORD)


@pytest.mark.parametrize("value", ["short", " " * 40])
def test_a_short_key_is_refused_at_start(value: str) -> None:
    from shared.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="SYNC_SECRET_KEY must be at least 32"):
        Settings.from_env({"SYNC_SECRET_KEY": value, "SYNC_HOME": "/tmp/x"})
