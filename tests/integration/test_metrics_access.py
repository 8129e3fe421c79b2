"""Who may read /metrics: loopback callers, or anyone with SYNC_METRICS_TOKEN."""

from __future__ import annotations

import dataclasses

from falcon import testing

from api.app import create_app
from shared.context import Site
from shared.settings import Secret


def test_without_a_token_only_loopback_callers_are_answered(site: Site) -> None:
    client = testing.TestClient(create_app(site))
    for addr in ("127.0.0.1", "::1"):
        ok = client.simulate_get("/metrics", remote_addr=addr)
        assert ok.status_code == 200
        assert "dbsync_notice_backlog 0.0" in ok.text
    for addr in ("10.1.2.3", "203.0.113.9"):
        refused = client.simulate_get(
            "/metrics", remote_addr=addr, headers={"X-Forwarded-For": "127.0.0.1"}
        )
        assert refused.status_code == 404
        assert "dbsync" not in refused.text


def test_with_a_token_any_caller_must_show_it(site: Site) -> None:
    settings = dataclasses.replace(site.settings, metrics_token=Secret("s3cr3t-m"))
    client = testing.TestClient(create_app(Site(settings, site.db, site.dispatcher)))
    for addr, auth, status in [
        ("203.0.113.9", "Bearer s3cr3t-m", 200),
        ("203.0.113.9", "Bearer wrong", 404),
        ("203.0.113.9", None, 404),
        ("127.0.0.1", None, 404),  # the token is asked of loopback too
    ]:
        headers = {"Authorization": auth} if auth else {}
        got = client.simulate_get("/metrics", remote_addr=addr, headers=headers)
        assert got.status_code == status, (addr, auth)
