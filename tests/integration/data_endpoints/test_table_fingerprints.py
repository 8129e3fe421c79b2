"""table-fingerprints and pull-data's ``until``: ranges, parts, controls, bad input."""

from __future__ import annotations

from collections.abc import Callable

from falcon import testing
from sqlalchemy import text

from shared.context import Site
from shared.data.sender import fingerprints
from tests.helpers import enable, items, offering_sender, post, sender_row


def _prints(site: Site, ranges: list, split: int = 1) -> list[dict]:
    info = site.catalog().describe("dt_items")
    with site.db.data_engine.connect() as conn:
        return [
            r.as_wire()
            for r in fingerprints.fingerprint_ranges(conn, info, ranges, split=split)
        ]


def test_ranges_and_parts_add_up_and_match_a_local_computation(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = offering_sender(site)
    body = {
        "auth_token_hash": token_hash,
        "table_name": "dt_items",
        "ranges": [{"after": None, "until": None}, {"after": [2], "until": [5]}],
    }
    r = post(client, "table-fingerprints", body)
    assert r.status_code == 200, r.json
    whole, middle = r.json["ranges"]
    assert r.json["algorithm"] == "hashtext64-sum-v1"
    assert (whole["count"], middle["count"]) == (10, 3)
    assert [whole, middle] == _prints(site, [(None, None), ([2], [5])])

    split = post(client, "table-fingerprints", {**body, "ranges": [{}], "split": 3})
    parts = split.json["ranges"][0]["parts"]
    assert [(p["until"], p["count"]) for p in parts] == [([4], 4), ([8], 4), ([10], 2)]
    assert sum(int(p["fingerprint"]) for p in parts) == int(whole["fingerprint"])

    # One changed value changes the fingerprint of its range only.
    with site.db.data_engine.begin() as conn:
        conn.execute(text("UPDATE dt_items SET label = 'x' WHERE id = 9"))
    again = post(client, "table-fingerprints", body).json["ranges"]
    assert again[0]["fingerprint"] != whole["fingerprint"]
    assert again[1] == middle
    # It moves no rows: no download or record counted.
    conn = sender_row(site, token_hash)
    assert (conn.downloads_used, conn.records_downloaded) == (0, 0)


def test_pull_data_until_is_an_inclusive_upper_bound(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = offering_sender(site)
    base = {"auth_token_hash": token_hash, "table_name": "dt_items"}
    first = post(client, "pull-data", {**base, "after": [3], "until": [7], "limit": 3})
    assert (first.json["data"], first.json["has_more"]) == (items(4, 6), True)
    rest = post(
        client,
        "pull-data",
        {**base, "after": first.json["next_cursor"], "until": [7], "limit": 3},
    )
    assert rest.json["data"] == items(7, 7)
    assert (rest.json["has_more"], rest.json["next_cursor"]) == (False, None)
    bad = post(client, "pull-data", {**base, "until": ["x"]})
    assert bad.status_code == 400
    assert bad.json["field"] == "after"


def test_bad_input_is_a_clear_400_and_controls_apply(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items", "dt_parents", "dt_children", "dt_secret")
    enable(site)
    token_hash = offering_sender(site, excluded_tables=["dt_secret"])
    base = {"auth_token_hash": token_hash, "table_name": "dt_items"}

    def status(body: dict) -> tuple[int, str]:
        r = post(client, "table-fingerprints", body)
        return r.status_code, r.json["error"]

    assert status({**base}) == (400, "Missing required fields")
    assert status({**base, "ranges": []}) == (
        400,
        "Field ranges must hold 1 to 1000 ranges",
    )
    assert status({**base, "ranges": [5]}) == (
        400,
        "Invalid range: each range is an object with after and until",
    )
    assert status({**base, "ranges": [{"after": ["x"]}]})[0] == 400
    assert status({**base, "ranges": [{}], "columns": ["nope"]}) == (
        400,
        "unknown column(s): nope",
    )
    assert status({**base, "ranges": [{}], "split": 0})[0] == 400
    assert status({**base, "table_name": "dt_children", "ranges": [{}]}) == (
        400,
        "table dt_children has no single-column primary key",
    )
    assert status({**base, "table_name": "dt_secret", "ranges": [{}]}) == (
        403,
        "This connection is not authorised to access that table",
    )
    assert status({**base, "table_name": "nope", "ranges": [{}]}) == (
        404,
        "Table not found",
    )
    assert status({**base, "auth_token_hash": "0" * 64, "ranges": [{}]}) == (
        401,
        "Invalid connection",
    )


def test_rows_list_each_key_with_its_hash_and_pull_keys_fetches_them(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = offering_sender(site)
    base = {"auth_token_hash": token_hash, "table_name": "dt_items"}
    listed = post(
        client,
        "table-fingerprints",
        {**base, "ranges": [{"after": [7]}, {"until": [2]}], "rows": True},
    )
    assert listed.status_code == 200, listed.json
    tail, head = (r["rows"] for r in listed.json["ranges"])
    assert [k for k, _ in tail] == [8, 9, 10] and [k for k, _ in head] == [1, 2]
    whole = _prints(site, [([7], None)])[0]
    assert sum(int(h) for _, h in tail) == int(whole["fingerprint"])

    got = post(client, "pull-keys", {**base, "keys": [[9], [2], [99]]})
    assert got.status_code == 200, got.json
    assert got.json == {
        "success": True,
        "table": "dt_items",
        "data": items(2, 2) + items(9, 9),
        "count": 2,
        "has_more": False,
        "next_cursor": None,
    }
    conn = sender_row(site, token_hash)
    assert (conn.downloads_used, conn.records_downloaded) == (0, 2)

    bad = post(client, "pull-keys", {**base, "keys": []})
    assert (bad.status_code, bad.json["error"]) == (
        400,
        "Field keys must hold 1 to 10000 keys",
    )
    bad = post(client, "pull-keys", {**base, "keys": [["x"]]})
    assert bad.status_code == 400 and bad.json["error"].startswith("Invalid key:")
    many = post(
        client,
        "table-fingerprints",
        {**base, "ranges": [{}], "rows": True, "columns": ["label"]},
    )
    assert len(many.json["ranges"][0]["rows"]) == 10


def test_bucket_prints_cut_a_range_as_separate_ranges_would(
    site: Site, tables: Callable[..., None]
) -> None:
    tables("dt_rows")
    info = site.catalog().describe("dt_rows")
    with site.db.data_engine.connect() as conn:
        parts = fingerprints.bucket_prints(conn, info, [10], [140], [20, 21, 99])
        each = fingerprints.fingerprint_ranges(
            conn,
            info,
            [([10], [20]), ([20], [21]), ([21], [99]), ([99], [140])],
        )
    assert [(p.count, p.fingerprint) for p in parts] == [
        (e.count, e.fingerprint) for e in each
    ]
    assert [p.count for p in parts] == [10, 1, 78, 41]
