"""The controls every data endpoint applies, in protocol order: the module switch,
missing fields, the connection's status and expiry, IP and hours, limits, table rules."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from falcon import testing
from sqlalchemy import select, text

from shared.context import Site
from shared.control import access
from shared.state.models import AuditEvent
from tests.helpers import (
    DISABLED,
    DOWNLOAD_LIMIT,
    ENDPOINTS,
    EXPIRED,
    INVALID_CONNECTION,
    IP_NOT_ALLOWED,
    NOT_ACTIVE,
    NOT_AUTHORISED,
    OUTSIDE_HOURS,
    RATE_LIMITED,
    RECORD_LIMIT,
    TABLE_ENDPOINTS,
    TABLE_NOT_FOUND,
    add_connection,
    call,
    enable,
    err,
    free_url,
    hour_now,
    items,
    offering_sender,
    post,
    send_transfers,
    sender_row,
    update_sender,
)

# ================================================================== 503 / 400


TOKEN = object()  # stands for the sender's token hash in a case's body
DISABLED_BODIES = [
    pytest.param({}, id="empty"),
    pytest.param({"auth_token_hash": TOKEN, "table_name": "dt_items"}, id="valid"),
    pytest.param({"auth_token_hash": "nope"}, id="unknown-hash"),
    pytest.param(b"not json", id="not-json"),
    pytest.param(b"[1, 2]", id="a-list"),
]


@pytest.mark.parametrize("body", DISABLED_BODIES)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_disabled_module_answers_503_before_anything_else(
    site: Site,
    client: testing.TestClient,
    tables: Callable[..., None],
    endpoint: str,
    body: Any,
) -> None:
    tables("dt_items")
    token_hash = offering_sender(site)
    if isinstance(body, dict):
        body = {k: token_hash if v is TOKEN else v for k, v in body.items()}
    r = post(client, endpoint, body)
    assert (r.status_code, r.json) == (503, DISABLED), (endpoint, body)
    assert sender_row(site, token_hash).downloads_used == 0


def test_the_module_switch_takes_effect_at_the_next_request(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    token_hash = offering_sender(site)
    enable(site, False)
    r = call(client, "pull-data", token_hash)
    assert (r.status_code, r.json) == (503, DISABLED)
    enable(site)
    assert call(client, "pull-data", token_hash).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="empty"),
        pytest.param({"auth_token_hash": None, "table_name": ""}, id="null-and-empty"),
        pytest.param(
            {"auth_token_hash": "", "table_name": None, "other": 1},
            id="empty-null-and-other",
        ),
    ],
)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_missing_fields_answer_400_with_the_fields_in_order(
    site: Site, client: testing.TestClient, endpoint: str, body: dict[str, Any]
) -> None:
    enable(site)
    wanted = (
        ["auth_token_hash"]
        if endpoint == "list-tables"
        else ["auth_token_hash", "table_name"]
    )
    r = post(client, endpoint, body)
    assert r.status_code == 400, endpoint
    assert r.json == err("Missing required fields", fields=wanted)


@pytest.mark.parametrize("endpoint", TABLE_ENDPOINTS)
def test_a_missing_field_wins_over_an_unknown_hash(
    site: Site, client: testing.TestClient, endpoint: str
) -> None:
    enable(site)
    # a missing field wins over an unknown hash (400 before 401)
    r = post(client, endpoint, {"auth_token_hash": "unknown"})
    assert r.status_code == 400
    assert r.json == err("Missing required fields", fields=["table_name"])


# ================================================================== 401 / 403 status


@pytest.mark.parametrize("who", ["unknown", "a-receiver", "injection"])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_unknown_hash_and_receiver_hash_are_invalid_connections(
    site: Site,
    client: testing.TestClient,
    tables: Callable[..., None],
    endpoint: str,
    who: str,
) -> None:
    tables("dt_items")
    enable(site)
    offering_sender(site)
    token_hash = {
        "unknown": lambda: "0" * 64,
        "a-receiver": lambda: add_connection(site, url=free_url(), name="Incoming")[1],
        "injection": lambda: "' OR 1=1 --",
    }[who]()
    r = call(client, endpoint, token_hash)
    assert (r.status_code, r.json) == (401, INVALID_CONNECTION), endpoint


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_an_invalid_connection_wins_over_an_unknown_table(
    site: Site, client: testing.TestClient, tables: Callable[..., None], endpoint: str
) -> None:
    tables("dt_items")
    enable(site)
    offering_sender(site)
    # 401 wins over an unknown table
    r = call(client, endpoint, "0" * 64, table="no_such_table")
    assert (r.status_code, r.json) == (401, INVALID_CONNECTION)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("status", ["pending", "suspended", "revoked", "expired"])
def test_a_connection_that_is_not_active_is_refused(
    site: Site,
    client: testing.TestClient,
    tables: Callable[..., None],
    status: str,
    endpoint: str,
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = offering_sender(site, status=status)
    r = call(client, endpoint, token_hash)
    assert (r.status_code, r.json) == (403, NOT_ACTIVE), (status, endpoint)
    conn = sender_row(site, token_hash)
    assert conn.status == status
    assert (
        conn.downloads_used,
        conn.records_downloaded,
        conn.last_connected_at,
    ) == (0, 0, None)
    assert send_transfers(site) == []


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_an_expired_connection_is_refused_and_marked_expired(
    site: Site, client: testing.TestClient, tables: Callable[..., None], endpoint: str
) -> None:
    tables("dt_items")
    enable(site)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    token_hash = offering_sender(site, expires_at=past, ip_allowlist=["10.0.0.0/8"])
    # expiry wins over the IP allow-list that would refuse too
    r = call(client, endpoint, token_hash)
    assert (r.status_code, r.json) == (403, EXPIRED), endpoint
    # the refusal rolled the request back, yet the expiry is recorded
    conn = sender_row(site, token_hash)
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


def test_a_connection_that_expires_later_is_served(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    future = offering_sender(
        site, expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    )
    assert call(client, "table-records", future).status_code == 200
    assert sender_row(site, future).status == "active"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("status", ["suspended", "pending", "revoked"])
def test_not_active_wins_over_expired_and_the_status_is_kept(
    site: Site,
    client: testing.TestClient,
    tables: Callable[..., None],
    status: str,
    endpoint: str,
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = offering_sender(
        site,
        status=status,
        expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=1),
    )
    r = call(client, endpoint, token_hash)
    assert (r.status_code, r.json) == (403, NOT_ACTIVE), (status, endpoint)
    conn = sender_row(site, token_hash)
    assert conn.status == status
    assert conn.expired_at is None


# ================================================================== IP / hours


def test_ip_allow_list(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    h = hour_now()
    outside = offering_sender(site, ip_allowlist=["10.0.0.0/8"])
    inside = offering_sender(site, ip_allowlist=["10.0.0.0/8", "127.0.0.0/8"])
    exact = offering_sender(site, ip_allowlist=["127.0.0.1/32"])
    both = offering_sender(
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
    assert sender_row(site, outside).downloads_used == 0
    assert sender_row(site, inside).downloads_used == 1


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_allowed_hours_with_the_real_clock(
    site: Site, client: testing.TestClient, tables: Callable[..., None], endpoint: str
) -> None:
    tables("dt_items")
    enable(site)
    h = hour_now()
    # every hour but this one (a window that wraps midnight unless h == 23)
    refused = offering_sender(
        site, allowed_hours_start=(h + 1) % 24, allowed_hours_end=(h + 23) % 24
    )
    only_now = offering_sender(site, allowed_hours_start=h, allowed_hours_end=h)
    # a wrapping window that holds the current hour
    start, end = (h, (h + 12) % 24) if h >= 12 else (23, h)
    wrapping = offering_sender(site, allowed_hours_start=start, allowed_hours_end=end)
    assert start > end
    # hours win over the download limit
    limited = offering_sender(
        site,
        allowed_hours_start=(h + 1) % 24,
        allowed_hours_end=(h + 1) % 24,
        max_downloads=0,
    )
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


@pytest.mark.parametrize(
    ("hour", "start", "end", "allowed"),
    HOUR_CASES,
    ids=[f"{h}h-in-{s}-{e}-{'yes' if a else 'no'}" for h, s, e, a in HOUR_CASES],
)
def test_allowed_hours_at_a_fixed_clock(
    site: Site,
    client: testing.TestClient,
    tables: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    hour: int,
    start: int,
    end: int,
    allowed: bool,
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = offering_sender(site, allowed_hours_start=start, allowed_hours_end=end)
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
    token_hash = offering_sender(site, max_downloads=1)
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
    assert sender_row(site, token_hash).downloads_used == 1
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
    # other endpoints are not downloads; a preview reads rows, so once the
    # downloads are used up it is refused like a new pull
    for endpoint in ("list-tables", "table-schema"):
        assert call(client, endpoint, token_hash).status_code == 200
    preview = call(client, "table-records", token_hash)
    assert (preview.status_code, preview.json["error"]) == (
        403,
        "Download limit reached",
    )
    conn = sender_row(site, token_hash)
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
    token_hash = offering_sender(site, max_downloads=0, max_records_total=0)
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
    token_hash = offering_sender(site, max_downloads=1)
    assert call(client, "pull-data", token_hash).json["count"] == 10
    r = call(client, "pull-data", token_hash, after=[-2147483648])
    assert (r.status_code, r.json) == (403, DOWNLOAD_LIMIT)
    conn = sender_row(site, token_hash)
    assert (conn.downloads_used, conn.records_downloaded) == (1, 10)


def test_record_limit(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = offering_sender(site, max_records_total=5)
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
    conn = sender_row(site, token_hash)
    assert (conn.records_downloaded, conn.downloads_used) == (5, 1)
    for endpoint in ENDPOINTS:
        r = call(client, endpoint, token_hash, after=[5])
        assert (r.status_code, r.json) == (403, RECORD_LIMIT), endpoint
    r = call(client, "pull-data", token_hash)
    assert (r.status_code, r.json) == (403, RECORD_LIMIT)
    assert sender_row(site, token_hash).records_downloaded == 5
    [t] = send_transfers(site)
    assert (t.status, t.records_transferred) == ("in_progress", 5)


def test_record_limit_clamps_a_page_to_what_is_left(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = offering_sender(site, max_records_total=7)
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
    assert sender_row(site, token_hash).records_downloaded == 7


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_rate_limit(
    site: Site, client: testing.TestClient, tables: Callable[..., None], endpoint: str
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = offering_sender(site, rate_limit_requests_per_minute=3)
    for _ in range(3):
        assert call(client, endpoint, token_hash).status_code == 200, endpoint
    r = call(client, endpoint, token_hash)
    assert (r.status_code, r.json) == (429, RATE_LIMITED), endpoint
    assert 1 <= int(r.headers["retry-after"]) <= 60
    # the rate limit wins over the table rules and an unknown table
    r = call(client, endpoint, token_hash, table="no_such_table")
    assert (r.status_code, r.json) == (429, RATE_LIMITED)
    assert "retry-after" in r.headers
    if endpoint == "pull-data":
        # refused calls are not served: three pulls were counted, not five
        assert sender_row(site, token_hash).downloads_used == 3
    # another connection has its own budget
    other = offering_sender(site, rate_limit_requests_per_minute=3)
    assert call(client, "list-tables", other).status_code == 200


# ================================================================== table rules / 404


@pytest.mark.parametrize("endpoint", TABLE_ENDPOINTS)
def test_table_rules(
    site: Site, client: testing.TestClient, tables: Callable[..., None], endpoint: str
) -> None:
    tables("dt_items", "dt_secret")
    enable(site)
    both = offering_sender(
        site, allowed_tables=["dt_items", "dt_secret"], excluded_tables=["dt_items"]
    )
    only_secret = offering_sender(site, allowed_tables=["dt_secret"])
    allowed_missing = offering_sender(site, allowed_tables=["no_such_table"])
    excluded_only = offering_sender(site, excluded_tables=["dt_secret"])
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
    assert call(client, endpoint, excluded_only, table="dt_items").status_code == 200
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


@pytest.mark.parametrize("name", NEVER_OFFERED)
@pytest.mark.parametrize("endpoint", TABLE_ENDPOINTS)
def test_tables_that_are_never_offered(
    site: Site,
    client: testing.TestClient,
    tables: Callable[..., None],
    endpoint: str,
    name: str,
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = offering_sender(site, rate_limit_requests_per_minute=1000)
    r = call(client, endpoint, token_hash, table=name)
    assert (r.status_code, r.json) == (404, TABLE_NOT_FOUND), (endpoint, name)
    with site.db.data_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM dt_items")).scalar_one() == 10
    assert send_transfers(site) == []


@pytest.mark.parametrize("name", ["dbsync_connections", "alembic_version"])
@pytest.mark.parametrize("endpoint", TABLE_ENDPOINTS)
def test_own_tables_are_never_offered_even_when_allowed(
    site: Site,
    client: testing.TestClient,
    tables: Callable[..., None],
    endpoint: str,
    name: str,
) -> None:
    tables("dt_items")
    enable(site)
    # even when the connection's allow-list names them
    named = offering_sender(
        site, allowed_tables=["dbsync_connections", "alembic_version", "dt_items"]
    )
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
    token_hash = offering_sender(site)
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
    token_hash = offering_sender(
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
        update_sender(site, token_hash, **change)
        r = pull()
        assert (r.status_code, r.json) == (status, body), change
    r = pull("dt_items")
    assert (r.status_code, r.json) == (403, NOT_AUTHORISED)
    update_sender(site, token_hash, allowed_tables=[])
    r = pull("dt_items")
    assert r.status_code == 200
    assert r.json["data"] == items(1, 10)
