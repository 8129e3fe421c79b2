"""The admin console in-process: off without a password, cookie flags, CSRF,
escaping of what peers and operators typed, every page renders."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from falcon import testing

from api.app import create_app
from shared.context import Site
from shared.control import admin
from shared.errors import SyncError
from shared.state.models import AdminSettings, AuditEvent, Connection, Sync, Transfer
from tests.helpers import PEER, add_connection

PASSWORD = "console-test-pass"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def client(site: Site) -> Iterator[testing.TestClient]:
    yield testing.TestClient(create_app(site))


def logged_in(client: testing.TestClient, site: Site) -> tuple[dict[str, str], str]:
    with site.db.session() as session:
        admin.set_password(session, PASSWORD)
    r = client.simulate_post("/admin/login", body=f"password={PASSWORD}", headers=FORM)
    assert r.status_code == 303
    cookie = {"Cookie": f"dbsync_admin={r.cookies['dbsync_admin'].value}"}
    page = client.simulate_get("/admin/connections", headers=cookie).text
    csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert csrf is not None
    return cookie, csrf.group(1)


def test_off_until_a_password_is_set(client: testing.TestClient, site: Site) -> None:
    for path in ("/admin", "/admin/login", "/admin/connections"):
        assert client.simulate_get(path).status_code == 404
    assert client.simulate_post("/admin/login", body="password=x").status_code == 404
    with site.db.session() as session:
        with pytest.raises(SyncError, match="at least 10 characters"):
            admin.set_password(session, "short")
        assert session.get(AdminSettings, 1) is None


def test_cookie_flags_and_a_new_password_ends_sessions(
    client: testing.TestClient, site: Site
) -> None:
    cookie, _csrf = logged_in(client, site)
    https = client.simulate_post(
        "/admin/login", body=f"password={PASSWORD}", headers=FORM, protocol="https"
    )
    flags = https.headers["set-cookie"]
    for flag in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/admin"):
        assert flag in flags
    assert client.simulate_get("/admin/", headers=cookie).status_code == 200
    with site.db.session() as session:
        admin.set_password(session, PASSWORD + "-2")
    gone = client.simulate_get("/admin/", headers=cookie)
    assert gone.status_code == 303 and gone.headers["location"].endswith("/login")
    forged = {"Cookie": "dbsync_admin=9999999999.nonce.deadbeef"}
    assert client.simulate_get("/admin/", headers=forged).status_code == 303


def test_every_page_renders_and_escapes_what_others_typed(
    client: testing.TestClient, site: Site
) -> None:
    cookie, csrf = logged_in(client, site)
    created = client.simulate_post(
        "/admin/connections",
        body=f"csrf={csrf}&name=%3Cscript%3Ealert(1)%3C%2Fscript%3E"
        f"&url={quote(PEER)}&max_records_per_request=500",
        headers={**FORM, **cookie},
    )
    assert created.status_code == 201
    assert "<script>alert(1)" not in created.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in created.text
    assert created.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in created.headers["content-security-policy"]
    with site.db.session() as session:
        conn = session.query(Connection).one()
        cid = str(conn.id)
        assert conn.max_records_per_request == 500
    for path in (
        "/admin/",
        "/admin/settings",
        "/admin/connections?direction=sender&status=pending",
        f"/admin/connections/{cid}",
        "/admin/transfers",
        "/admin/audit",
        f"/admin/audit?connection={cid}",
        "/admin/syncs",
    ):
        page = client.simulate_get(path, headers=cookie)
        assert page.status_code == 200, path
        assert "<script>alert" not in page.text, path
    # A token is in the creating answer only.
    token = re.search(r'id="new-token" value="([^"]+)"', created.text)
    assert token is not None
    listing = client.simulate_get("/admin/connections", headers=cookie).text
    assert token.group(1) not in listing


def test_posts_need_the_sessions_csrf_token(
    client: testing.TestClient, site: Site
) -> None:
    cookie, csrf = logged_in(client, site)
    for body in ("enabled=true&incoming_mode=deny_all", "csrf=&enabled=true"):
        refused = client.simulate_post(
            "/admin/settings", body=body, headers={**FORM, **cookie}
        )
        assert refused.status_code == 403
    ok = client.simulate_post(
        "/admin/settings",
        body=f"csrf={csrf}&enabled=true&incoming_mode=deny_all",
        headers={**FORM, **cookie},
    )
    assert ok.status_code == 303
    page = client.simulate_get("/admin/settings?done=settings", headers=cookie)
    assert "Settings saved." in page.text
    assert '<option value="deny_all" selected>' in page.text


def test_bad_limits_are_a_clear_error_not_a_500(
    client: testing.TestClient, site: Site
) -> None:
    cookie, csrf = logged_in(client, site)
    client.simulate_post(
        "/admin/connections",
        body=f"csrf={csrf}&name=n&url={quote(PEER)}",
        headers={**FORM, **cookie},
    )
    with site.db.session() as session:
        cid = str(session.query(Connection).one().id)
    for body, message in [
        ("max_records_per_request=lots", "max_records_per_request must be a whole"),
        ("allowed_hours=8", "allowed hours: use START-END"),
        ("ip_allowlist=not-a-cidr", "Invalid CIDR"),
        ("expires_at=tomorrow", "expires_at: not an ISO 8601 time"),
    ]:
        r = client.simulate_post(
            f"/admin/connections/{cid}",
            body=f"csrf={csrf}&action=limits&{body}",
            headers={**FORM, **cookie},
        )
        assert r.status_code == 400, body
        assert message in r.text


def test_syncs_are_created_paused_resumed_run_and_deleted_by_form(
    client: testing.TestClient, site: Site
) -> None:
    cookie, csrf = logged_in(client, site)
    cid, _ = add_connection(site, direction="receiver", name="from-alpha")
    sender_id, _ = add_connection(site, direction="sender", name="to-beta")
    headers = {**FORM, **cookie}
    good = "tables=orders%2C+customers&every=15m&strategy=overwrite&mode=delta"
    # Without the session's token nothing is created, from either form.
    for path, body in [
        ("/admin/syncs", f"connection={cid}&{good}"),
        ("/admin/syncs", f"csrf={'0' * 64}&connection={cid}&{good}"),
        (f"/admin/connections/{cid}/tables", f"do=sync&table=orders&{good}"),
    ]:
        refused = client.simulate_post(path, body=body, headers=headers)
        assert refused.status_code == 403, path
    with site.db.session() as session:
        assert session.query(Sync).count() == 0

    created = client.simulate_post(
        "/admin/syncs",
        body=f"csrf={csrf}&connection={cid}&{good}&mirror_deletes=yes",
        headers=headers,
    )
    assert created.status_code == 303
    with site.db.session() as session:
        sync = session.query(Sync).one()
        sid = str(sync.id)
        assert (sync.tables, sync.every_seconds, sync.mode) == (
            ["orders", "customers"],
            900,
            "delta",
        )
        assert (sync.strategy, sync.mirror_deletes, sync.paused) == (
            "overwrite",
            True,
            False,
        )
    assert created.headers["location"] == f"/admin/syncs?done=sync-create#sync-{sid}"
    page = client.simulate_get("/admin/syncs?done=sync-create", headers=cookie)
    assert page.status_code == 200
    assert "Sync created; beat starts its first run at its next tick." in page.text
    row = page.text.split(f'id="sync-{sid}"')[1].split("</tr>")[0]
    for shown in ("from-alpha", "orders, customers", "15m", "delta", "active"):
        assert shown in row, shown
    assert "not run yet" in row

    # From the remote tables page: the chosen tables, an interval, a mode.
    from_tables = client.simulate_post(
        f"/admin/connections/{cid}/tables",
        body=f"csrf={csrf}&do=sync&table=gadgets&every=90&strategy=skip&mode=full",
        headers=headers,
    )
    assert from_tables.status_code == 303
    with site.db.session() as session:
        second = session.query(Sync).filter(Sync.id != sync.id).one()
        assert (second.tables, second.every_seconds, second.mode) == (
            ["gadgets"],
            90,
            "full",
        )
        assert (second.strategy, second.mirror_deletes) == ("skip", False)

    def act(action: str, target: str = sid) -> testing.Result:
        return client.simulate_post(
            f"/admin/syncs/{target}",
            body=f"csrf={csrf}&action={action}",
            headers=headers,
        )

    def state() -> tuple[bool, int]:
        with site.db.session() as session:
            row = session.get_one(Sync, sync.id)
            return row.paused, row.failures

    paused = act("pause")
    assert paused.status_code == 303
    assert paused.headers["location"] == f"/admin/syncs?done=sync-pause#sync-{sid}"
    assert state() == (True, 0)
    page = client.simulate_get("/admin/syncs", headers=cookie).text
    row = page.split(f'id="sync-{sid}"')[1].split("</tr>")[0]
    assert ">paused</span>" in row and 'value="resume"' in row
    assert act("resume").status_code == 303 and state() == (False, 0)
    with site.db.session() as session:
        session.get_one(Sync, sync.id).failures = 3
    assert "backing off" in client.simulate_get("/admin/syncs", headers=cookie).text
    with site.db.session() as session:  # a run in progress shows its progress
        run = Transfer(
            direction="receive",
            status="running",
            records_transferred=1000,
            records_expected=5000,
            meta={},
        )
        session.add(run)
        session.flush()
        row = session.get_one(Sync, sync.id)
        row.last_transfer_id, row.last_status = run.id, "running"
    page = client.simulate_get("/admin/syncs", headers=cookie).text
    row_html = page.split(f'id="sync-{sid}"')[1].split("</tr>")[0]
    assert ">running</span>" in row_html and "1,000 / 5,000" in row_html
    assert "data-reload" in page
    assert act("run").status_code == 303 and state() == (False, 0)
    refused = client.simulate_post(
        f"/admin/syncs/{sid}", body="action=delete", headers=headers
    )
    assert refused.status_code == 403
    deleted = act("delete")
    assert deleted.status_code == 303
    assert deleted.headers["location"] == "/admin/syncs?done=sync-delete"
    with site.db.session() as session:
        assert session.get(Sync, sync.id) is None
        actions = [e.action for e in session.query(AuditEvent).order_by(AuditEvent.id)]
    assert actions.count("sync.created") == 2
    assert {"sync.paused", "sync.resumed", "sync.deleted"} <= set(actions)

    # Bad input: a clear error with the service's message, never a 500.
    for path, body, status, message in [
        ("/admin/syncs", f"connection={cid}&tables=t&every=soon", 400, "--every takes"),
        ("/admin/syncs", f"connection={cid}&every=5m", 400, "Name the tables"),
        (
            "/admin/syncs",
            f"connection={sender_id}&tables=t&every=5m",
            400,
            "Only a receiver",
        ),
        ("/admin/syncs", "connection=nope&tables=t&every=5m", 404, "No connection"),
        (
            "/admin/syncs",
            f"connection={cid}&tables=t&every=5m&mode=sideways",
            400,
            "mode must be",
        ),
        (
            "/admin/syncs",
            f"connection={cid}&tables=dbsync_connections&every=5m",
            400,
            "Refusing",
        ),
        (f"/admin/syncs/{sid}", "action=pause", 404, f"No sync {sid}"),
        (f"/admin/syncs/{second.id}", "action=explode", 400, "Unknown action"),
        ("/admin/syncs/not-a-uuid", "action=run", 404, "No sync not-a-uuid"),
    ]:
        r = client.simulate_post(path, body=f"csrf={csrf}&{body}", headers=headers)
        assert r.status_code == status, body
        assert message in r.text, body
        assert 'role="alert"' in r.text


def test_a_transfer_that_differs_never_reads_as_a_clean_success(
    client: testing.TestClient, site: Site
) -> None:
    cookie, _csrf = logged_in(client, site)
    verification = {
        "gadgets": {"status": "verified"},
        "items": {
            "status": "differs",
            "first_range": {"after": [4999], "until": [6000]},
        },
    }
    delta = {
        "gadgets": {
            "mode": "delta",
            "equal_before": True,
            "ranges_pulled": 0,
            "rows_pulled": 0,
            "deleted": 0,
            "requests": 3,
        },
        "items": {
            "mode": "delta",
            "equal_before": False,
            "ranges_pulled": 2,
            "rows_pulled": 7,
            "deleted": 1,
            "requests": 9,
        },
    }
    ids = {}
    with site.db.session() as session:
        for label, status, error, meta in [
            (
                "differs",
                "completed",
                "Verification: items differ(s) from the sender",
                {"mode": "delta", "verification": verification, "delta": delta},
            ),
            (
                "clean",
                "completed",
                None,
                {"mode": "delta", "verification": {"gadgets": {"status": "verified"}}},
            ),
        ]:
            t = Transfer(
                direction="receive",
                status=status,
                error_message=error,
                connection_name=label,
                meta=meta,
            )
            session.add(t)
            session.flush()
            ids[label] = str(t.id)
    listing = client.simulate_get("/admin/transfers", headers=cookie).text
    differs = listing.split(f"{ids['differs'][:8]}</a>")[1].split("</tr>")[0]
    assert "completed, differs" in differs
    assert "items: first differing range after (4999) until (6000)" in differs
    assert "7 rows pulled, 1 deleted" in differs
    clean = listing.split(f"{ids['clean'][:8]}</a>")[1].split("</tr>")[0]
    assert ">completed</span>" in clean and ">verified</span>" in clean
    assert "differs" not in clean
    page = client.simulate_get(
        f"/admin/transfers/{ids['differs']}", headers=cookie
    ).text
    status = page.split('id="transfer-status">')[1].split("</dd>")[0]
    assert status == '<span class="badge s-differs">completed, differs</span>'
    checks = page.split('id="checks"')[1]
    assert "first differing range after (4999) until (6000)" in checks
    assert "compared equal, nothing moved" in checks
    assert '<td class="num">7</td>' in checks and '<td class="num">9</td>' in checks
