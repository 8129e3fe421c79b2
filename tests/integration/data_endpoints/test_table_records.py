"""table-records: previews by page, by ids and by key range, and bad filters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from falcon import testing

from shared.context import Site
from tests.helpers import (
    call,
    case_id,
    enable,
    err,
    offering_sender,
    post,
    sender_row,
)

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
    token_hash = offering_sender(site, rate_limit_requests_per_minute=1000)

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
    token_hash = offering_sender(site, max_records_per_request=7)
    r = call(client, "table-records", token_hash, table="dt_rows", limit=50)
    assert r.json == preview(1, 7, 7, 0, True)
    # a preview is not a download, but its rows count against the record limit
    conn = sender_row(site, token_hash)
    assert (conn.downloads_used, conn.records_downloaded) == (0, 7)


def test_table_records_composite_and_text_keys(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_parents", "dt_children", "dt_words", "dt_nopk")
    enable(site)
    token_hash = offering_sender(site)
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
    ({"offset": 10**13}, err("Field offset must be <= 10000", field="offset")),
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


@pytest.mark.parametrize(
    ("extra", "expected"), PREVIEW_BAD, ids=[case_id(e) for e, _ in PREVIEW_BAD]
)
def test_table_records_bad_values(
    site: Site,
    client: testing.TestClient,
    tables: Callable[..., None],
    extra: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    tables("dt_rows")
    enable(site)
    token_hash = offering_sender(site, rate_limit_requests_per_minute=1000)
    body = {"auth_token_hash": token_hash, "table_name": "dt_rows", **extra}
    r = post(client, "table-records", body)
    assert (r.status_code, r.json) == (400, expected), extra
