"""The PhoenixKit stand-in answers and calls as the facts file says PhoenixKit does.

Real PostgreSQL, real HTTP on loopback. The server runs in a thread of this
process (one per stand-in database); one test runs it as its own process, as
the end-to-end tests do. Section numbers are those of
shared/reference/phoenixkit-sync-facts.md.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from wsgiref.simple_server import make_server

import falcon
import httpx
import pytest

from tests.helpers import ScratchDatabases
from tests.peers.phoenixkit import values
from tests.peers.phoenixkit.client import PhoenixKit, SyncCrashed
from tests.peers.phoenixkit.connections import hash_token
from tests.peers.phoenixkit.db import Database
from tests.peers.phoenixkit.process import PhoenixKitProcess
from tests.peers.phoenixkit.server import ServerThread

PEER = "http://127.0.0.1:19931"  # a peer URL nothing answers on

DATA = """
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE authors (id integer PRIMARY KEY, name text NOT NULL UNIQUE);
CREATE TABLE books (id integer PRIMARY KEY, author_id integer REFERENCES authors(id),
                    title text, price numeric(8,2));
CREATE TABLE nodes (id integer PRIMARY KEY, parent_id integer REFERENCES nodes(id));
CREATE TABLE empty_one (id integer PRIMARY KEY);
CREATE TABLE schemas (id integer PRIMARY KEY);
CREATE TABLE no_key (a integer, b text);
CREATE TABLE pairs (k1 integer, k2 integer, v text, PRIMARY KEY (k2, k1));
CREATE TABLE big (id integer PRIMARY KEY, v text);
CREATE TABLE odd (id integer PRIMARY KEY, span interval);
INSERT INTO authors SELECT g, 'author ' || g FROM generate_series(1, 3) g;
INSERT INTO books SELECT g, 1 + g % 3, 'book ' || g, g * 1.5 FROM generate_series(1, 12) g;
INSERT INTO nodes VALUES (1, NULL), (2, 1);
INSERT INTO no_key VALUES (1, 'x');
INSERT INTO pairs VALUES (1, 2, 'a'), (2, 1, 'b'), (3, 1, 'c');
INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, 10001) g;
INSERT INTO odd VALUES (1, '1 day');
CREATE TABLE every_type (
    id bigint PRIMARY KEY, i2 smallint, i4 integer, num numeric(12,4), tiny numeric,
    f4 real, f8 double precision, f8_nan double precision, b boolean, t text,
    vc varchar(20), ch char(3), d date, tm time, tmtz timetz, ts timestamp,
    ts3 timestamp(3), tstz timestamptz, u uuid, u_ascii uuid, by bytea, by_text bytea,
    j json, jb jsonb, ints integer[], texts text[], e mood, nothing text
);
INSERT INTO every_type VALUES (
    1, -2, 40000, 12.5, 0.0000001, 0.1, 1.5, 'NaN', true, 'héllo', 'abc', 'ab',
    '2024-02-29', '12:34:56.789', '12:00:00+02', '2024-01-02 03:04:05',
    '2024-01-02 03:04:05.1234', '2024-01-02 03:04:05+02',
    '0f8fad5b-d9cb-469f-a165-70867728950e', '41414141-4141-4141-4141-414141414141',
    '\\x00ff', 'hi', '{"a": [1, 2.5]}', '{"k": "v"}', '{1,NULL,3}', '{a,b}', 'happy', NULL
);
"""

UUID_BYTES = uuid.UUID("0f8fad5b-d9cb-469f-a165-70867728950e").bytes

# §4 "Wire value encoding", one row of every type as pull-data sends it.
EVERY_TYPE_ROW = {
    "id": 1,
    "i2": -2,
    "i4": 40000,
    "num": "12.5000",
    "tiny": "1E-7",  # Decimal.to_string/1 is scientific below 1E-6
    "f4": 0.10000000149011612,  # float4 widened to a double
    "f8": 1.5,
    "f8_nan": "NaN",  # Postgrex's :NaN atom, a string through Jason
    "b": True,
    "t": "héllo",
    "vc": "abc",
    "ch": "ab ",
    "d": "2024-02-29",
    "tm": "12:34:56.789000",
    "tmtz": "10:00:00.000000",  # shifted to UTC, offset dropped
    "ts": "2024-01-02T03:04:05.000000",
    "ts3": "2024-01-02T03:04:05.123",  # precision from the type modifier
    "tstz": "2024-01-02T01:04:05.000000Z",
    "u": {"__phoenix_kit_binary__": base64.b64encode(UUID_BYTES).decode()},
    "u_ascii": "AAAAAAAAAAAAAAAA",  # 16 bytes that happen to be valid UTF-8
    "by": {"__phoenix_kit_binary__": "AP8="},
    "by_text": "hi",
    "j": {"a": [1, 2.5]},
    "jb": {"k": "v"},
    "ints": [1, None, 3],
    "texts": ["a", "b"],
    "e": "happy",
    "nothing": None,
}

SERVER_ERROR = {"errors": {"detail": "Internal Server Error"}}


@dataclass
class Standin:
    db: Database
    url: str
    kit: PhoenixKit

    @property
    def api(self) -> str:
        return f"{self.url}/phoenix_kit/sync/api"

    def post(self, endpoint: str, body: Any, **kw: Any) -> httpx.Response:
        return httpx.post(f"{self.api}/{endpoint}", json=body, timeout=10, **kw)

    def sql(self, statement: str, params: Any = None) -> list[dict[str, Any]]:
        return self.db.rows(statement, params)

    def reset(self) -> None:
        self.db.execute(
            "TRUNCATE phoenix_kit_sync_transfers, phoenix_kit_sync_connections"
        )
        self.db.execute("DELETE FROM phoenix_kit_settings WHERE key <> 'site_url'")
        self.db.execute("DELETE FROM standin.config")
        self.db.set_setting("sync_enabled", "true")
        self.db.set_setting("sync_incoming_mode", "auto_accept")
        self.db.set_config("allow_internal_urls", "true")
        self.kit.calls.clear()

    def sender_connection(self, status: str = "active", **settings: Any) -> str:
        """An active sender connection to PEER; its token hash."""
        token = f"token-{uuid.uuid4()}"
        conn = self.kit.conns.insert(
            {
                "name": "to peer",
                "direction": "sender",
                "site_url": PEER,
                "status": status,
            },
            token,
        )
        if settings:
            self.kit.conns.update(conn["uuid"], **settings)
        return hash_token(token)


def _standin(url: str, data: str | None) -> Iterator[Standin]:
    db = Database(url)
    db.install()
    if data:
        db.execute(data)
    with ServerThread(db) as server:
        site = f"http://127.0.0.1:{server.port}"
        db.set_setting("site_url", site)
        kit = PhoenixKit(db)
        try:
            yield Standin(db, site, kit)
        finally:
            kit.close()
            db.close()


@pytest.fixture(scope="module")
def sender_site(module_db_factory: ScratchDatabases) -> Iterator[Standin]:
    yield from _standin(module_db_factory.create("pk_sender"), DATA)


@pytest.fixture(scope="module")
def receiver_site(module_db_factory: ScratchDatabases) -> Iterator[Standin]:
    yield from _standin(module_db_factory.create("pk_receiver"), None)


@pytest.fixture
def pk(sender_site: Standin) -> Standin:
    sender_site.reset()
    return sender_site


@pytest.fixture
def pair(sender_site: Standin, receiver_site: Standin) -> tuple[Standin, Standin]:
    for site in (sender_site, receiver_site):
        site.reset()
    receiver_site.db.execute(
        "DROP TABLE IF EXISTS books, authors, every_type, typed CASCADE"
    )
    return sender_site, receiver_site


def err(message: str, **extra: Any) -> dict[str, Any]:
    return {"success": False, "error": message, **extra}


# ------------------------------------------------------------ §1.1, §1.4 routing, status


def test_status_answers_even_when_disabled_and_routes_are_phoenix_s(
    pk: Standin,
) -> None:
    resp = httpx.get(f"{pk.api}/status")
    assert (resp.status_code, resp.json()) == (
        200,
        {"enabled": True, "incoming_mode": "auto_accept", "password_required": False},
    )
    pk.db.set_setting("sync_enabled", "false")
    pk.db.set_setting("sync_incoming_mode", "require_password")
    assert httpx.get(f"{pk.api}/status/").json() == {
        "enabled": False,
        "incoming_mode": "require_password",
        "password_required": True,
    }
    # No route for another method or another path, as a Phoenix app answers.
    for resp in (
        httpx.post(f"{pk.api}/status", json={}),
        httpx.get(f"{pk.api}/list-tables"),
        httpx.get(f"{pk.url}/sync/api/status"),
    ):
        assert (resp.status_code, resp.json()) == (
            404,
            {"errors": {"detail": "Not Found"}},
        )
    bad = httpx.post(
        f"{pk.api}/list-tables",
        content=b"{nope",
        headers={"content-type": "application/json"},
    )
    assert (bad.status_code, bad.json()) == (400, {"errors": {"detail": "Bad Request"}})
    html = httpx.get(f"{pk.api}/status", headers={"accept": "text/html"})
    assert (html.status_code, html.json()) == (
        406,
        {"errors": {"detail": "Not Acceptable"}},
    )


@pytest.mark.parametrize(
    "endpoint",
    [
        "delete-connection",
        "verify-connection",
        "update-status",
        "get-connection-status",
        "list-tables",
        "pull-data",
        "table-schema",
        "table-records",
    ],
)
def test_every_endpoint_but_status_is_503_when_disabled(
    pk: Standin, endpoint: str
) -> None:
    pk.db.set_setting("sync_enabled", "false")
    resp = pk.post(endpoint, {})
    assert (resp.status_code, resp.json()) == (503, err("DB Sync module is disabled"))


# ------------------------------------------------------------ §1.3 register-connection


def register(pk: Standin, **body: Any) -> httpx.Response:
    fields = {"sender_url": PEER, "connection_name": "Shop", "auth_token": "raw-token"}
    fields.update(body)
    return pk.post(
        "register-connection", {k: v for k, v in fields.items() if v is not ...}
    )


def test_register_connection_checks_in_order(pk: Standin) -> None:
    pk.db.set_setting("sync_enabled", "false")
    pk.db.set_setting("sync_incoming_mode", "deny_all")
    resp = pk.post("register-connection", {})
    assert (resp.status_code, resp.json()) == (503, err("Sync module is disabled"))
    pk.db.set_setting("sync_enabled", "true")
    resp = pk.post("register-connection", {})
    assert (resp.status_code, resp.json()) == (
        403,
        err("Incoming connections are not allowed"),
    )
    pk.db.set_setting("sync_incoming_mode", "require_password")
    resp = pk.post("register-connection", {"connection_name": "", "sender_url": None})
    assert (resp.status_code, resp.json()) == (
        400,
        err(
            "Missing required fields",
            fields=["sender_url", "connection_name", "auth_token"],
        ),
    )
    # Fail closed: no password configured.
    resp = register(pk, password="anything")
    assert (resp.status_code, resp.json()) == (401, err("Password required"))
    pk.db.set_setting("sync_incoming_password", "s3cret")
    resp = register(pk)
    assert (resp.status_code, resp.json()) == (401, err("Password required"))
    resp = register(pk, password="wrong")
    assert (resp.status_code, resp.json()) == (401, err("Invalid password"))
    assert register(pk, password="s3cret").status_code == 200
    resp = register(pk, password="s3cret", connection_name="again")
    assert (resp.status_code, resp.json()) == (409, err("A connection already exists"))


def test_register_connection_in_require_approval_makes_an_active_connection(
    pk: Standin,
) -> None:
    pk.db.set_setting("sync_incoming_mode", "require_approval")
    resp = pk.post(
        "register-connection",
        {"sender_url": PEER, "connection_name": "Shop", "auth_token": "raw-token"},
        headers={"x-forwarded-for": "203.0.113.9, 10.0.0.1", "user-agent": "probe/1"},
    )
    body = resp.json()
    assert resp.status_code == 200
    assert body == {
        "success": True,
        "message": "Connection registered and activated",
        "connection_status": "active",
        "connection_uuid": body["connection_uuid"],
    }
    (row,) = pk.sql("SELECT * FROM phoenix_kit_sync_connections")
    assert str(row["uuid"]) == body["connection_uuid"]
    assert uuid.UUID(body["connection_uuid"]).version == 7
    assert (row["name"], row["direction"], row["site_url"], row["status"]) == (
        "From: Shop",
        "receiver",
        PEER,
        "active",
    )
    assert row["approval_mode"] == "auto_approve"
    assert row["auth_token_hash"] == hashlib.sha256(b"raw-token").hexdigest()
    assert row["auth_token"] is None
    meta = row["metadata"]
    assert (meta["registered_via"], meta["remote_ip"], meta["user_agent"]) == (
        "api",
        "203.0.113.9",
        "probe/1",
    )
    assert meta["registered_at"].endswith("Z")


def test_register_connection_with_a_refused_url_is_a_500_fetch_failed(
    pk: Standin,
) -> None:
    resp = register(pk, sender_url="ftp://example.com")
    assert (resp.status_code, resp.json()) == (500, err("Fetch failed"))
    pk.db.set_config("allow_internal_urls", "false")
    resp = register(pk, sender_url="http://127.0.0.1:9000")
    assert (resp.status_code, resp.json()) == (500, err("Fetch failed"))
    # The known gap of §5: an alternate IPv4 literal passes.
    assert register(pk, sender_url="http://2130706433:9000").status_code == 200
    assert pk.sql("SELECT count(*) AS n FROM phoenix_kit_sync_connections") == [
        {"n": 1}
    ]


# ------------------------------------------------------------ §1.5 - §1.8 control endpoints


def test_get_connection_status_auto_activates_a_pending_sender(pk: Standin) -> None:
    token_hash = pk.sender_connection(status="pending")
    resp = pk.post(
        "get-connection-status",
        {"receiver_url": "ignored", "auth_token_hash": token_hash},
    )
    assert (resp.status_code, resp.json()) == (
        200,
        {"success": True, "status": "active", "name": "to peer"},
    )
    (row,) = pk.sql(
        "SELECT status, approved_at, metadata FROM phoenix_kit_sync_connections"
    )
    assert row["status"] == "active" and row["approved_at"] is not None
    assert row["metadata"]["auto_activated"] is True
    assert (
        row["metadata"]["auto_activated_reason"] == "receiver queried connection status"
    )
    resp = pk.post(
        "get-connection-status", {"receiver_url": "x", "auth_token_hash": "nope"}
    )
    assert (resp.status_code, resp.json()) == (404, err("Connection not found"))
    resp = pk.post("get-connection-status", {"auth_token_hash": ""})
    assert (resp.status_code, resp.json()) == (
        400,
        err("Missing required fields", fields=["receiver_url", "auth_token_hash"]),
    )


def test_update_status_mirrors_only_the_status_without_transition_checks(
    pk: Standin,
) -> None:
    token_hash = pk.sender_connection(status="revoked")
    body = {"sender_url": PEER, "auth_token_hash": token_hash}
    resp = pk.post("update-status", {**body, "status": "expired"})
    assert (resp.status_code, resp.json()) == (400, err("Invalid status value"))
    resp = pk.post("update-status", {**body, "status": "suspended"})
    assert (resp.status_code, resp.json()) == (
        200,
        {"success": True, "message": "Status updated to suspended"},
    )
    assert pk.sql(
        "SELECT status, suspended_at, suspended_reason FROM phoenix_kit_sync_connections"
    ) == [{"status": "suspended", "suspended_at": None, "suspended_reason": None}]
    resp = pk.post(
        "update-status", {**body, "status": "active"}
    )  # revoked -> ... -> active
    assert resp.json() == {"success": True, "message": "Status updated to active"}
    resp = pk.post(
        "update-status",
        {
            "sender_url": "http://other",
            "auth_token_hash": token_hash,
            "status": "active",
        },
    )
    assert (resp.status_code, resp.json()) == (404, err("Connection not found"))
    resp = pk.post("update-status", {"sender_url": PEER})
    assert resp.json() == err(
        "Missing required fields", fields=["auth_token_hash", "status"]
    )


def test_verify_and_delete_look_up_by_url_and_hash_in_any_direction(
    pk: Standin,
) -> None:
    resp = pk.post(
        "register-connection",
        {"sender_url": PEER, "connection_name": "in", "auth_token": "tok"},
    )
    assert resp.status_code == 200
    body = {"sender_url": PEER, "auth_token_hash": hash_token("tok")}
    resp = pk.post("verify-connection", body)
    assert (resp.status_code, resp.json()) == (200, {"success": True, "exists": True})
    resp = pk.post("delete-connection", body)
    assert (resp.status_code, resp.json()) == (
        200,
        {"success": True, "message": "Connection deleted"},
    )
    resp = pk.post("verify-connection", body)
    assert (resp.status_code, resp.json()) == (404, {"success": False, "exists": False})
    resp = pk.post("delete-connection", body)
    assert (resp.status_code, resp.json()) == (404, err("Connection not found"))
    # A lookup value that is not a string: a FunctionClauseError, Phoenix's 500.
    resp = pk.post("verify-connection", {"sender_url": 5, "auth_token_hash": "x"})
    assert (resp.status_code, resp.json()) == (500, SERVER_ERROR)


# ------------------------------------------------------------ §1.9 list-tables


def tables_of(pk: Standin, token_hash: str) -> dict[str, dict[str, Any]]:
    resp = pk.post("list-tables", {"auth_token_hash": token_hash})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"success", "tables"} and body["success"] is True
    return {t["name"]: t for t in body["tables"]}


def test_list_tables_offers_every_public_table_with_md5_checksums(pk: Standin) -> None:
    resp = pk.post("list-tables", {"auth_token_hash": "unknown"})
    assert (resp.status_code, resp.json()) == (401, err("Invalid connection"))
    token_hash = pk.sender_connection(status="suspended")
    resp = pk.post("list-tables", {"auth_token_hash": token_hash})
    assert (resp.status_code, resp.json()) == (403, err("Connection is not active"))
    pk.db.execute("UPDATE phoenix_kit_sync_connections SET status = 'active'")
    offered = tables_of(pk, token_hash)
    # Sorted by name; PhoenixKit's own tables are offered; "schemas" is not
    # (NOT LIKE 'schema_%': "_" matches any character).
    assert list(offered) == [
        "authors", "big", "books", "empty_one", "every_type", "no_key", "nodes", "odd",
        "pairs", "phoenix_kit_settings", "phoenix_kit_sync_connections",
        "phoenix_kit_sync_transfers",
    ]  # fmt: skip
    books = offered["books"]
    (expected,) = pk.sql(
        "SELECT md5(string_agg(t::text, '' ORDER BY t::text)) AS m FROM books t"
    )
    assert books == {
        "name": "books",
        "row_count": 12,
        "size_bytes": books["size_bytes"],
        "checksum": expected["m"],
        "depends_on": ["authors"],
    }
    assert books["size_bytes"] > 0
    assert offered["empty_one"]["checksum"] == "empty"
    assert (offered["big"]["row_count"], offered["big"]["checksum"]) == (10001, None)
    assert offered["nodes"]["depends_on"] == ["nodes"]
    assert offered["phoenix_kit_sync_transfers"]["depends_on"] == [
        "phoenix_kit_sync_connections"
    ]
    (conn,) = pk.sql("SELECT last_connected_at FROM phoenix_kit_sync_connections")
    assert conn["last_connected_at"] is not None


def test_list_tables_filters_by_the_connection_s_table_rules(pk: Standin) -> None:
    token_hash = pk.sender_connection(
        allowed_tables=["books", "authors", "big"], excluded_tables=["big"]
    )
    assert list(tables_of(pk, token_hash)) == ["authors", "books"]


# ------------------------------------------------------------ §1.10 pull-data


def test_pull_data_is_one_unordered_page_cut_at_max_records_per_request(
    pk: Standin,
) -> None:
    token_hash = pk.sender_connection(max_records_per_request=5)
    resp = pk.post("pull-data", {"auth_token_hash": token_hash, "table_name": "books"})
    body = resp.json()
    assert resp.status_code == 200
    assert set(body) == {"success", "table", "data"}  # no has_more, no count, no cursor
    assert (body["success"], body["table"], len(body["data"])) == (True, "books", 5)
    assert body["data"][0] == {
        "id": 1,
        "author_id": 2,
        "title": "book 1",
        "price": "1.50",
    }
    # The default limit is 10,000: a bigger table is cut silently.
    pk.db.execute(
        "UPDATE phoenix_kit_sync_connections SET max_records_per_request = 10000"
    )
    big = pk.post(
        "pull-data", {"auth_token_hash": token_hash, "table_name": "big"}
    ).json()
    assert len(big["data"]) == 10000
    (conn,) = pk.sql(
        "SELECT downloads_used, records_downloaded, total_transfers, "
        "total_records_transferred, last_transfer_at IS NOT NULL AS stamped "
        "FROM phoenix_kit_sync_connections"
    )
    assert conn == {
        "downloads_used": 2,
        "records_downloaded": 10005,
        "total_transfers": 2,
        "total_records_transferred": 10005,
        "stamped": True,
    }
    # The send transfers lose records_transferred and their times (§2.2 cast list).
    assert pk.sql(
        "SELECT direction, status, table_name, conflict_strategy, records_transferred, "
        "started_at, completed_at, remote_site_url FROM phoenix_kit_sync_transfers "
        "ORDER BY table_name"
    ) == [
        {
            "direction": "send", "status": "completed", "table_name": t,
            "conflict_strategy": "skip", "records_transferred": 0,
            "started_at": None, "completed_at": None, "remote_site_url": PEER,
        }
        for t in ("big", "books")
    ]  # fmt: skip


def test_pull_data_refusals(pk: Standin) -> None:
    token_hash = pk.sender_connection(excluded_tables=["authors"])
    call = {"auth_token_hash": token_hash}
    cases = [
        (
            {"table_name": "authors"},
            403,
            err("This connection is not authorised to access that table"),
        ),
        ({"table_name": "nope"}, 404, err("Table not found")),
        ({"table_name": "bad name"}, 404, err("Table not found")),
        ({}, 400, err("Missing required fields", fields=["table_name"])),
        (
            {"table_name": "odd"},
            500,
            SERVER_ERROR,
        ),  # an interval: Jason cannot encode it
    ]
    for extra, status, body in cases:
        resp = pk.post("pull-data", {**call, **extra})
        assert (resp.status_code, resp.json()) == (status, body), extra
    # An unknown conflict strategy: 200, and no transfer row.
    resp = pk.post(
        "pull-data", {**call, "table_name": "nodes", "conflict_strategy": "bogus"}
    )
    assert resp.status_code == 200
    assert pk.sql("SELECT count(*) AS n FROM phoenix_kit_sync_transfers") == [{"n": 0}]


def test_pull_data_encodes_every_value_type_as_phoenixkit(pk: Standin) -> None:
    token_hash = pk.sender_connection()
    resp = pk.post(
        "pull-data", {"auth_token_hash": token_hash, "table_name": "every_type"}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["data"] == [EVERY_TYPE_ROW]


def test_the_drop_switch_loses_rows_on_the_way(pk: Standin) -> None:
    token_hash = pk.sender_connection()
    pk.db.set_config("drop_every", "4")
    data = pk.post(
        "pull-data", {"auth_token_hash": token_hash, "table_name": "books"}
    ).json()["data"]
    assert sorted(r["id"] for r in data) == [1, 2, 3, 5, 6, 7, 9, 10, 11]
    records = pk.post(
        "table-records",
        {"auth_token_hash": token_hash, "table_name": "books", "limit": 8},
    ).json()["records"]
    assert [r["id"] for r in records] == [1, 2, 3, 5, 6, 7]
    assert tables_of(pk, token_hash)["books"]["row_count"] == 12


# ------------------------------------------------------------ §1.11 table-schema


def test_table_schema_is_information_schema_with_no_primary_key(pk: Standin) -> None:
    token_hash = pk.sender_connection()
    resp = pk.post(
        "table-schema", {"auth_token_hash": token_hash, "table_name": "books"}
    )
    assert (resp.status_code, resp.json()) == (
        200,
        {
            "success": True,
            "schema": {
                "table_name": "books",
                "columns": [
                    {"column_name": "id", "data_type": "integer", "is_nullable": "NO",
                     "column_default": None, "character_maximum_length": None},
                    {"column_name": "author_id", "data_type": "integer", "is_nullable": "YES",
                     "column_default": None, "character_maximum_length": None},
                    {"column_name": "title", "data_type": "text", "is_nullable": "YES",
                     "column_default": None, "character_maximum_length": None},
                    {"column_name": "price", "data_type": "numeric", "is_nullable": "YES",
                     "column_default": None, "character_maximum_length": None},
                ],
            },
        },
    )  # fmt: skip
    resp = pk.post("table-schema", {"auth_token_hash": "", "table_name": None})
    assert (resp.status_code, resp.json()) == (
        400,
        err("Missing required fields: auth_token_hash, table_name"),
    )
    resp = pk.post(
        "table-schema", {"auth_token_hash": token_hash, "table_name": "nope"}
    )
    assert (resp.status_code, resp.json()) == (404, err("Table not found"))


# ------------------------------------------------------------ §1.12 table-records


def records(pk: Standin, token_hash: str, table: str, **extra: Any) -> httpx.Response:
    return pk.post(
        "table-records", {"auth_token_hash": token_hash, "table_name": table, **extra}
    )


def test_table_records_pages_by_the_first_key_column(pk: Standin) -> None:
    token_hash = pk.sender_connection()
    resp = records(pk, token_hash, "books")
    assert resp.status_code == 200
    assert set(resp.json()) == {"success", "records"}
    assert [r["id"] for r in resp.json()["records"]] == list(range(1, 11))
    capped = records(pk, token_hash, "big", limit=500, offset="10")
    assert [r["id"] for r in capped.json()["records"]] == list(range(11, 111))
    ranged = records(pk, token_hash, "big", id_start=9995, id_end=9998, limit="50abc")
    assert [r["id"] for r in ranged.json()["records"]] == [9995, 9996, 9997, 9998]
    ids = records(pk, token_hash, "big", ids=[7, 3, 70000], id_start=1)
    assert [r["id"] for r in ids.json()["records"]] == [3, 7]
    # Composite key (k2, k1): ordered by k2 alone.
    pairs = records(pk, token_hash, "pairs").json()["records"]
    assert [r["k2"] for r in pairs] == [1, 1, 2]


def test_table_records_failures(pk: Standin) -> None:
    token_hash = pk.sender_connection()
    # A JSON string where the key is an integer: Postgrex will not bind it.
    resp = records(pk, token_hash, "big", id_start="5")
    assert (resp.status_code, resp.json()) == (
        500,
        err("Failed to get records: :fetch_failed"),
    )
    # No primary key: it falls back to "id", which does not exist.
    resp = records(pk, token_hash, "no_key")
    assert resp.status_code == 500
    assert resp.json()["error"].startswith(
        "Failed to get records: %Postgrex.Error{message: nil, postgres: %{code: "
        ':undefined_column, message: "column \\"id\\" does not exist"'
    )
    resp = records(pk, token_hash, "books", limit=-1)
    assert (
        resp.status_code == 500
        and ":invalid_row_count_in_limit_clause" in resp.json()["error"]
    )
    resp = pk.post("table-records", {"table_name": "books"})
    assert (resp.status_code, resp.json()) == (
        400,
        err("Missing required fields: auth_token_hash"),
    )


# ------------------------------------------------------------ §3 the client, between two stand-ins


def test_pairing_and_lifecycle_between_two_stand_ins(
    pair: tuple[Standin, Standin],
) -> None:
    sender, receiver = pair
    receiver.db.set_setting("sync_incoming_mode", "require_approval")
    conn, token, result = sender.kit.create_connection("to receiver", receiver.url)
    assert sender.kit.calls == [("register-connection", 200)]
    assert result["status"] == "registered" and result["success"] is True
    assert conn["status"] == "pending"  # until the receiver asks, or approve
    notification = conn["metadata"]["remote_notification"]
    assert (notification["notification_status"], notification["http_status"]) == (
        "registered",
        200,
    )
    (mirror,) = receiver.kit.conns.list()
    assert notification["remote_connection_uuid"] == str(mirror["uuid"])
    assert (mirror["name"], mirror["status"], mirror["auth_token_hash"]) == (
        "From: to receiver",
        "active",
        hash_token(token),
    )
    # The receiver's Connections page asks the sender: it auto-activates.
    page = receiver.kit.load_connections_page()
    assert page["sender_statuses"] == {str(mirror["uuid"]): "active"}
    assert sender.kit.conns.get(str(conn["uuid"]))["status"] == "active"

    sid, rid = str(conn["uuid"]), str(mirror["uuid"])
    _, outcome = sender.kit.suspend(sid, "maintenance")
    assert outcome == "updated"
    assert receiver.kit.conns.get(rid)["status"] == "suspended"
    assert receiver.kit.conns.get(rid)["suspended_reason"] is None  # status only
    sender.kit.reactivate(sid)
    assert receiver.kit.conns.get(rid)["status"] == "active"
    # The receiver revokes: the sender's row is revoked too (any direction).
    _, outcome = receiver.kit.revoke(rid)
    assert outcome == "updated"
    assert sender.kit.conns.get(sid)["status"] == "revoked"
    # The receiver deletes; the sender's next page load finds it gone, and
    # suspends its own row (it was revoked: only active/pending/suspended
    # rows are verified, so reactivate first, as an admin could).
    sender.kit.conns.update(sid, status="active")
    assert receiver.kit.delete(rid) == "deleted"
    assert sender.kit.conns.get(sid) is None
    assert receiver.kit.conns.list() == []


def test_page_load_suspends_a_sender_whose_receiver_forgot_it(
    pair: tuple[Standin, Standin],
) -> None:
    sender, receiver = pair
    conn, _token, _result = sender.kit.create_connection("to receiver", receiver.url)
    receiver.db.execute("DELETE FROM phoenix_kit_sync_connections")
    sender.kit.calls.clear()
    page = sender.kit.load_connections_page()
    assert page["verified"] == {str(conn["uuid"]): "not_found"}
    assert sender.kit.calls == [("verify-connection", 404)]
    row = sender.kit.conns.get(str(conn["uuid"]))
    assert (row["status"], row["suspended_reason"]) == (
        "suspended",
        "Remote site reports connection not found",
    )


def paired(sender: Standin, receiver: Standin) -> str:
    """The receiver's connection id, both sides active."""
    sender.kit.create_connection("to receiver", receiver.url)
    (mirror,) = receiver.kit.conns.list()
    receiver.kit.load_connections_page()
    receiver.kit.calls.clear()
    return str(mirror["uuid"])


def test_sync_pulls_dependencies_first_and_marks_tables_that_differ(
    pair: tuple[Standin, Standin],
) -> None:
    sender, receiver = pair
    rid = paired(sender, receiver)
    receiver.db.execute(
        "CREATE TABLE authors (id integer PRIMARY KEY, name text NOT NULL UNIQUE);"
        "CREATE TABLE books (id integer PRIMARY KEY, author_id integer REFERENCES authors(id),"
        " title text, price numeric(8,2));"
        "INSERT INTO authors VALUES (1, 'author 1')"
    )
    view = {t["name"]: t for t in receiver.kit.sync_view(rid)}
    assert (view["books"]["local_count"], view["books"]["local_checksum"]) == (
        0,
        "empty",
    )
    assert view["books"]["differs"] is True
    assert (
        view["every_type"]["local_count"] is None
        and view["every_type"]["differs"] is True
    )
    receiver.kit.calls.clear()
    result = receiver.kit.sync(rid, ["books"])
    # books selects authors; authors goes first.
    assert result["order"] == ["authors", "books"]
    assert result["tables"] == [
        {
            "table": "authors",
            "imported": 2,
            "skipped": 1,
            "errors": 0,
            "error_message": None,
        },
        {
            "table": "books",
            "imported": 12,
            "skipped": 0,
            "errors": 0,
            "error_message": None,
        },
    ]
    assert receiver.kit.calls == [
        ("get-connection-status", 200),
        ("list-tables", 200),
        ("pull-data", 200),
        ("pull-data", 200),
    ]
    assert receiver.sql(
        "SELECT id, author_id, title, price FROM books ORDER BY id LIMIT 2"
    ) == [
        {"id": 1, "author_id": 2, "title": "book 1", "price": Decimal("1.50")},
        {"id": 2, "author_id": 3, "title": "book 2", "price": Decimal("3.00")},
    ]
    view = {t["name"]: t for t in receiver.kit.sync_view(rid)}
    assert view["books"]["differs"] is False
    assert view["books"]["local_checksum"] == view["books"]["checksum"]
    assert [t["status"] for t in receiver.kit.transfers()] == ["completed", "completed"]


def test_sync_of_a_table_missing_locally_crashes(pair: tuple[Standin, Standin]) -> None:
    sender, receiver = pair
    rid = paired(sender, receiver)
    with pytest.raises(SyncCrashed) as crashed:
        receiver.kit.sync(rid, ["authors"])
    assert crashed.value.reason == (
        'no primary key found for table "authors" (table doesn\'t exist or has no primary key)'
    )
    # Its receive transfer is left in progress.
    assert [(t["table_name"], t["status"]) for t in receiver.kit.transfers()] == [
        ("authors", "in_progress")
    ]
    # The precise tab's "create missing table" cannot read PhoenixKit's own schema shape.
    error = receiver.kit.create_missing_table(rid, "authors")
    assert error is not None
    assert ':syntax_error, message: "zero-length delimited identifier' in error


def test_a_429_is_never_retried(receiver_site: Standin) -> None:
    """A sender that answers 429: one call each, the table fails."""
    receiver_site.reset()
    answered: list[str] = []

    def app(req: falcon.Request, resp: falcon.Response) -> None:
        endpoint = req.path.rsplit("/", 1)[1]
        answered.append(endpoint)
        if endpoint == "pull-data":
            resp.status = falcon.HTTP_429
            resp.set_header("Retry-After", "1")
            resp.media = {"success": False, "error": "Rate limit exceeded"}
        elif endpoint == "get-connection-status":
            resp.media = {"success": True, "status": "active", "name": "x"}
        else:
            resp.media = {
                "success": True,
                "tables": [{"name": "a", "row_count": 1, "checksum": None, "depends_on": []},
                           {"name": "b", "row_count": 1, "checksum": None, "depends_on": []}],
            }  # fmt: skip

    falcon_app = falcon.App()
    falcon_app.add_sink(app, prefix="/")
    server = make_server("127.0.0.1", 0, falcon_app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        conn = receiver_site.kit.conns.insert(
            {
                "name": "From: x",
                "direction": "receiver",
                "site_url": url,
                "status": "active",
            },
            "t",
        )
        result = receiver_site.kit.sync(str(conn["uuid"]), ["a", "b"])
    finally:
        server.shutdown()
        server.server_close()
    assert answered == [
        "get-connection-status",
        "list-tables",
        "pull-data",
        "pull-data",
    ]
    assert [
        (r["table"], r["errors"], r["error_message"]) for r in result["tables"]
    ] == [
        ("a", 0, "Sync failed: :unexpected_response"),
        ("b", 0, "Sync failed: :unexpected_response"),
    ]
    assert [
        (t["status"], t["error_message"]) for t in receiver_site.kit.transfers()
    ] == [
        ("failed", "HTTP error 429"),
        ("failed", "HTTP error 429"),
    ]


# ------------------------------------------------------------ §4 import-side decoding


TYPED = """
CREATE TABLE typed (
    id integer PRIMARY KEY, label text, amount numeric(10,2), whole numeric(10,0),
    ratio double precision, born date, at timestamptz, naive timestamp, clock time,
    ref uuid, blob bytea, doc jsonb, tags text[]
)
"""


def import_one(
    site: Standin, record: dict[str, Any]
) -> tuple[dict[str, int], str | None]:
    result = site.kit.importer.import_table_data("typed", [record], "skip")
    counts = {
        "imported": result.imported,
        "skipped": result.skipped,
        "errors": result.errors,
    }
    return counts, result.error_sample


def test_import_decodes_as_prepare_ex_and_binds_as_postgrex(
    receiver_site: Standin,
) -> None:
    site = receiver_site
    site.db.execute("DROP TABLE IF EXISTS typed; " + TYPED)
    ok, _ = import_one(
        site,
        {
            "id": 1,
            "label": "plain",
            "amount": "12.50",
            "ratio": 0.25,
            "born": "2024-02-29",
            "at": "2024-01-02T03:04:05+02:00",
            "naive": "2024-01-02T03:04:05.5",
            "clock": "12:00:00",
            "ref": {"__phoenix_kit_binary__": base64.b64encode(UUID_BYTES).decode()},
            "blob": {"__phoenix_kit_binary__": "AP8="},
            "doc": {"when": "2024-01-02T03:04:05+02:00"},
            "tags": ["x", "y"],
        },
    )
    assert ok == {"imported": 1, "skipped": 0, "errors": 0}
    (row,) = site.db.rows(
        "SELECT amount::text, at::text, naive::text, ref::text, encode(blob, 'hex') AS blob, "
        "doc::text, tags FROM typed"
    )
    assert row == {
        "amount": "12.50",
        "at": "2024-01-02 01:04:05+00",
        "naive": "2024-01-02 03:04:05.5",
        "ref": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "blob": "00ff",
        "doc": '{"when": "2024-01-02T03:04:05+02:00"}',
        "tags": ["x", "y"],
    }
    failing = [
        # A date-looking string in a text column becomes a %Date{}: refused.
        (
            {"id": 2, "label": "2024-01-01"},
            "Postgrex expected a binary, got ~D[2024-01-01].",
        ),
        # A decimal string without a dot stays a string: numeric refuses it.
        (
            {"id": 3, "whole": "100"},
            'Postgrex expected a Decimal, integer or float, got "100".',
        ),
        # A canonical uuid string is 36 bytes, not 16.
        (
            {"id": 4, "ref": "0f8fad5b-d9cb-469f-a165-70867728950e"},
            'Postgrex expected a binary of 16 bytes, got "0f8fad5b-d9cb-469f-a165-70867728950e".',
        ),
        # "double precision" is not in the numeric list (~w splits it).
        ({"id": 5, "ratio": "0.5"}, 'Postgrex expected a float, got "0.5".'),
        (
            {"id": 6, "nope": 1},
            '[undefined_column] column "nope" of relation "typed" does not exist',
        ),
    ]
    for record, message in failing:
        counts, sample = import_one(site, record)
        assert counts == {"imported": 0, "skipped": 0, "errors": 1}, record
        assert sample is not None and sample.startswith(message), sample
    counts, _ = import_one(site, {"id": 1, "label": "again"})
    assert counts == {"imported": 0, "skipped": 1, "errors": 0}
    assert values.prepare("1.5", "label", []) == "1.5"
    assert values.prepare("1.5", "amount", ["amount"]) == Decimal("1.5")


# ------------------------------------------------------------ the real process


def test_the_stand_in_runs_as_its_own_process(
    tmp_path: Path, module_db_factory: ScratchDatabases
) -> None:
    site = PhoenixKitProcess(
        tmp_path, module_db_factory.create("pk_process"), prefix="/pk"
    )
    site.start()
    try:
        resp = httpx.get(f"{site.url}/pk/sync/api/status")
        assert resp.json() == {
            "enabled": True,
            "incoming_mode": "auto_accept",
            "password_required": False,
        }
        created = site.cli("connections", "create", "--name", "n", "--url", PEER)
        assert created["connection"]["status"] == "pending"
        assert created["notification"]["status"] == "failed"
        assert created["calls"] == [["register-connection", "offline"]]
    finally:
        site.stop()
    assert "GET status -> 200" in site.logs()


def test_the_client_calls_under_the_remote_prefix(pk: Standin) -> None:
    """§3.2: remote_url_prefix, else the local prefix; "" or "/" is none."""
    site = "http://peer.example/"
    assert (
        pk.kit.api_url(site, "status")
        == "http://peer.example/phoenix_kit/sync/api/status"
    )
    for configured, url in [
        ("", "http://peer.example/sync/api/status"),
        ("/", "http://peer.example/sync/api/status"),
        (" custom/ ", "http://peer.example/custom/sync/api/status"),
    ]:
        pk.db.set_config("remote_url_prefix", configured)
        assert pk.kit.api_url(site, "status") == url, configured
