"""The rate limit on a connection created with default options: the next page of
a pull in progress is not counted, everything else is, and a cursor the sender
did not hand out for that pull's last page is counted like any call.

The counters' clock is frozen, so every call falls in one rate-limit window.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
from falcon import testing

from shared.context import Site
from shared.control import counters
from shared.control.connections import SenderOptions
from shared.data.copy_format import TEXT
from tests.helpers import (
    RATE_LIMITED,
    call,
    enable,
    items,
    offering_sender,
    send_transfers,
    sender_row,
)

DEFAULT_RATE = SenderOptions().rate_limit_requests_per_minute


@pytest.fixture(autouse=True)
def frozen_window(monkeypatch: pytest.MonkeyPatch) -> None:
    now = dt.datetime.now(dt.UTC)
    monkeypatch.setattr(counters, "utcnow", lambda: now)


def _refused(r: testing.Result) -> None:
    assert (r.status_code, r.json) == (429, RATE_LIMITED)
    assert 1 <= int(r.headers["retry-after"]) <= 60


def _page(
    client: testing.TestClient,
    token_hash: str,
    wire_format: str | None,
    after: list[Any] | None,
    table: str = "dt_rows",
) -> tuple[testing.Result, list[Any] | None, int]:
    """One pull-data page: the answer, its next cursor and its row count."""
    extra: dict[str, Any] = {"limit": 1}
    if wire_format:
        extra["format"] = wire_format
    if after is not None:
        extra["after"] = after
    r = call(client, "pull-data", token_hash, table=table, **extra)
    if r.status_code != 200:
        return r, None, 0
    if wire_format:
        count = int(r.headers["x-sync-count"])
        return r, json.loads(r.headers["x-sync-next-cursor"]), count
    return r, r.json["next_cursor"], r.json["count"]


def test_the_defaults_are_the_ones_this_module_is_about() -> None:
    options = SenderOptions()
    assert (
        options.rate_limit_requests_per_minute,
        options.max_records_per_request,
        options.max_downloads,
        options.max_records_total,
    ) == (60, 100_000, None, None)


@pytest.mark.parametrize(
    "settings_env", [{"SYNC_JSON_PAGE_CAP": "40", "SYNC_BULK_PAGE_ROWS": "120"}]
)
def test_a_default_connection_pages_by_the_site_caps(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    """JSON pages stop at the JSON cap (10,000 by default, as PhoenixKit's), bulk
    pages at the bulk budget; a connection's own max_records_per_request caps both."""
    tables("dt_rows")
    enable(site)
    default = offering_sender(site)
    r = call(client, "pull-data", default, table="dt_rows")
    assert (r.json["count"], r.json["next_cursor"]) == (40, [40])
    r = call(client, "pull-data", default, table="dt_rows", format=TEXT)
    assert (r.headers["x-sync-count"], r.headers["x-sync-next-cursor"]) == (
        "120",
        "[120]",
    )
    tuned = offering_sender(site, max_records_per_request=25)
    r = call(client, "pull-data", tuned, table="dt_rows")
    assert r.json["count"] == 25
    r = call(client, "pull-data", tuned, table="dt_rows", format=TEXT)
    assert r.headers["x-sync-count"] == "25"


@pytest.mark.parametrize("wire_format", [None, TEXT], ids=["json", "copy-text"])
def test_the_pages_of_one_pull_are_not_throttled(
    site: Site,
    client: testing.TestClient,
    tables: Callable[..., None],
    wire_format: str | None,
) -> None:
    tables("dt_rows")
    enable(site)
    token_hash = offering_sender(site)
    statuses, rows, after = [], 0, None
    while True:
        r, after, count = _page(client, token_hash, wire_format, after)
        statuses.append(r.status_code)
        rows += count
        if after is None:
            break
    # 150 one-row pages, well over the 60 calls a minute, all served
    assert (statuses, rows) == ([200] * 150, 150)
    conn = sender_row(site, token_hash)
    assert (conn.downloads_used, conn.records_downloaded) == (1, 150)
    [t] = send_transfers(site)
    assert (t.status, t.records_transferred, t.meta) == (
        "completed",
        150,
        {"pages": 150},
    )
    # only the start of the pull was counted: 59 more calls, then 429
    for _ in range(DEFAULT_RATE - 1):
        assert call(client, "list-tables", token_hash).status_code == 200
    _refused(call(client, "list-tables", token_hash))


def test_list_tables_is_refused_after_the_limit(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = offering_sender(site)
    for _ in range(DEFAULT_RATE):
        assert call(client, "list-tables", token_hash).status_code == 200
    _refused(call(client, "list-tables", token_hash))
    for endpoint in ("table-schema", "table-records", "pull-data"):
        _refused(call(client, endpoint, token_hash))


def test_new_pulls_in_a_loop_are_refused_after_the_limit(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = offering_sender(site)
    for _ in range(DEFAULT_RATE):
        r = call(client, "pull-data", token_hash, limit=2)
        assert (r.status_code, r.json["data"]) == (200, items(1, 2))
    _refused(call(client, "pull-data", token_hash, limit=2))
    assert sender_row(site, token_hash).downloads_used == DEFAULT_RATE


def test_a_pull_in_progress_goes_on_while_other_calls_are_refused(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = offering_sender(site)
    r = call(client, "pull-data", token_hash, limit=3)
    assert r.json["next_cursor"] == [3]
    for _ in range(DEFAULT_RATE - 1):
        assert call(client, "list-tables", token_hash).status_code == 200
    _refused(call(client, "list-tables", token_hash))
    _refused(call(client, "pull-data", token_hash, limit=3))  # a new pull
    r = call(client, "pull-data", token_hash, limit=3, after=[3])
    assert (r.status_code, r.json["data"], r.json["next_cursor"]) == (
        200,
        items(4, 6),
        [6],
    )
    # the same page again (a receiver retrying it) is counted: refused now
    _refused(call(client, "pull-data", token_hash, limit=3, after=[3]))
    r = call(client, "pull-data", token_hash, limit=3, after=[6])
    assert (r.status_code, r.json["data"]) == (200, items(7, 9))
    r = call(client, "pull-data", token_hash, limit=3, after=[9])
    assert (r.status_code, r.json["data"], r.json["has_more"]) == (
        200,
        items(10, 10),
        False,
    )
    # the pull is over: its last cursor starts nothing for free
    _refused(call(client, "pull-data", token_hash, limit=3, after=[9]))
    conn = sender_row(site, token_hash)
    assert (conn.downloads_used, conn.records_downloaded) == (1, 10)


FORGED = [
    pytest.param([7], id="a-later-key"),
    pytest.param([1], id="an-earlier-key"),
    pytest.param([3.0], id="the-key-as-a-float"),
    pytest.param(["3"], id="the-key-as-text"),
    pytest.param([3, 1], id="a-longer-cursor"),
    pytest.param([None], id="a-null-key"),
]


@pytest.mark.parametrize("forged", FORGED)
def test_a_forged_cursor_is_counted(
    site: Site,
    client: testing.TestClient,
    tables: Callable[..., None],
    forged: list[Any],
) -> None:
    tables("dt_rows")
    enable(site)
    token_hash = offering_sender(site)
    r = call(client, "pull-data", token_hash, table="dt_rows", limit=3)
    assert r.json["next_cursor"] == [3]
    answers = [
        call(
            client, "pull-data", token_hash, table="dt_rows", limit=3, after=forged
        ).status_code
        for _ in range(DEFAULT_RATE)
    ]
    # 59 calls were left in the window, whatever each answered; then refused
    assert 429 not in answers[:-1] and answers[-1] == 429, answers
    _refused(call(client, "pull-data", token_hash, table="dt_rows", after=forged))
    # a cursor this site did not hand out continues no pull: the first call
    # served started a new, counted download, which the same cursor then
    # asks again (a retry of that pull's page)
    served = 200 in answers
    assert sender_row(site, token_hash).downloads_used == 1 + served


def test_a_cursor_of_another_pull_is_counted(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items", "dt_rows")
    enable(site)
    token_hash = offering_sender(site)
    other = offering_sender(site)
    assert call(client, "pull-data", token_hash, limit=3).json["next_cursor"] == [3]
    # another table of the same connection: no pull of it is in progress
    for _ in range(DEFAULT_RATE - 1):
        r = call(client, "pull-data", token_hash, table="dt_rows", limit=3, after=[3])
        assert r.status_code == 200
    _refused(call(client, "pull-data", token_hash, table="dt_rows", after=[3]))
    # another connection: its pull of dt_items is not the one that handed out [3]
    for _ in range(DEFAULT_RATE):
        assert call(client, "pull-data", other, limit=3, after=[3]).status_code == 200
    _refused(call(client, "pull-data", other, limit=3, after=[3]))
