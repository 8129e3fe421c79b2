"""table-fingerprints and pull-data's ``until``: ranges, parts, controls, bad input."""

from __future__ import annotations

from collections.abc import Callable

from falcon import testing
from sqlalchemy import text

from shared.context import Site
from shared.data.sender import fingerprints
from tests.helpers import enable, items, offering_sender, post, sender_row


def _prints(
    site: Site,
    ranges: list,
    split: int = 1,
    hashing: fingerprints.Hashing = fingerprints.TEXT_HASHING,
) -> list[dict]:
    info = site.catalog().describe("dt_items")
    with site.db.data_engine.connect() as conn:
        return [
            r.as_wire()
            for r in fingerprints.fingerprint_ranges(
                conn, info, ranges, split=split, hashing=hashing
            )
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
    assert status({**base, "ranges": [{}], "algorithm": "md5"}) == (
        400,
        "Field algorithm must be one of hashtext64-sum-v1, hashtyped64-sum-v2",
    )
    typed = {**base, "ranges": [{}], "algorithm": fingerprints.TYPED}
    assert status({**typed, "text_columns": ["nope"]}) == (
        400,
        "unknown column(s): nope",
    )
    assert status({**typed, "text_columns": [1]}) == (
        400,
        "Field text_columns must be a list of names",
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


def test_the_typed_algorithm_hashes_by_type_and_names_itself(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    r = post(
        client,
        "table-fingerprints",
        {
            "auth_token_hash": offering_sender(site),
            "table_name": "dt_items",
            "ranges": [{"after": None, "until": None}],
            "algorithm": fingerprints.TYPED,
            "text_columns": ["label"],
        },
    )
    assert r.status_code == 200, r.json
    assert r.json["algorithm"] == "hashtyped64-sum-v2"
    hashing = fingerprints.Hashing(fingerprints.TYPED, frozenset(["label"]))
    ours = _prints(site, [(None, None)], hashing=hashing)
    assert r.json["ranges"] == ours
    assert ours[0]["count"] == 10
    assert ours[0]["fingerprint"] != _prints(site, [(None, None)])[0]["fingerprint"]
    # A column named in text_columns is hashed through its text.
    info = site.catalog().describe("dt_items")
    assert hashing.row_hash(info, ["id", "label"]) == (
        'hash_record_extended(ROW("id", "label"::text), 0)'
    )
    # Otherwise a text column is hashed by its bytes, whatever its collation.
    assert fingerprints.Hashing(fingerprints.TYPED).row_hash(info, ["label"]) == (
        'hash_record_extended(ROW("label" COLLATE "C"), 0)'
    )


def test_typed_hashes_tell_apart_what_text_tells_apart(site: Site) -> None:
    """Values a type's hash calls equal but whose text differs (numeric
    scale, interval units, citext-like case, enum labels, json spacing) go
    in as text, so a change of any of them changes the fingerprint."""
    engine = site.db.data_engine
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS fp_kinds"))
        conn.execute(text("DROP TYPE IF EXISTS fp_mood"))
        conn.execute(text("CREATE TYPE fp_mood AS ENUM ('calm', 'busy')"))
        conn.execute(
            text(
                "CREATE TABLE fp_kinds (id int PRIMARY KEY, n numeric, i interval,"
                " j json, b jsonb, m fp_mood, c char(4), p point, a int[],"
                " t timestamptz, f float8)"
            )
        )
        conn.exec_driver_sql(
            "INSERT INTO fp_kinds VALUES (1, 1.0, '1 day', '{\"a\":1}',"
            " '{\"a\": 1}', 'calm', 'ab', '(1,2)', '{1,2}', now(), 0.5)"
        )
    info = site.catalog().describe("fp_kinds")
    typed = fingerprints.typed_hashing(engine)
    columns = [c.name for c in info.columns]

    def whole() -> str:
        with engine.connect() as conn:
            got = fingerprints.fingerprint_ranges(
                conn, info, [(None, None)], columns=columns, hashing=typed
            )
        return got[0].fingerprint

    seen = {whole()}
    for change in (
        "n = 1.00",
        "i = '24 hours'",
        "j = '{\"a\": 1}'",
        "m = 'busy'",
        "p = '(1,3)'",
        "a = '{1,3}'",
        "f = -0.5",
    ):
        with engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE fp_kinds SET {change}")
        seen.add(whole())
    assert len(seen) == 8
    assert typed.row_hash(info, ["id", "n", "t", "b", "m"]) == (
        'hash_record_extended(ROW("b", "id", "m"::text, "n", scale("n"), "t"), 0)'
    )
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE fp_kinds"))
        conn.execute(text("DROP TYPE fp_mood"))
