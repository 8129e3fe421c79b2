"""Receivers pull whole tables from senders through the CLI and real workers."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest
from sqlalchemy import create_engine

from shared.data.sender.offer import Catalog
from tests.e2e.conftest import SiteProcesses, field, pair
from tests.helpers import eventually

pytestmark = pytest.mark.e2e

PULL_ENV = {"SYNC_PULL_LEASE_SECONDS": "4"}
FAST = pytest.mark.parametrize(
    "two_sites", [{"sender": PULL_ENV, "receiver": PULL_ENV}], indirect=True
)


def checksum(site: SiteProcesses, table: str) -> str:
    engine = create_engine(site.db_url)
    try:
        return Catalog(engine, checksum_row_limit=10**9).checksum(table)
    finally:
        engine.dispose()


def pull(receiver: SiteProcesses, *args: str, ok: bool = True) -> dict[str, Any]:
    rid = field(receiver, "id")
    result = receiver.cli("pull", rid, *args, "--wait", "--json", check=False)
    data = json.loads(result.stdout)
    if ok:
        assert result.returncode == 0, (data, result.stderr)
        assert data["status"] == "completed", data
    return data


BIG_TABLE = """
CREATE TABLE big (
    id bigint PRIMARY KEY, n integer, amount numeric(14,4), label text,
    flag boolean, born date, at timestamptz, ref uuid, doc jsonb
);
INSERT INTO big
SELECT g, g % 1000, (g * 1.25)::numeric(14,4), 'row ' || g || repeat('x', g % 40),
       g % 3 = 0, date '2000-01-01' + (g % 9000),
       timestamptz '2020-01-01 00:00:00+00' + g * interval '1 second',
       md5(g::text)::uuid, jsonb_build_object('g', g, 'tags', jsonb_build_array(g % 7))
FROM generate_series(1, :n) g;
"""


@FAST
def test_a_250k_row_table_is_pulled_exactly(two_sites) -> None:
    sender, receiver = two_sites
    sender.sql(BIG_TABLE, n=250_000)
    pair(sender, receiver)  # a connection created with no options
    data = pull(receiver, "big", "--create-missing")
    assert data["records_transferred"] == 250_000
    assert data["records_created"] == 250_000
    assert (
        data["records_updated"],
        data["records_skipped"],
        data["records_failed"],
    ) == (0, 0, 0)
    # Bulk pages of the default 100,000 rows, none of them refused by the
    # rate limit (the pages of one pull in progress count once).
    assert data["tables"][0]["pages"] == 3
    assert receiver.sql("SELECT count(*) FROM big") == [(250_000,)]
    assert checksum(receiver, "big") == checksum(sender, "big")
    # The sender kept one send transfer with the counts of the whole pull.
    sent = sender.cli_json("transfers", "list")
    assert [(t["direction"], t["status"], t["records_transferred"]) for t in sent] == [
        ("send", "completed", 250_000)
    ]
    conn = sender.only_connection()
    assert conn["records_downloaded"] == 250_000
    assert conn["downloads_used"] == 1


ITEMS = "CREATE TABLE items (id integer PRIMARY KEY, name text, qty integer, note text)"
SENDER_ITEMS = """
INSERT INTO items VALUES (1, 'a', 1, 'n1'), (2, 'b', 2, 'n2'), (3, 'c', 3, NULL),
                         (4, 'd', 4, 'n4'), (5, 'e', NULL, NULL)
"""
RECEIVER_ITEMS = """
TRUNCATE items;
INSERT INTO items VALUES (1, 'a', 1, 'n1'), (2, 'b-old', 20, 'old'), (3, 'c-old', NULL, 'keep'),
                         (10, 'z', 10, 'z')
"""


@FAST
def test_each_strategy_gives_exact_counts_and_rows(two_sites) -> None:
    sender, receiver = two_sites
    sender.sql(ITEMS)
    sender.sql(SENDER_ITEMS)
    receiver.sql(ITEMS)
    pair(sender, receiver)

    def run(strategy: str) -> tuple[tuple[int, int, int, int], list[tuple]]:
        receiver.sql(RECEIVER_ITEMS)
        data = pull(receiver, "items", "--strategy", strategy)
        counts = (
            data["records_created"],
            data["records_updated"],
            data["records_skipped"],
            data["records_failed"],
        )
        return counts, receiver.sql("SELECT * FROM items ORDER BY id")

    counts, rows = run("skip")
    assert counts == (2, 0, 3, 0)
    assert rows == [
        (1, "a", 1, "n1"),
        (2, "b-old", 20, "old"),
        (3, "c-old", None, "keep"),
        (4, "d", 4, "n4"),
        (5, "e", None, None),
        (10, "z", 10, "z"),
    ]

    counts, rows = run("overwrite")
    assert counts == (2, 3, 0, 0)
    assert rows == [
        (1, "a", 1, "n1"),
        (2, "b", 2, "n2"),
        (3, "c", 3, None),
        (4, "d", 4, "n4"),
        (5, "e", None, None),
        (10, "z", 10, "z"),
    ]

    counts, rows = run("merge")
    assert counts == (2, 3, 0, 0)
    assert rows == [
        (1, "a", 1, "n1"),
        (2, "b", 2, "n2"),
        (3, "c", 3, "keep"),
        (4, "d", 4, "n4"),
        (5, "e", None, None),
        (10, "z", 10, "z"),
    ]

    # append on a natural key cannot work: the transfer fails and says why.
    receiver.sql(RECEIVER_ITEMS)
    failed = pull(receiver, "items", "--strategy", "append", ok=False)
    assert failed["status"] == "failed"
    assert "append" in failed["error"] and "items" in failed["error"]
    assert receiver.sql("SELECT count(*) FROM items") == [(4,)]


@FAST
def test_append_on_a_generated_key(two_sites) -> None:
    sender, receiver = two_sites
    for site in (sender, receiver):
        site.sql("CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL)")
    sender.sql(
        "INSERT INTO notes (body) SELECT 'sender ' || g FROM generate_series(1, 5) g"
    )
    receiver.sql("INSERT INTO notes (body) VALUES ('mine 1'), ('mine 2'), ('mine 3')")
    pair(sender, receiver)
    data = pull(receiver, "notes", "--strategy", "append")
    assert (
        data["records_created"],
        data["records_updated"],
        data["records_skipped"],
        data["records_failed"],
    ) == (5, 0, 0, 0)
    assert receiver.sql("SELECT id, body FROM notes ORDER BY id") == [
        (1, "mine 1"),
        (2, "mine 2"),
        (3, "mine 3"),
        (4, "sender 1"),
        (5, "sender 2"),
        (6, "sender 3"),
        (7, "sender 4"),
        (8, "sender 5"),
    ]
    # The sequence moved on: a local insert after the pull does not collide.
    assert receiver.sql("INSERT INTO notes (body) VALUES ('later') RETURNING id") == [
        (9,)
    ]


RELATED = """
CREATE TABLE authors (id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE books (id integer PRIMARY KEY, author_id integer NOT NULL REFERENCES authors(id),
                    title text NOT NULL);
CREATE TABLE reviews (id integer PRIMARY KEY, book_id integer NOT NULL REFERENCES books(id),
                      stars smallint NOT NULL DEFAULT 3);
INSERT INTO authors SELECT g, 'author ' || g FROM generate_series(1, 50) g;
INSERT INTO books SELECT g, 1 + g % 50, 'book ' || g FROM generate_series(1, 400) g;
INSERT INTO reviews SELECT g, 1 + g % 400, 1 + g % 5 FROM generate_series(1, 3000) g;
"""


@FAST
def test_related_tables_are_created_and_pulled_in_dependency_order(two_sites) -> None:
    sender, receiver = two_sites
    sender.sql(RELATED)
    pair(sender, receiver)
    data = pull(receiver, "reviews", "books", "authors", "--create-missing")
    assert [t["table"] for t in data["tables"]] == ["authors", "books", "reviews"]
    assert [(t["rows_done"], t["created"], t["failed"]) for t in data["tables"]] == [
        (50, 50, 0),
        (400, 400, 0),
        (3000, 3000, 0),
    ]
    fks = receiver.sql(
        "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint "
        "WHERE contype = 'f' AND conrelid::regclass::text NOT LIKE 'dbsync%' ORDER BY 1"
    )
    assert fks == [("books", "authors"), ("reviews", "books")]
    assert receiver.sql(
        "SELECT column_default FROM information_schema.columns "
        "WHERE table_name = 'reviews' AND column_name = 'stars'"
    ) == [("3",)]
    for table in ("authors", "books", "reviews"):
        assert checksum(receiver, table) == checksum(sender, table)


def test_a_worker_killed_mid_pull_is_replaced_within_a_minute_exactly(
    two_sites,
) -> None:
    """Default lease settings; beat stopped, so the fresh worker's start takes it up."""
    sender, receiver = two_sites
    sender.sql(BIG_TABLE, n=60_000)
    # Small pages: the test needs a pull of many pages from a small table.
    pair(sender, receiver, "--max-records-per-request", "500")
    receiver.stop("beat")
    queued = receiver.cli_json("pull", field(receiver, "id"), "big", "--create-missing")

    def progress() -> dict[str, Any]:
        return receiver.cli_json("transfers", "show", queued["id"])

    eventually(lambda: progress()["records_transferred"] >= 5000, timeout=60, every=0.1)
    receiver.stop("worker", sig=signal.SIGKILL)
    at_kill = progress()
    assert at_kill["status"] == "running"
    assert 0 < at_kill["records_transferred"] < 60_000
    receiver.start(web=False, worker=True, beat=False)
    # Within a minute of the death, under the default 30 s lease.
    eventually(
        lambda: progress()["records_transferred"] > at_kill["records_transferred"],
        timeout=60,
        every=0.5,
    )
    eventually(lambda: progress()["status"] == "completed", timeout=120)
    done = progress()
    assert (done["records_transferred"], done["records_created"]) == (60_000, 60_000)
    assert (done["records_skipped"], done["records_failed"]) == (0, 0)
    assert done["attempts"] == 2
    # Every page written once: 120 pages of 500, each counted once.
    assert (done["tables"][0]["pages"], done["tables"][0]["rows_done"]) == (
        120,
        60_000,
    )
    assert receiver.sql("SELECT count(*), count(DISTINCT id) FROM big") == [
        (60_000, 60_000)
    ]
    assert checksum(receiver, "big") == checksum(sender, "big")


@FAST
def test_a_sender_suspended_mid_pull_fails_the_transfer_with_its_reason(
    two_sites,
) -> None:
    sender, receiver = two_sites
    sender.sql(BIG_TABLE, n=60_000)
    # Small pages: the test needs a pull of many pages from a small table.
    pair(sender, receiver, "--max-records-per-request", "500")
    queued = receiver.cli_json("pull", field(receiver, "id"), "big", "--create-missing")

    def progress() -> dict[str, Any]:
        return receiver.cli_json("transfers", "show", queued["id"])

    eventually(lambda: progress()["records_transferred"] >= 2000, timeout=60, every=0.1)
    sender.cli("connections", "suspend", field(sender, "id"), "--reason", "stop now")
    eventually(lambda: progress()["status"] == "failed", timeout=60)
    done = progress()
    assert done["error"] == "Connection is not active"
    landed = receiver.sql("SELECT count(*) FROM big")[0][0]
    assert 0 < landed < 60_000
    assert done["records_created"] == landed == done["records_transferred"]
    assert done["tables"][0]["status"] == "failed"
