"""Every answer of every control endpoint, with exact bodies, in check order."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from typing import Any

import pytest
from falcon import testing
from sqlalchemy import inspect, select

from shared import security
from shared.context import Site
from shared.db import utcnow
from shared.security import new_token
from shared.state.models import AuditEvent, Connection, PeerNotice, Transfer
from tests.helpers import (
    API,
    OTHER_PEER,
    PEER,
    SITE_URL,
    add_connection,
    case_id,
    configure,
    load,
    make_sender,
    post,
    sha,
)

PASSWORD = "correct horse battery staple"

DISABLED = {"success": False, "error": "DB Sync module is disabled"}
NOT_FOUND = {"success": False, "error": "Connection not found"}
INVALID_URL = {"success": False, "error": "Invalid sender_url"}
PASSWORD_REQUIRED = {"success": False, "error": "Password required"}
INVALID_PASSWORD = {"success": False, "error": "Invalid password"}
EXISTS = {"success": False, "error": "A connection already exists"}
DENIED = {"success": False, "error": "Incoming connections are not allowed"}
REVOKED = {"success": False, "error": "Connection is revoked"}


def reg_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sender_url": PEER,
        "connection_name": "Peer A",
        "auth_token": new_token(),
    }
    body.update(over)
    return body


# ---------------------------------------------------------------- status


def test_status_of_a_new_site_is_safe_default(client: testing.TestClient) -> None:
    r = client.simulate_get(f"{API}/status")
    assert r.status_code == 200
    assert r.json == {
        "success": True,
        "enabled": False,
        "incoming_mode": "require_approval",
        "password_required": False,
        "accepting_connections": False,
        "protocol": 1,
    }


STATUS_CASES = [
    (True, "auto_accept", True),
    (True, "require_approval", True),
    (True, "require_password", True),
    (True, "deny_all", False),
    (False, "auto_accept", False),
    (False, "require_password", False),
    (False, "deny_all", False),
]


@pytest.mark.parametrize(
    ("enabled", "mode", "accepting"),
    STATUS_CASES,
    ids=[f"{'on' if e else 'off'}-{m}" for e, m, _ in STATUS_CASES],
)
def test_status_body_for_each_setting(
    site: Site, client: testing.TestClient, enabled: bool, mode: str, accepting: bool
) -> None:
    configure(site, enabled=enabled, mode=mode)
    r = client.simulate_get(f"{API}/status")
    assert r.status_code == 200
    assert r.json == {
        "success": True,
        "enabled": enabled,
        "incoming_mode": mode,
        "password_required": mode == "require_password",
        "accepting_connections": accepting,
        "protocol": 1,
    }, (enabled, mode)


# ---------------------------------------------------------------- disabled

ALL_POST = [
    "register-connection",
    "get-connection-status",
    "update-status",
    "delete-connection",
    "verify-connection",
]


DISABLED_BODIES: list[Any] = [
    {},
    {
        "sender_url": PEER,
        "receiver_url": PEER,
        "connection_name": "x",
        "auth_token": "t",
        "auth_token_hash": "h",
        "status": "active",
        "password": PASSWORD,
    },
    ["not", "an", "object"],
    "scalar",
]


@pytest.mark.parametrize("endpoint", ALL_POST)
def test_disabled_module_answers_503_on_every_post_endpoint(
    site: Site, client: testing.TestClient, endpoint: str
) -> None:
    configure(site, enabled=False, mode="deny_all")
    for body in DISABLED_BODIES:
        r = post(client, endpoint, body)
        assert (r.status_code, r.json) == (503, DISABLED), body
    r = client.simulate_post(
        f"{API}/{endpoint}", body=b"{nope", headers={"content-type": "application/json"}
    )
    assert (r.status_code, r.json) == (503, DISABLED)
    configure(site, enabled=False, mode="require_password")
    r = post(client, endpoint, DISABLED_BODIES[1])
    assert (r.status_code, r.json) == (503, DISABLED)


def test_disabled_lookups_still_answer_503_for_an_existing_connection(
    site: Site, client: testing.TestClient
) -> None:
    conn_id, token_hash = add_connection(site)
    configure(site, enabled=False)
    body = {"sender_url": PEER, "auth_token_hash": token_hash, "status": "revoked"}
    for endpoint in ("update-status", "verify-connection", "delete-connection"):
        r = post(client, endpoint, body)
        assert (r.status_code, r.json) == (503, DISABLED)
    row = load(site, conn_id)
    assert row is not None and row.status == "active"


# ---------------------------------------------------------------- register: check order


def test_register_deny_all_is_403_before_missing_fields(
    site: Site, client: testing.TestClient
) -> None:
    configure(site, mode="deny_all")
    r = post(client, "register-connection", {})
    assert r.status_code == 403
    assert r.json == DENIED
    r = post(client, "register-connection", reg_body())
    assert (r.status_code, r.json) == (403, DENIED)


MISSING_CASES: list[tuple[dict[str, Any], list[str]]] = [
    ({}, ["sender_url", "connection_name", "auth_token"]),
    ({"auth_token": "t"}, ["sender_url", "connection_name"]),
    (
        {"sender_url": None, "connection_name": "", "auth_token": "t"},
        ["sender_url", "connection_name"],
    ),
    ({"sender_url": "not a url", "connection_name": "x"}, ["auth_token"]),
    (
        {"sender_url": "ftp://x", "connection_name": "x", "auth_token": ""},
        ["auth_token"],
    ),
    (
        {"password": PASSWORD, "extra": 1},
        ["sender_url", "connection_name", "auth_token"],
    ),
]


@pytest.mark.parametrize(
    ("body", "fields"), MISSING_CASES, ids=[case_id(b) for b, _ in MISSING_CASES]
)
@pytest.mark.parametrize(
    "mode", ["auto_accept", "require_approval", "require_password"]
)
def test_register_missing_fields_in_field_order(
    site: Site,
    client: testing.TestClient,
    mode: str,
    body: dict[str, Any],
    fields: list[str],
) -> None:
    configure(
        site, mode=mode, password=PASSWORD if mode == "require_password" else None
    )
    r = post(client, "register-connection", body)
    assert r.status_code == 400, body
    assert r.json == {
        "success": False,
        "error": "Missing required fields",
        "fields": fields,
    }, body


INVALID_URLS = [
    "not a url",
    "ftp://93.184.216.34",
    "javascript:alert(1)",
    "http://",
    "http:///path-only",
    "//127.0.0.1:19001",
    "http://2130706433",
    "http://2130706433:19001/",
    "http://0x7f000001",
    "http://0x7f.0.0.1",
    "http://0177.0.0.1",
    "http://127.1",
    "http://127.0.1",
    "http://017700000001",
    "http://user:pw@127.0.0.1:19001",
    "http://127.0.0.1:19001/?a=1",
    "http://127.0.0.1:19001/#frag",
    "http://127.0.0.1:99999",
    "http://[::1",
    SITE_URL,
    SITE_URL + "/",
    "HTTP://127.0.0.1:18999/some/path",
]


@pytest.mark.parametrize("url", INVALID_URLS, ids=case_id)
def test_register_invalid_sender_url(
    site: Site, client: testing.TestClient, url: str
) -> None:
    configure(site, mode="auto_accept")
    r = post(client, "register-connection", reg_body(sender_url=url))
    assert (r.status_code, r.json) == (400, INVALID_URL), url
    with site.db.session() as session:
        assert session.scalar(select(Connection.id)) is None


PRIVATE_URLS = [
    PEER,
    "http://127.0.0.2:8000",
    "http://10.0.0.1",
    "http://172.16.5.4",
    "http://192.168.1.10:8080",
    "http://169.254.169.254",
    "http://0.0.0.0:19001",
    "http://224.0.0.1",
    "http://100.64.0.1",
    "http://[::1]:19001",
    "http://[fe80::1]",
    "http://[fc00::1]",
    "http://[::ffff:127.0.0.1]",
    "http://localhost:19001",
    "http://peer.localhost",
    "http://2130706433",
    "http://1572395042",  # 93.184.216.34 in decimal: refused for its form alone
]


@pytest.mark.parametrize("url", PRIVATE_URLS, ids=case_id)
@pytest.mark.parametrize("settings_env", [{"SYNC_ALLOW_PRIVATE_URLS": "false"}])
def test_register_refuses_private_and_loopback_urls_when_not_allowed(
    site: Site, client: testing.TestClient, url: str
) -> None:
    configure(site, mode="auto_accept")
    r = post(client, "register-connection", reg_body(sender_url=url))
    assert (r.status_code, r.json) == (400, INVALID_URL), url


@pytest.mark.parametrize("settings_env", [{"SYNC_ALLOW_PRIVATE_URLS": "false"}])
def test_register_refuses_a_host_resolving_to_a_private_address(
    site: Site, client: testing.TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        security,
        "resolve_host",
        lambda host, port: [
            ipaddress.ip_address("93.184.216.34"),
            ipaddress.ip_address("10.0.0.5"),
        ],
    )
    configure(site, mode="auto_accept")
    r = post(
        client, "register-connection", reg_body(sender_url="https://peer.example.org")
    )
    assert (r.status_code, r.json) == (400, INVALID_URL)


@pytest.mark.parametrize("settings_env", [{"SYNC_ALLOW_PRIVATE_URLS": "false"}])
def test_register_accepts_public_urls_when_private_not_allowed(
    site: Site, client: testing.TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        security,
        "resolve_host",
        lambda host, port: [ipaddress.ip_address("93.184.216.34")],
    )
    configure(site, mode="auto_accept")
    r = post(
        client, "register-connection", reg_body(sender_url="https://93.184.216.34/")
    )
    assert r.status_code == 200, r.json
    r = post(
        client, "register-connection", reg_body(sender_url="https://Peer.Example.org/")
    )
    assert r.status_code == 200, r.json
    with site.db.session() as session:
        urls = set(session.scalars(select(Connection.site_url)))
    assert urls == {"https://93.184.216.34", "https://peer.example.org"}


@pytest.mark.parametrize(
    "url", [SITE_URL, SITE_URL + "/", "HTTP://127.0.0.1:18999", SITE_URL + "/sub"]
)
def test_register_refuses_its_own_url(
    site: Site, client: testing.TestClient, url: str
) -> None:
    configure(site, mode="auto_accept")
    r = post(client, "register-connection", reg_body(sender_url=url))
    assert (r.status_code, r.json) == (400, INVALID_URL), url


def test_register_missing_fields_come_before_invalid_url(
    site: Site, client: testing.TestClient
) -> None:
    configure(site, mode="auto_accept")
    r = post(client, "register-connection", {"sender_url": "http://2130706433"})
    assert r.status_code == 400
    assert r.json == {
        "success": False,
        "error": "Missing required fields",
        "fields": ["connection_name", "auth_token"],
    }


@pytest.mark.parametrize("password", [None, "wrong", PASSWORD])
def test_register_invalid_url_comes_before_password(
    site: Site, client: testing.TestClient, password: str | None
) -> None:
    configure(site, mode="require_password", password=PASSWORD)
    body = reg_body(sender_url="http://0x7f.0.0.1")
    if password is not None:
        body["password"] = password
    r = post(client, "register-connection", body)
    assert (r.status_code, r.json) == (400, INVALID_URL)


# ---------------------------------------------------------------- register: password


def test_register_password_required_when_none_configured(
    site: Site, client: testing.TestClient
) -> None:
    configure(site, mode="require_password")
    r = post(client, "register-connection", reg_body(password="anything"))
    assert r.status_code == 401
    assert r.json == PASSWORD_REQUIRED
    r = post(client, "register-connection", reg_body())
    assert (r.status_code, r.json) == (401, PASSWORD_REQUIRED)


@pytest.mark.parametrize("sent", [None, ""])
def test_register_password_required_when_none_sent(
    site: Site, client: testing.TestClient, sent: str | None
) -> None:
    configure(site, mode="require_password", password=PASSWORD)
    body = reg_body()
    if sent is not None:
        body["password"] = sent
    r = post(client, "register-connection", body)
    assert r.status_code == 401
    assert r.json == PASSWORD_REQUIRED


def test_register_invalid_password(site: Site, client: testing.TestClient) -> None:
    configure(site, mode="require_password", password=PASSWORD)
    r = post(client, "register-connection", reg_body(password="not it"))
    assert r.status_code == 401
    assert r.json == INVALID_PASSWORD
    with site.db.session() as session:
        assert session.scalar(select(Connection.id)) is None


def test_register_password_success_is_active(
    site: Site, client: testing.TestClient
) -> None:
    configure(site, mode="require_password", password=PASSWORD)
    body = reg_body(password=PASSWORD)
    r = post(client, "register-connection", body)
    assert r.status_code == 200
    assert r.json["connection_status"] == "active"
    with site.db.session() as session:
        conn = session.scalars(select(Connection)).one()
        assert conn.status == "active"
        assert conn.auth_token_hash == sha(body["auth_token"])


@pytest.mark.parametrize("settings_env", [{"SYNC_REGISTER_MAX_FAILURES": "3"}])
def test_register_failures_from_one_address_are_throttled(
    site: Site, client: testing.TestClient
) -> None:
    configure(site, mode="require_password", password=PASSWORD)
    ip = "198.51.100.7"
    answers = [
        post(client, "register-connection", reg_body(password="bad"), remote_addr=ip),
        post(client, "register-connection", reg_body(), remote_addr=ip),
        post(client, "register-connection", reg_body(password="bad2"), remote_addr=ip),
    ]
    assert [(a.status_code, a.json) for a in answers] == [
        (401, INVALID_PASSWORD),
        (401, PASSWORD_REQUIRED),
        (401, INVALID_PASSWORD),
    ]
    # Even the right password is refused now, without being checked.
    r = post(client, "register-connection", reg_body(password=PASSWORD), remote_addr=ip)
    assert r.status_code == 429
    assert r.json == {"success": False, "error": "Too many failed attempts"}
    retry_after = int(r.headers["retry-after"])
    assert 1 <= retry_after <= 900
    # Another address is not affected.
    r = post(
        client,
        "register-connection",
        reg_body(password=PASSWORD),
        remote_addr="203.0.113.9",
    )
    assert r.status_code == 200, r.json
    with site.db.session() as session:
        conn = session.scalars(select(Connection)).one()
        assert conn.meta["remote_ip"] == "203.0.113.9"


@pytest.mark.parametrize("settings_env", [{"SYNC_REGISTER_MAX_FAILURES": "3"}])
def test_register_throttle_comes_after_url_check_and_successes_do_not_count(
    site: Site, client: testing.TestClient
) -> None:
    configure(site, mode="require_password", password=PASSWORD)
    ip = "198.51.100.8"
    for _ in range(4):
        r = post(
            client,
            "register-connection",
            reg_body(sender_url="ftp://x"),
            remote_addr=ip,
        )
        assert (r.status_code, r.json) == (400, INVALID_URL)
    for port in range(19010, 19014):
        r = post(
            client,
            "register-connection",
            reg_body(sender_url=f"http://127.0.0.1:{port}", password=PASSWORD),
            remote_addr=ip,
        )
        assert r.status_code == 200, r.json


# ---------------------------------------------------------------- register: 409


def test_register_conflict_whatever_the_status(
    site: Site, client: testing.TestClient
) -> None:
    configure(site, mode="auto_accept")
    for port, status in enumerate(
        ["pending", "active", "suspended", "revoked", "expired"]
    ):
        add_connection(site, status=status, url=f"http://127.0.0.1:{19100 + port}")
        r = post(
            client,
            "register-connection",
            reg_body(sender_url=f"HTTP://127.0.0.1:{19100 + port}/"),
        )
        assert (r.status_code, r.json) == (409, EXISTS), status


def test_register_conflict_for_a_reused_token(
    site: Site, client: testing.TestClient
) -> None:
    configure(site, mode="auto_accept")
    body = reg_body()
    assert post(client, "register-connection", body).status_code == 200
    r = post(client, "register-connection", {**body, "sender_url": OTHER_PEER})
    assert (r.status_code, r.json) == (409, EXISTS)
    with site.db.session() as session:
        assert len(session.scalars(select(Connection)).all()) == 1


def test_register_a_sender_connection_to_the_same_url_is_no_conflict(
    site: Site, client: testing.TestClient
) -> None:
    make_sender(site, url=PEER)
    configure(site, mode="auto_accept")
    r = post(client, "register-connection", reg_body())
    assert r.status_code == 200


def test_register_password_comes_before_conflict(
    site: Site, client: testing.TestClient
) -> None:
    add_connection(site)
    configure(site, mode="require_password", password=PASSWORD)
    r = post(client, "register-connection", reg_body(password="wrong"))
    assert (r.status_code, r.json) == (401, INVALID_PASSWORD)
    r = post(client, "register-connection", reg_body(password=PASSWORD))
    assert (r.status_code, r.json) == (409, EXISTS)


# ---------------------------------------------------------------- register: success


def _columns_text(obj: Any) -> list[str]:
    return [repr(getattr(obj, attr.key)) for attr in inspect(obj).mapper.column_attrs]


def test_register_auto_accept_stores_an_active_receiver(
    site: Site, client: testing.TestClient
) -> None:
    configure(site, mode="auto_accept")
    token = new_token()
    before = utcnow()
    r = post(
        client,
        "register-connection",
        {
            "sender_url": "  HTTP://127.0.0.1:19001/ ",
            "connection_name": "Warehouse",
            "auth_token": token,
            "unknown": {"ignored": True},
        },
        remote_addr="203.0.113.50",
        headers={"user-agent": "phoenix_kit/1.2"},
    )
    assert r.status_code == 200
    conn_uuid = r.json["connection_uuid"]
    assert r.json == {
        "success": True,
        "message": "Connection registered and activated",
        "connection_status": "active",
        "connection_uuid": conn_uuid,
    }
    with site.db.session() as session:
        conn = session.scalars(select(Connection)).one()
        assert str(conn.id) == conn_uuid
        assert conn.name == "Warehouse"
        assert conn.direction == "receiver"
        assert conn.site_url == PEER
        assert conn.auth_token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert conn.status == "active"
        assert conn.approved_at is not None and conn.approved_at >= before
        assert conn.meta["remote_ip"] == "203.0.113.50"
        assert conn.meta["user_agent"] == "phoenix_kit/1.2"
        assert dt.datetime.fromisoformat(conn.meta["registered_at"]) >= before
        assert not any(token in text for text in _columns_text(conn))
        events = session.scalars(select(AuditEvent)).all()
        assert [(e.action, e.actor, e.connection_id) for e in events] == [
            ("connection.registered", "peer", conn.id)
        ]
        assert not any(token in text for e in events for text in _columns_text(e))
        notices = session.scalars(select(PeerNotice)).all()
        assert [(n.kind, n.state, n.connection_id) for n in notices] == [
            ("poll_status", "queued", conn.id)
        ]
        assert not any(token in text for n in notices for text in _columns_text(n))
    assert site.dispatcher.notices == [notices[0].id]  # type: ignore[attr-defined]


def test_register_require_approval_stores_a_pending_receiver(
    site: Site, client: testing.TestClient
) -> None:
    configure(site, mode="require_approval")
    body = reg_body()
    r = post(client, "register-connection", body)
    assert r.status_code == 200
    assert r.json == {
        "success": True,
        "message": "Connection registered and awaiting approval",
        "connection_status": "pending",
        "connection_uuid": r.json["connection_uuid"],
    }
    with site.db.session() as session:
        conn = session.scalars(select(Connection)).one()
        assert conn.status == "pending"
        assert conn.approved_at is None
        assert conn.auth_token_hash == sha(body["auth_token"])
        # Nothing is owed to the sender before the operator approves.
        assert session.scalars(select(PeerNotice)).all() == []


# ---------------------------------------------------------------- get-connection-status


def test_get_connection_status_activates_a_pending_sender(
    site: Site, client: testing.TestClient
) -> None:
    configure(site)
    conn_id, token = make_sender(site)
    with site.db.session() as session:  # the receiver accepted the registration
        session.get_one(Connection, conn_id).registration_status = "registered"
    r = post(
        client,
        "get-connection-status",
        {"receiver_url": PEER, "auth_token_hash": sha(token)},
    )
    assert r.status_code == 200
    assert r.json == {"success": True, "status": "active", "name": "Peer A"}
    row = load(site, conn_id)
    assert row is not None
    assert row.status == "active"
    assert row.approved_at is not None
    assert row.last_connected_at is not None
    assert row.meta["auto_activated"] is True
    assert row.meta["auto_activated_reason"]
    with site.db.session() as session:
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.connection_id == conn_id)
        ).all()
    assert "connection.activated" in actions


def test_get_connection_status_reports_other_statuses_unchanged(
    site: Site, client: testing.TestClient
) -> None:
    configure(site)
    for port, status in enumerate(["active", "suspended", "revoked", "expired"]):
        url = f"http://127.0.0.1:{19100 + port}"
        conn_id, token_hash = add_connection(
            site, direction="sender", status=status, url=url
        )
        r = post(
            client,
            "get-connection-status",
            {"receiver_url": url, "auth_token_hash": token_hash},
        )
        assert r.status_code == 200
        assert r.json == {"success": True, "status": status, "name": "Peer A"}
        row = load(site, conn_id)
        assert row is not None and row.status == status
        assert "auto_activated" not in row.meta


def test_get_connection_status_not_found(
    site: Site, client: testing.TestClient
) -> None:
    configure(site)
    _, receiver_hash = add_connection(site, direction="receiver", status="pending")
    for token_hash in (sha("nope"), receiver_hash):
        r = post(
            client,
            "get-connection-status",
            {"receiver_url": PEER, "auth_token_hash": token_hash},
        )
        assert r.status_code == 404
        assert r.json == NOT_FOUND


def test_get_connection_status_missing_fields(
    site: Site, client: testing.TestClient
) -> None:
    configure(site)
    r = post(client, "get-connection-status", {"auth_token_hash": ""})
    assert r.status_code == 400
    assert r.json == {
        "success": False,
        "error": "Missing required fields",
        "fields": ["receiver_url", "auth_token_hash"],
    }


# ---------------------------------------------------------------- update-status


def update(
    client: testing.TestClient, token_hash: str, status: Any, url: str = PEER
) -> testing.Result:
    return post(
        client,
        "update-status",
        {"sender_url": url, "auth_token_hash": token_hash, "status": status},
    )


@pytest.mark.parametrize("direction", ["receiver", "sender"])
def test_update_status_suspend_reactivate_revoke(
    site: Site, client: testing.TestClient, direction: str
) -> None:
    configure(site)
    conn_id, token_hash = add_connection(site, direction=direction)

    r = update(client, token_hash, "suspended")
    assert r.status_code == 200
    assert r.json == {"success": True, "message": "Status updated to suspended"}
    row = load(site, conn_id)
    assert row is not None
    assert row.status == "suspended"
    assert row.suspended_at is not None
    assert row.suspended_reason == "Suspended by the peer site"
    assert row.remote_status == "suspended"

    r = update(client, token_hash, "active", url="HTTP://127.0.0.1:19001/")
    assert r.status_code == 200
    assert r.json == {"success": True, "message": "Status updated to active"}
    row = load(site, conn_id)
    assert row is not None
    assert row.status == "active"
    assert row.suspended_at is None and row.suspended_reason is None

    r = update(client, token_hash, "revoked")
    assert r.status_code == 200
    assert r.json == {"success": True, "message": "Status updated to revoked"}
    row = load(site, conn_id)
    assert row is not None
    assert row.status == "revoked"
    assert row.revoked_at is not None
    assert row.revoked_reason == "Revoked by the peer site"

    with site.db.session() as session:
        events = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.connection_id == conn_id)
            .order_by(AuditEvent.id)
        ).all()
    assert [(e.actor, e.action) for e in events] == [
        ("peer", "connection.suspended"),
        ("peer", "connection.reactivated"),
        ("peer", "connection.revoked"),
    ]


@pytest.mark.parametrize("status", ["active", "suspended"])
def test_update_status_revoked_is_final(
    site: Site, client: testing.TestClient, status: str
) -> None:
    configure(site)
    conn_id, token_hash = add_connection(site, status="revoked")
    r = update(client, token_hash, status)
    assert r.status_code == 409
    assert r.json == REVOKED
    row = load(site, conn_id)
    assert row is not None and row.status == "revoked"


def test_update_status_revoked_to_revoked_is_ok(
    site: Site, client: testing.TestClient
) -> None:
    configure(site)
    conn_id, token_hash = add_connection(site, status="revoked")
    r = update(client, token_hash, "revoked")
    assert r.status_code == 200
    assert r.json == {"success": True, "message": "Status updated to revoked"}
    row = load(site, conn_id)
    assert row is not None and row.status == "revoked"


@pytest.mark.parametrize(
    "status", ["paused", "ACTIVE", "pending", "expired", " active", "revoked "]
)
def test_update_status_invalid_status_value(
    site: Site, client: testing.TestClient, status: str
) -> None:
    configure(site)
    conn_id, token_hash = add_connection(site)
    r = update(client, token_hash, status)
    assert (r.status_code, r.json) == (
        400,
        {"success": False, "error": "Invalid status value"},
    ), status
    row = load(site, conn_id)
    assert row is not None and row.status == "active"


def test_update_status_invalid_value_comes_before_lookup(
    site: Site, client: testing.TestClient
) -> None:
    configure(site)
    r = update(client, sha("nobody"), "bogus")
    assert (r.status_code, r.json) == (
        400,
        {"success": False, "error": "Invalid status value"},
    )


def test_update_status_not_found(site: Site, client: testing.TestClient) -> None:
    configure(site)
    _, token_hash = add_connection(site)
    for url, token in (
        (PEER, sha("other")),
        (OTHER_PEER, token_hash),
        ("::not a url", token_hash),
    ):
        r = update(client, token, "suspended", url=url)
        assert r.status_code == 404
        assert r.json == NOT_FOUND


def test_update_status_pending_receiver_stays_pending_on_active(
    site: Site, client: testing.TestClient
) -> None:
    configure(site)
    conn_id, token_hash = add_connection(site, status="pending")
    r = update(client, token_hash, "active")
    assert r.status_code == 200
    assert r.json == {"success": True, "message": "Status updated to active"}
    row = load(site, conn_id)
    assert row is not None
    assert row.status == "pending"
    assert row.approved_at is None


def test_update_status_missing_fields(site: Site, client: testing.TestClient) -> None:
    configure(site)
    r = post(client, "update-status", {"sender_url": PEER})
    assert r.status_code == 400
    assert r.json == {
        "success": False,
        "error": "Missing required fields",
        "fields": ["auth_token_hash", "status"],
    }


# ---------------------------------------------------------------- delete-connection


@pytest.mark.parametrize("direction", ["receiver", "sender"])
def test_delete_connection_detaches_its_transfers(
    site: Site, client: testing.TestClient, direction: str
) -> None:
    configure(site)
    conn_id, token_hash = add_connection(site, direction=direction)
    with site.db.session() as session:
        transfer = Transfer(
            direction="receive" if direction == "receiver" else "send",
            connection_id=conn_id,
            connection_name="Peer A",
            remote_site_url=PEER,
            status="completed",
        )
        session.add(transfer)
        session.flush()
        transfer_id = transfer.id
    r = post(
        client, "delete-connection", {"sender_url": PEER, "auth_token_hash": token_hash}
    )
    assert r.status_code == 200
    assert r.json == {"success": True, "message": "Connection deleted"}
    assert load(site, conn_id) is None
    with site.db.session() as session:
        kept = session.get(Transfer, transfer_id)
        assert kept is not None
        assert kept.connection_id is None
        assert kept.connection_name == "Peer A"
        events = session.scalars(
            select(AuditEvent.action).where(AuditEvent.connection_id == conn_id)
        ).all()
    assert events == ["connection.deleted"]


def test_delete_connection_cancels_what_was_owed_to_the_peer(
    site: Site, client: testing.TestClient
) -> None:
    configure(site)
    _, token = make_sender(site)
    r = post(
        client, "delete-connection", {"sender_url": PEER, "auth_token_hash": sha(token)}
    )
    assert r.status_code == 200
    with site.db.session() as session:
        notices = session.scalars(select(PeerNotice)).all()
    assert [(n.kind, n.state, n.payload) for n in notices] == [
        ("register", "cancelled", {})
    ]


def test_delete_connection_not_found(site: Site, client: testing.TestClient) -> None:
    configure(site)
    conn_id, token_hash = add_connection(site)
    for url, token in ((PEER, sha("x")), (OTHER_PEER, token_hash)):
        r = post(
            client, "delete-connection", {"sender_url": url, "auth_token_hash": token}
        )
        assert r.status_code == 404
        assert r.json == NOT_FOUND
    assert load(site, conn_id) is not None


# ---------------------------------------------------------------- verify-connection


@pytest.mark.parametrize("direction", ["receiver", "sender"])
def test_verify_connection_exists(
    site: Site, client: testing.TestClient, direction: str
) -> None:
    configure(site)
    for port, status in enumerate(
        ["pending", "active", "suspended", "revoked", "expired"]
    ):
        url = f"http://127.0.0.1:{19100 + port}"
        conn_id, token_hash = add_connection(
            site, status=status, url=url, direction=direction
        )
        r = post(
            client,
            "verify-connection",
            {"sender_url": url, "auth_token_hash": token_hash},
        )
        assert (r.status_code, r.json) == (200, {"success": True, "exists": True}), (
            status
        )
        row = load(site, conn_id)
        assert row is not None
        assert row.status == status
        assert row.last_connected_at is not None


def test_verify_connection_not_found(site: Site, client: testing.TestClient) -> None:
    configure(site)
    _, token_hash = add_connection(site)
    for url, token in ((PEER, sha("x")), (OTHER_PEER, token_hash)):
        r = post(
            client, "verify-connection", {"sender_url": url, "auth_token_hash": token}
        )
        assert r.status_code == 404
        assert r.json == {
            "success": False,
            "error": "Connection not found",
            "exists": False,
        }


def test_verify_connection_missing_fields(
    site: Site, client: testing.TestClient
) -> None:
    configure(site)
    r = post(client, "verify-connection", {"sender_url": "", "auth_token_hash": None})
    assert r.status_code == 400
    assert r.json == {
        "success": False,
        "error": "Missing required fields",
        "fields": ["sender_url", "auth_token_hash"],
    }
