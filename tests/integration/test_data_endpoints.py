"""The data endpoints (list-tables, table-schema, table-records, pull-data) over
the real app and a real PostgreSQL database: every control in protocol order,
exact payloads, keyset paging, counters, wire values and hostile input."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from falcon import testing
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from shared.context import Site
from shared.control import access, connections, module
from shared.control.connections import SenderOptions
from shared.security import new_token
from shared.state.models import AuditEvent, Connection, Transfer

API = "/sync/api"
ENDPOINTS = ["list-tables", "table-schema", "table-records", "pull-data"]
TABLE_ENDPOINTS = ["table-schema", "table-records", "pull-data"]


def err(message: str, **extra: Any) -> dict[str, Any]:
    return {"success": False, "error": message, **extra}


DISABLED = err("DB Sync module is disabled")
INVALID_CONNECTION = err("Invalid connection")
NOT_ACTIVE = err("Connection is not active")
EXPIRED = err("Connection expired")
IP_NOT_ALLOWED = err("IP not allowed")
OUTSIDE_HOURS = err("Outside allowed hours")
DOWNLOAD_LIMIT = err("Download limit reached")
RECORD_LIMIT = err("Record limit reached")
RATE_LIMITED = err("Rate limit exceeded")
NOT_AUTHORISED = err("This connection is not authorised to access that table")
TABLE_NOT_FOUND = err("Table not found")
INVALID_JSON = err("Invalid JSON body")
TOO_LARGE = err("Request body too large")


# ------------------------------------------------------------------ data tables

DDL: dict[str, str] = {
    "dt_items": """
        CREATE TABLE dt_items (id integer PRIMARY KEY, label text NOT NULL);
        INSERT INTO dt_items SELECT g, 'item ' || g FROM generate_series(1, 10) g;
    """,
    "dt_secret": """
        CREATE TABLE dt_secret (id integer PRIMARY KEY, code text);
        INSERT INTO dt_secret VALUES (1, 'x'), (2, 'y');
    """,
    "dt_parents": """
        CREATE TABLE dt_parents (id integer PRIMARY KEY, name text NOT NULL);
        INSERT INTO dt_parents VALUES (1, 'one'), (2, 'two'), (3, 'three');
    """,
    "dt_children": """
        CREATE TABLE dt_children (
            parent_id integer NOT NULL REFERENCES dt_parents (id),
            seq integer NOT NULL,
            code varchar(40) NOT NULL,
            price numeric(10, 2),
            qty integer NOT NULL DEFAULT 0,
            PRIMARY KEY (parent_id, seq),
            UNIQUE (code)
        );
        INSERT INTO dt_children (parent_id, seq, code, price)
        SELECT p, s, 'c-' || p || '-' || s, p * 10 + s + 0.25
        FROM generate_series(1, 3) p, generate_series(1, 7) s;
    """,
    "dt_rows": """
        CREATE TABLE dt_rows (id integer PRIMARY KEY, label text NOT NULL);
        INSERT INTO dt_rows SELECT g, 'row ' || g FROM generate_series(1, 150) g;
    """,
    "dt_big": """
        CREATE TABLE dt_big (id integer PRIMARY KEY, v text NOT NULL);
        -- inserted in reverse so that storage order is not key order
        INSERT INTO dt_big SELECT g, 'v' || g FROM generate_series(2345, 1, -1) g;
    """,
    "dt_nopk": """
        CREATE TABLE dt_nopk (a integer, b text);
        INSERT INTO dt_nopk VALUES (3, 'c'), (1, 'a'), (2, 'b');
    """,
    "dt_words": """
        CREATE TABLE dt_words (w text PRIMARY KEY);
        INSERT INTO dt_words VALUES ('alpha'), ('beta'), ('gamma');
    """,
    "dt_values": """
        CREATE TABLE dt_values (
            id integer PRIMARY KEY,
            amount numeric(20, 6),
            ratio double precision,
            blob bytea,
            uid uuid,
            at timestamptz,
            doc jsonb,
            nums integer[]
        );
        INSERT INTO dt_values VALUES
         (1, 1234567890.123456, 'NaN', '\\x00ff10',
          'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '2024-03-01 12:34:56.789+02',
          '{"b": [1, 2.5, "x"], "a": null}', '{1,NULL,3}'),
         (2, 0.000001, 'Infinity', '', '00000000-0000-0000-0000-000000000000',
          '1999-12-31 23:59:59-08', '[]', '{}'),
         (3, -1.5, '-Infinity', '\\xdeadbeef', NULL, '2024-06-30 00:00:00+00', '"s"',
          '{-7}'),
         (4, 'NaN', 0.1, NULL, NULL, NULL, 'null', NULL),
         (5, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
    """,
}


@pytest.fixture
def tables(site: Site) -> Iterator[Callable[..., None]]:
    """Create data tables by name; every table this module knows is dropped after."""

    def make(*names: str) -> None:
        with site.db.data_engine.begin() as conn:
            for name in names:
                conn.exec_driver_sql(DDL[name])

    drop = ", ".join(DDL)
    with site.db.data_engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {drop} CASCADE")
    yield make
    with site.db.data_engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {drop} CASCADE")


# ------------------------------------------------------------------ connections

_port = iter(range(19100, 30000))


def enable(site: Site, enabled: bool = True) -> None:
    with site.db.session() as session:
        module.get(session).enabled = enabled


def sender(site: Site, status: str = "active", **options: Any) -> str:
    """A sender connection with these options; returns its token hash."""
    with site.db.session() as session:
        conn, _token = connections.create_sender(
            session,
            site,
            name="Peer",
            url=f"http://127.0.0.1:{next(_port)}",
            options=SenderOptions(**options),
        )
        conn.status = status
        return conn.auth_token_hash


def receiver(site: Site) -> str:
    token_hash = hashlib.sha256(new_token().encode()).hexdigest()
    with site.db.session() as session:
        session.add(
            Connection(
                name="Incoming",
                direction="receiver",
                site_url=f"http://127.0.0.1:{next(_port)}",
                auth_token_hash=token_hash,
                status="active",
                meta={},
            )
        )
    return token_hash


def update(site: Site, token_hash: str, **values: Any) -> None:
    with site.db.session() as session:
        conn = session.scalar(
            select(Connection).where(
                Connection.auth_token_hash == token_hash,
                Connection.direction == "sender",
            )
        )
        for key, value in values.items():
            setattr(conn, key, value)


def row(site: Site, token_hash: str) -> Connection:
    with site.db.session() as session:
        conn = session.scalar(
            select(Connection).where(
                Connection.auth_token_hash == token_hash,
                Connection.direction == "sender",
            )
        )
        session.expunge(conn)
        return conn


def send_transfers(site: Site) -> list[Transfer]:
    with site.db.session() as session:
        found = list(
            session.scalars(
                select(Transfer)
                .where(Transfer.direction == "send")
                .order_by(Transfer.created_at)
            )
        )
        for t in found:
            session.expunge(t)
        return found


def post(
    client: testing.TestClient, endpoint: str, body: Any, **kw: Any
) -> testing.Result:
    if isinstance(body, (bytes, str)):
        return client.simulate_post(
            f"{API}/{endpoint}",
            body=body,
            headers={"Content-Type": "application/json"},
            **kw,
        )
    return client.simulate_post(f"{API}/{endpoint}", json=body, **kw)


def call(
    client: testing.TestClient,
    endpoint: str,
    token_hash: str,
    table: str = "dt_items",
    **extra: Any,
) -> testing.Result:
    body: dict[str, Any] = {"auth_token_hash": token_hash}
    if endpoint != "list-tables":
        body["table_name"] = table
    body.update(extra)
    return post(client, endpoint, body)


def items(first: int, last: int) -> list[dict[str, Any]]:
    return [{"id": i, "label": f"item {i}"} for i in range(first, last + 1)]


def hour_now() -> int:
    return dt.datetime.now(dt.UTC).hour


# ================================================================== 503 / 400


def test_disabled_module_answers_503_before_anything_else(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    token_hash = sender(site)
    for endpoint in ENDPOINTS:
        for body in (
            {},
            {"auth_token_hash": token_hash, "table_name": "dt_items"},
            {"auth_token_hash": "nope"},
            b"not json",
            b"[1, 2]",
        ):
            r = post(client, endpoint, body)
            assert (r.status_code, r.json) == (503, DISABLED), (endpoint, body)
    assert row(site, token_hash).downloads_used == 0
    enable(site, False)
    r = call(client, "pull-data", token_hash)
    assert (r.status_code, r.json) == (503, DISABLED)
    enable(site)
    assert call(client, "pull-data", token_hash).status_code == 200


def test_missing_fields_answer_400_with_the_fields_in_order(
    site: Site, client: testing.TestClient
) -> None:
    enable(site)
    for endpoint in ENDPOINTS:
        wanted = (
            ["auth_token_hash"]
            if endpoint == "list-tables"
            else ["auth_token_hash", "table_name"]
        )
        for body in (
            {},
            {"auth_token_hash": None, "table_name": ""},
            {"auth_token_hash": "", "table_name": None, "other": 1},
        ):
            r = post(client, endpoint, body)
            assert r.status_code == 400, endpoint
            assert r.json == err("Missing required fields", fields=wanted)
        if endpoint != "list-tables":
            # a missing field wins over an unknown hash (400 before 401)
            r = post(client, endpoint, {"auth_token_hash": "unknown"})
            assert r.status_code == 400
            assert r.json == err("Missing required fields", fields=["table_name"])


# ================================================================== 401 / 403 status


def test_unknown_hash_and_receiver_hash_are_invalid_connections(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    sender(site)
    hashes = ["0" * 64, receiver(site), "' OR 1=1 --"]
    for endpoint in ENDPOINTS:
        for token_hash in hashes:
            r = call(client, endpoint, token_hash)
            assert (r.status_code, r.json) == (401, INVALID_CONNECTION), endpoint
        # 401 wins over an unknown table
        r = call(client, endpoint, "0" * 64, table="no_such_table")
        assert (r.status_code, r.json) == (401, INVALID_CONNECTION)


def test_a_connection_that_is_not_active_is_refused(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    for status in ("pending", "suspended", "revoked", "expired"):
        token_hash = sender(site, status=status)
        for endpoint in ENDPOINTS:
            r = call(client, endpoint, token_hash)
            assert (r.status_code, r.json) == (403, NOT_ACTIVE), (status, endpoint)
        conn = row(site, token_hash)
        assert conn.status == status
        assert (
            conn.downloads_used,
            conn.records_downloaded,
            conn.last_connected_at,
        ) == (0, 0, None)
    assert send_transfers(site) == []


def test_an_expired_connection_is_refused_and_marked_expired(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    for endpoint in ENDPOINTS:
        token_hash = sender(site, expires_at=past, ip_allowlist=["10.0.0.0/8"])
        # expiry wins over the IP allow-list that would refuse too
        r = call(client, endpoint, token_hash)
        assert (r.status_code, r.json) == (403, EXPIRED), endpoint
        # the refusal rolled the request back, yet the expiry is recorded
        conn = row(site, token_hash)
        assert conn.status == "expired"
        assert conn.expired_at is not None
        with site.db.session() as session:
            actions = list(
                session.scalars(
                    select(AuditEvent.action).where(
                        AuditEvent.connection_id == conn.id,
                        AuditEvent.action == "connection.expired",
                    )
                )
            )
        assert actions == ["connection.expired"]
        # from now on it is simply not active
        r = call(client, endpoint, token_hash)
        assert (r.status_code, r.json) == (403, NOT_ACTIVE)
    future = sender(site, expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    assert call(client, "table-records", future).status_code == 200
    assert row(site, future).status == "active"


def test_not_active_wins_over_expired_and_the_status_is_kept(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    for status in ("suspended", "pending", "revoked"):
        token_hash = sender(
            site,
            status=status,
            expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=1),
        )
        for endpoint in ENDPOINTS:
            r = call(client, endpoint, token_hash)
            assert (r.status_code, r.json) == (403, NOT_ACTIVE), (status, endpoint)
        conn = row(site, token_hash)
        assert conn.status == status
        assert conn.expired_at is None


# ================================================================== IP / hours


def test_ip_allow_list(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    h = hour_now()
    outside = sender(site, ip_allowlist=["10.0.0.0/8"])
    inside = sender(site, ip_allowlist=["10.0.0.0/8", "127.0.0.0/8"])
    exact = sender(site, ip_allowlist=["127.0.0.1/32"])
    both = sender(
        site,
        ip_allowlist=["10.0.0.0/8"],
        allowed_hours_start=(h + 1) % 24,
        allowed_hours_end=(h + 1) % 24,
    )
    for endpoint in ENDPOINTS:
        r = call(client, endpoint, outside)
        assert (r.status_code, r.json) == (403, IP_NOT_ALLOWED), endpoint
        r = call(client, endpoint, inside)
        assert r.status_code == 200, endpoint
        assert r.json["success"] is True
        assert call(client, endpoint, exact).status_code == 200
        # IP wins over allowed hours
        r = call(client, endpoint, both)
        assert (r.status_code, r.json) == (403, IP_NOT_ALLOWED)
    # a refused call counts nothing
    assert row(site, outside).downloads_used == 0
    assert row(site, inside).downloads_used == 1


def test_allowed_hours_with_the_real_clock(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    h = hour_now()
    # every hour but this one (a window that wraps midnight unless h == 23)
    refused = sender(
        site, allowed_hours_start=(h + 1) % 24, allowed_hours_end=(h + 23) % 24
    )
    only_now = sender(site, allowed_hours_start=h, allowed_hours_end=h)
    # a wrapping window that holds the current hour
    start, end = (h, (h + 12) % 24) if h >= 12 else (23, h)
    wrapping = sender(site, allowed_hours_start=start, allowed_hours_end=end)
    assert start > end
    # hours win over the download limit
    limited = sender(
        site,
        allowed_hours_start=(h + 1) % 24,
        allowed_hours_end=(h + 1) % 24,
        max_downloads=0,
    )
    for endpoint in ENDPOINTS:
        r = call(client, endpoint, refused)
        assert (r.status_code, r.json) == (403, OUTSIDE_HOURS), endpoint
        assert call(client, endpoint, only_now).status_code == 200
        assert call(client, endpoint, wrapping).status_code == 200
        r = call(client, endpoint, limited)
        assert (r.status_code, r.json) == (403, OUTSIDE_HOURS)


HOUR_CASES = [  # (hour now, start, end, allowed)
    (3, 22, 4, True),  # wraps midnight, inside after midnight
    (23, 22, 4, True),  # wraps midnight, inside before midnight
    (0, 22, 4, True),
    (22, 22, 4, True),  # inclusive start
    (4, 22, 4, True),  # inclusive end
    (5, 22, 4, False),  # just after the wrapped window
    (21, 22, 4, False),  # just before it
    (12, 22, 4, False),
    (9, 9, 17, True),
    (17, 9, 17, True),
    (18, 9, 17, False),
    (8, 9, 17, False),
    (0, 0, 0, True),
    (1, 0, 0, False),
    (0, 23, 0, True),
    (22, 23, 0, False),
]


def test_allowed_hours_at_a_fixed_clock(
    site: Site,
    client: testing.TestClient,
    tables: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tables("dt_items")
    enable(site)
    for hour, start, end, allowed in HOUR_CASES:
        token_hash = sender(site, allowed_hours_start=start, allowed_hours_end=end)
        now = dt.datetime(2030, 1, 2, hour, 59, 59, tzinfo=dt.UTC)
        monkeypatch.setattr(access, "utcnow", lambda now=now: now)
        r = call(client, "table-records", token_hash, limit=1)
        if allowed:
            assert r.status_code == 200, (hour, start, end)
            assert r.json["records"] == items(1, 1)
        else:
            assert (r.status_code, r.json) == (403, OUTSIDE_HOURS), (hour, start, end)


# ================================================================== limits


def test_download_limit(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = sender(site, max_downloads=1)
    first = call(client, "pull-data", token_hash, limit=4)
    assert first.status_code == 200
    assert first.json == {
        "success": True,
        "table": "dt_items",
        "data": items(1, 4),
        "count": 4,
        "has_more": True,
        "next_cursor": [4],
    }
    assert row(site, token_hash).downloads_used == 1
    # a second new pull is refused, with or without an explicit null/"" after
    for extra in ({}, {"after": None}, {"after": ""}):
        r = call(client, "pull-data", token_hash, **extra)
        assert (r.status_code, r.json) == (403, DOWNLOAD_LIMIT), extra
    # the download in progress goes on
    nxt = call(client, "pull-data", token_hash, limit=4, after=[4])
    assert nxt.status_code == 200
    assert nxt.json == {
        "success": True,
        "table": "dt_items",
        "data": items(5, 8),
        "count": 4,
        "has_more": True,
        "next_cursor": [8],
    }
    last = call(client, "pull-data", token_hash, limit=4, after=[8])
    assert last.json == {
        "success": True,
        "table": "dt_items",
        "data": items(9, 10),
        "count": 2,
        "has_more": False,
        "next_cursor": None,
    }
    # other endpoints are not downloads
    for endpoint in ("list-tables", "table-schema", "table-records"):
        assert call(client, endpoint, token_hash).status_code == 200
    conn = row(site, token_hash)
    assert (conn.downloads_used, conn.records_downloaded, conn.total_transfers) == (
        1,
        10,
        1,
    )
    [t] = send_transfers(site)
    assert (t.status, t.records_transferred) == ("completed", 10)


def test_download_limit_zero_refuses_the_first_pull(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = sender(site, max_downloads=0, max_records_total=0)
    r = call(client, "pull-data", token_hash)
    # the download limit is checked before the record limit
    assert (r.status_code, r.json) == (403, DOWNLOAD_LIMIT)
    assert send_transfers(site) == []


def test_a_forged_cursor_does_not_bypass_the_download_limit(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    """`after` continues a pull this connection started; it must not start a free one.

    With the only download used up (that pull completed), a receiver that sends
    a cursor below the first key gets the whole table again, uncounted.
    """
    tables("dt_items")
    enable(site)
    token_hash = sender(site, max_downloads=1)
    assert call(client, "pull-data", token_hash).json["count"] == 10
    r = call(client, "pull-data", token_hash, after=[-2147483648])
    assert (r.status_code, r.json) == (403, DOWNLOAD_LIMIT)
    conn = row(site, token_hash)
    assert (conn.downloads_used, conn.records_downloaded) == (1, 10)


def test_record_limit(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = sender(site, max_records_total=5)
    first = call(client, "pull-data", token_hash, limit=100)
    assert first.status_code == 200
    assert first.json == {
        "success": True,
        "table": "dt_items",
        "data": items(1, 5),
        "count": 5,
        "has_more": True,
        "next_cursor": [5],
    }
    conn = row(site, token_hash)
    assert (conn.records_downloaded, conn.downloads_used) == (5, 1)
    for endpoint in ENDPOINTS:
        r = call(client, endpoint, token_hash, after=[5])
        assert (r.status_code, r.json) == (403, RECORD_LIMIT), endpoint
    r = call(client, "pull-data", token_hash)
    assert (r.status_code, r.json) == (403, RECORD_LIMIT)
    assert row(site, token_hash).records_downloaded == 5
    [t] = send_transfers(site)
    assert (t.status, t.records_transferred) == ("in_progress", 5)


def test_record_limit_clamps_a_page_to_what_is_left(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = sender(site, max_records_total=7)
    assert call(client, "pull-data", token_hash, limit=4).json["data"] == items(1, 4)
    r = call(client, "pull-data", token_hash, limit=4, after=[4])
    assert r.json == {
        "success": True,
        "table": "dt_items",
        "data": items(5, 7),
        "count": 3,
        "has_more": True,
        "next_cursor": [7],
    }
    r = call(client, "pull-data", token_hash, limit=4, after=[7])
    assert (r.status_code, r.json) == (403, RECORD_LIMIT)
    assert row(site, token_hash).records_downloaded == 7


def test_rate_limit(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    for endpoint in ENDPOINTS:
        token_hash = sender(site, rate_limit_requests_per_minute=3)
        for _ in range(3):
            assert call(client, endpoint, token_hash).status_code == 200, endpoint
        r = call(client, endpoint, token_hash)
        assert (r.status_code, r.json) == (429, RATE_LIMITED), endpoint
        assert 1 <= int(r.headers["retry-after"]) <= 60
        # the rate limit wins over the table rules and an unknown table
        r = call(client, endpoint, token_hash, table="no_such_table")
        assert (r.status_code, r.json) == (429, RATE_LIMITED)
        assert "retry-after" in r.headers
    # refused calls are not served: three pulls were counted, not five
    assert row(site, token_hash).downloads_used == 3
    # another connection has its own budget
    other = sender(site, rate_limit_requests_per_minute=3)
    assert call(client, "list-tables", other).status_code == 200


# ================================================================== table rules / 404


def test_table_rules(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items", "dt_secret")
    enable(site)
    both = sender(
        site, allowed_tables=["dt_items", "dt_secret"], excluded_tables=["dt_items"]
    )
    only_secret = sender(site, allowed_tables=["dt_secret"])
    allowed_missing = sender(site, allowed_tables=["no_such_table"])
    excluded_only = sender(site, excluded_tables=["dt_secret"])
    for endpoint in TABLE_ENDPOINTS:
        # excluded wins over allowed
        r = call(client, endpoint, both, table="dt_items")
        assert (r.status_code, r.json) == (403, NOT_AUTHORISED), endpoint
        assert call(client, endpoint, both, table="dt_secret").status_code == 200
        # a non-empty allow-list without the table
        r = call(client, endpoint, only_secret, table="dt_items")
        assert (r.status_code, r.json) == (403, NOT_AUTHORISED)
        # the table rules are checked before the table's existence
        r = call(client, endpoint, only_secret, table="no_such_table")
        assert (r.status_code, r.json) == (403, NOT_AUTHORISED)
        r = call(client, endpoint, allowed_missing, table="no_such_table")
        assert (r.status_code, r.json) == (404, TABLE_NOT_FOUND)
        assert (
            call(client, endpoint, excluded_only, table="dt_items").status_code == 200
        )
        r = call(client, endpoint, excluded_only, table="dt_secret")
        assert (r.status_code, r.json) == (403, NOT_AUTHORISED)


NEVER_OFFERED = [
    "no_such_table",
    "dt_items; DROP TABLE dt_items; --",
    'dt_items" --',
    "dt_items'",
    "DT_ITEMS",
    " dt_items",
    "public.dt_items",
    '"dt_items"',
    "dbsync_connections",
    "dbsync_settings",
    "dbsync_counters",
    "dbsync_transfers",
    "dbsync_audit_events",
    "dbsync_pull_checkpoints",
    "alembic_version",
    "pg_class",
    "information_schema.tables",
]


def test_tables_that_are_never_offered(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = sender(site, rate_limit_requests_per_minute=1000)
    # even when the connection's allow-list names them
    named = sender(
        site, allowed_tables=["dbsync_connections", "alembic_version", "dt_items"]
    )
    for endpoint in TABLE_ENDPOINTS:
        for name in NEVER_OFFERED:
            r = call(client, endpoint, token_hash, table=name)
            assert (r.status_code, r.json) == (404, TABLE_NOT_FOUND), (endpoint, name)
        for name in ("dbsync_connections", "alembic_version"):
            r = call(client, endpoint, named, table=name)
            assert (r.status_code, r.json) == (404, TABLE_NOT_FOUND)
    with site.db.data_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM dt_items")).scalar_one() == 10
    assert send_transfers(site) == []


@pytest.mark.parametrize("settings_env", [{"SYNC_EXCLUDED_TABLES": "dt_secret, other"}])
def test_globally_excluded_tables_are_not_offered(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items", "dt_secret")
    enable(site)
    token_hash = sender(site)
    assert [
        t["name"] for t in call(client, "list-tables", token_hash).json["tables"]
    ] == ["dt_items"]
    for endpoint in TABLE_ENDPOINTS:
        r = call(client, endpoint, token_hash, table="dt_secret")
        assert (r.status_code, r.json) == (404, TABLE_NOT_FOUND)


def test_every_check_wins_over_the_next_one(
    site: Site,
    client: testing.TestClient,
    tables: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One connection that fails every control; lift them one at a time."""
    tables("dt_items")
    enable(site)
    now = dt.datetime.now(dt.UTC).replace(hour=12)
    monkeypatch.setattr(access, "utcnow", lambda: now)
    token_hash = sender(
        site,
        status="suspended",
        expires_at=now - dt.timedelta(hours=1),
        ip_allowlist=["10.0.0.0/8"],
        allowed_hours_start=13,
        allowed_hours_end=1,
        max_downloads=0,
        max_records_total=0,
        rate_limit_requests_per_minute=1,
        excluded_tables=["no_such_table"],
        allowed_tables=["dt_secret", "no_such_table"],
    )

    def pull(table: str = "no_such_table") -> testing.Result:
        return call(client, "pull-data", token_hash, table=table)

    # a missing field wins over everything after the module switch
    r = post(client, "pull-data", {"auth_token_hash": token_hash})
    assert (r.status_code, r.json) == (
        400,
        err("Missing required fields", fields=["table_name"]),
    )
    steps: list[tuple[dict[str, Any], int, dict[str, Any]]] = [
        ({}, 403, NOT_ACTIVE),
        ({"status": "active"}, 403, EXPIRED),
        ({"status": "active", "expires_at": None}, 403, IP_NOT_ALLOWED),
        ({"ip_allowlist": ["127.0.0.0/8"]}, 403, OUTSIDE_HOURS),
        ({"allowed_hours_start": 11, "allowed_hours_end": 13}, 403, DOWNLOAD_LIMIT),
        ({"max_downloads": None}, 403, RECORD_LIMIT),
        (
            {"max_records_total": None},
            403,
            NOT_AUTHORISED,
        ),  # uses the 1 request allowed
        ({}, 429, RATE_LIMITED),
        ({"rate_limit_requests_per_minute": 100}, 403, NOT_AUTHORISED),
        ({"excluded_tables": []}, 404, TABLE_NOT_FOUND),
    ]
    for change, status, body in steps:
        update(site, token_hash, **change)
        r = pull()
        assert (r.status_code, r.json) == (status, body), change
    r = pull("dt_items")
    assert (r.status_code, r.json) == (403, NOT_AUTHORISED)
    update(site, token_hash, allowed_tables=[])
    r = pull("dt_items")
    assert r.status_code == 200
    assert r.json["data"] == items(1, 10)


# ================================================================== list-tables


def _checksum(rows: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for r in rows:
        digest.update(
            json.dumps(r, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        )
    return digest.hexdigest()


def _size(site: Site, name: str) -> int:
    with site.db.data_engine.connect() as conn:
        return conn.execute(
            text("SELECT pg_total_relation_size(CAST(:t AS regclass))"),
            {"t": f"public.{name}"},
        ).scalar_one()


def test_list_tables(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items", "dt_parents", "dt_children", "dt_nopk", "dt_words")
    enable(site)
    token_hash = sender(site)
    catalog = site.catalog()
    r = call(client, "list-tables", token_hash)
    assert r.status_code == 200
    expected = [
        {
            "name": "dt_children",
            "row_count": 21,
            "primary_key": ["parent_id", "seq"],
            "depends_on": ["dt_parents"],
        },
        {"name": "dt_items", "row_count": 10, "primary_key": ["id"], "depends_on": []},
        {"name": "dt_nopk", "row_count": 3, "primary_key": [], "depends_on": []},
        {"name": "dt_parents", "row_count": 3, "primary_key": ["id"], "depends_on": []},
        {"name": "dt_words", "row_count": 3, "primary_key": ["w"], "depends_on": []},
    ]
    for t in expected:
        t["size_bytes"] = _size(site, t["name"])
        t["checksum"] = catalog.checksum(t["name"])
    assert r.json == {"success": True, "tables": expected}
    # the protocol's checksum: SHA-256 over sorted-key compact JSON lines, key order
    assert r.json["tables"][1]["checksum"] == _checksum(items(1, 10))
    assert r.json["tables"][4]["checksum"] == _checksum(
        [{"w": "alpha"}, {"w": "beta"}, {"w": "gamma"}]
    )
    assert row(site, token_hash).last_connected_at is not None
    # filtered by the connection's rules; own tables never appear, even when allowed
    ruled = sender(
        site,
        allowed_tables=[
            "dt_items",
            "dt_parents",
            "dbsync_connections",
            "alembic_version",
            "dbsync_settings",
        ],
        excluded_tables=["dt_parents"],
    )
    r = call(client, "list-tables", ruled)
    assert r.status_code == 200
    assert r.json == {"success": True, "tables": [expected[1]]}
    excluded = sender(site, excluded_tables=["dt_children", "dt_words"])
    assert r.status_code == 200
    assert call(client, "list-tables", excluded).json == {
        "success": True,
        "tables": [expected[1], expected[2], expected[3]],
    }
    nothing = sender(site, allowed_tables=["dbsync_connections"])
    assert call(client, "list-tables", nothing).json == {"success": True, "tables": []}


def test_list_tables_never_offers_the_service_tables(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    enable(site)
    token_hash = sender(site)
    r = call(client, "list-tables", token_hash)
    assert r.status_code == 200
    assert r.json == {"success": True, "tables": []}


@pytest.mark.parametrize("settings_env", [{"SYNC_CHECKSUM_ROW_LIMIT": "5"}])
def test_list_tables_checksum_is_null_above_the_row_limit(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items", "dt_parents")
    enable(site)
    token_hash = sender(site)
    r = call(client, "list-tables", token_hash)
    assert r.status_code == 200
    assert r.json == {
        "success": True,
        "tables": [
            {
                "name": "dt_items",
                "row_count": 10,
                "size_bytes": _size(site, "dt_items"),
                "primary_key": ["id"],
                "depends_on": [],
                "checksum": None,
            },
            {
                "name": "dt_parents",
                "row_count": 3,
                "size_bytes": _size(site, "dt_parents"),
                "primary_key": ["id"],
                "depends_on": [],
                "checksum": _checksum(
                    [
                        {"id": 1, "name": "one"},
                        {"id": 2, "name": "two"},
                        {"id": 3, "name": "three"},
                    ]
                ),
            },
        ],
    }


# ================================================================== table-schema


def test_table_schema(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_parents", "dt_children")
    enable(site)
    token_hash = sender(site)
    r = call(client, "table-schema", token_hash, table="dt_children")
    assert r.status_code == 200

    def col(
        name: str,
        type_: str,
        nullable: bool,
        pk: bool,
        default: str | None = None,
        max_length: int | None = None,
        precision: int | None = None,
        scale: int | None = None,
    ) -> dict[str, Any]:
        return {
            "name": name,
            "type": type_,
            "nullable": nullable,
            "primary_key": pk,
            "default": default,
            "max_length": max_length,
            "precision": precision,
            "scale": scale,
        }

    assert r.json == {
        "success": True,
        "table": "dt_children",
        "schema": {
            "columns": [
                col("parent_id", "integer", False, True, precision=32, scale=0),
                col("seq", "integer", False, True, precision=32, scale=0),
                col("code", "character varying(40)", False, False, max_length=40),
                col("price", "numeric(10,2)", True, False, precision=10, scale=2),
                col("qty", "integer", False, False, default="0", precision=32, scale=0),
            ],
            "primary_key": ["parent_id", "seq"],
            "foreign_keys": [
                {
                    "columns": ["parent_id"],
                    "references_table": "dt_parents",
                    "references_columns": ["id"],
                }
            ],
            "unique": [["code"]],
        },
    }
    r = call(client, "table-schema", token_hash, table="dt_parents")
    assert r.json["schema"]["foreign_keys"] == []
    assert r.json["schema"]["unique"] == []
    assert r.json["schema"]["primary_key"] == ["id"]


# ================================================================== table-records


def rows_(first: int, last: int) -> list[dict[str, Any]]:
    return [{"id": i, "label": f"row {i}"} for i in range(first, last + 1)]


def preview(
    first: int, last: int, limit: int, offset: int, has_more: bool
) -> dict[str, Any]:
    return {
        "success": True,
        "table": "dt_rows",
        "records": rows_(first, last) if last else [],
        "limit": limit,
        "offset": offset,
        "has_more": has_more,
    }


def test_table_records_paging(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_rows")
    enable(site)
    token_hash = sender(site, rate_limit_requests_per_minute=1000)

    def rec(**extra: Any) -> testing.Result:
        r = call(client, "table-records", token_hash, table="dt_rows", **extra)
        assert r.status_code == 200, r.json
        return r

    assert rec().json == preview(1, 10, 10, 0, True)
    assert rec(limit=500).json == preview(1, 100, 100, 0, True)
    assert rec(limit=100, offset=100).json == preview(101, 150, 100, 100, False)
    assert rec(limit=10, offset=140).json == preview(141, 150, 10, 140, False)
    assert rec(limit=10, offset=139).json == preview(140, 149, 10, 139, True)
    assert rec(limit=5, offset=150).json == preview(0, 0, 5, 150, False)
    assert rec(limit="3", offset="2").json == preview(
        3, 5, 3, 2, True
    )  # PhoenixKit strings
    assert rec(limit=None, offset="").json == preview(1, 10, 10, 0, True)
    r = rec(ids=[7, 3, 200, 3])
    assert r.json == {
        "success": True,
        "table": "dt_rows",
        "records": [{"id": 3, "label": "row 3"}, {"id": 7, "label": "row 7"}],
        "limit": 10,
        "offset": 0,
        "has_more": False,
    }
    assert rec(ids=["7", 3.0]).json["records"] == [
        {"id": 3, "label": "row 3"},
        {"id": 7, "label": "row 7"},
    ]
    assert rec(ids=[]).json == preview(1, 10, 10, 0, True)  # empty list = no filter
    assert rec(id_start=20, id_end=25).json == preview(20, 25, 10, 0, False)
    assert rec(id_start=20, id_end=35).json == preview(20, 29, 10, 0, True)
    assert rec(id_start=20, id_end=35, offset=10).json == preview(30, 35, 10, 10, False)
    assert rec(id_start=145).json == preview(145, 150, 10, 0, False)
    assert rec(id_end=3).json == preview(1, 3, 10, 0, False)
    assert rec(id_start="148", id_end="149").json == preview(148, 149, 10, 0, False)
    assert rec(id_start=30, id_end=20).json == preview(0, 0, 10, 0, False)
    assert rec(
        ids=list(range(1, 151)), id_start=50, id_end=52, limit=100
    ).json == preview(50, 52, 100, 0, False)


def test_table_records_is_capped_by_max_records_per_request(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_rows")
    enable(site)
    token_hash = sender(site, max_records_per_request=7)
    r = call(client, "table-records", token_hash, table="dt_rows", limit=50)
    assert r.json == preview(1, 7, 7, 0, True)
    # a preview is not a download
    conn = row(site, token_hash)
    assert (conn.downloads_used, conn.records_downloaded) == (0, 0)


def test_table_records_composite_and_text_keys(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_parents", "dt_children", "dt_words", "dt_nopk")
    enable(site)
    token_hash = sender(site)
    r = call(client, "table-records", token_hash, table="dt_children", ids=[2], limit=3)
    assert r.json == {
        "success": True,
        "table": "dt_children",
        "limit": 3,
        "offset": 0,
        "has_more": True,
        "records": [
            {
                "parent_id": 2,
                "seq": s,
                "code": f"c-2-{s}",
                "price": f"{20 + s}.25",
                "qty": 0,
            }
            for s in (1, 2, 3)
        ],
    }
    r = call(client, "table-records", token_hash, table="dt_words", id_start="b")
    assert r.json == {
        "success": True,
        "table": "dt_words",
        "limit": 10,
        "offset": 0,
        "has_more": False,
        "records": [{"w": "beta"}, {"w": "gamma"}],
    }
    r = call(client, "table-records", token_hash, table="dt_nopk", limit=2)
    assert r.status_code == 200
    assert r.json["has_more"] is True
    assert len(r.json["records"]) == 2
    r = call(client, "table-records", token_hash, table="dt_nopk", ids=[1])
    assert r.status_code == 400
    assert r.json == err("Invalid filter: the table has no primary key")


PREVIEW_BAD = [
    ({"limit": -1}, err("Field limit must be >= 1", field="limit")),
    ({"limit": "-1"}, err("Field limit must be >= 1", field="limit")),
    ({"limit": 0}, err("Field limit must be >= 1", field="limit")),
    ({"limit": "abc"}, err("Field limit must be an integer", field="limit")),
    ({"limit": 1.5}, err("Field limit must be an integer", field="limit")),
    ({"limit": True}, err("Field limit must be an integer", field="limit")),
    ({"limit": [10]}, err("Field limit must be an integer", field="limit")),
    ({"offset": -1}, err("Field offset must be >= 0", field="offset")),
    ({"offset": 10**13}, err("Field offset must be <= 1000000000000", field="offset")),
    ({"offset": "x"}, err("Field offset must be an integer", field="offset")),
    ({"ids": "1,2"}, err("Field ids must be a list", field="ids")),
    ({"ids": {"a": 1}}, err("Field ids must be a list", field="ids")),
    ({"ids": 5}, err("Field ids must be a list", field="ids")),
    ({"ids": ["x"]}, err('Invalid filter: id: expected an integer, got "x"')),
    ({"ids": [1, None]}, err("Invalid filter: id: null is not a key value")),
    ({"ids": [1.5]}, err("Invalid filter: id: expected an integer, got 1.5")),
    ({"ids": [True]}, err("Invalid filter: id: expected an integer, got a boolean")),
    ({"ids": [[1]]}, err("Invalid filter: id: expected an integer, got [1]")),
    (
        {"ids": list(range(1001))},
        err("Field ids may hold at most 1000 values", field="ids"),
    ),
    ({"id_start": "abc"}, err('Invalid filter: id: expected an integer, got "abc"')),
    ({"id_end": "1.5"}, err('Invalid filter: id: expected an integer, got "1.5"')),
    (
        {"id_end": [1]},
        err("Field id_end must be a string or an integer or float", field="id_end"),
    ),
    (
        {"id_start": True},
        err("Field id_start must be a string or an integer or float", field="id_start"),
    ),
    (
        {"table_name": ["dt_rows"]},
        err("Field table_name must be a string", field="table_name"),
    ),
    (
        {"table_name": "dt\x00rows"},
        err("Field table_name contains a NUL character", field="table_name"),
    ),
]


def test_table_records_bad_values(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_rows")
    enable(site)
    token_hash = sender(site, rate_limit_requests_per_minute=1000)
    for extra, expected in PREVIEW_BAD:
        body = {"auth_token_hash": token_hash, "table_name": "dt_rows", **extra}
        r = post(client, "table-records", body)
        assert (r.status_code, r.json) == (400, expected), extra


def _answers(
    client: testing.TestClient,
    endpoint: str,
    token_hash: str,
    table: str,
    cases: list[dict[str, Any]],
) -> list[tuple[int, Any]]:
    out = []
    for extra in cases:
        r = post(
            client,
            endpoint,
            {"auth_token_hash": token_hash, "table_name": table, **extra},
        )
        out.append(
            (r.status_code, r.json.get("field") if r.status_code == 400 else r.json)
        )
    return out


def test_key_values_beyond_the_column_type_are_400_not_500(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    """A filter or cursor value that is an integer, but not an `integer`, is bad input.

    Found: PostgreSQL raises "integer out of range" on the CAST and the
    request ends in 500 "Internal server error".
    """
    tables("dt_rows")
    enable(site)
    token_hash = sender(site, rate_limit_requests_per_minute=1000)
    preview_cases = [
        {"ids": [99999999999]},
        {"id_start": 2**40},
        {"id_end": "99999999999999999999"},
        {"ids": [1e20]},
    ]
    assert (
        _answers(client, "table-records", token_hash, "dt_rows", preview_cases)
        == [(400, None)] * 4
    )
    pull_cases = [
        {"after": [99999999999]},
        {"after": [2**40]},
        {"after": ["99999999999999999999"]},
        {"after": [1e20]},
    ]
    assert (
        _answers(client, "pull-data", token_hash, "dt_rows", pull_cases)
        == [(400, "after")] * 4
    )


def test_integer_fields_given_as_odd_digit_strings_are_400_not_500(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    """PhoenixKit sends limits as numeric strings; odd ones must not crash.

    Found: shared/validation.py check_value accepts any str whose
    .strip().lstrip("-").isdigit() is true and calls int() on it, which raises
    ValueError (-> 500) for "\u00b2" (isdigit but not decimal), "--5", and
    more than 4300 digits.
    """
    tables("dt_rows")
    enable(site)
    token_hash = sender(site, rate_limit_requests_per_minute=1000)
    cases = [{"limit": "\u00b2"}, {"offset": "--5"}, {"limit": "1" * 5000}]
    assert _answers(client, "table-records", token_hash, "dt_rows", cases) == [
        (400, "limit"),
        (400, "offset"),
        (400, "limit"),
    ]
    assert _answers(
        client, "pull-data", token_hash, "dt_rows", [{"limit": "\u00b2"}]
    ) == [(400, "limit")]


def test_text_keys_with_a_nul_character_are_400_not_500(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    """Top-level strings are checked for NUL; values inside `ids` and `after` are not.

    Found: psycopg2 refuses NUL in a bound string with ValueError -> 500.
    """
    tables("dt_words")
    enable(site)
    token_hash = sender(site, rate_limit_requests_per_minute=1000)
    cases = [
        {"ids": ["a\x00b"]},
        {"ids": ["ok", "\x00"]},
        {"id_start": "a\x00"},
        {"id_end": "\x00"},
    ]
    assert _answers(client, "table-records", token_hash, "dt_words", cases) == [
        (400, None),
        (400, None),
        (400, "id_start"),
        (400, "id_end"),
    ]
    assert _answers(
        client, "pull-data", token_hash, "dt_words", [{"after": ["a\x00b"]}]
    ) == [(400, "after")]


# ================================================================== pull-data


def test_phoenixkit_style_pull(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = sender(site, max_records_per_request=4)
    r = post(
        client,
        "pull-data",
        {
            "auth_token_hash": token_hash,
            "table_name": "dt_items",
            "conflict_strategy": "overwrite",
        },
    )
    assert r.status_code == 200
    assert r.json == {
        "success": True,
        "table": "dt_items",
        "data": items(1, 4),
        "count": 4,
        "has_more": True,
        "next_cursor": [4],
    }
    conn = row(site, token_hash)
    assert (
        conn.downloads_used,
        conn.records_downloaded,
        conn.total_transfers,
        conn.total_records_transferred,
    ) == (1, 4, 1, 4)
    assert conn.last_transfer_at is not None
    [t] = send_transfers(site)
    assert (
        t.direction,
        t.table_name,
        t.status,
        t.conflict_strategy,
        t.records_transferred,
        t.connection_id,
        t.remote_site_url,
        t.requester_ip,
    ) == (
        "send",
        "dt_items",
        "in_progress",
        "overwrite",
        4,
        conn.id,
        conn.site_url,
        "127.0.0.1",
    )
    # a larger limit than the connection allows is capped
    r = call(client, "pull-data", token_hash, limit=1000, after=[4])
    assert r.json == {
        "success": True,
        "table": "dt_items",
        "data": items(5, 8),
        "count": 4,
        "has_more": True,
        "next_cursor": [8],
    }


def test_a_whole_table_in_one_pull_without_conflict_strategy(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = sender(site)
    r = call(client, "pull-data", token_hash)
    assert r.json == {
        "success": True,
        "table": "dt_items",
        "data": items(1, 10),
        "count": 10,
        "has_more": False,
        "next_cursor": None,
    }
    [t] = send_transfers(site)
    assert (t.status, t.conflict_strategy, t.records_transferred, t.meta) == (
        "completed",
        "skip",
        10,
        {"pages": 1},
    )
    assert t.completed_at is not None


def _pull_all(
    client: testing.TestClient,
    token_hash: str,
    table: str,
    limit: int | None,
    key: Callable[[dict[str, Any]], list[Any]],
) -> tuple[list[dict[str, Any]], list[int]]:
    got: list[dict[str, Any]] = []
    sizes: list[int] = []
    after = None
    while True:
        body: dict[str, Any] = {
            "auth_token_hash": token_hash,
            "table_name": table,
            "conflict_strategy": "merge",
        }
        if limit is not None:
            body["limit"] = limit
        if after is not None:
            body["after"] = after
        r = post(client, "pull-data", body)
        assert r.status_code == 200, r.text
        page = r.json
        assert page["count"] == len(page["data"])
        got += page["data"]
        sizes.append(page["count"])
        if not page["has_more"]:
            assert page["next_cursor"] is None
            return got, sizes
        assert page["next_cursor"] == key(page["data"][-1])
        after = page["next_cursor"]


@pytest.mark.parametrize(
    ("max_per_request", "limit", "sizes"),
    [
        (10_000, 100, [100] * 23 + [45]),
        (250, 1000, [250] * 9 + [95]),
        (250, None, [250] * 9 + [95]),
    ],
)
def test_paging_a_large_table_returns_every_row_once(
    site: Site,
    client: testing.TestClient,
    tables: Callable[..., None],
    max_per_request: int,
    limit: int | None,
    sizes: list[int],
) -> None:
    tables("dt_big")
    enable(site)
    token_hash = sender(site, max_records_per_request=max_per_request)
    got, page_sizes = _pull_all(
        client, token_hash, "dt_big", limit, lambda r: [r["id"]]
    )
    assert got == [{"id": i, "v": f"v{i}"} for i in range(1, 2346)]
    assert page_sizes == sizes
    conn = row(site, token_hash)
    assert (
        conn.downloads_used,
        conn.records_downloaded,
        conn.total_transfers,
        conn.total_records_transferred,
    ) == (1, 2345, 1, 2345)
    [t] = send_transfers(site)
    assert (
        t.direction,
        t.table_name,
        t.status,
        t.records_transferred,
        t.conflict_strategy,
        t.connection_id,
        t.meta,
    ) == ("send", "dt_big", "completed", 2345, "merge", conn.id, {"pages": len(sizes)})
    assert t.completed_at is not None


@pytest.mark.parametrize("settings_env", [{"SYNC_JSON_PAGE_CAP": "1000"}])
def test_the_site_json_page_cap_bounds_a_page(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_big")
    enable(site)
    token_hash = sender(site)
    r = call(client, "pull-data", token_hash, table="dt_big", limit=5000)
    assert r.json["count"] == 1000
    assert r.json["next_cursor"] == [1000]


def test_a_composite_key_table_pages_correctly(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_parents", "dt_children")
    enable(site)
    token_hash = sender(site)
    got, sizes = _pull_all(
        client, token_hash, "dt_children", 4, lambda r: [r["parent_id"], r["seq"]]
    )
    assert got == [
        {
            "parent_id": p,
            "seq": s,
            "code": f"c-{p}-{s}",
            "price": f"{p * 10 + s}.25",
            "qty": 0,
        }
        for p in (1, 2, 3)
        for s in range(1, 8)
    ]
    assert sizes == [4, 4, 4, 4, 4, 1]
    r = call(
        client, "pull-data", token_hash, table="dt_children", limit=2, after=[2, 6]
    )
    assert r.json["data"] == [
        {"parent_id": 2, "seq": 7, "code": "c-2-7", "price": "27.25", "qty": 0},
        {"parent_id": 3, "seq": 1, "code": "c-3-1", "price": "31.25", "qty": 0},
    ]
    assert r.json["next_cursor"] == [3, 1]
    # a cursor between keys (not a row) continues at the next key
    r = call(
        client, "pull-data", token_hash, table="dt_children", limit=1, after=[2, 100]
    )
    assert r.json["data"][0]["code"] == "c-3-1"


def test_a_text_key_table_pages_in_key_order(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_words")
    enable(site)
    token_hash = sender(site)
    got, sizes = _pull_all(client, token_hash, "dt_words", 2, lambda r: [r["w"]])
    assert got == [{"w": "alpha"}, {"w": "beta"}, {"w": "gamma"}]
    assert sizes == [2, 1]


BAD_CURSORS = [
    (
        "dt_items",
        [],
        err("Invalid cursor: expected a list of 1 key value(s)", field="after"),
    ),
    (
        "dt_items",
        [1, 2],
        err("Invalid cursor: expected a list of 1 key value(s)", field="after"),
    ),
    (
        "dt_items",
        ["x"],
        err('Invalid cursor: id: expected an integer, got "x"', field="after"),
    ),
    (
        "dt_items",
        ["4.5"],
        err('Invalid cursor: id: expected an integer, got "4.5"', field="after"),
    ),
    (
        "dt_items",
        [None],
        err("Invalid cursor: id: a key value cannot be null", field="after"),
    ),
    (
        "dt_items",
        [{"id": 1}],
        err('Invalid cursor: id: expected an integer, got {"id": 1}', field="after"),
    ),
    (
        "dt_items",
        [[1]],
        err("Invalid cursor: id: expected an integer, got [1]", field="after"),
    ),
    (
        "dt_items",
        [True],
        err("Invalid cursor: id: expected an integer, got a boolean", field="after"),
    ),
    ("dt_items", "4", err("Field after must be a list", field="after")),
    ("dt_items", 4, err("Field after must be a list", field="after")),
    ("dt_items", {"id": 4}, err("Field after must be a list", field="after")),
    (
        "dt_children",
        [1],
        err("Invalid cursor: expected a list of 2 key value(s)", field="after"),
    ),
    (
        "dt_children",
        [1, "x"],
        err('Invalid cursor: seq: expected an integer, got "x"', field="after"),
    ),
    (
        "dt_nopk",
        [1],
        err(
            "Invalid cursor: a table without a primary key has a single page",
            field="after",
        ),
    ),
]


def test_pull_data_bad_cursor(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items", "dt_parents", "dt_children", "dt_nopk")
    enable(site)
    token_hash = sender(site, rate_limit_requests_per_minute=1000)
    for table, after, expected in BAD_CURSORS:
        r = call(client, "pull-data", token_hash, table=table, after=after)
        assert (r.status_code, r.json) == (400, expected), (table, after)
    assert send_transfers(site) == []
    assert row(site, token_hash).records_downloaded == 0


PULL_BAD = [
    (
        {"conflict_strategy": "yolo"},
        err("Invalid conflict_strategy", field="conflict_strategy"),
    ),
    (
        {"conflict_strategy": "SKIP"},
        err("Invalid conflict_strategy", field="conflict_strategy"),
    ),
    (
        {"conflict_strategy": 1},
        err("Field conflict_strategy must be a string", field="conflict_strategy"),
    ),
    (
        {"conflict_strategy": ["skip"]},
        err("Field conflict_strategy must be a string", field="conflict_strategy"),
    ),
    (
        {"conflict_strategy": "x" * 33},
        err("Field conflict_strategy is too long", field="conflict_strategy"),
    ),
    ({"limit": 0}, err("Field limit must be >= 1", field="limit")),
    ({"limit": -5}, err("Field limit must be >= 1", field="limit")),
    ({"limit": "ten"}, err("Field limit must be an integer", field="limit")),
    ({"limit": 2.0}, err("Field limit must be an integer", field="limit")),
    ({"limit": False}, err("Field limit must be an integer", field="limit")),
    ({"table_name": 7}, err("Field table_name must be a string", field="table_name")),
    (
        {"table_name": {"a": 1}},
        err("Field table_name must be a string", field="table_name"),
    ),
    (
        {"table_name": "t" * 256},
        err("Field table_name is too long", field="table_name"),
    ),
    (
        {"table_name": "dt_items\x00"},
        err("Field table_name contains a NUL character", field="table_name"),
    ),
    (
        {"auth_token_hash": ["x"]},
        err("Field auth_token_hash must be a string", field="auth_token_hash"),
    ),
    (
        {"auth_token_hash": 5},
        err("Field auth_token_hash must be a string", field="auth_token_hash"),
    ),
    (
        {"auth_token_hash": "a" * 129},
        err("Field auth_token_hash is too long", field="auth_token_hash"),
    ),
    (
        {"auth_token_hash": "a\x00"},
        err("Field auth_token_hash contains a NUL character", field="auth_token_hash"),
    ),
]


def test_pull_data_bad_fields(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = sender(site, rate_limit_requests_per_minute=1000)
    for extra, expected in PULL_BAD:
        r = post(
            client,
            "pull-data",
            {"auth_token_hash": token_hash, "table_name": "dt_items", **extra},
        )
        assert (r.status_code, r.json) == (400, expected), extra
    # a refused pull counts no download and keeps no transfer
    conn = row(site, token_hash)
    assert (conn.downloads_used, conn.records_downloaded, conn.total_transfers) == (
        0,
        0,
        0,
    )
    assert send_transfers(site) == []


def test_a_table_without_a_primary_key(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_nopk")
    enable(site)
    token_hash = sender(site)
    r = call(client, "pull-data", token_hash, table="dt_nopk")
    assert r.status_code == 200
    assert r.json == {
        "success": True,
        "table": "dt_nopk",
        "data": [{"a": 1, "b": "a"}, {"a": 2, "b": "b"}, {"a": 3, "b": "c"}],
        "count": 3,
        "has_more": False,
        "next_cursor": None,
    }
    r = call(client, "pull-data", token_hash, table="dt_nopk", limit=2)
    assert r.status_code == 409
    assert r.json == err(
        "Table dt_nopk has no primary key and more rows (3) than one page (2);"
        " it cannot be paged safely"
    )
    conn = row(site, token_hash)
    assert (conn.downloads_used, conn.records_downloaded, conn.total_transfers) == (
        1,
        3,
        1,
    )
    [t] = send_transfers(site)
    assert (t.status, t.records_transferred) == ("completed", 3)


# ================================================================== values on the wire


def test_values_on_the_wire(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_values")
    enable(site)
    token_hash = sender(site)
    r = call(client, "pull-data", token_hash, table="dt_values")
    assert r.status_code == 200

    def b64(data: bytes) -> dict[str, str]:
        return {"__phoenix_kit_binary__": base64.b64encode(data).decode()}

    expected = [
        {
            "id": 1,
            "amount": "1234567890.123456",
            "ratio": "NaN",
            "blob": b64(b"\x00\xff\x10"),
            "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "at": "2024-03-01T10:34:56.789000+00:00",
            "doc": {"a": None, "b": [1, 2.5, "x"]},
            "nums": [1, None, 3],
        },
        {
            "id": 2,
            "amount": "0.000001",
            "ratio": "Infinity",
            "blob": b64(b""),
            "uid": "00000000-0000-0000-0000-000000000000",
            "at": "2000-01-01T07:59:59+00:00",
            "doc": [],
            "nums": [],
        },
        {
            "id": 3,
            "amount": "-1.500000",
            "ratio": "-Infinity",
            "blob": b64(b"\xde\xad\xbe\xef"),
            "uid": None,
            "at": "2024-06-30T00:00:00+00:00",
            "doc": "s",
            "nums": [-7],
        },
        # JSON null in a jsonb column stays apart from SQL NULL (README, shared/wire.py)
        {
            "id": 4,
            "amount": "NaN",
            "ratio": 0.1,
            "blob": None,
            "uid": None,
            "at": None,
            "doc": {"__dbsync_json_null__": True},
            "nums": None,
        },
        {
            "id": 5,
            "amount": None,
            "ratio": None,
            "blob": None,
            "uid": None,
            "at": None,
            "doc": None,
            "nums": None,
        },
    ]
    assert r.json == {
        "success": True,
        "table": "dt_values",
        "data": expected,
        "count": 5,
        "has_more": False,
        "next_cursor": None,
    }
    # the raw text: NaN/Infinity are JSON strings, never bare tokens
    assert '"ratio":"NaN"' in r.text and '"ratio":"Infinity"' in r.text
    # the preview and the checksum use the same encoding
    p = call(client, "table-records", token_hash, table="dt_values")
    assert p.json["records"] == expected
    listed = call(client, "list-tables", token_hash).json["tables"]
    assert (
        listed[0]["checksum"]
        == hashlib.sha256(
            b"".join(
                json.dumps(
                    e, sort_keys=True, separators=(",", ":"), ensure_ascii=False
                ).encode()
                + b"\n"
                for e in expected
            )
        ).hexdigest()
    )


# ================================================================== hostile bodies


def test_bodies_that_are_not_json_objects(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = sender(site, rate_limit_requests_per_minute=1000)
    huge = json.dumps(
        {
            "auth_token_hash": token_hash,
            "table_name": "dt_items",
            "pad": "x" * 1_048_576,
        }
    ).encode()
    fits = json.dumps(
        {
            "auth_token_hash": token_hash,
            "table_name": "dt_items",
            "pad": "x" * 1_000_000,
        }
    ).encode()
    for endpoint in ENDPOINTS:
        for raw in (
            b"",
            b"not json",
            b"[1, 2]",
            b'"str"',
            b"null",
            b"42",
            b"{",
            b"\xff\xfe",
            b'{"auth_token_hash": "a"',
            b"[" * 10_000,
            b"\x00",
            b'{"a": NaN}',
        ):
            r = post(client, endpoint, raw)
            assert (r.status_code, r.json) == (400, INVALID_JSON), (endpoint, raw[:20])
        r = post(client, endpoint, huge)
        assert (r.status_code, r.json) == (413, TOO_LARGE), endpoint
        # a body just under the limit with a huge unknown field is fine
        assert post(client, endpoint, fits).status_code == 200
        r = post(
            client,
            endpoint,
            {"auth_token_hash": "a" * 500_000, "table_name": "t" * 500_000},
        )
        assert (r.status_code, r.json) == (
            400,
            err("Field auth_token_hash is too long", field="auth_token_hash"),
        )
        r = post(
            client,
            endpoint,
            {"auth_token_hash": token_hash, "table_name": "\x00" * 100},
        )
        expected = 200 if endpoint == "list-tables" else 400
        assert r.status_code == expected, endpoint


NASTY = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\u202e",
    "\U0001f600",
    "'; DROP TABLE dt_items; --",
    "dt_items",
    "dt_nopk",
    "dt_children",
    "dbsync_connections",
    "alembic_version",
    "NaN",
    "\u00b2",
    "--1",
    "-0",
    "1e3",
    "0x10",
    "9" * 30,
]
scalars = st.one_of(
    st.sampled_from(NASTY),
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
values = st.recursive(
    scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.dictionaries(st.text(max_size=8), kids, max_size=4),
    ),
    max_leaves=12,
)
huge_strings = st.builds(
    lambda ch, n: ch * n,
    st.characters(codec="utf-8"),
    st.integers(min_value=0, max_value=20_000),
)

FIELDS = {
    "list-tables": ["auth_token_hash"],
    "table-schema": ["auth_token_hash", "table_name"],
    "table-records": [
        "auth_token_hash",
        "table_name",
        "limit",
        "offset",
        "ids",
        "id_start",
        "id_end",
    ],
    "pull-data": [
        "auth_token_hash",
        "table_name",
        "conflict_strategy",
        "after",
        "limit",
    ],
}
SWEEP = settings(
    max_examples=100,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: keeps a failing run short
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


def _plausible(name: str, token_hash: str) -> st.SearchStrategy[Any]:
    small_ints = st.integers(min_value=-3, max_value=30)
    numbers = st.one_of(
        small_ints, small_ints.map(str), st.integers(), st.sampled_from(NASTY)
    )
    keys = st.one_of(
        small_ints,
        st.integers(),
        st.floats(allow_nan=False),
        st.text(max_size=5),
        st.sampled_from(NASTY),
    )
    return {
        "auth_token_hash": st.sampled_from([token_hash, "0" * 64]),
        "table_name": st.sampled_from(
            [
                "dt_items",
                "dt_children",
                "dt_nopk",
                "dt_words",
                "nope",
                "dbsync_connections",
            ]
        ),
        "limit": numbers,
        "offset": numbers,
        "ids": st.lists(keys, max_size=4),
        "id_start": keys,
        "id_end": keys,
        "after": st.lists(keys, max_size=3),
        "conflict_strategy": st.sampled_from(
            ["skip", "overwrite", "merge", "append", "x"]
        ),
    }[name]


REQUIRED = {"auth_token_hash", "table_name"}


@st.composite
def bodies(draw: st.DrawFn, endpoint: str, token_hash: str) -> Any:
    """Mostly bodies that pass the early checks, so the deep paths see junk too."""
    if draw(st.integers(0, 9)) == 0:
        return draw(
            st.one_of(
                st.binary(max_size=50), values.map(lambda v: json.dumps(v).encode())
            )
        )
    body: dict[str, Any] = {}
    for name in FIELDS[endpoint]:
        roll = draw(st.integers(0, 19))
        if name in REQUIRED:
            if roll == 0:
                continue
            if roll == 1:
                body[name] = draw(values)
            elif roll == 2:
                body[name] = draw(huge_strings)
            elif name == "auth_token_hash":
                body[name] = token_hash
            else:
                body[name] = draw(_plausible(name, token_hash))
        elif roll < 8:
            continue
        elif roll < 11:
            body[name] = draw(values)
        else:
            body[name] = draw(_plausible(name, token_hash))
    if draw(st.booleans()):
        body.update(
            {
                k: v
                for k, v in draw(
                    st.dictionaries(st.text(max_size=8), values, max_size=3)
                ).items()
                if k not in FIELDS[endpoint]
            }
        )
    return body


def _sweep(
    site: Site, client: testing.TestClient, endpoint: str, token_hash: str
) -> None:
    @SWEEP
    @given(body=bodies(endpoint, token_hash))
    def run(body: Any) -> None:
        if isinstance(body, bytes):
            r = post(client, endpoint, body)
        else:
            r = client.simulate_post(
                f"{API}/{endpoint}",
                body=json.dumps(body, ensure_ascii=False).encode(),
                headers={"Content-Type": "application/json"},
            )
        assert r.status_code < 500, (r.status_code, r.text[:300], repr(body)[:300])
        data = json.loads(r.text)
        if r.status_code == 200:
            assert data["success"] is True
        else:
            assert 400 <= r.status_code < 500
            assert data["success"] is False and isinstance(data["error"], str), data
            assert set(data) <= {"success", "error", "fields", "field"}, data

    run()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_bad_input_sweep(
    site: Site, client: testing.TestClient, tables: Callable[..., None], endpoint: str
) -> None:
    if endpoint == "list-tables":
        tables("dt_items")  # list-tables checksums every table on every call
    else:
        tables("dt_items", "dt_parents", "dt_children", "dt_nopk", "dt_words")
    enable(site)
    token_hash = sender(site, rate_limit_requests_per_minute=1_000_000)
    _sweep(site, client, endpoint, token_hash)
