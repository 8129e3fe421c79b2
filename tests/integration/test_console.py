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
from shared.state.models import AdminSettings, Connection
from tests.helpers import PEER

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
