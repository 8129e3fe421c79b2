"""pull-data pages that do not reach the receiver are not counted, and the
answers a sender serves at once are bounded per connection and per site.

A page is "cut" here as the server cuts it: the WSGI environment's
``gunicorn.socket`` reports that a write failed (api.serving.GuardedSocket).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from falcon import testing
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.context import Site
from shared.control import counters
from shared.data import wire
from shared.data.copy_format import TEXT
from shared.data.sender import streams
from shared.state.models import Counter
from tests.helpers import (
    API,
    enable,
    err,
    items,
    offering_sender,
    send_transfers,
    sender_row,
)

LIMITS = {"SYNC_PULL_STREAMS_PER_CONNECTION": "2", "SYNC_PULL_STREAMS_PER_SITE": "3"}
BUSY_CONNECTION = err("Too many concurrent pull-data requests on this connection")
BUSY_SITE = err("Too many concurrent pull-data requests, retry later")


class CutSocket:
    """What gunicorn.socket says after the server cut the answer."""

    write_failed = True


@pytest.fixture(autouse=True)
def frozen_window(monkeypatch: pytest.MonkeyPatch) -> None:
    now = dt.datetime.now(dt.UTC)
    monkeypatch.setattr(counters, "utcnow", lambda: now)


def _pull(
    client: testing.TestClient,
    token_hash: str,
    *,
    cut: bool = False,
    table: str = "dt_items",
    **extra: Any,
) -> testing.Result:
    body = {"auth_token_hash": token_hash, "table_name": table, **extra}
    return client.simulate_post(
        f"{API}/pull-data",
        json=body,
        extras={"gunicorn.socket": CutSocket()} if cut else None,
    )


def _counts(site: Site, token_hash: str) -> tuple[int, int, int, int]:
    conn = sender_row(site, token_hash)
    return (
        conn.downloads_used,
        conn.records_downloaded,
        conn.total_transfers,
        conn.total_records_transferred,
    )


def _rate_count(site: Site, token_hash: str) -> int:
    conn = sender_row(site, token_hash)
    with Session(site.db.engine) as session:
        row = session.get(Counter, f"rate:{conn.id}")
        return row.count if row else 0


def _fingerprint(cursor: list[Any]) -> str:
    return hashlib.sha256(wire.canonical_json(cursor).encode()).hexdigest()


def test_a_cut_page_is_not_counted_and_is_asked_again_for_free(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = offering_sender(site, max_records_per_request=4)

    first = _pull(client, token_hash)
    assert (first.status_code, first.json["data"]) == (200, items(1, 4))
    assert _counts(site, token_hash) == (1, 4, 1, 4)
    assert _rate_count(site, token_hash) == 1

    # The second page is served whole, but the client never took it.
    cut = _pull(client, token_hash, cut=True, after=[4])
    assert (cut.status_code, cut.json["data"]) == (200, items(5, 8))
    assert _counts(site, token_hash) == (1, 4, 1, 4)
    [t] = send_transfers(site)
    assert (t.status, t.records_transferred, t.meta) == (
        "in_progress",
        4,
        {"pages": 1, "next_cursor_sha256": _fingerprint([4])},
    )

    # Asked again from the receiver's checkpoint: the pull's next page, free.
    again = _pull(client, token_hash, after=[4])
    assert (again.status_code, again.json["data"]) == (200, items(5, 8))
    assert _rate_count(site, token_hash) == 1

    # The last page cut: the pull stays in progress until it arrives.
    last_cut = _pull(client, token_hash, cut=True, after=[8])
    assert (last_cut.json["data"], last_cut.json["has_more"]) == (items(9, 10), False)
    [t] = send_transfers(site)
    assert (t.status, t.completed_at, t.records_transferred, t.meta) == (
        "in_progress",
        None,
        8,
        {
            "pages": 2,
            "next_cursor_sha256": _fingerprint([8]),
            "after_cursor_sha256": _fingerprint([4]),
        },
    )
    last = _pull(client, token_hash, after=[8])
    assert last.json["data"] == items(9, 10)
    [t] = send_transfers(site)
    assert (t.status, t.records_transferred, t.meta) == ("completed", 10, {"pages": 3})
    assert t.completed_at is not None
    assert _counts(site, token_hash) == (1, 10, 1, 10)
    assert _rate_count(site, token_hash) == 1


def test_a_cut_first_copy_page_counts_no_download(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_rows")
    enable(site)
    token_hash = offering_sender(site, max_downloads=1)

    cut = _pull(client, token_hash, cut=True, table="dt_rows", format=TEXT, limit=100)
    assert (cut.status_code, cut.headers["x-sync-count"]) == (200, "100")
    assert _counts(site, token_hash) == (0, 0, 0, 0)
    [t] = send_transfers(site)
    assert (t.status, t.records_transferred, t.error_message, t.meta) == (
        "failed",
        0,
        "Page not delivered: the receiver stopped reading",
        {"pages": 0},
    )

    # The one download the connection allows is still there.
    page = _pull(client, token_hash, table="dt_rows", format=TEXT, limit=100)
    assert (page.status_code, page.headers["x-sync-count"]) == (200, "100")
    rest = _pull(
        client,
        token_hash,
        table="dt_rows",
        format=TEXT,
        after=json.loads(page.headers["x-sync-next-cursor"]),
    )
    assert (rest.status_code, rest.headers["x-sync-count"]) == (200, "50")
    assert _counts(site, token_hash) == (1, 150, 1, 150)
    assert [(t.status, t.records_transferred) for t in send_transfers(site)] == [
        ("failed", 0),
        ("completed", 150),
    ]


@pytest.mark.parametrize("settings_env", [LIMITS])
def test_answers_are_bounded_per_connection_and_per_site(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    one = offering_sender(site)
    other = offering_sender(site)

    def hold(token_hash: str) -> streams.StreamSlot:
        conn = sender_row(site, token_hash)
        with Session(site.db.engine) as session, session.begin():
            return streams.acquire(
                session, conn.id, per_connection=2, per_site=3, ttl=120
            )

    held = [hold(one), hold(one)]
    r = _pull(client, one)
    assert (r.status_code, r.json, r.headers["retry-after"]) == (
        503,
        BUSY_CONNECTION,
        "5",
    )
    assert _counts(site, one) == (0, 0, 0, 0)
    ok = _pull(client, other)
    assert (ok.status_code, ok.json["count"]) == (200, 10)

    held.append(hold(other))
    r = _pull(client, other)
    assert (r.status_code, r.json, r.headers["retry-after"]) == (503, BUSY_SITE, "5")

    held.pop().release()
    ok = _pull(client, other)
    assert ok.status_code == 200
    for slot in held:
        slot.release()
    ok = _pull(client, one)
    assert ok.status_code == 200
    # Every answer released its slot once written.
    with Session(site.db.engine) as session:
        keys = session.scalars(
            select(Counter.key).where(Counter.key.startswith(streams.PREFIX))
        ).all()
    assert keys == []


def test_a_slot_of_a_process_that_died_lapses(
    site: Site, client: testing.TestClient, tables: Callable[..., None]
) -> None:
    tables("dt_items")
    enable(site)
    token_hash = offering_sender(site)
    conn = sender_row(site, token_hash)
    for _ in range(4):
        with Session(site.db.engine) as session, session.begin():
            streams.acquire(session, conn.id, per_connection=4, per_site=16, ttl=120)
    assert _pull(client, token_hash).status_code == 503
    with Session(site.db.engine) as session, session.begin():
        for row in session.scalars(
            select(Counter).where(Counter.key.startswith(streams.PREFIX))
        ):
            row.window_start -= dt.timedelta(seconds=121)
    r = _pull(client, token_hash)
    assert (r.status_code, r.json["count"]) == (200, 10)
