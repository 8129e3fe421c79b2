"""pull-data's ``since`` filter (cursor mode): rows beyond a cursor column's
value, paged by key, with the high-water mark; strict refusals."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from falcon import testing

from shared.context import Site
from shared.data import copy_format
from tests.helpers import call, enable, err, offering_sender, send_transfers


def _ids(answer: dict[str, Any]) -> list[int]:
    return [row["id"] for row in answer["data"]]


def test_only_rows_beyond_the_value_come_paged_by_key_with_the_mark(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_stamped")
    enable(site)
    token_hash = offering_sender(site, max_records_per_request=2)
    since = {"column": "at", "after": "2024-01-01T05:00:00+00:00"}
    first = call(client, "pull-data", token_hash, "dt_stamped", since=since)
    assert first.status_code == 200
    assert _ids(first.json) == [6, 7]
    assert first.json["next_cursor"] == [7] and first.json["has_more"] is True
    # The first page says the filter was applied, and the mark: the largest
    # value of the column in the table (row 10's is null).
    assert first.json["since"] == {**since, "high_water": "2024-01-01T09:00:00+00:00"}
    rest = call(
        client, "pull-data", token_hash, "dt_stamped", since=since, after=[7], limit=5
    )
    assert _ids(rest.json) == [8, 9]  # 10 has no value: never beyond one
    assert rest.json["has_more"] is False
    assert rest.json["since"] == since  # no mark on later pages
    [sent] = send_transfers(site)
    assert (sent.status, sent.records_transferred) == ("completed", 4)

    # after null: every row (null values included), with the mark.
    whole = call(
        client,
        "pull-data",
        token_hash,
        "dt_stamped",
        since={"column": "seq", "after": None},
        limit=100,
    )
    assert len(whole.json["data"]) == 2 and whole.json["has_more"] is True
    assert whole.json["since"] == {"column": "seq", "after": None, "high_water": 99}


@pytest.mark.parametrize(
    ("column", "after", "ids"),
    [
        ("seq", 95, [1, 2, 3, 4]),
        ("seq", "95", [1, 2, 3, 4]),
        ("day", "2024-01-08", [8, 9, 10]),
        ("amount", "12.00", [9, 10]),
        ("id", 8, [9, 10]),
    ],
)
def test_each_cursor_kind_filters_by_its_type(
    site: Site,
    client: testing.TestClient,
    tables: Callable[..., None],
    column: str,
    after: Any,
    ids: list[int],
) -> None:
    tables("dt_stamped")
    enable(site)
    token_hash = offering_sender(site)
    since = {"column": column, "after": after}
    r = call(client, "pull-data", token_hash, "dt_stamped", since=since)
    assert r.status_code == 200, r.json
    assert _ids(r.json) == ids


def test_a_copy_page_is_filtered_and_says_so_in_a_header(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_stamped")
    enable(site)
    token_hash = offering_sender(site)
    since = {"column": "id", "after": 6}
    r = call(
        client,
        "pull-data",
        token_hash,
        "dt_stamped",
        since=since,
        format=copy_format.TEXT,
        limit=3,
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == copy_format.MEDIA_TYPES[copy_format.TEXT]
    assert r.headers["x-sync-count"] == "3"
    assert json.loads(r.headers["x-sync-next-cursor"]) == [9]
    assert json.loads(r.headers["x-sync-since"]) == {**since, "high_water": 10}
    assert [line.split("\t")[0] for line in r.text.splitlines()] == ["7", "8", "9"]
    rest = call(
        client,
        "pull-data",
        token_hash,
        "dt_stamped",
        since=since,
        after=[9],
        format=copy_format.TEXT,
    )
    assert rest.headers["x-sync-count"] == "1"
    assert json.loads(rest.headers["x-sync-since"]) == since


@pytest.mark.parametrize(
    ("since", "error"),
    [
        ({"after": 1}, "Invalid since: expected an object with column and after"),
        ({"column": 5, "after": 1}, "Invalid since: expected an object with column"
         " and after"),
        ({"column": "nope", "after": 1}, "Invalid since: no column nope"),
        ({"column": "label", "after": "a"}, "Invalid since: column label is text,"
         " not an integer, numeric, date or timestamp column"),
        ({"column": "flag", "after": True}, "Invalid since: column flag is boolean,"
         " not an integer, numeric, date or timestamp column"),
        ({"column": "seq", "after": "x"}, "Invalid since: seq: expected an integer,"
         " got \"x\""),
        ({"column": "seq", "after": 40000}, "Invalid since: seq: out of range for"
         " smallint"),
        ({"column": "id", "after": 2**31}, "Invalid since: id: out of range for"
         " integer"),
        ({"column": "amount", "after": "1e10"}, "Invalid since: amount: out of range"
         " for numeric(6,2)"),
        ({"column": "amount", "after": "NaN"}, "Invalid since: amount: expected a"
         " finite number"),
        ({"column": "at", "after": "yesterday"}, "Invalid since: at: expected an ISO"
         " 8601 timestamp, got \"yesterday\""),
        ({"column": "at", "after": [1]}, "Invalid since: at: expected one value"),
        ({"column": "day", "after": 3}, "Invalid since: day: expected an ISO 8601"
         " date, got 3"),
    ],
)  # fmt: skip
def test_a_bad_filter_is_a_400_naming_what_is_wrong(
    site: Site,
    client: testing.TestClient,
    tables: Callable[..., None],
    since: dict[str, Any],
    error: str,
) -> None:
    tables("dt_stamped")
    enable(site)
    token_hash = offering_sender(site)
    r = call(client, "pull-data", token_hash, "dt_stamped", since=since)
    assert (r.status_code, r.json) == (400, err(error, field="since"))
    assert send_transfers(site) == []  # nothing served, nothing counted


def test_since_must_be_an_object(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_stamped")
    enable(site)
    token_hash = offering_sender(site)
    r = call(client, "pull-data", token_hash, "dt_stamped", since="at")
    assert (r.status_code, r.json) == (
        400,
        err("Field since must be an object", field="since"),
    )
