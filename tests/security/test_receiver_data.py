"""A receiver holding one valid token attacks its sender's data endpoints.

Issue 12, findings 4-9, and issue 11, finding 8: what a receiver may read,
and what it may cost the sender. One real sender (gunicorn, as the Procfile
runs it) for the module; each test makes the connections it attacks through.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.control import connections
from shared.data import wire
from shared.data.sender import handlers
from shared.errors import ErrorKind, SyncError
from tests.helpers import ScratchDatabases
from tests.security.hostile_receiver import (
    Receiver,
    Sender,
    receiver_url,
    run_sender,
)

pytestmark = pytest.mark.e2e


PAGE_BUDGET = 4 * 1024 * 1024


def refused(message: str) -> dict[str, Any]:
    return {"success": False, "error": message}


@pytest.fixture(scope="module")
def sender(
    tmp_path_factory: pytest.TempPathFactory, module_db_factory: ScratchDatabases
) -> Iterator[Sender]:
    workdir: Path = tmp_path_factory.mktemp("receiver_data")
    db_url = module_db_factory.create("rdata_sender")
    # Enough pull-data streams for the parallel pulls of the race below, and
    # a small page budget for the pages of large values.
    env = {
        "SYNC_PULL_STREAMS_PER_CONNECTION": "16",
        "SYNC_PAGE_MAX_BYTES": str(PAGE_BUDGET),
    }
    for running in run_sender(workdir, db_url, 10, **env):
        with running.site.db.data_engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TABLE nums (id numeric(12, 2) PRIMARY KEY, v text);"
                "INSERT INTO nums SELECT g, 'n' || g FROM generate_series(1, 5) g;"
                "CREATE TABLE floats (id double precision PRIMARY KEY, v text);"
                "INSERT INTO floats SELECT g, 'f' || g FROM generate_series(1, 5) g;"
                "CREATE TABLE items (id bigint PRIMARY KEY, v text);"
                "INSERT INTO items SELECT g, 'i' || g FROM generate_series(1, 245) g;"
                "CREATE TABLE secrets (id integer PRIMARY KEY, v text);"
                "CREATE TABLE payroll (id integer PRIMARY KEY, v text);"
                'CREATE TABLE "Dup" (id integer PRIMARY KEY);'
                "CREATE TABLE dup (id integer PRIMARY KEY);"
                "CREATE TABLE people (id integer PRIMARY KEY, name text);"
                "CREATE TABLE staff_private (salary integer) INHERITS (people);"
                "INSERT INTO people VALUES (1, 'ann');"
                "INSERT INTO staff_private VALUES (2, 'bob', 99000);"
                "CREATE SCHEMA hr;"
                "CREATE TABLE hr.salaries (id integer PRIMARY KEY);"
                "CREATE TABLE payslips (id integer PRIMARY KEY,"
                " salary_id integer REFERENCES hr.salaries,"
                " secret_id integer REFERENCES secrets);"
                "CREATE TABLE blobs (id integer PRIMARY KEY, b bytea);"
                "INSERT INTO blobs SELECT g, convert_to(repeat(chr(64 + g), 1000000),"
                " 'UTF8') FROM generate_series(1, 10) g;"
            )
        yield running


class Pairs:
    """Active sender connections, made as the operator makes them and set as
    pairing leaves them; each with its hostile receiver."""

    def __init__(self, sender: Sender) -> None:
        self._sender = sender
        self._receivers: list[Receiver] = []

    def __call__(
        self, offer_new_tables: bool = True, **options: Any
    ) -> tuple[uuid.UUID, Receiver]:
        url = receiver_url()
        with self._sender.site.db.session() as session:
            conn, token = connections.create_sender(
                session,
                self._sender.site,
                name="data",
                url=url,
                options=connections.SenderOptions(**options),
                offer_new_tables=offer_new_tables,
            )
            conn.status, conn.registration_status = "active", "registered"
            conn.approved_at = conn.created_at
            conn_id = conn.id
        self._sender.site.dispatcher.notices.clear()  # type: ignore[attr-defined]
        receiver = Receiver(self._sender, url, token)
        self._receivers.append(receiver)
        return conn_id, receiver

    def close(self) -> None:
        for receiver in self._receivers:
            receiver.close()


@pytest.fixture
def pair(sender: Sender) -> Iterator[Pairs]:
    pairs = Pairs(sender)
    yield pairs
    pairs.close()


def data_call(receiver: Receiver, endpoint: str, **body: Any) -> httpx.Response:
    return receiver.call(
        endpoint, {"auth_token_hash": receiver.token_hash, **body}, signed=False
    )


def timed(
    receiver: Receiver, endpoint: str, **body: Any
) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    r = data_call(receiver, endpoint, **body)
    return r, time.monotonic() - began


# ------------------------------------------------------------ finding 4


def test_huge_exponents_in_numeric_keys_are_refused_by_the_column_type(
    sender: Sender, pair: Pairs
) -> None:
    # 138 bytes that expand to 100 MB of digits before they reach PostgreSQL.
    _, receiver = pair()
    huge = "1e100000000"
    r, took = timed(receiver, "table-records", table_name="nums", id_start=huge)
    assert (r.status_code, r.json()) == (
        400,
        refused(
            "Invalid filter: id: decimal number out of range"
            " (too many digits before the point)"
        ),
    )
    assert took < 5
    # Within what any numeric holds, still beyond what this column holds.
    r, _ = timed(receiver, "table-records", table_name="nums", ids=["1", "1e10"])
    assert (r.status_code, r.json()) == (
        400,
        refused("Invalid filter: id: out of range for numeric(12,2)"),
    )
    r, _ = timed(receiver, "table-records", table_name="nums", id_end="1e-100000000")
    assert (r.status_code, r.json()) == (
        400,
        refused(
            "Invalid filter: id: decimal number out of range"
            " (too many digits after the point)"
        ),
    )
    r, _ = timed(receiver, "pull-data", table_name="nums", after=["-1E+100"])
    assert r.status_code == 400
    assert r.json() == {
        "success": False,
        "error": "Invalid cursor: id: out of range for numeric(12,2)",
        "field": "after",
    }
    # A key in range still works.
    r = data_call(receiver, "table-records", table_name="nums", id_start="4")
    assert r.status_code == 200
    assert [row["v"] for row in r.json()["records"]] == ["n4", "n5"]


def test_a_senders_numeric_with_a_huge_exponent_is_refused_by_the_receiver() -> None:
    # The receiver's decoders read a sender's values: the same bound holds.
    for value in ("1e100000000", "-1E+131072", "1e-16384"):
        with pytest.raises(ValueError, match="decimal number out of range"):
            wire.binder_for("numeric", "postgresql")(value)
    assert wire.binder_for("numeric", "postgresql")("1e3") == "1000"
    with pytest.raises(wire.WireError, match="too long"):
        wire.decode_value("1" * (wire.NUMERIC_TEXT_MAX + 1), "numeric", "n")


# ------------------------------------------------------------ finding 5


def test_a_long_float_key_is_parsed_in_linear_time(sender: Sender, pair: Pairs) -> None:
    # 60 KB of digits ending in a letter backtracked quadratically (over 30 s).
    _, receiver = pair()
    key = "1" * 60_000 + "x"
    r, took = timed(receiver, "table-records", table_name="floats", ids=[key])
    assert r.status_code == 400
    assert r.json()["error"].startswith("Invalid filter: id: expected a number, got ")
    assert took < 5
    r, took = timed(receiver, "pull-data", table_name="floats", after=[key])
    assert r.status_code == 400
    assert took < 5
    r = data_call(receiver, "table-records", table_name="floats", ids=["2.0", "3"])
    assert [row["v"] for row in r.json()["records"]] == ["f2", "f3"]


def test_the_receivers_float_decoder_is_linear_too() -> None:
    began = time.monotonic()
    for value in ("1" * 60_000 + "x", "1" * 60_000 + ".", "." + "1" * 60_000 + "e"):
        with pytest.raises(wire.WireError):
            wire.decode_value(value, "float", "f")
    assert time.monotonic() - began < 1
    assert wire.decode_value("1.5e3", "float") == 1500.0
    assert wire.decode_value("-.5", "float") == -0.5
    assert wire.decode_value("7.", "float") == 7.0


# ------------------------------------------------------------ finding 8


def test_parallel_pulls_never_serve_more_than_the_record_limit(
    sender: Sender, pair: Pairs
) -> None:
    # 800 records left of 1,000; 8 pulls of 200 at once served 1,600.
    conn_id, receiver = pair(max_records_total=1000)
    sender.sql(
        "UPDATE dbsync_connections SET records_downloaded = 200 WHERE id = :id",
        id=conn_id,
    )
    start = threading.Barrier(8)
    answers: list[httpx.Response] = []

    def pull() -> None:
        body = {"auth_token_hash": receiver.token_hash, "table_name": "items"}
        start.wait()
        answers.append(
            httpx.post(
                f"{sender.url}/sync/api/pull-data",
                json={**body, "limit": 200},
                timeout=60,
            )
        )

    threads = [threading.Thread(target=pull) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    served = [r.json()["count"] for r in answers if r.status_code == 200]
    refusals = [r.json() for r in answers if r.status_code != 200]
    assert served == [200] * 4
    assert refusals == [refused("Record limit reached")] * 4
    assert sender.row(conn_id, "records_downloaded", "downloads_used") == (1000, 4)


# ------------------------------------------------------------ issue 11, finding 8


def test_previews_count_against_the_limits_and_their_offset_is_capped(
    sender: Sender, pair: Pairs
) -> None:
    conn_id, receiver = pair(max_records_total=12)
    r = data_call(receiver, "table-records", table_name="items", limit=10)
    assert [row["id"] for row in r.json()["records"]] == list(range(1, 11))
    r = data_call(receiver, "table-records", table_name="items", limit=10, offset=10)
    assert (r.status_code, r.json()["records"]) == (
        200,
        [{"id": 11, "v": "i11"}, {"id": 12, "v": "i12"}],
    )
    assert r.json()["limit"] == 2
    assert sender.row(conn_id, "records_downloaded") == (12,)
    r = data_call(receiver, "table-records", table_name="items")
    assert (r.status_code, r.json()) == (403, refused("Record limit reached"))

    # Once the downloads are used up, a preview is refused like a new pull.
    _, receiver = pair(max_downloads=1)
    r = data_call(receiver, "pull-data", table_name="items", limit=300)
    assert (r.status_code, r.json()["count"]) == (200, 245)
    r = data_call(receiver, "table-records", table_name="items")
    assert (r.status_code, r.json()) == (403, refused("Download limit reached"))

    # An offset is a scan of that many rows per call: capped.
    _, receiver = pair()
    r = data_call(receiver, "table-records", table_name="items", offset=10**12)
    assert (r.status_code, r.json()) == (
        400,
        {"success": False, "error": "Field offset must be <= 10000", "field": "offset"},
    )
    r = data_call(receiver, "table-records", table_name="items", offset=240)
    assert [row["id"] for row in r.json()["records"]] == [241, 242, 243, 244, 245]


# ------------------------------------------------------------ finding 6


def test_a_forged_cursor_starts_a_counted_download(sender: Sender, pair: Pairs) -> None:
    # A pull in progress; five pulls "continuing" from the smallest bigint
    # re-read the table with downloads_used staying at 1.
    conn_id, receiver = pair(max_downloads=1)
    r = data_call(receiver, "pull-data", table_name="items", limit=100)
    assert (r.json()["count"], r.json()["next_cursor"]) == (100, [100])
    for _ in range(5):
        r = data_call(
            receiver, "pull-data", table_name="items", after=[-(2**63)], limit=100
        )
        assert (r.status_code, r.json()) == (403, refused("Download limit reached"))
    assert sender.row(conn_id, "downloads_used", "records_downloaded") == (1, 100)
    # The cursor this site handed out continues the pull; asking for the same
    # page again (a retry) does too.
    for _ in range(2):
        r = data_call(receiver, "pull-data", table_name="items", after=[100], limit=100)
        assert (r.status_code, r.json()["next_cursor"]) == (200, [200])
    r = data_call(receiver, "pull-data", table_name="items", after=[200], limit=100)
    assert (r.json()["count"], r.json()["has_more"]) == (45, False)
    # The pull is over: its cursors continue nothing.
    r = data_call(receiver, "pull-data", table_name="items", after=[200], limit=100)
    assert (r.status_code, r.json()) == (403, refused("Download limit reached"))
    assert sender.row(conn_id, "downloads_used") == (1,)


def test_stale_send_transfers_are_closed(sender: Sender, pair: Pairs) -> None:
    conn_id, receiver = pair(max_downloads=1)
    r = data_call(receiver, "pull-data", table_name="items", limit=100)
    assert r.json()["next_cursor"] == [100]
    sender.sql(
        "UPDATE dbsync_transfers SET updated_at = updated_at - interval '2 days'"
        " WHERE connection_id = :id",
        id=conn_id,
    )
    with sender.site.db.session() as session:
        closed = handlers.close_stale_send_transfers(session, 86_400)
    assert closed >= 1
    ((status, error),) = sender.sql(
        "SELECT status, error_message FROM dbsync_transfers WHERE connection_id = :id",
        id=conn_id,
    )
    assert (status, error) == (
        "failed",
        "Abandoned: the receiver asked for no page in 86400 s (100 rows sent)",
    )
    r = data_call(receiver, "pull-data", table_name="items", after=[100], limit=100)
    assert (r.status_code, r.json()) == (403, refused("Download limit reached"))


# ------------------------------------------------------------ finding 7


def test_pages_of_large_values_are_cut_by_bytes(sender: Sender, pair: Pairs) -> None:
    # Ten rows of 1 MB: a JSON page of them all took the worker to 3.3x the
    # data; each page now ends before the row that would pass the budget.
    _, receiver = pair()
    seen: list[int] = []
    after: list[Any] | None = None
    while True:
        body: dict[str, Any] = {"table_name": "blobs", "limit": 100}
        if after is not None:
            body["after"] = after
        r = data_call(receiver, "pull-data", **body)
        assert r.status_code == 200
        assert len(r.content) <= PAGE_BUDGET + 4096
        page = r.json()
        seen += [row["id"] for row in page["data"]]
        if not page["has_more"]:
            break
        after = page["next_cursor"]
    assert seen == list(range(1, 11))
    r = data_call(receiver, "pull-data", table_name="blobs", limit=100)
    assert (r.json()["count"], r.json()["next_cursor"]) == (3, [3])
    # A COPY page is cut too (its text: two hex digits a byte).
    r = data_call(
        receiver, "pull-data", table_name="blobs", limit=100, format="pg_copy_text"
    )
    assert r.headers["content-type"].startswith("text/vnd.dbsync.pgcopy")
    assert (r.headers["x-sync-count"], r.headers["x-sync-next-cursor"]) == ("2", "[2]")
    assert len(r.content) <= PAGE_BUDGET


# ------------------------------------------------------------ finding 9


def test_table_rules_are_resolved_at_creation(sender: Sender, pair: Pairs) -> None:
    # Rules were compared verbatim: "Secrets,public.payroll" excluded neither.
    conn_id, receiver = pair(excluded_tables=["Secrets", "public.payroll"])
    assert sender.row(conn_id, "excluded_tables") == (["secrets", "payroll"],)
    names = [t["name"] for t in data_call(receiver, "list-tables").json()["tables"]]
    assert "secrets" not in names and "payroll" not in names and "items" in names
    for table in ("secrets", "payroll"):
        r = data_call(receiver, "table-records", table_name=table)
        assert (r.status_code, r.json()) == (
            403,
            refused("This connection is not authorised to access that table"),
        )
    conn_id, _ = pair(allowed_tables=["ITEMS", '"Dup"', '"public"."dup"'])
    assert sender.row(conn_id, "allowed_tables") == (["items", "Dup", "dup"],)
    # Unknown, another schema's, one of this site's own, ambiguous: refused.
    for rule, why in [
        ("nosuch", "no such table is offered"),
        ("hr.salaries", "only tables of schema public are offered"),
        ("dbsync_connections", "no such table is offered"),
        ("DUP", "it matches Dup, dup; write the exact name in quotes"),
    ]:
        with pytest.raises(SyncError) as caught:
            pair(excluded_tables=[rule])
        assert str(caught.value) == f"Invalid table rule {rule!r}: {why}"
        assert caught.value.kind is ErrorKind.BAD_REQUEST
    # The operator's command says so too.
    done = sender.processes.cli(
        "connections", "create", "--name", "x", "--url", receiver_url(),
        "--excluded-tables", "Secrets,nosuch", check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "Invalid table rule 'nosuch': no such table is offered" in done.stderr


def test_a_parent_does_not_show_an_excluded_childs_rows(
    sender: Sender, pair: Pairs
) -> None:
    _, receiver = pair(excluded_tables=["staff_private"])
    for endpoint in ("pull-data", "table-records", "table-schema"):
        r = data_call(receiver, endpoint, table_name="people")
        assert (r.status_code, r.json()) == (
            403,
            refused("This connection is not authorised to access that table"),
        ), endpoint
    names = [t["name"] for t in data_call(receiver, "list-tables").json()["tables"]]
    assert "people" not in names and "staff_private" not in names
    # Without the exclusion the parent reads as PostgreSQL reads it.
    _, receiver = pair()
    r = data_call(receiver, "pull-data", table_name="people")
    assert [row["name"] for row in r.json()["data"]] == ["ann", "bob"]


def test_references_show_only_tables_the_connection_may_read(
    sender: Sender, pair: Pairs
) -> None:
    _, receiver = pair(excluded_tables=["secrets"])
    tables = {t["name"]: t for t in data_call(receiver, "list-tables").json()["tables"]}
    assert tables["payslips"]["depends_on"] == []
    r = data_call(receiver, "table-schema", table_name="payslips")
    assert r.json()["schema"]["foreign_keys"] == []
    # What it may read it still sees.
    _, receiver = pair()
    r = data_call(receiver, "table-schema", table_name="payslips")
    assert r.json()["schema"]["foreign_keys"] == [
        {
            "columns": ["secret_id"],
            "references_table": "secrets",
            "references_columns": ["id"],
        }
    ]


def test_tables_made_later_are_offered_only_when_the_operator_chose_so(
    sender: Sender, pair: Pairs
) -> None:
    # An empty allow-list offered every table made later, tables this site
    # pulled from a third site among them.
    fixed_id, fixed = pair(offer_new_tables=False)
    _, open_ended = pair()
    (allowed,) = sender.row(fixed_id, "allowed_tables")
    assert "items" in allowed and "pulled_elsewhere" not in allowed
    with sender.site.db.data_engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE pulled_elsewhere (id integer PRIMARY KEY)")
    try:
        names = [t["name"] for t in data_call(fixed, "list-tables").json()["tables"]]
        assert "items" in names and "pulled_elsewhere" not in names
        r = data_call(fixed, "pull-data", table_name="pulled_elsewhere")
        assert (r.status_code, r.json()) == (
            403,
            refused("This connection is not authorised to access that table"),
        )
        r = data_call(open_ended, "pull-data", table_name="pulled_elsewhere")
        assert (r.status_code, r.json()["count"]) == (200, 0)
        # The operator's command offers only the tables there are, unless told.
        made = sender.processes.cli_json(
            "connections", "create", "--name", "cli", "--url", receiver_url()
        )
        assert "items" in made["allowed_tables"]
        made = sender.processes.cli_json(
            "connections", "create", "--name", "cli2", "--url", receiver_url(),
            "--offer-new-tables",
        )  # fmt: skip
        assert made["allowed_tables"] == []
    finally:
        with sender.site.db.data_engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE pulled_elsewhere")
