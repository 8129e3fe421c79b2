"""pull-data: keyset pages, counters and transfers, bad cursors and fields, wire values."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from falcon import testing

from shared.context import Site
from tests.helpers import (
    b64,
    call,
    case_id,
    enable,
    err,
    items,
    offering_sender,
    post,
    send_transfers,
    sender_row,
)

# ================================================================== pull-data


def test_phoenixkit_style_pull(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = offering_sender(site, max_records_per_request=4)
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
    conn = sender_row(site, token_hash)
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
    token_hash = offering_sender(site)
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
    token_hash = offering_sender(site, max_records_per_request=max_per_request)
    got, page_sizes = _pull_all(
        client, token_hash, "dt_big", limit, lambda r: [r["id"]]
    )
    assert got == [{"id": i, "v": f"v{i}"} for i in range(1, 2346)]
    assert page_sizes == sizes
    conn = sender_row(site, token_hash)
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
    token_hash = offering_sender(site)
    r = call(client, "pull-data", token_hash, table="dt_big", limit=5000)
    assert r.json["count"] == 1000
    assert r.json["next_cursor"] == [1000]


def test_a_composite_key_table_pages_correctly(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_parents", "dt_children")
    enable(site)
    token_hash = offering_sender(site)
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
    token_hash = offering_sender(site)
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


@pytest.mark.parametrize(
    ("table", "after", "expected"),
    BAD_CURSORS,
    ids=[f"{t}-{case_id(a)}" for t, a, _ in BAD_CURSORS],
)
def test_pull_data_bad_cursor(
    site: Site,
    client: testing.TestClient,
    tables: Callable[..., None],
    table: str,
    after: Any,
    expected: dict[str, Any],
) -> None:
    tables("dt_items", "dt_parents", "dt_children", "dt_nopk")
    enable(site)
    token_hash = offering_sender(site, rate_limit_requests_per_minute=1000)
    r = call(client, "pull-data", token_hash, table=table, after=after)
    assert (r.status_code, r.json) == (400, expected), (table, after)
    assert send_transfers(site) == []
    assert sender_row(site, token_hash).records_downloaded == 0


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


@pytest.mark.parametrize(
    ("extra", "expected"), PULL_BAD, ids=[case_id(e) for e, _ in PULL_BAD]
)
def test_pull_data_bad_fields(
    site: Site,
    client: testing.TestClient,
    tables: Callable[..., None],
    extra: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = offering_sender(site, rate_limit_requests_per_minute=1000)
    r = post(
        client,
        "pull-data",
        {"auth_token_hash": token_hash, "table_name": "dt_items", **extra},
    )
    assert (r.status_code, r.json) == (400, expected), extra
    # a refused pull counts no download and keeps no transfer
    conn = sender_row(site, token_hash)
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
    token_hash = offering_sender(site)
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
    conn = sender_row(site, token_hash)
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
    token_hash = offering_sender(site)
    r = call(client, "pull-data", token_hash, table="dt_values")
    assert r.status_code == 200

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
    # the preview and dbsync's own checksum use the same encoding
    p = call(client, "table-records", token_hash, table="dt_values")
    assert p.json["records"] == expected
    assert (
        site.catalog().checksum("dt_values")
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
