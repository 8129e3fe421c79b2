"""No secret reaches a log record: the token, its hash beyond 8 chars, a password.

Two sites share the test database (their connections differ by direction) and call
each other in-process through an httpx MockTransport that forwards to their apps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import re
from collections.abc import Iterator

import httpx
import pytest
from falcon import testing

from api.app import create_app
from shared.context import Site
from shared.control import connections, healing, module, notices
from shared.control.peer import PeerClient
from shared.dispatch import DeferredDispatcher
from shared.logging import json_formatter
from shared.state.models import Connection, PeerNotice
from tests.helpers import API, OTHER_PEER, PEER, SITE_URL

SITE_A = SITE_URL  # the `site` fixture is A, the sender
SITE_B = PEER  # the receiver
DEAD = OTHER_PEER  # a peer that never answers
PASSWORD = "incoming-pass-Z9"


class Network:
    """Route each outbound call to the in-process app that owns its URL."""

    def __init__(self, apps: dict[str, testing.TestClient]) -> None:
        self._apps = apps

    def __call__(self, request: httpx.Request) -> httpx.Response:
        origin = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        app = self._apps.get(origin)
        if app is None:
            raise httpx.ConnectError("connection refused", request=request)
        r = app.simulate_request(
            request.method,
            request.url.path,
            body=request.content,
            headers={k: v for k, v in request.headers.items() if k != "content-length"},
            remote_addr="127.0.0.1",
        )
        return httpx.Response(r.status_code, content=r.content, headers=dict(r.headers))


@pytest.fixture
def pair(site: Site) -> Iterator[tuple[Site, Site, PeerClient, PeerClient]]:
    site_b = Site(
        dataclasses.replace(site.settings, site_url=SITE_B),
        site.db,
        DeferredDispatcher(),
    )
    network = Network(
        {
            SITE_A: testing.TestClient(create_app(site)),
            SITE_B: testing.TestClient(create_app(site_b)),
        }
    )
    client = PeerClient(site.settings, transport=httpx.MockTransport(network))
    client_b = PeerClient(site_b.settings, transport=httpx.MockTransport(network))
    with site.db.session() as session:
        row = module.get(session)
        row.enabled = True
        row.incoming_mode = "require_password"
        module.set_password(session, PASSWORD)
    yield site, site_b, client, client_b
    client.close()
    client_b.close()


def deliver_all(site: Site, client: PeerClient) -> list[str]:
    ids = list(site.dispatcher.notices)  # type: ignore[attr-defined]
    site.dispatcher.notices.clear()  # type: ignore[attr-defined]
    return [notices.deliver(site, client, notice_id).state for notice_id in ids]


def run_lifecycle(
    site_a: Site, site_b: Site, client: PeerClient, client_b: PeerClient
) -> tuple[str, str]:
    """Register, activate, suspend, verify, reactivate, delete; plus failures."""
    http_b = testing.TestClient(create_app(site_b))

    # A creates a sender to B with B's password; the register notice carries it.
    with site_a.db.session() as session:
        conn, token = connections.create_sender(
            session, site_a, name="Nightly", url=SITE_B, password=PASSWORD
        )
        sender_id = conn.id
    assert deliver_all(site_a, client) == ["delivered"]
    token_hash = hashlib.sha256(token.encode()).hexdigest()

    # B (receiver) polls A's get-connection-status: A's sender becomes active.
    assert deliver_all(site_b, client_b) == ["delivered"]
    with site_a.db.session() as session:
        sender = session.get(Connection, sender_id)
        assert sender is not None and sender.status == "active"
        receiver = session.query(Connection).filter_by(direction="receiver").one()
        receiver_id = receiver.id
        assert receiver.auth_token_hash == token_hash

    # Wrong and missing passwords, a replayed registration.
    for password in ("nope", None):
        body = {"sender_url": DEAD, "connection_name": "x", "auth_token": token}
        if password:
            body["password"] = password
        assert (
            http_b.simulate_post(f"{API}/register-connection", json=body).status_code
            == 401
        )
    replay = {
        "sender_url": SITE_A,
        "connection_name": "x",
        "auth_token": token,
        "password": PASSWORD,
    }
    assert (
        http_b.simulate_post(f"{API}/register-connection", json=replay).status_code
        == 409
    )

    # A suspends, B hears it; both sides verify; A reactivates.
    with site_a.db.session() as session:
        connections.suspend(
            session, site_a, session.get(Connection, sender_id), "nightly check"
        )
    assert deliver_all(site_a, client) == ["delivered"]
    assert healing.verify(site_b, client_b, str(receiver_id)) == "ok"
    assert healing.verify(site_a, client, str(sender_id)) == "ok"
    with site_a.db.session() as session:
        connections.reactivate(session, site_a, session.get(Connection, sender_id))
    assert deliver_all(site_a, client) == ["delivered"]

    # Calls that find nothing, and bad status values.
    for endpoint, body in [
        (
            "verify-connection",
            {"sender_url": SITE_A, "auth_token_hash": token_hash[::-1]},
        ),
        (
            "update-status",
            {"sender_url": SITE_A, "auth_token_hash": token_hash, "status": "bogus"},
        ),
        (
            "get-connection-status",
            {"receiver_url": SITE_A, "auth_token_hash": "f" * 64},
        ),
        ("delete-connection", {"sender_url": DEAD, "auth_token_hash": token_hash}),
    ]:
        assert http_b.simulate_post(f"{API}/{endpoint}", json=body).status_code in (
            400,
            404,
        )

    # A peer that never answers: a retried registration, an unreachable verify.
    with site_a.db.session() as session:
        dead, _dead_token = connections.create_sender(
            session, site_a, name="Dead", url=DEAD, password=PASSWORD
        )
        dead_id = dead.id
    assert deliver_all(site_a, client) == ["retrying"]
    assert healing.verify(site_a, client, str(dead_id)) == "unreachable"
    with site_a.db.session() as session:
        for notice in session.query(PeerNotice).filter_by(connection_id=dead_id):
            notice.created_at = notice.created_at.replace(year=2000)
            notice.next_attempt_at = notice.created_at
            notice_id = notice.id
    assert notices.deliver(site_a, client, notice_id).state == "gave_up"

    # A deletes; B deletes its side when told.
    with site_a.db.session() as session:
        connections.delete(session, site_a, session.get(Connection, sender_id))
    assert deliver_all(site_a, client) == ["delivered"]
    with site_a.db.session() as session:
        assert session.get(Connection, receiver_id) is None
    return token, token_hash


def rendered(records: list[logging.LogRecord]) -> list[str]:
    formatter = logging.Formatter()
    out = []
    for record in records:
        parts = [record.name, record.getMessage(), repr(record.args), str(record.msg)]
        if record.exc_info:
            parts.append(formatter.formatException(record.exc_info))
        if record.stack_info:
            parts.append(record.stack_info)
        out.append(" | ".join(parts))
    return out


def assert_no_secret(lines: list[str], token: str, token_hash: str) -> None:
    secrets = {
        "raw token": token,
        "password": PASSWORD,
        "hash prefix (9)": token_hash[:9],
    }
    leaks = [
        (what, line[:300])
        for line in lines
        for what, secret in secrets.items()
        if secret in line
    ]
    assert leaks == []
    assert not any(token_hash in line for line in lines)


def test_no_secret_in_application_logs(
    pair: tuple[Site, Site, PeerClient, PeerClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        if not name.startswith("sqlalchemy"):
            caplog.set_level(logging.DEBUG, logger=name)
    token, token_hash = run_lifecycle(*pair)
    lines = rendered(caplog.records)
    # The flow did log: audit lines, peer calls, notice outcomes.
    assert any("audit action=connection.created" in line for line in lines)
    assert any("notice delivered" in line for line in lines)
    assert any("notice gave up" in line for line in lines)
    assert any(token_hash[:8] in line for line in lines)  # 8 chars are allowed
    assert_no_secret(lines, token, token_hash)


def test_no_secret_in_logs_even_with_sql_logging_on(
    pair: tuple[Site, Site, PeerClient, PeerClient], caplog: pytest.LogCaptureFixture
) -> None:
    """Every logger at DEBUG, SQLAlchemy's included, still shows no secret."""
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.engine")
    token, token_hash = run_lifecycle(*pair)
    lines = rendered(caplog.records)
    assert any(line.startswith("sqlalchemy.engine") for line in lines)
    assert_no_secret(lines, token, token_hash)


def test_json_logs_parse_line_by_line_carry_request_ids_and_hold_no_secret(
    pair: tuple[Site, Site, PeerClient, PeerClient],
) -> None:
    """SYNC_LOG_FORMAT=json: the same lifecycle, rendered by the JSON formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        token, token_hash = run_lifecycle(*pair)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    lines = stream.getvalue().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one object
    assert records and all(isinstance(r, dict) for r in records)
    assert all({"event", "level", "logger", "ts"} <= r.keys() for r in records)
    in_requests = [r for r in records if "request_id" in r]
    # B's side of the registration logged its audit line inside the request.
    audits = [r for r in in_requests if r["event"].startswith("audit action=")]
    assert audits, [r["event"] for r in records][:40]
    assert all(re.fullmatch(r"[0-9a-f]{32}", r["request_id"]) for r in in_requests)
    assert len({r["request_id"] for r in in_requests}) > 3
    assert_no_secret(lines, token, token_hash)


def test_a_request_id_is_taken_or_made_and_returned(site: Site) -> None:
    client = testing.TestClient(create_app(site))
    given = client.simulate_get("/livez", headers={"X-Request-ID": "abc-123.x"})
    assert given.headers["X-Request-ID"] == "abc-123.x"
    made = client.simulate_get("/livez", headers={"X-Request-ID": "bad id\u00e9"})
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])
    assert (
        client.simulate_get("/livez").headers["X-Request-ID"]
        != (made.headers["X-Request-ID"])
    )
