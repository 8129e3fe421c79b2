"""Helpers for end-to-end tests that pair a dbsync site with the PhoenixKit stand-in."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import SiteProcesses
from tests.helpers import eventually
from tests.peers.phoenixkit.process import PhoenixKitProcess


class PrefixedSite(SiteProcesses):
    """A dbsync site whose API may live under SYNC_URL_PREFIX: ready on /livez."""

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/livez", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


CONNECTION_COLUMNS = (
    "id", "name", "direction", "site_url", "status", "suspended_reason",
    "revoked_reason", "registration_status", "registration_error", "peer_sync_status",
    "last_verify_error",
)  # fmt: skip


def dbsync_conn(site: SiteProcesses, peer_url: str) -> dict[str, Any] | None:
    """The site's connection to ``peer_url`` (whatever path follows), read from
    its state database (the CLI takes seconds on a busy machine)."""
    rows = site.sql(
        f"SELECT {', '.join(CONNECTION_COLUMNS)} FROM dbsync_connections "
        "WHERE site_url = :url OR site_url LIKE :under",
        url=peer_url,
        under=peer_url + "/%",
    )
    assert len(rows) <= 1, rows
    if not rows:
        return None
    found = dict(zip(CONNECTION_COLUMNS, rows[0]))
    found["id"] = str(found["id"])
    return found


def dbsync_field(site: SiteProcesses, peer_url: str, key: str) -> Any:
    conn = dbsync_conn(site, peer_url)
    return conn[key] if conn else None


def pk_conn(pk: PhoenixKitProcess) -> dict[str, Any] | None:
    return pk.only_connection()


def pk_field(pk: PhoenixKitProcess, key: str) -> Any:
    conn = pk.only_connection()
    return conn[key] if conn else None


def pull(site: SiteProcesses, conn_id: str, *args: str) -> dict[str, Any]:
    """``dbsync pull --wait --json``: the transfer as the CLI reports it."""
    result = site.cli("pull", conn_id, *args, "--wait", "--json", check=False)
    data = json.loads(result.stdout)
    for table in data.get("tables", []):
        table["errors"] = table.get("errors", [])[:3]
    return data


def md5_checksum(run_sql: Any, table: str) -> str | None:
    """PhoenixKit's list-tables checksum of ``table``, computed in a UTC session."""
    rows = run_sql(
        "SET TIME ZONE 'UTC'; "
        f"SELECT md5(string_agg(t::text, '' ORDER BY t::text)) FROM \"{table}\" t"
    )
    return rows[0][0] if rows else None


class Gap(AssertionError):
    """The shortcoming an xfail documents showed itself, at the point it names."""


def gap(condition: bool, detail: Any = None) -> None:
    """Assert ``condition``; its failure is the documented gap (see ``known_gap``)."""
    if not condition:
        raise Gap(detail)


def gap_eventually(check: Any, timeout: float) -> None:
    """``eventually``, whose timing out is the documented gap."""
    try:
        eventually(check, timeout=timeout)
    except AssertionError as ex:
        raise Gap(str(ex)) from None


def known_gap(reason: str) -> pytest.MarkDecorator:
    """xfail(strict) that accepts only a Gap: any other failure (a fixture that
    did not start, an assertion before the gap) still fails the test, and the
    gap closing makes it XPASS, which strict turns into a failure to notice."""
    return pytest.mark.xfail(strict=True, raises=Gap, reason=reason)
