"""Operator lifecycle services, notice delivery to a fake peer, verify and expire."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from shared import sealing
from shared.context import Site
from shared.control import connections, healing, module, notices, signing
from shared.control.connections import SenderOptions
from shared.control.peer import PeerClient
from shared.db import utcnow
from shared.errors import SyncError
from shared.state.models import AuditEvent, Connection, ModuleSettings, PeerNotice
from tests.helpers import (
    PEER,
    SITE_URL,
    add_connection,
    load_existing,
    make_sender,
    sha,
)

PASSWORD = "the operator's password"

Handler = Callable[[httpx.Request], httpx.Response]


def add_receiver(site: Site, status: str = "active", url: str = PEER) -> uuid.UUID:
    """A receiver whose token hash the test can name: sha(url + status)."""
    return add_connection(
        site, status=status, url=url, name="From peer", token_hash=sha(url + status)
    )[0]


def change(
    site: Site, conn_id: uuid.UUID, fn: Callable[..., Any], *args: Any, **kw: Any
) -> None:
    with site.db.session() as session:
        conn = session.get(Connection, conn_id)
        assert conn is not None
        fn(session, site, conn, *args, **kw)


def set_fields(site: Site, conn_id: uuid.UUID, **values: Any) -> None:
    with site.db.session() as session:
        conn = session.get(Connection, conn_id)
        assert conn is not None
        for key, value in values.items():
            setattr(conn, key, value)


def notices_of(site: Site, conn_id: uuid.UUID | None = None) -> list[PeerNotice]:
    with site.db.session() as session:
        stmt = select(PeerNotice).order_by(PeerNotice.id)
        if conn_id is not None:
            stmt = stmt.where(PeerNotice.connection_id == conn_id)
        return list(session.scalars(stmt))


def audit_of(site: Site, conn_id: uuid.UUID | None = None) -> list[AuditEvent]:
    with site.db.session() as session:
        stmt = select(AuditEvent).order_by(AuditEvent.id)
        if conn_id is not None:
            stmt = stmt.where(AuditEvent.connection_id == conn_id)
        return list(session.scalars(stmt))


def db_texts(site: Site) -> list[str]:
    """Every value of every text or JSON column of every dbsync_* table."""
    out: list[str] = []
    with site.db.engine.connect() as conn:
        cols = conn.execute(
            text(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name LIKE 'dbsync\\_%'"
                " AND data_type IN ('text', 'character varying', 'json', 'jsonb')"
            )
        ).all()
        assert cols
        for table, column in cols:
            rows = conn.execute(
                text(
                    f'SELECT "{column}"::text FROM "{table}"'
                    f' WHERE "{column}" IS NOT NULL'
                )
            ).scalars()
            out.extend(rows)
    return out


@pytest.fixture
def peer(site: Site) -> Iterator[Callable[[Handler], PeerClient]]:
    made: list[PeerClient] = []

    def build(handler: Handler) -> PeerClient:
        client = PeerClient(site.settings, transport=httpx.MockTransport(handler))
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


def answer(status: int, body: dict[str, Any], **headers: str) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)

    return handler


def refuse_connection(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


# ---------------------------------------------------------------- create / transitions


def test_create_sender_writes_row_audit_and_register_notice(site: Site) -> None:
    with site.db.session() as session:
        conn, token = connections.create_sender(
            session,
            site,
            name="  Warehouse  ",
            url="HTTP://127.0.0.1:19001/",
            password=PASSWORD,
        )
        # Nothing is handed to a worker before the transaction commits.
        assert site.dispatcher.notices == []  # type: ignore[attr-defined]
        conn_id = conn.id
    assert len(token) == 43
    row = load_existing(site, conn_id)
    assert (row.name, row.direction, row.site_url, row.status) == (
        "Warehouse",
        "sender",
        PEER,
        "pending",
    )
    assert row.auth_token_hash == sha(token)
    assert row.registration_status == "queued"
    [event] = audit_of(site, conn_id)
    assert (event.actor, event.action, event.details) == (
        "operator",
        "connection.created",
        {"direction": "sender"},
    )
    [notice] = notices_of(site, conn_id)
    assert notice.kind == "register"
    assert notice.state == "queued"
    assert notice.site_url == PEER
    assert notice.auth_token_hash == sha(token)
    # The raw token and the password are kept sealed (shared/sealing.py).
    assert sorted(notice.payload) == ["connection_name", "sealed"]
    assert notice.payload["connection_name"] == "Warehouse"
    assert sealing.open_sealed(
        site.db.engine, site.settings.secret_key, notice.payload["sealed"]
    ) == {"auth_token": token, "password": PASSWORD}
    assert site.dispatcher.notices == [notice.id]  # type: ignore[attr-defined]


SENDER_REFUSALS: list[tuple[dict[str, Any], str]] = [
    ({"name": "x", "url": PEER + "/"}, "conflict"),
    ({"name": "x", "url": SITE_URL}, "bad_request"),
    ({"name": "x", "url": "http://2130706433"}, "bad_request"),
    ({"name": "x", "url": "ftp://127.0.0.1"}, "bad_request"),
    ({"name": "   ", "url": "http://127.0.0.1:19002"}, "bad_request"),
    (
        {
            "name": "x",
            "url": "http://127.0.0.1:19003",
            "options": SenderOptions(ip_allowlist=["not-a-cidr"]),
        },
        "bad_request",
    ),
    (
        {
            "name": "x",
            "url": "http://127.0.0.1:19003",
            "options": SenderOptions(allowed_hours_start=3),
        },
        "bad_request",
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "kind"),
    SENDER_REFUSALS,
    ids=[
        "same-url",
        "own-url",
        "odd-ip-form",
        "not-http",
        "blank-name",
        "bad-cidr",
        "half-an-hours-window",
    ],
)
def test_create_sender_refusals(site: Site, kwargs: dict[str, Any], kind: str) -> None:
    make_sender(site)
    with pytest.raises(SyncError) as info, site.db.session() as session:
        connections.create_sender(session, site, **kwargs)
    assert info.value.kind == kind, kwargs
    with site.db.session() as session:
        assert len(session.scalars(select(Connection)).all()) == 1


def test_approve_a_pending_sender_and_a_pending_receiver(site: Site) -> None:
    sender_id, _ = make_sender(site)
    receiver_id = add_receiver(site, status="pending")
    change(site, sender_id, connections.approve)
    change(site, receiver_id, connections.approve)
    for conn_id in (sender_id, receiver_id):
        row = load_existing(site, conn_id)
        assert row.status == "active"
        assert row.approved_at is not None
        assert [e.action for e in audit_of(site, conn_id)][-1] == "connection.approved"
    assert [(n.kind, n.state, n.payload) for n in notices_of(site, sender_id)] == [
        ("register", "queued", notices_of(site, sender_id)[0].payload),
        ("update_status", "queued", {"status": "active"}),
    ]
    # A receiver tells its sender by asking for the status (that activates the sender).
    assert [(n.kind, n.state, n.payload) for n in notices_of(site, receiver_id)] == [
        ("poll_status", "queued", {})
    ]
    assert load_existing(site, sender_id).peer_sync_status == "queued"


def test_suspend_reactivate_revoke_write_status_reasons_audit_and_notices(
    site: Site,
) -> None:
    conn_id = add_receiver(site)
    before = utcnow()
    change(site, conn_id, connections.suspend, "maintenance window")
    row = load_existing(site, conn_id)
    assert row.status == "suspended"
    assert row.suspended_at is not None and row.suspended_at >= before
    assert row.suspended_reason == "maintenance window"

    set_fields(site, conn_id, verify_not_found_count=1)
    change(site, conn_id, connections.reactivate)
    row = load_existing(site, conn_id)
    assert (row.status, row.suspended_at, row.suspended_reason) == (
        "active",
        None,
        None,
    )
    assert row.verify_not_found_count == 0

    change(site, conn_id, connections.suspend)
    assert load_existing(site, conn_id).suspended_reason == "Suspended by operator"

    change(site, conn_id, connections.revoke, "contract ended")
    row = load_existing(site, conn_id)
    assert row.status == "revoked"
    assert row.revoked_at is not None
    assert row.revoked_reason == "contract ended"

    assert [(e.actor, e.action, e.reason) for e in audit_of(site, conn_id)] == [
        ("operator", "connection.suspended", "maintenance window"),
        ("operator", "connection.reactivated", None),
        ("operator", "connection.suspended", "Suspended by operator"),
        ("operator", "connection.revoked", "contract ended"),
    ]
    # Only the newest status change is still owed; older ones were superseded.
    assert [(n.kind, n.state, n.payload) for n in notices_of(site, conn_id)] == [
        ("update_status", "superseded", {}),
        ("update_status", "superseded", {}),
        ("update_status", "superseded", {}),
        ("update_status", "queued", {"status": "revoked", "reason": "contract ended"}),
    ]


def test_newer_update_status_supersedes_only_open_ones(site: Site, peer: Any) -> None:
    conn_id = add_receiver(site)
    change(site, conn_id, connections.suspend, "first")
    [first] = notices_of(site, conn_id)
    client = peer(answer(200, {"success": True, "message": "ok"}))
    assert notices.deliver(site, client, first.id).state == "delivered"
    change(site, conn_id, connections.reactivate)
    change(site, conn_id, connections.suspend, "second")
    assert [(n.state, n.payload) for n in notices_of(site, conn_id)] == [
        ("delivered", {}),
        ("superseded", {}),
        ("queued", {"status": "suspended", "reason": "second"}),
    ]


def test_suspend_and_revoke_without_notify_owe_nothing(site: Site) -> None:
    conn_id = add_receiver(site)
    change(site, conn_id, connections.suspend, "quiet", notify=False)
    change(site, conn_id, connections.revoke, "quiet", notify=False)
    assert notices_of(site, conn_id) == []
    assert load_existing(site, conn_id).status == "revoked"


@pytest.mark.parametrize(
    "status, action",
    [
        ("active", connections.approve),
        ("suspended", connections.approve),
        ("revoked", connections.approve),
        ("pending", connections.suspend),
        ("suspended", connections.suspend),
        ("expired", connections.suspend),
        ("revoked", connections.suspend),
        ("active", connections.reactivate),
        ("pending", connections.reactivate),
        ("revoked", connections.reactivate),
        ("expired", connections.reactivate),
        ("revoked", connections.revoke),
    ],
)
def test_invalid_transitions_are_conflicts(
    site: Site, status: str, action: Callable[..., None]
) -> None:
    conn_id = add_receiver(site, status=status)
    with pytest.raises(SyncError) as info:
        change(site, conn_id, action)
    assert info.value.kind == "conflict"
    assert load_existing(site, conn_id).status == status
    assert audit_of(site, conn_id) == []
    assert notices_of(site, conn_id) == []


def test_revoke_from_every_other_status(site: Site) -> None:
    for port, status in enumerate(["pending", "active", "suspended", "expired"]):
        conn_id = add_receiver(
            site, status=status, url=f"http://127.0.0.1:{19100 + port}"
        )
        change(site, conn_id, connections.revoke)
        row = load_existing(site, conn_id)
        assert (row.status, row.revoked_reason) == ("revoked", "Revoked by operator"), (
            status
        )


def test_delete_owes_a_delete_notice_and_cancels_the_rest(site: Site) -> None:
    conn_id, token = make_sender(site)
    change(site, conn_id, connections.delete)
    with site.db.session() as session:
        assert session.get(Connection, conn_id) is None
    assert [(n.kind, n.state, n.payload) for n in notices_of(site, conn_id)] == [
        ("register", "cancelled", {}),
        # The key that signs the notice once the row is gone (wiped on delivery).
        ("delete", "queued", {"signing_key": signing.derive_key(token)}),
    ]
    assert [e.action for e in audit_of(site, conn_id)] == [
        "connection.created",
        "connection.deleted",
    ]
    assert not any(token in value for value in db_texts(site))


def test_bulk_suspend_and_revoke_one_notice_per_peer(site: Site) -> None:
    ids = [add_receiver(site, url=f"http://127.0.0.1:{19100 + i}") for i in range(3)]
    pending = add_receiver(site, status="pending", url="http://127.0.0.1:19200")
    with site.db.session() as session:
        changed = connections.bulk(session, site, "suspend", "incident 42")
        assert sorted(c.id for c in changed) == sorted(ids)
    for conn_id in ids:
        row = load_existing(site, conn_id)
        assert (row.status, row.suspended_reason) == ("suspended", "incident 42")
        assert [(n.kind, n.state) for n in notices_of(site, conn_id)] == [
            ("update_status", "queued")
        ]
    assert load_existing(site, pending).status == "pending"
    with site.db.session() as session:
        changed = connections.bulk(session, site, "revoke", "compromised")
        assert len(changed) == 4
    for conn_id in [*ids, pending]:
        assert load_existing(site, conn_id).status == "revoked"
        open_notices = [n for n in notices_of(site, conn_id) if n.state == "queued"]
        assert [n.payload for n in open_notices] == [
            {"status": "revoked", "reason": "compromised"}
        ]
    with pytest.raises(SyncError) as info, site.db.session() as session:
        connections.bulk(session, site, "explode")
    assert info.value.kind == "bad_request"


def test_set_enabled_suspends_and_revives_exactly_its_own(site: Site) -> None:
    with site.db.session() as session:
        module.get(session).enabled = True
    mine = add_receiver(site, url="http://127.0.0.1:19100")
    operators = add_receiver(site, url="http://127.0.0.1:19101")
    change(site, operators, connections.suspend, "by hand")
    with site.db.session() as session:
        changed = connections.set_enabled(session, site, False)
        assert [c.id for c in changed] == [mine]
    row = load_existing(site, mine)
    assert (row.status, row.suspended_reason) == (
        "suspended",
        "DB Sync module disabled",
    )
    with site.db.session() as session:
        settings_row = session.get(ModuleSettings, 1)
        assert settings_row is not None and settings_row.enabled is False
        assert connections.set_enabled(session, site, False) == []
    with site.db.session() as session:
        revived = connections.set_enabled(session, site, True)
        assert [c.id for c in revived] == [mine]
    assert load_existing(site, mine).status == "active"
    assert load_existing(site, operators).status == "suspended"
    module_events = [
        (e.action, e.connection_id)
        for e in audit_of(site)
        if e.action.startswith("module.")
    ]
    assert module_events == [("module.disabled", None), ("module.enabled", None)]


# ---------------------------------------------------------------- notice delivery


def register_notice(site: Site, conn_id: uuid.UUID) -> PeerNotice:
    [notice] = [n for n in notices_of(site, conn_id) if n.kind == "register"]
    return notice


def test_deliver_register_success_wipes_the_token(site: Site, peer: Any) -> None:
    conn_id, token = make_sender(site, password=PASSWORD)
    seen: list[tuple[str, dict[str, Any]]] = []
    remote_uuid = str(uuid.uuid4())

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), json.loads(request.content)))
        return httpx.Response(
            200,
            json={
                "success": True,
                "message": "Connection registered and activated",
                "connection_status": "active",
                "connection_uuid": remote_uuid,
            },
        )

    notice = register_notice(site, conn_id)
    outcome = notices.deliver(site, peer(handler), notice.id)
    assert outcome.state == "delivered"
    assert seen == [
        (
            PEER + "/sync/api/register-connection",
            {
                "sender_url": SITE_URL,
                "connection_name": "Peer A",
                "auth_token": token,
                "password": PASSWORD,
            },
        )
    ]
    [after] = [n for n in notices_of(site, conn_id) if n.id == notice.id]
    assert (after.state, after.attempts, after.http_status, after.payload) == (
        "delivered",
        1,
        200,
        {},
    )
    assert after.delivered_at is not None
    row = load_existing(site, conn_id)
    assert row.registration_status == "registered"
    assert row.registration_error is None
    assert row.meta["remote_connection_uuid"] == remote_uuid
    texts = db_texts(site)
    assert not any(token in value for value in texts)
    assert not any(PASSWORD in value for value in texts)
    assert "connection.registered" in [e.action for e in audit_of(site, conn_id)]
    # Delivered once is delivered: a redelivery does nothing.
    assert notices.deliver(site, peer(refuse_connection), notice.id).state == "done"


def test_deliver_register_pending_at_the_receiver(site: Site, peer: Any) -> None:
    conn_id, _ = make_sender(site)
    client = peer(
        answer(
            200,
            {
                "success": True,
                "message": "m",
                "connection_status": "pending",
                "connection_uuid": str(uuid.uuid4()),
            },
        )
    )
    assert (
        notices.deliver(site, client, register_notice(site, conn_id).id).state
        == "delivered"
    )
    assert load_existing(site, conn_id).registration_status == "pending"


def test_deliver_register_refused_for_invalid_password(site: Site, peer: Any) -> None:
    conn_id, token = make_sender(site, password="wrong one")
    client = peer(answer(401, {"success": False, "error": "Invalid password"}))
    notice = register_notice(site, conn_id)
    assert notices.deliver(site, client, notice.id).state == "failed"
    row = load_existing(site, conn_id)
    assert row.registration_status == "failed"
    assert row.registration_error == "Invalid password"
    assert connections.describe(row)["registration"] == "failed: Invalid password"
    [after] = [n for n in notices_of(site, conn_id) if n.id == notice.id]
    assert (after.state, after.payload, after.http_status) == ("failed", {}, 401)
    assert not any(token in value or "wrong one" in value for value in db_texts(site))
    failed = [
        e
        for e in audit_of(site, conn_id)
        if e.action == "connection.registration_failed"
    ]
    assert [e.reason for e in failed] == ["Invalid password"]


@pytest.mark.parametrize(
    "handler",
    [
        answer(503, {"success": False, "error": "DB Sync module is disabled"}),
        refuse_connection,
    ],
    ids=["503", "connection-refused"],
)
def test_deliver_transient_failure_is_retried_later(
    site: Site, peer: Any, handler: Handler
) -> None:
    conn_id, token = make_sender(site)
    notice = register_notice(site, conn_id)
    before = utcnow()
    outcome = notices.deliver(site, peer(handler), notice.id)
    assert outcome.state == "retrying"
    assert outcome.retry_in is not None and outcome.retry_in > 0
    [after] = notices_of(site, conn_id)
    assert after.state == "retrying"
    assert after.attempts == 1
    assert after.next_attempt_at > before
    assert after.last_error
    # Still needed for the next attempt, still sealed.
    assert (
        sealing.open_sealed(
            site.db.engine, site.settings.secret_key, after.payload["sealed"]
        )["auth_token"]
        == token
    )
    assert load_existing(site, conn_id).registration_status == "queued"
    # Not due yet: nothing is sent.
    calls: list[httpx.Request] = []

    def counting(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json={"success": True})

    assert notices.deliver(site, peer(counting), notice.id).state == "not_due"
    assert calls == []


def test_deliver_honours_retry_after_of_a_429(site: Site, peer: Any) -> None:
    conn_id = add_receiver(site)
    change(site, conn_id, connections.suspend, "x")
    [notice] = notices_of(site, conn_id)
    client = peer(
        answer(
            429,
            {"success": False, "error": "Rate limit exceeded"},
            **{"retry-after": "120"},
        )
    )
    outcome = notices.deliver(site, client, notice.id)
    assert outcome.state == "retrying"
    assert outcome.retry_in is not None and outcome.retry_in >= 120
    row = load_existing(site, conn_id)
    assert row.peer_sync_status == "retrying"


@pytest.mark.parametrize("settings_env", [{"SYNC_RETRY_HORIZON_SECONDS": "60"}])
def test_deliver_gives_up_past_the_horizon(site: Site, peer: Any) -> None:
    conn_id, token = make_sender(site)
    notice = register_notice(site, conn_id)
    with site.db.session() as session:
        row = session.get(PeerNotice, notice.id)
        assert row is not None
        row.created_at = utcnow() - dt.timedelta(hours=1)
        row.next_attempt_at = utcnow() - dt.timedelta(seconds=1)
    outcome = notices.deliver(site, peer(refuse_connection), notice.id)
    assert outcome.state == "gave_up"
    [after] = notices_of(site, conn_id)
    assert (after.state, after.payload) == ("gave_up", {})
    assert after.last_error and after.last_error.startswith("peer unreachable")
    row = load_existing(site, conn_id)
    assert row.registration_status == "failed"
    assert not any(token in value for value in db_texts(site))


def test_deliver_delete_answered_404_counts_as_delivered(site: Site, peer: Any) -> None:
    conn_id = add_receiver(site)
    change(site, conn_id, connections.delete)
    [notice] = [n for n in notices_of(site, conn_id) if n.kind == "delete"]
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/sync/api/delete-connection"
        seen.append(json.loads(request.content))
        return httpx.Response(
            404, json={"success": False, "error": "Connection not found"}
        )

    assert notices.deliver(site, peer(handler), notice.id).state == "delivered"
    assert seen == [{"sender_url": SITE_URL, "auth_token_hash": sha(PEER + "active")}]
    [after] = [n for n in notices_of(site, conn_id) if n.id == notice.id]
    assert after.state == "delivered"


def test_deliver_update_status_records_peer_sync(site: Site, peer: Any) -> None:
    conn_id = add_receiver(site)
    change(site, conn_id, connections.revoke, "done with it")
    [notice] = notices_of(site, conn_id)
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"success": True, "message": "ok"})

    assert notices.deliver(site, peer(handler), notice.id).state == "delivered"
    assert seen == [
        {
            "sender_url": SITE_URL,
            "auth_token_hash": sha(PEER + "active"),
            "status": "revoked",
            "reason": "done with it",
        }
    ]
    row = load_existing(site, conn_id)
    assert row.peer_sync_status == "delivered"
    assert row.peer_sync_error is None
    assert row.peer_sync_at is not None


# ---------------------------------------------------------------- healing


def registered_sender(site: Site) -> uuid.UUID:
    conn_id, _ = make_sender(site)
    set_fields(site, conn_id, status="active", registration_status="registered")
    return conn_id


def test_verify_suspends_a_sender_after_two_404s(site: Site, peer: Any) -> None:
    conn_id = registered_sender(site)
    seen: list[tuple[str, dict[str, Any]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, json.loads(request.content)))
        return httpx.Response(
            404,
            json={"success": False, "error": "Connection not found", "exists": False},
        )

    client = peer(handler)
    assert str(conn_id) in healing.verifiable(site)
    assert healing.verify(site, client, str(conn_id)) == "not_found"
    row = load_existing(site, conn_id)
    assert (row.status, row.verify_not_found_count) == ("active", 1)
    assert healing.verify(site, client, str(conn_id)) == "suspended"
    row = load_existing(site, conn_id)
    assert row.status == "suspended"
    assert row.suspended_reason == "Remote site reports connection not found"
    assert row.suspended_at is not None
    assert seen[0] == (
        "/sync/api/verify-connection",
        {"sender_url": SITE_URL, "auth_token_hash": row.auth_token_hash},
    )
    assert [(e.actor, e.action, e.reason) for e in audit_of(site, conn_id)][-1] == (
        "system",
        "connection.suspended",
        "Remote site reports connection not found",
    )


def test_verify_a_found_answer_resets_the_404_count(site: Site, peer: Any) -> None:
    conn_id = registered_sender(site)
    set_fields(site, conn_id, verify_not_found_count=1, last_verify_error="old")
    client = peer(answer(200, {"success": True, "exists": True}))
    assert healing.verify(site, client, str(conn_id)) == "ok"
    row = load_existing(site, conn_id)
    assert (row.status, row.verify_not_found_count, row.last_verify_error) == (
        "active",
        0,
        None,
    )
    assert row.last_verified_at is not None


@pytest.mark.parametrize(
    "handler",
    [refuse_connection, answer(502, {"success": False, "error": "bad gateway"})],
    ids=["refused", "502"],
)
def test_verify_unreachable_changes_no_status(
    site: Site, peer: Any, handler: Handler
) -> None:
    conn_id = registered_sender(site)
    verified = utcnow() - dt.timedelta(hours=2)
    set_fields(site, conn_id, last_verified_at=verified)
    for _ in range(3):
        assert healing.verify(site, peer(handler), str(conn_id)) == "unreachable"
    row = load_existing(site, conn_id)
    assert row.status == "active"
    assert row.verify_not_found_count == 0
    assert row.last_verify_error
    assert row.last_verified_at == verified
    assert (
        row.last_verify_attempt_at is not None and row.last_verify_attempt_at > verified
    )


def test_verify_receiver_revoked_by_its_sender(site: Site, peer: Any) -> None:
    conn_id = add_receiver(site)
    seen: list[tuple[str, dict[str, Any]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, json.loads(request.content)))
        return httpx.Response(
            200, json={"success": True, "status": "revoked", "name": "x"}
        )

    assert healing.verify(site, peer(handler), str(conn_id)) == "revoked"
    row = load_existing(site, conn_id)
    assert row.status == "revoked"
    assert row.revoked_at is not None
    assert row.remote_status == "revoked"
    assert row.revoked_reason
    assert seen == [
        (
            "/sync/api/get-connection-status",
            {"receiver_url": SITE_URL, "auth_token_hash": sha(PEER + "active")},
        )
    ]
    # A revoked connection is never asked again.
    assert healing.verify(site, peer(refuse_connection), str(conn_id)) == "skipped"


def test_verify_receiver_whose_sender_deleted_it_is_suspended(
    site: Site, peer: Any
) -> None:
    conn_id = add_receiver(site)
    client = peer(answer(404, {"success": False, "error": "Connection not found"}))
    healing.verify(site, client, str(conn_id))
    assert healing.verify(site, client, str(conn_id)) == "suspended"
    assert (
        load_existing(site, conn_id).suspended_reason
        == "Remote site reports connection not found"
    )


def test_verify_skips_a_pending_receiver(site: Site, peer: Any) -> None:
    conn_id = add_receiver(site, status="pending")
    assert healing.verify(site, peer(refuse_connection), str(conn_id)) == "skipped"
    assert load_existing(site, conn_id).last_verify_attempt_at is None


def test_expire_past_expiry_and_over_limits(site: Site) -> None:
    now = utcnow()
    past = add_receiver(site, url="http://127.0.0.1:19100")
    set_fields(site, past, expires_at=now - dt.timedelta(minutes=1))
    downloads = add_receiver(site, url="http://127.0.0.1:19101")
    set_fields(site, downloads, max_downloads=3, downloads_used=3)
    records = add_receiver(site, url="http://127.0.0.1:19102")
    set_fields(site, records, max_records_total=100, records_downloaded=150)
    fine = add_receiver(site, url="http://127.0.0.1:19103")
    set_fields(
        site,
        fine,
        expires_at=now + dt.timedelta(days=1),
        max_downloads=3,
        downloads_used=2,
        max_records_total=100,
        records_downloaded=99,
    )
    suspended = add_receiver(site, status="suspended", url="http://127.0.0.1:19104")
    set_fields(site, suspended, expires_at=now - dt.timedelta(days=1))

    assert healing.expire(site) == 3
    for conn_id, reason in (
        (past, "expired"),
        (downloads, "limit reached"),
        (records, "limit reached"),
    ):
        row = load_existing(site, conn_id)
        assert row.status == "expired"
        assert row.expired_at is not None
        assert [(e.actor, e.action, e.reason) for e in audit_of(site, conn_id)] == [
            ("system", "connection.expired", reason)
        ]
    assert load_existing(site, fine).status == "active"
    assert load_existing(site, suspended).status == "suspended"
    assert healing.expire(site) == 0
