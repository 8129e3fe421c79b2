"""The bulk (PostgreSQL COPY) pull-data format: sender stream, receiver applier, pulls.

Two sites on two real PostgreSQL databases; the receiver reaches the sender's
app in-process through httpx's WSGI transport, which streams the body as the
app yields it, like gunicorn does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from falcon import testing
from sqlalchemy import Engine, text

from api.app import create_app
from shared.context import Site
from shared.control.peer import PeerClient, RateLimited
from shared.data import copy_format
from shared.data.receiver import bulk_in, checkpoints, delta, pulls, sources, writer
from shared.data.receiver import copy_in as copyin
from shared.data.sender import copy_out
from shared.data.sender.offer import Catalog
from shared.db import Database
from shared.dispatch import DeferredDispatcher
from shared.settings import Settings, SettingsError
from shared.state.models import Base, Connection, Transfer
from tests.datasets import EVERYTHING
from tests.helpers import (
    ScratchDatabases,
    as_text,
    copy_into,
    make_settings,
    open_to_peer,
    rows,
    run,
)

SENDER_URL = "http://127.0.0.1:18997"
RECEIVER_URL = "http://127.0.0.1:18998"
API = "/sync/api"
TOKEN_HASH = hashlib.sha256(b"bulk-test-token").hexdigest()


@pytest.fixture(scope="module")
def database_urls(module_db_factory: ScratchDatabases) -> tuple[str, str]:
    """The sender's and the receiver's database, shared by the module's tests."""
    return (
        module_db_factory.create("bulk_s", migrate=True),
        module_db_factory.create("bulk_r", migrate=True),
    )


def _reset(db: Database) -> None:
    """Empty the service's tables and drop every data table and type."""
    own = {t.name for t in Base.metadata.sorted_tables} | {"alembic_version"}
    with db.engine.begin() as conn:
        names = ", ".join(f'"{t}"' for t in own - {"alembic_version"})
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        for (table,) in conn.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ).all():
            if table not in own:
                conn.execute(text(f'DROP TABLE IF EXISTS "{table}" CASCADE'))
        conn.execute(text("DROP TYPE IF EXISTS mood"))


@dataclasses.dataclass
class Pair:
    sender: Site
    receiver: Site
    http: testing.TestClient  # the sender's app

    @property
    def src(self) -> Engine:
        return self.sender.db.data_engine

    @property
    def dst(self) -> Engine:
        return self.receiver.db.data_engine

    def peer(self) -> PeerClient:
        transport = httpx.WSGITransport(app=create_app(self.sender))
        return PeerClient(self.receiver.settings, transport=transport)

    def pull_data(self, **body: Any) -> testing.Result:
        body = {"auth_token_hash": TOKEN_HASH, "table_name": "t", **body}
        return self.http.simulate_post(f"{API}/pull-data", json=body)

    def sender_connection(self) -> Connection:
        with self.sender.db.session() as session:
            return session.query(Connection).one()

    def start_pull(self, *tables: str, strategy: str = "skip") -> str:
        with self.receiver.db.session() as session:
            conn = session.query(Connection).one()
            transfer = pulls.start(
                session, self.receiver, conn, tables, strategy=strategy
            )
            return str(transfer.id)

    def transfer(self, transfer_id: str) -> Transfer:
        with self.receiver.db.session() as session:
            return session.get(Transfer, uuid.UUID(transfer_id))


@pytest.fixture
def pair(database_urls: tuple[str, str]) -> Iterator[Pair]:
    sites = []
    for url, own, peer, direction in (
        (database_urls[0], SENDER_URL, RECEIVER_URL, "sender"),
        (database_urls[1], RECEIVER_URL, SENDER_URL, "receiver"),
    ):
        settings = make_settings(url, SYNC_SITE_URL=own)
        site = Site(settings, Database(settings.database_url), DeferredDispatcher())
        _reset(site.db)
        open_to_peer(site, direction, peer, TOKEN_HASH)
        sites.append(site)
    yield Pair(sites[0], sites[1], testing.TestClient(create_app(sites[0])))
    for site in sites:
        site.db.dispose()


# --- the sender ------------------------------------------------------------------


@pytest.mark.parametrize("wire_format", [copy_format.BINARY, copy_format.TEXT])
def test_the_sender_streams_pages_as_copy_data(pair: Pair, wire_format: str) -> None:
    run(pair.src, EVERYTHING)
    run(pair.dst, EVERYTHING, "TRUNCATE everything")
    first = pair.pull_data(table_name="everything", format=wire_format, limit=2)
    assert first.status_code == 200
    assert first.headers["content-type"] == copy_format.MEDIA_TYPES[wire_format]
    assert first.headers["x-sync-table"] == "everything"
    assert first.headers["x-sync-format"] == wire_format
    columns = json.loads(first.headers["x-sync-columns"])
    assert columns[:3] == ["id", "c_small", "c_int"] and len(columns) == 25
    assert (first.headers["x-sync-count"], first.headers["x-sync-has-more"]) == (
        "2",
        "true",
    )
    assert json.loads(first.headers["x-sync-next-cursor"]) == [2]

    rest = pair.pull_data(table_name="everything", format=wire_format, after=[2])
    assert rest.headers["x-sync-count"] == "3"
    assert rest.headers["x-sync-has-more"] == "false"
    assert json.loads(rest.headers["x-sync-next-cursor"]) is None

    copy_kind = copy_format.COPY_FORMATS[wire_format]
    assert copy_into(pair.dst, "everything", first.content, copy_kind) == 2
    assert copy_into(pair.dst, "everything", rest.content, copy_kind) == 3
    assert as_text(pair.dst, "everything") == as_text(pair.src, "everything")

    # Every control and counter of pull-data applies as for JSON pages.
    conn = pair.sender_connection()
    assert (conn.records_downloaded, conn.downloads_used) == (5, 1)
    with pair.sender.db.session() as session:
        sent = session.query(Transfer).one()
        assert (sent.direction, sent.status, sent.records_transferred) == (
            "send",
            "completed",
            5,
        )
        assert sent.meta["pages"] == 2


def test_a_json_page_body_holds_the_catalogs_values(pair: Pair) -> None:
    run(pair.src, EVERYTHING)
    answer = pair.pull_data(table_name="everything")
    assert answer.status_code == 200
    page = pair.sender.catalog().fetch_page("everything", after=None, limit=100)
    assert answer.json["data"] == page.rows
    assert answer.json["data"][2]["c_json"] == {"__dbsync_json_null__": True}
    assert answer.json["data"][4]["c_json"] is None


def test_bulk_pages_are_capped_by_the_connection_and_the_site(pair: Pair) -> None:
    run(
        pair.src,
        "CREATE TABLE t (id integer PRIMARY KEY, v text)",
        "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g",
    )
    with pair.sender.db.session() as session:
        session.query(Connection).one().max_records_per_request = 7
    page = pair.pull_data(format=copy_format.BINARY, limit=1000)
    assert page.headers["x-sync-count"] == "7"
    assert json.loads(page.headers["x-sync-next-cursor"]) == [7]

    with pair.sender.db.session() as session:
        session.query(Connection).one().max_records_per_request = 100_000
    pair.sender.settings = dataclasses.replace(pair.sender.settings, bulk_page_rows=20)
    http = testing.TestClient(create_app(pair.sender))
    body = {
        "auth_token_hash": TOKEN_HASH,
        "table_name": "t",
        "format": copy_format.TEXT,
        "after": [7],
        "limit": 1000,
    }
    page = http.simulate_post(f"{API}/pull-data", json=body)
    assert page.headers["x-sync-count"] == "20"
    assert page.content.decode().splitlines()[0] == "8\tv8"
    assert json.loads(page.headers["x-sync-next-cursor"]) == [27]


def test_the_sender_answers_json_when_copy_data_cannot_serve(
    pair: Pair, tmp_path: Any
) -> None:
    run(
        pair.src,
        "CREATE TABLE loose (v text)",
        "INSERT INTO loose VALUES ('a'), ('b')",
        "CREATE TABLE t (id integer PRIMARY KEY, v text)",
        "INSERT INTO t VALUES (1, 'x')",
    )
    unkeyed = pair.pull_data(table_name="loose", format=copy_format.BINARY)
    assert unkeyed.headers["content-type"].startswith("application/json")
    assert sorted(r["v"] for r in unkeyed.json["data"]) == ["a", "b"]
    unknown = pair.pull_data(format="parquet")
    assert unknown.json["data"] == [{"id": 1, "v": "x"}]
    bad_cursor = pair.pull_data(format=copy_format.BINARY, after=["x"])
    assert bad_cursor.status_code == 400 and bad_cursor.json["field"] == "after"

    # A site whose data database is SQLite always answers JSON pages.
    lite = dataclasses.replace(
        pair.sender.settings, data_database_url=f"sqlite:///{tmp_path / 'data.db'}"
    )
    site = Site(
        lite, Database(lite.database_url, lite.data_database_url), DeferredDispatcher()
    )
    run(
        site.db.data_engine,
        "CREATE TABLE t (id integer PRIMARY KEY, v text)",
        "INSERT INTO t VALUES (1, 'lite')",
    )
    http = testing.TestClient(create_app(site))
    answer = http.simulate_post(
        f"{API}/pull-data",
        json={
            "auth_token_hash": TOKEN_HASH,
            "table_name": "t",
            "format": copy_format.BINARY,
        },
    )
    site.db.dispose()
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json["data"] == [{"id": 1, "v": "lite"}]


def test_a_copy_page_releases_its_connection_however_it_ends(pair: Pair) -> None:
    run(
        pair.src,
        "CREATE TABLE t (id integer PRIMARY KEY, v text)",
        "INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g",
    )
    catalog = pair.sender.catalog()
    pool = pair.src.pool

    def page() -> copy_out.CopyPage:
        opened = copy_out.open_page(
            pair.src,
            catalog,
            "t",
            after=None,
            limit=20000,
            wire_format=copy_format.BINARY,
        )
        assert opened is not None
        return opened

    never_read = page()
    never_read.close()
    assert pool.checkedout() == 0  # type: ignore[attr-defined]

    read_some = page()
    assert len(next(read_some)) >= 256 * 1024
    read_some.close()
    assert pool.checkedout() == 0  # type: ignore[attr-defined]

    read_all = page()
    size = sum(len(chunk) for chunk in read_all)
    read_all.close()
    assert size > 20000 * 500 and pool.checkedout() == 0  # type: ignore[attr-defined]


# --- the receiver's applier ------------------------------------------------------

TARGET = (
    (
        "CREATE TABLE t (id integer PRIMARY KEY, name text NOT NULL, qty integer"
        " CHECK (qty >= 0), note text)"
    ),
    "INSERT INTO t VALUES (1, 'a', 1, 'x'), (2, 'b', 2, 'y'), (3, 'c', NULL, 'z')",
)
SOURCE = (
    "INSERT INTO t VALUES (2, 'B2', NULL, 'y2'), (3, 'c', 30, NULL), (4, 'd', 4, NULL),"
    " (5, 'E', 5, 'n5b'), (6, 'f', 6, 'f')"
)
NEW = [(4, "d", 4, None), (5, "E", 5, "n5b"), (6, "f", 6, "f")]


def fetch(
    pair: Pair, wire_format: str, **body: Any
) -> tuple[bulk_in.IncomingPage, bytes]:
    answer = pair.pull_data(format=wire_format, **body)
    assert answer.status_code == 200, answer.text
    media = answer.headers["content-type"]
    page = bulk_in.read_headers(
        answer.headers, media, body.get("table_name", "t"), wire_format
    )
    return page, answer.content


def apply(
    pair: Pair,
    page: bulk_in.IncomingPage,
    data: bytes,
    strategy: str,
    direct: bool = False,
    chunk: int = 7,
) -> Any:
    info = pair.receiver.catalog().describe("t")
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    with pair.dst.begin() as conn:
        return bulk_in.apply_page(
            conn, info, page, iter(pieces), strategy, direct=direct
        )


@pytest.mark.parametrize(
    ("strategy", "counts", "existing"),
    [
        (
            "skip",
            (3, 0, 2, 0),
            [(1, "a", 1, "x"), (2, "b", 2, "y"), (3, "c", None, "z")],
        ),
        (
            "overwrite",
            (3, 2, 0, 0),
            [(1, "a", 1, "x"), (2, "B2", None, "y2"), (3, "c", 30, None)],
        ),
        (
            "merge",
            (3, 2, 0, 0),
            [(1, "a", 1, "x"), (2, "B2", 2, "y2"), (3, "c", 30, "z")],
        ),
    ],
)
@pytest.mark.parametrize("wire_format", [copy_format.BINARY, copy_format.TEXT])
def test_each_strategy_applies_a_copy_page_exactly(
    pair: Pair,
    wire_format: str,
    strategy: str,
    counts: tuple[int, ...],
    existing: list[tuple],
) -> None:
    run(
        pair.src,
        "CREATE TABLE t (id integer PRIMARY KEY, name text, qty integer,"
        " note text"
        + (")" if wire_format == copy_format.BINARY else ", extra integer)"),
        SOURCE,
    )
    run(pair.dst, *TARGET)
    page, data = fetch(pair, wire_format)
    result = apply(pair, page, data, strategy)
    assert (result.created, result.updated, result.skipped, result.failed) == counts
    assert result.errors == []
    assert result.ignored_columns == (
        [] if wire_format == copy_format.BINARY else ["extra"]
    )
    assert rows(pair.dst) == existing + NEW


def test_text_pages_cast_to_the_receivers_types_and_enforce_lengths(pair: Pair) -> None:
    run(
        pair.src,
        "CREATE TABLE t (id text PRIMARY KEY, name text, qty text, at text)",
        "INSERT INTO t VALUES ('1', 'short', '10', '2024-01-02 03:04:05+02'),"
        " ('2', 'far too long a name', '20', NULL)",
    )
    run(
        pair.dst,
        "CREATE TABLE t (id bigint PRIMARY KEY, name varchar(8),"
        " qty numeric(6,1), at timestamptz)",
    )
    page, data = fetch(pair, copy_format.TEXT)
    result = apply(pair, page, data, "skip")
    assert (result.created, result.failed) == (1, 1)
    assert result.errors == [
        {"key": [2], "error": "value too long for type character varying(8)"}
    ]
    with pair.dst.connect() as conn:
        conn.exec_driver_sql("SET timezone = 'UTC'")
        assert [
            tuple(r)
            for r in conn.exec_driver_sql("SELECT id, name, qty::text, at::text FROM t")
        ] == [(1, "short", "10.0", "2024-01-02 01:04:05+00")]


def test_rejected_rows_of_a_copy_page_fail_alone_and_the_rest_lands(pair: Pair) -> None:
    run(
        pair.src,
        "CREATE TABLE t (id integer PRIMARY KEY, name text, qty integer, note text)",
        "INSERT INTO t SELECT g, 'n' || g, g, NULL FROM generate_series(4, 2503) g",
        "UPDATE t SET qty = -1 WHERE id = 7",
        "UPDATE t SET name = NULL WHERE id = 1500",
        "INSERT INTO t VALUES (2, 'B2', 20, NULL)",
    )
    run(pair.dst, *TARGET)
    page, data = fetch(pair, copy_format.BINARY, limit=100_000)
    assert page.count == 2501
    result = apply(pair, page, data, "overwrite", chunk=65536)
    assert (result.created, result.updated, result.skipped, result.failed) == (
        2498,
        1,
        0,
        2,
    )
    assert result.errors == [
        {
            "key": [7],
            "error": 'new row for relation "t" violates check constraint "t_qty_check"',
        },
        {
            "key": [1500],
            "error": 'null value in column "name" of relation "t" violates not-null constraint',
        },
    ]
    landed = rows(pair.dst)
    assert len(landed) == 3 + 2498
    assert landed[1] == (2, "B2", 20, None)
    assert 7 not in [r[0] for r in landed] and 1500 not in [r[0] for r in landed]


def test_direct_copy_fills_an_empty_table_and_refuses_one_in_the_way(
    pair: Pair,
) -> None:
    run(
        pair.src,
        "CREATE TABLE t (id integer PRIMARY KEY, name text, qty integer, note text)",
        SOURCE,
    )
    run(pair.dst, TARGET[0])
    page, data = fetch(pair, copy_format.BINARY)
    result = apply(pair, page, data, "merge", direct=True)
    assert (result.created, result.updated, result.skipped, result.failed) == (
        5,
        0,
        0,
        0,
    )
    assert len(rows(pair.dst)) == 5

    run(pair.dst, "DELETE FROM t WHERE id <> 3")
    with pytest.raises(copyin.Rejected):
        apply(pair, page, data, "merge", direct=True)
    assert [r[0] for r in rows(pair.dst)] == [3]


def test_append_copies_rows_in_page_order_and_leaves_keys_to_the_database(
    pair: Pair,
) -> None:
    run(
        pair.src,
        "CREATE TABLE t (id bigserial PRIMARY KEY, body text NOT NULL)",
        "INSERT INTO t (body) SELECT 'sender ' || g FROM generate_series(1, 1500) g",
    )
    run(
        pair.dst,
        "CREATE TABLE t (id bigserial PRIMARY KEY, body text NOT NULL)",
        "INSERT INTO t (body) VALUES ('mine 1'), ('mine 2')",
    )
    page, data = fetch(pair, copy_format.BINARY)
    result = apply(pair, page, data, "append")
    assert (result.created, result.updated, result.skipped, result.failed) == (
        1500,
        0,
        0,
        0,
    )
    landed = rows(pair.dst)
    assert landed[:3] == [(1, "mine 1"), (2, "mine 2"), (3, "sender 1")]
    assert landed[-1] == (1502, "sender 1500")


def test_a_body_that_breaks_off_leaves_nothing(pair: Pair) -> None:
    run(
        pair.src,
        "CREATE TABLE t (id integer PRIMARY KEY, name text, qty integer, note text)",
        SOURCE,
    )
    run(pair.dst, TARGET[0])
    for wire_format in (copy_format.BINARY, copy_format.TEXT):
        page, data = fetch(pair, wire_format)

        def broken(data: bytes = data) -> Iterator[bytes]:
            yield data[: len(data) // 2]
            raise pulls.PeerUnavailable("pull-data: ReadError")

        info = pair.receiver.catalog().describe("t")
        for direct in (False, True):
            with pytest.raises(pulls.PeerUnavailable), pair.dst.begin() as conn:
                bulk_in.apply_page(conn, info, page, broken(), "skip", direct=direct)
        # Cut at a row boundary, the count still gives it away.
        short = (
            data[: data.index(b"\n") + 1] if wire_format == copy_format.TEXT else None
        )
        if short:
            with (
                pytest.raises(copyin.BrokeOff, match="broke off"),
                pair.dst.begin() as conn,
            ):
                bulk_in.apply_page(conn, info, page, iter([short]), "skip")
    assert rows(pair.dst) == []


# --- pulls through the fast path -------------------------------------------------

BIG = """
CREATE TABLE big (
    id bigint PRIMARY KEY, n integer, amount numeric(14,4), label text,
    flag boolean, born date, at timestamptz, ref uuid, doc jsonb, tags text[]
);
INSERT INTO big
SELECT g, mod(g, 1000), (g * 1.25)::numeric(14,4), 'row ' || g || repeat('x', mod(g, 40)),
       mod(g, 3) = 0, date '2000-01-01' + mod(g, 9000),
       timestamptz '2020-01-01 00:00:00+00' + g * interval '1 second',
       md5(g::text)::uuid, jsonb_build_object('g', g), ARRAY['a' || g, NULL]
FROM generate_series(1, 3500) g;
"""


def checksum(engine: Engine, table: str) -> str:
    return Catalog(engine, checksum_row_limit=10**9).checksum(table)


def _record_formats(
    monkeypatch: pytest.MonkeyPatch, after: Callable[[int], None] | None = None
) -> list[tuple[str, bool]]:
    """Note each bulk page applied (format, direct); ``after`` runs after each
    with the number applied so far."""
    formats: list[tuple[str, bool]] = []
    real_apply = bulk_in.apply_page

    def spy(conn, info, page, chunks, strategy, *, direct=False):  # type: ignore[no-untyped-def]
        formats.append((page.format, direct))
        result = real_apply(conn, info, page, chunks, strategy, direct=direct)
        if after is not None:
            after(len(formats))
        return result

    monkeypatch.setattr(bulk_in, "apply_page", spy)
    return formats


@pytest.mark.parametrize("receiver_type", ["text", "varchar(100)"])
def test_a_multi_page_pull_goes_through_the_fast_path(
    pair: Pair, receiver_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(pair.src, BIG)
    run(
        pair.dst, BIG.split("INSERT")[0].replace("label text", f"label {receiver_type}")
    )
    with pair.sender.db.session() as session:
        session.query(Connection).one().max_records_per_request = 1000
    formats = _record_formats(monkeypatch)
    tid = pair.start_pull("big")
    assert pulls.run(pair.receiver, pair.peer(), tid, "test").state == "completed"
    done = pair.transfer(tid)
    assert (done.records_transferred, done.records_created, done.records_failed) == (
        3500,
        3500,
        0,
    )
    assert checksum(pair.dst, "big") == checksum(pair.src, "big")
    expected = copy_format.BINARY if receiver_type == "text" else copy_format.TEXT
    assert formats == [(expected, True)] * 4
    with pair.dst.connect() as conn:
        cp = checkpoints.load(conn, tid, "big")
    assert (cp.pages, cp.rows_done, cp.done, cp.bytes_done > 3500 * 50) == (
        4,
        3500,
        True,
        True,
    )

    # Pulled again, every row is in the way: the pages are staged and skipped.
    formats.clear()
    again = pair.start_pull("big")
    assert pulls.run(pair.receiver, pair.peer(), again, "test").state == "completed"
    done = pair.transfer(again)
    assert (done.records_created, done.records_skipped) == (0, 3500)
    assert formats == [(expected, False)] * 4


def _retry_due_now(pair: Pair, tid: str) -> None:
    """Let a retrying transfer's backoff pass at once."""
    with pair.receiver.db.session() as session:
        session.get_one(Transfer, uuid.UUID(tid)).lease_until = None


def test_a_page_and_its_checkpoint_commit_together_or_not_at_all(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(pair.src, BIG)
    run(pair.dst, BIG.split("INSERT")[0], "INSERT INTO big (id) VALUES (1)")
    checkpoints.ensure_table(pair.dst)

    def fail_after_staging(*args: Any) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(copyin.CopyApplier, "_apply", fail_after_staging)
    tid = pair.start_pull("big")
    # An unexpected error ends the run in a recorded retry, never as a crash.
    assert pulls.run(pair.receiver, pair.peer(), tid, "test").state == "retrying"
    assert pair.transfer(tid).error_message == (
        "waiting to retry: RuntimeError: injected"
    )
    assert rows(pair.dst, "big")[0][0] == 1 and len(rows(pair.dst, "big")) == 1
    with pair.dst.connect() as conn:
        assert checkpoints.load(conn, tid, "big").stored is False
    monkeypatch.undo()

    # Fail the checkpoint instead: the applied page goes too.
    def fail_save(*args: Any) -> None:
        raise RuntimeError("injected at save")

    monkeypatch.setattr(checkpoints, "save", fail_save)
    _retry_due_now(pair, tid)
    assert pulls.run(pair.receiver, pair.peer(), tid, "test").state == "retrying"
    assert pair.transfer(tid).error_message == (
        "waiting to retry: RuntimeError: injected at save"
    )
    assert len(rows(pair.dst, "big")) == 1
    monkeypatch.undo()

    _retry_due_now(pair, tid)
    assert pulls.run(pair.receiver, pair.peer(), tid, "test").state == "completed"
    done = pair.transfer(tid)
    assert (done.records_created, done.records_skipped) == (3499, 1)
    assert checksum(pair.dst, "big") != checksum(pair.src, "big")  # row 1 kept its own


def test_a_sender_whose_stream_breaks_off_is_retried_and_nothing_half_lands(
    pair: Pair,
) -> None:
    run(pair.src, BIG)
    run(pair.dst, BIG.split("INSERT")[0])

    class Cut(httpx.BaseTransport):
        def __init__(self, inner: httpx.BaseTransport) -> None:
            self.inner = inner

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            resp = self.inner.handle_request(request)
            if not resp.headers.get("x-sync-count"):
                return resp

            def cut() -> Iterator[bytes]:
                for i, chunk in enumerate(resp.stream):  # type: ignore[union-attr]
                    if i == 1:
                        raise httpx.ReadError("connection reset")
                    yield chunk

            return httpx.Response(
                resp.status_code, headers=resp.headers, stream=_Stream(cut())
            )

    client = PeerClient(
        pair.receiver.settings,
        transport=Cut(httpx.WSGITransport(app=create_app(pair.sender))),
    )
    tid = pair.start_pull("big")
    outcome = pulls.run(pair.receiver, client, tid, "test")
    assert outcome.state == "retrying"
    assert "ReadError" in (pair.transfer(tid).error_message or "")
    assert rows(pair.dst, "big") == []


class _Stream(httpx.SyncByteStream):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks


def test_a_row_in_the_way_of_a_direct_copy_sends_the_page_again_staged(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(pair.src, BIG)
    run(pair.dst, BIG.split("INSERT")[0])
    with pair.sender.db.session() as session:
        session.query(Connection).one().max_records_per_request = 1000

    def someone_writes(pages: int) -> None:
        if pages == 1:  # someone else writes a row the next page holds
            run(pair.dst, "INSERT INTO big (id, label) VALUES (1500, 'local')")

    formats = _record_formats(monkeypatch, after=someone_writes)
    tid = pair.start_pull("big", strategy="skip")
    assert pulls.run(pair.receiver, pair.peer(), tid, "test").state == "completed"
    assert (
        formats
        == [(copy_format.BINARY, True), (copy_format.BINARY, True)]
        + [(copy_format.BINARY, False)] * 3
    )
    done = pair.transfer(tid)
    assert (done.records_transferred, done.records_created, done.records_skipped) == (
        3500,
        3499,
        1,
    )
    assert rows(pair.dst, "big")[1499][3] == "local"
    # The page asked for twice was counted twice by the sender.
    assert pair.sender_connection().records_downloaded == 4500


@pytest.mark.parametrize(
    ("setting", "expected"), [("json", []), ("pg_copy_text", [copy_format.TEXT] * 2)]
)
def test_the_receiver_setting_chooses_the_format(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, setting: str, expected: list[str]
) -> None:
    run(pair.src, BIG)
    run(pair.dst, BIG.split("INSERT")[0])
    with pair.sender.db.session() as session:
        session.query(Connection).one().max_records_per_request = 2000
    pair.receiver.settings = dataclasses.replace(
        pair.receiver.settings, pull_format=setting
    )
    formats = _record_formats(monkeypatch)
    tid = pair.start_pull("big", strategy="overwrite")
    assert pulls.run(pair.receiver, pair.peer(), tid, "test").state == "completed"
    assert [f for f, _ in formats] == expected
    assert pair.transfer(tid).records_created == 3500
    assert checksum(pair.dst, "big") == checksum(pair.src, "big")


class _Recorder(httpx.BaseTransport):
    """Note each pull-data request's cursor as it is sent."""

    def __init__(self, inner: httpx.BaseTransport, events: list[Any]) -> None:
        self.inner = inner
        self.events = events

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/pull-data"):
            self.events.append(("fetch", json.loads(request.content).get("after")))
        return self.inner.handle_request(request)


def _json_receiver(
    pair: Pair, page_rows: int, events: list[Any], monkeypatch: pytest.MonkeyPatch
) -> PeerClient:
    """BIG on the sender, its empty table here, and a client for JSON pages
    that notes each request in ``events`` (and each page written, by a spy)."""
    run(pair.src, BIG)
    run(pair.dst, BIG.split("INSERT")[0])
    with pair.sender.db.session() as session:
        session.query(Connection).one().max_records_per_request = page_rows
    pair.receiver.settings = dataclasses.replace(
        pair.receiver.settings, pull_format="json"
    )
    real_import = writer.import_page

    def spy(conn, info, rows, strategy, *, direct=False):  # type: ignore[no-untyped-def]
        # Was the next page asked for while this one is still to be written?
        # (It is sent from another thread: give it a moment.)
        next_fetch = ("fetch", [rows[-1]["id"]])
        deadline = time.monotonic() + (10 if len(rows) == page_rows else 0)
        while next_fetch not in events and time.monotonic() < deadline:
            time.sleep(0.01)
        events.append(("apply", rows[0]["id"], len(rows), direct, next_fetch in events))
        return real_import(conn, info, rows, strategy, direct=direct)

    monkeypatch.setattr(writer, "import_page", spy)
    return PeerClient(
        pair.receiver.settings,
        transport=_Recorder(httpx.WSGITransport(app=create_app(pair.sender)), events),
    )


def test_json_pages_are_fetched_one_ahead_and_written_in_order(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[Any] = []
    client = _json_receiver(pair, 1000, events, monkeypatch)
    tid = pair.start_pull("big", strategy="skip")
    assert pulls.run(pair.receiver, client, tid, "test").state == "completed"
    # Each page but the last is written only once the next one was asked for.
    assert [e for e in events if e[0] == "apply"] == [
        ("apply", 1, 1000, True, True),
        ("apply", 1001, 1000, True, True),
        ("apply", 2001, 1000, True, True),
        ("apply", 3001, 500, True, False),
    ]
    assert [e for e in events if e[0] == "fetch"] == [
        ("fetch", None),
        ("fetch", [1000]),
        ("fetch", [2000]),
        ("fetch", [3000]),
    ]
    done = pair.transfer(tid)
    assert (done.records_transferred, done.records_created, done.records_failed) == (
        3500,
        3500,
        0,
    )
    assert checksum(pair.dst, "big") == checksum(pair.src, "big")
    with pair.dst.connect() as conn:
        cp = checkpoints.load(conn, tid, "big")
    assert (cp.pages, cp.rows_done, cp.done) == (4, 3500, True)

    # Pulled again with every row there: staged, every row updated.
    events.clear()
    again = pair.start_pull("big", strategy="overwrite")
    assert pulls.run(pair.receiver, client, again, "test").state == "completed"
    assert [e[3] for e in events if e[0] == "apply"] == [False] * 4
    done = pair.transfer(again)
    assert (done.records_created, done.records_updated) == (0, 3500)


def test_a_json_page_that_fails_keeps_its_checkpoint_and_the_next_run_resumes(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[Any] = []
    client = _json_receiver(pair, 1000, events, monkeypatch)
    spy = writer.import_page
    failed: list[int] = []

    def third_fails(conn, info, rows, strategy, *, direct=False):  # type: ignore[no-untyped-def]
        if rows[0]["id"] == 2001 and not failed:
            failed.append(2001)
            raise RuntimeError("injected")
        return spy(conn, info, rows, strategy, direct=direct)

    monkeypatch.setattr(writer, "import_page", third_fails)
    tid = pair.start_pull("big")
    assert pulls.run(pair.receiver, client, tid, "test").state == "retrying"
    assert len(rows(pair.dst, "big")) == 2000
    with pair.dst.connect() as conn:
        cp = checkpoints.load(conn, tid, "big")
    assert (cp.pages, cp.rows_done, cp.cursor, cp.done) == (2, 2000, [2000], False)

    events.clear()
    _retry_due_now(pair, tid)
    assert pulls.run(pair.receiver, client, tid, "test").state == "completed"
    assert [e[1] for e in events if e[0] == "fetch"] == [[2000], [3000]]
    done = pair.transfer(tid)
    assert (done.records_transferred, done.records_created) == (3500, 3500)
    assert checksum(pair.dst, "big") == checksum(pair.src, "big")


def test_a_copy_that_fails_mid_stream_aborts_the_body(pair: Pair) -> None:
    run(
        pair.src,
        "CREATE TABLE t (id integer PRIMARY KEY, v text)",
        "INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series(1, 100000) g",
    )
    page = copy_out.open_page(
        pair.src,
        pair.sender.catalog(),
        "t",
        after=None,
        limit=100_000,
        wire_format=copy_format.BINARY,
    )
    assert page is not None
    next(page)
    with pair.src.connect() as conn:
        killed = (
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE 'COPY (SELECT%%' AND pid <> pg_backend_pid()"
            )
            .scalars()
            .all()
        )
    assert killed == [True]
    with pytest.raises(copy_out.StreamAborted):
        for _chunk in page:
            pass
    page.close()
    assert pair.src.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_the_streaming_post_maps_answers_like_post(pair: Pair) -> None:
    answers = iter(
        [
            httpx.Response(429, headers={"retry-after": "7"}, json={"error": "slow"}),
            httpx.Response(503, json={"success": False, "error": "down"}),
            httpx.Response(403, json={"success": False, "error": "No"}),
        ]
    )
    client = PeerClient(
        pair.receiver.settings, transport=httpx.MockTransport(lambda r: next(answers))
    )
    with pytest.raises(RateLimited) as limited:
        client.post_stream(SENDER_URL, "pull-data", {}, copy_format.ACCEPT)
    assert limited.value.retry_after == 7.0 and "slow" in str(limited.value)
    with pytest.raises(pulls.PeerUnavailable, match="HTTP 503 down"):
        client.post_stream(SENDER_URL, "pull-data", {}, copy_format.ACCEPT)
    with client.post_stream(SENDER_URL, "pull-data", {}, copy_format.ACCEPT) as refused:
        assert (refused.status, refused.response().error) == (403, "No")
    with pytest.raises(pulls.PeerRefused):
        client.post_stream(RECEIVER_URL, "pull-data", {}, copy_format.ACCEPT)  # itself

    def drop(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    client = PeerClient(pair.receiver.settings, transport=httpx.MockTransport(drop))
    with pytest.raises(pulls.PeerUnavailable, match="ConnectError"):
        client.post_stream(SENDER_URL, "pull-data", {}, copy_format.ACCEPT)


def test_the_pull_format_setting_is_checked() -> None:
    assert Settings.from_env({}).pull_format == "auto"
    assert Settings.from_env({"SYNC_PULL_FORMAT": "JSON"}).pull_format == "json"
    with pytest.raises(SettingsError, match="SYNC_PULL_FORMAT"):
        Settings.from_env({"SYNC_PULL_FORMAT": "csv"})
    assert Settings.from_env({"SYNC_BULK_PAGE_ROWS": "5000"}).bulk_page_rows == 5000


# --- pull-keys as COPY data (delta runs) ----------------------------------------


def _pull_keys(pair: Pair, **body: Any) -> testing.Result:
    body = {"auth_token_hash": TOKEN_HASH, "table_name": "t", **body}
    return pair.http.simulate_post(f"{API}/pull-keys", json=body)


@pytest.mark.parametrize("wire_format", [copy_format.BINARY, copy_format.TEXT])
def test_pull_keys_answers_the_rows_of_the_keys_as_copy_data(
    pair: Pair, wire_format: str
) -> None:
    run(pair.src, *TARGET, "DELETE FROM t", SOURCE)
    run(pair.dst, *TARGET, "DELETE FROM t")
    got = _pull_keys(pair, keys=[[5], [2], [99]], format=wire_format)
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == copy_format.MEDIA_TYPES[wire_format]
    page = bulk_in.read_headers(
        got.headers, got.headers["content-type"], "t", wire_format
    )
    assert page == bulk_in.IncomingPage(
        wire_format, ["id", "name", "qty", "note"], 2, False, None
    )
    assert (
        copy_into(pair.dst, "t", got.content, copy_format.COPY_FORMATS[wire_format])
        == 2
    )
    assert rows(pair.dst) == [(2, "B2", None, "y2"), (5, "E", 5, "n5b")]
    conn = pair.sender_connection()
    assert (conn.records_downloaded, conn.downloads_used) == (2, 0)

    # No key found: an empty page, still COPY data.
    none = _pull_keys(pair, keys=[[99]], format=wire_format)
    assert (none.status_code, none.headers["x-sync-count"]) == (200, "0")
    # A format this site does not know: the JSON page.
    plain = _pull_keys(pair, keys=[[4]], format="pg_copy_csv")
    assert (plain.status_code, plain.json["data"]) == (
        200,
        [{"id": 4, "name": "d", "qty": 4, "note": None}],
    )
    bad = _pull_keys(pair, keys=[["x"]], format=wire_format)
    assert bad.status_code == 400 and bad.json["error"].startswith("Invalid key:")


def _settler(pair: Pair, keys_format: str | None, mirror: bool) -> delta.RowSettler:
    sender = sources.Sender(pair.peer(), SENDER_URL, TOKEN_HASH)
    info = pair.receiver.catalog().describe("t")
    remote = delta.Remote(
        sender, "t", ["id", "name", "qty", "note"], keys_format=keys_format
    )
    return delta.RowSettler(
        remote, pair.dst, info, "overwrite", mirror, delta.Outcome()
    )


@pytest.mark.parametrize("keys_format", [copy_format.BINARY, copy_format.TEXT, None])
def test_a_delta_batch_fetches_rows_by_key_and_applies_them_exactly(
    pair: Pair, keys_format: str | None
) -> None:
    run(pair.src, *TARGET, "DELETE FROM t", SOURCE)
    run(pair.dst, *TARGET)
    settler = _settler(pair, keys_format, mirror=True)
    done = settler.prefetch([2, 3, 4, 5])
    done()
    expected = delta.BulkPage if keys_format else delta.JsonPage
    assert isinstance(settler.prefetched, expected)
    settler.wanted, settler.extra = [2, 3, 4, 5], [1]
    settler.flush()
    assert rows(pair.dst) == [
        (2, "B2", None, "y2"),
        (3, "c", 30, None),
        (4, "d", 4, None),
        (5, "E", 5, "n5b"),
    ]
    out = settler.outcome
    assert (out.rows_pulled, out.deleted, out.result.created, out.result.updated) == (
        4,
        1,
        2,
        2,
    )
    # One call: the batch took the rows fetched ahead.
    assert settler.remote.requests == 1


def test_copy_data_fetched_ahead_for_other_keys_is_not_applied(pair: Pair) -> None:
    run(pair.src, *TARGET, "DELETE FROM t", SOURCE)
    run(pair.dst, *TARGET)
    settler = _settler(pair, copy_format.BINARY, mirror=False)
    settler.prefetch([2, 3, 4])()
    settler.wanted = [4]  # 2 and 3 turned out equal: only 4 is written
    settler.flush()
    assert rows(pair.dst) == [
        (1, "a", 1, "x"),
        (2, "b", 2, "y"),
        (3, "c", None, "z"),
        (4, "d", 4, None),
    ]
    assert (settler.outcome.rows_pulled, settler.remote.requests) == (1, 2)


def test_binary_rows_by_key_this_database_refuses_come_again_as_text(
    pair: Pair,
) -> None:
    # The receiver's qty is text: binary int4 data does not fit it.
    run(pair.src, *TARGET, "DELETE FROM t", SOURCE)
    run(
        pair.dst,
        "CREATE TABLE t (id integer PRIMARY KEY, name text, qty text, note text)",
    )
    settler = _settler(pair, copy_format.BINARY, mirror=False)
    settler.wanted = [4, 5]
    settler.flush()
    assert rows(pair.dst) == [(4, "d", "4", None), (5, "E", "5", "n5b")]
    assert settler.remote.keys_format == copy_format.TEXT
    assert settler.remote.requests == 2


def test_a_sender_that_answers_rows_by_key_as_json_is_understood(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An older dbsync sender ignores ``format`` and answers JSON.
    monkeypatch.setattr(copy_out, "keys_copy", lambda *a, **k: None)
    run(pair.src, *TARGET, "DELETE FROM t", SOURCE)
    run(pair.dst, *TARGET, "DELETE FROM t")
    settler = _settler(pair, copy_format.BINARY, mirror=False)
    settler.wanted = [6]
    settler.flush()
    assert rows(pair.dst) == [(6, "f", 6, "f")]


@pytest.mark.parametrize(
    ("keys_format", "headers", "error"),
    [
        # COPY data to a receiver that asked for JSON: not read as COPY data.
        (None, {"x-sync-count": "1"}, "pull-keys: "),
        # More rows announced than keys asked.
        (copy_format.BINARY, {"x-sync-count": "3"}, "3 rows for 2 keys"),
        # Another table's rows.
        (copy_format.BINARY, {"x-sync-table": "other"}, "answer for another table"),
    ],
)
def test_rows_by_key_that_do_not_fit_the_ask_fail_the_table(
    pair: Pair, keys_format: str | None, headers: dict[str, str], error: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers={
                "content-type": copy_format.MEDIA_TYPES[copy_format.BINARY],
                "x-sync-table": "t",
                "x-sync-format": copy_format.BINARY,
                "x-sync-columns": '["id", "name", "qty", "note"]',
                "x-sync-count": "1",
                "x-sync-has-more": "false",
                "x-sync-next-cursor": "null",
                **headers,
            },
            content=b"PGCOPY\n\xff\r\n\x00",
        )

    run(pair.dst, *TARGET)
    peer = PeerClient(pair.receiver.settings, transport=httpx.MockTransport(handler))
    sender = sources.Sender(peer, SENDER_URL, TOKEN_HASH)
    info = pair.receiver.catalog().describe("t")
    remote = delta.Remote(
        sender, "t", ["id", "name", "qty", "note"], keys_format=keys_format
    )
    settler = delta.RowSettler(
        remote, pair.dst, info, "overwrite", False, delta.Outcome()
    )
    settler.wanted = [4, 5]
    with pytest.raises(delta.Failed, match=error):
        settler.flush()
    assert rows(pair.dst) == [(1, "a", 1, "x"), (2, "b", 2, "y"), (3, "c", None, "z")]


# --- cursor mode -------------------------------------------------------------------

STAMPED = (
    "CREATE TABLE stamped (id integer PRIMARY KEY, v text,"
    " updated_at timestamptz NOT NULL)",
    "INSERT INTO stamped SELECT g, 'v' || g,"
    " timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute'"
    " FROM generate_series(1, 3000) g",
)


def _cursor_sync(pair: Pair) -> str:
    from shared.data.receiver import syncs

    columns = [{"name": "id", "type": "integer"}, {"name": "v", "type": "text"}]
    columns.append({"name": "updated_at", "type": "timestamp with time zone"})
    with pair.receiver.db.session() as session:
        conn = session.query(Connection).one()
        sync = syncs.create(
            session,
            conn,
            ["stamped"],
            all_tables=False,
            every_seconds=3600,
            strategy="overwrite",
            mode="cursor",
            mirror_deletes=False,
            cursor_column="updated_at",
            sender_columns={"stamped": columns},
        )
        return str(sync.id)


def _sync_run(pair: Pair, sid: str) -> Transfer:
    """Let beat start the sync's next run, run it, and let beat note its end."""
    from shared.data.receiver import syncs

    with pair.receiver.db.session() as session:
        syncs.run_now(session, syncs.get(session, sid))
    assert syncs._tick_one(pair.receiver, uuid.UUID(sid)) == 1
    with pair.receiver.db.session() as session:
        tid = str(syncs.get(session, sid).last_transfer_id)
    assert pulls.run(pair.receiver, pair.peer(), tid, "test").state == "completed"
    syncs._tick_one(pair.receiver, uuid.UUID(sid))  # notes the end, keeps the mark
    return pair.transfer(tid)


def _mark(pair: Pair, sid: str) -> Any:
    from shared.data.receiver import syncs

    with pair.receiver.db.session() as session:
        return syncs.describe(session, syncs.get(session, sid))["high_water_mark"]


@pytest.mark.parametrize("setting", ["json", "pg_copy_binary"])
def test_a_cursor_sync_pulls_only_rows_beyond_the_mark_minus_the_look_back(
    pair: Pair, setting: str
) -> None:
    run(pair.src, *STAMPED)
    run(pair.dst, STAMPED[0])
    pair.receiver.settings = dataclasses.replace(
        pair.receiver.settings, pull_format=setting
    )
    sid = _cursor_sync(pair)
    first = _sync_run(pair, sid)  # no mark yet: every row, and the mark
    assert (first.records_transferred, first.records_created) == (3000, 3000)
    assert first.meta["cursor"]["stamped"] == {
        "column": "updated_at",
        "mark_before": None,
        "look_back": "1m",
        "after": None,
        "high_water": "2024-01-03T02:00:00+00:00",
        "filtered": True,
    }
    assert first.meta["verification"] == {"stamped": {"status": "verified"}}
    assert _mark(pair, sid) == {"stamped": "2024-01-03T02:00:00+00:00"}

    run(
        pair.src,
        # Advanced: seen.
        "UPDATE stamped SET v = 'new', updated_at = '2024-02-01' WHERE id IN (5, 6)",
        "INSERT INTO stamped VALUES (3001, 'added', '2024-02-02')",
        # Not advanced: a cursor run does not see it.
        "UPDATE stamped SET v = 'unseen' WHERE id = 7",
    )
    second = _sync_run(pair, sid)
    note = second.meta["cursor"]["stamped"]
    assert (note["mark_before"], note["after"]) == (
        "2024-01-03T02:00:00+00:00",
        "2024-01-03T01:59:00+00:00",
    )
    # 3000 (the mark itself, within the look-back), 5, 6 and 3001.
    assert (second.records_transferred, second.records_created) == (4, 1)
    assert second.records_updated == 3
    assert rows(pair.dst, "stamped")[4:7] == [
        (5, "new", dt.datetime(2024, 2, 1, tzinfo=dt.UTC)),
        (6, "new", dt.datetime(2024, 2, 1, tzinfo=dt.UTC)),
        (7, "v7", dt.datetime(2024, 1, 1, 0, 7, tzinfo=dt.UTC)),
    ]
    assert rows(pair.dst, "stamped")[-1][0] == 3001
    # The row whose column did not move differs: the run does not read clean.
    assert second.meta["verification"]["stamped"]["status"] == "differs"
    assert second.error_message.startswith("Verification: stamped differ(s)")
    assert _mark(pair, sid) == {"stamped": "2024-02-02T00:00:00+00:00"}


def test_a_sender_that_ignores_since_gives_a_full_pull_and_the_mark_stays(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.data.sender import handlers

    run(pair.src, *STAMPED)
    run(pair.dst, STAMPED[0])
    sid = _cursor_sync(pair)
    _sync_run(pair, sid)
    monkeypatch.setattr(handlers, "_since", lambda *a: (None, None))
    again = _sync_run(pair, sid)
    assert again.records_transferred == 3000
    note = again.meta["cursor"]["stamped"]
    assert note["filtered"] is False
    assert note["reason"] == "the sender does not filter by cursor: pulled whole"
    assert "high_water" not in note
    assert _mark(pair, sid) == {"stamped": "2024-01-03T02:00:00+00:00"}
