"""A dbsync receiver pulls from a PhoenixKit sender (the stand-in), real processes.

Today a dbsync receiver reaches a PhoenixKit sender only when its own
SYNC_URL_PREFIX is PhoenixKit's (``/phoenix_kit``): it calls its peers under
its own prefix (test_phoenixkit_pairing.py shows the default-prefix case).
These tests use that workaround, so the control flows can be seen to work,
and mark with xfail(strict=True) each point of issue 13 that fails: each
reason says what today's dbsync does and what has to change.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from tests.e2e.phoenixkit_peer import (
    PrefixedSite,
    dbsync_conn,
    dbsync_field,
    md5_checksum,
    pk_field,
    pull,
)
from tests.helpers import ScratchDatabases, as_text, eventually
from tests.peers.phoenixkit.process import PhoenixKitProcess

pytestmark = pytest.mark.e2e

SITE_ENV = {"SYNC_URL_PREFIX": "/phoenix_kit", "SYNC_PULL_LEASE_SECONDS": "4"}

EVERY_TYPE = """
CREATE TABLE every_type (
    id bigint PRIMARY KEY, i2 smallint, i4 integer, num numeric(12,4), tiny numeric,
    f4 real, f8 double precision, b boolean, t text, vc varchar(20), ch char(3),
    d date, tm time, ts timestamp, ts3 timestamp(3), tstz timestamptz, u uuid,
    u_ascii uuid, by bytea, by_text bytea, j json, jb jsonb, ints integer[],
    texts text[], nothing text
)
"""
EVERY_TYPE_ROW = """
INSERT INTO every_type VALUES (
    1, -2, 40000, 12.5, 0.0000001, 0.25, 1.5, true, 'héllo', 'abc', 'ab',
    '2024-02-29', '12:34:56.789', '2024-01-02 03:04:05', '2024-01-02 03:04:05.123',
    '2024-01-02 03:04:05+02', '0f8fad5b-d9cb-469f-a165-70867728950e',
    '41414141-4141-4141-4141-414141414141', '\\x00ff', 'hi', '{"a": [1, 2.5]}',
    '{"k": "v"}', '{1,NULL,3}', '{a,b}', NULL
)
"""
BIG = "CREATE TABLE big (id bigint PRIMARY KEY, label text, amount numeric(12,2))"
MID = "CREATE TABLE mid (id integer PRIMARY KEY, label text)"
RELATED = """
CREATE TABLE authors (id integer PRIMARY KEY, name text NOT NULL);
CREATE TABLE books (id integer PRIMARY KEY, author_id integer NOT NULL REFERENCES authors(id),
                    title text NOT NULL);
CREATE TABLE reviews (id integer PRIMARY KEY, book_id integer NOT NULL REFERENCES books(id),
                      stars smallint NOT NULL DEFAULT 3);
INSERT INTO authors SELECT g, 'author ' || g FROM generate_series(1, 20) g;
INSERT INTO books SELECT g, 1 + g % 20, 'book ' || g FROM generate_series(1, 100) g;
INSERT INTO reviews SELECT g, 1 + g % 100, 1 + g % 5 FROM generate_series(1, 500) g;
"""
SENDER_DATA = f"""
{BIG};
INSERT INTO big SELECT g, 'row ' || g, g * 1.25 FROM generate_series(1, 25000) g;
{MID};
INSERT INTO mid SELECT g, 'm' || g FROM generate_series(1, 5000) g;
{RELATED}
{EVERY_TYPE};
{EVERY_TYPE_ROW};
"""


class Pair:
    """A dbsync receiver paired with a PhoenixKit sender that holds SENDER_DATA."""

    def __init__(self, site: PrefixedSite, pk: PhoenixKitProcess, conn_id: str) -> None:
        self.site = site
        self.pk = pk
        self.conn_id = conn_id


@pytest.fixture(scope="module")
def sites(
    tmp_path_factory: pytest.TempPathFactory, module_db_factory: ScratchDatabases
) -> Iterator[tuple[PrefixedSite, Path, ScratchDatabases]]:
    workdir = tmp_path_factory.mktemp("pk_pulls")
    site = PrefixedSite(
        "dbsync", workdir, module_db_factory.create("e2e_pk_recv"), 13, **SITE_ENV
    )
    site.cli("settings", "set", "enabled", "true")
    site.cli("settings", "set", "incoming_mode", "auto_accept")
    site.start()
    try:
        yield site, workdir, module_db_factory
    finally:
        site.close()


@pytest.fixture(scope="module")
def pair(sites: tuple[PrefixedSite, Path, ScratchDatabases]) -> Iterator[Pair]:
    site, workdir, dbs = sites
    pk = PhoenixKitProcess(workdir / "sender", dbs.create("e2e_pk_send"))
    pk.sql(SENDER_DATA)
    pk.start()
    try:
        created = pk.cli(
            "connections", "create", "--name", "to dbsync", "--url", site.url
        )
        assert created["notification"]["status"] == "registered"
        conn_id = created["notification"]["remote_connection_uuid"]
        # dbsync's verify asks the sender's status: PhoenixKit activates its row.
        eventually(lambda: pk_field(pk, "status") == "active")
        yield Pair(site, pk, conn_id)
    finally:
        pk.close()


@pytest.fixture
def fresh_pk(
    sites: tuple[PrefixedSite, Path, ScratchDatabases], request: pytest.FixtureRequest
) -> Iterator[PhoenixKitProcess]:
    """A PhoenixKit sender of its own, for a control-flow test."""
    site, workdir, dbs = sites
    pk = PhoenixKitProcess(workdir / request.node.name[:40], dbs.create("e2e_pk_ctl"))
    pk.start()
    try:
        yield pk
    finally:
        pk.close()


def counts(data: dict[str, Any]) -> tuple[Any, ...]:
    return (
        data["status"],
        data["records_transferred"],
        data["records_created"],
        data["records_failed"],
    )


# ------------------------------------------------------------ data


def test_a_25000_row_table_arrives_whole(pair: Pair) -> None:
    pair.site.sql(BIG)
    data = pull(pair.site, pair.conn_id, "big")
    assert data["records_transferred"] == 25000, counts(data)
    assert counts(data) == ("completed", 25000, 25000, 0), data
    assert pair.site.sql("SELECT count(*) FROM big") == [(25000,)]
    assert md5_checksum(pair.site.sql, "big") == md5_checksum(pair.pk.sql, "big")


def test_rows_lost_on_the_way_do_not_complete_the_transfer(pair: Pair) -> None:
    pair.site.sql(MID)
    pair.pk.cli("settings", "set", "drop_every", "1000")
    try:
        data = pull(pair.site, pair.conn_id, "mid")
    finally:
        pair.pk.cli("settings", "set", "drop_every", "0")
    assert pair.site.sql("SELECT count(*) FROM mid") == [(4995,)]
    assert data["tables"][0]["rows_expected"] == 5000
    assert data["status"] != "completed", counts(data)
    assert data["status"] in ("failed", "incomplete"), data
    assert data["error"] == (
        "mid is incomplete: received 4995 of the 5000 rows the sender listed"
    )
    assert data["tables"][0]["rows_done"] == 4995


KEYED = """
CREATE TABLE words (w text PRIMARY KEY, n integer);
CREATE TABLE tokens (u uuid PRIMARY KEY, n integer);
"""
KEYED_ROWS = """
INSERT INTO words SELECT 'w' || lpad((g % 7)::text, 2, '0') || '-' || g, g
    FROM generate_series(1, 250) g;
INSERT INTO tokens SELECT md5(g::text)::uuid, g FROM generate_series(1, 250) g;
"""


def test_text_and_uuid_keyed_tables_page_exactly(pair: Pair) -> None:
    """A text key pages from the last key read (id_start); a uuid key, which
    PhoenixKit's driver binds only as 16 raw bytes, by offset alone."""
    pair.pk.sql(KEYED + KEYED_ROWS)
    pair.site.sql(KEYED)
    data = pull(pair.site, pair.conn_id, "words", "tokens")
    assert counts(data) == ("completed", 500, 500, 0), data
    for table in ("words", "tokens"):
        assert pair.site.sql(f"SELECT count(*) FROM {table}") == [(250,)]
        assert md5_checksum(pair.site.sql, table) == md5_checksum(pair.pk.sql, table)


def test_create_missing_from_phoenixkit_s_schema(pair: Pair) -> None:
    data = pull(
        pair.site, pair.conn_id, "reviews", "books", "authors", "--create-missing"
    )
    assert data["status"] == "completed", data["error"]
    assert [(t["table"], t["rows_done"], t["failed"]) for t in data["tables"]] == [
        ("authors", 20, 0),
        ("books", 100, 0),
        ("reviews", 500, 0),
    ]
    for table in ("authors", "books", "reviews"):
        assert md5_checksum(pair.site.sql, table) == md5_checksum(pair.pk.sql, table)
    keys = pair.site.sql(
        "SELECT conrelid::regclass::text, a.attname FROM pg_constraint c "
        "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey) "
        "WHERE c.contype = 'p' AND conrelid::regclass::text IN ('authors','books','reviews') "
        "ORDER BY 1"
    )
    assert keys == [("authors", "id"), ("books", "id"), ("reviews", "id")]


def test_one_row_of_every_value_type_lands_exactly(pair: Pair) -> None:
    pair.site.sql(EVERY_TYPE)
    data = pull(pair.site, pair.conn_id, "every_type")
    assert data["records_failed"] == 0, data["tables"][0]["errors"]
    assert counts(data) == ("completed", 1, 1, 0), data
    pair.site.sql("CREATE TABLE expected (LIKE every_type)")
    pair.site.sql(EVERY_TYPE_ROW.replace("every_type", "expected"))
    engine = create_engine(pair.site.db_url)
    try:
        got = as_text(engine, "every_type", jsonish=["j", "jb"])
        assert got == as_text(engine, "expected", jsonish=["j", "jb"])
    finally:
        engine.dispose()


# ------------------------------------------------------------ control flows, PhoenixKit sending


def register(pk: PhoenixKitProcess, site: PrefixedSite, *extra: str) -> dict[str, Any]:
    created = pk.cli(
        "connections", "create", "--name", "to dbsync", "--url", site.url, *extra
    )
    return created["notification"]


def test_phoenixkit_sender_in_each_incoming_mode(
    sites: tuple[PrefixedSite, Path, ScratchDatabases], fresh_pk: PhoenixKitProcess
) -> None:
    site, pk = sites[0], fresh_pk
    try:
        _each_incoming_mode(site, pk)
    finally:
        site.cli("settings", "set", "incoming_mode", "auto_accept")


def _each_incoming_mode(site: PrefixedSite, pk: PhoenixKitProcess) -> None:
    site.cli("settings", "set", "incoming_mode", "deny_all")
    note = register(pk, site)
    assert (note["status"], note["http_status"], note["message"]) == (
        "failed",
        403,
        "Incoming connections are not allowed",
    )
    pk.cli("connections", "delete", pk_field(pk, "uuid"))

    site.cli("settings", "set", "incoming_mode", "require_password")
    site.cli("settings", "set", "incoming_password", "-", stdin="s3cret\n")
    note = register(pk, site)  # PhoenixKit's UI never sends a password
    assert (note["status"], note["http_status"], note["message"]) == (
        "failed",
        401,
        "Password required",
    )
    pk.cli("connections", "delete", pk_field(pk, "uuid"))
    note = register(pk, site, "--password", "s3cret")  # its programmatic API does
    assert note["status"] == "registered"
    eventually(lambda: pk_field(pk, "status") == "active")
    assert dbsync_field(site, pk.url, "status") == "active"
    pk.cli("connections", "delete", pk_field(pk, "uuid"))
    eventually(lambda: dbsync_conn(site, pk.url) is None)

    site.cli("settings", "set", "incoming_mode", "require_approval")
    note = register(pk, site)
    assert (note["status"], note["http_status"]) == ("pending", 200)
    assert dbsync_field(site, pk.url, "status") == "pending"
    assert pk_field(pk, "status") == "pending"
    site.cli("connections", "approve", dbsync_field(site, pk.url, "id"))
    eventually(lambda: pk_field(pk, "status") == "active")
    meta = pk.only_connection()["metadata"]
    assert meta["auto_activated_reason"] == "receiver queried connection status"


def test_phoenixkit_sender_lifecycle_reaches_dbsync_and_back(
    sites: tuple[PrefixedSite, Path, ScratchDatabases], fresh_pk: PhoenixKitProcess
) -> None:
    site, pk = sites[0], fresh_pk
    note = register(pk, site)
    assert note["status"] == "registered"
    eventually(lambda: pk_field(pk, "status") == "active")
    uuid = pk_field(pk, "uuid")
    assert dbsync_field(site, pk.url, "name") == "to dbsync"

    out = pk.cli("connections", "suspend", uuid)
    assert out["remote"] == "updated"
    assert dbsync_field(site, pk.url, "status") == "suspended"
    assert (
        dbsync_field(site, pk.url, "suspended_reason") == "Suspended by the peer site"
    )
    assert pk.cli("connections", "reactivate", uuid)["remote"] == "updated"
    assert dbsync_field(site, pk.url, "status") == "active"
    # dbsync, the receiver, revokes: PhoenixKit's sender row mirrors it.
    site.cli("connections", "revoke", dbsync_field(site, pk.url, "id"))
    eventually(lambda: pk_field(pk, "status") == "revoked")
    # PhoenixKit has no transition check: it can put its row back, and delete.
    pk.cli("connections", "set", uuid, 'status="active"')
    assert pk.cli("connections", "delete", uuid)["remote"] == "deleted"
    assert dbsync_conn(site, pk.url) is None


def test_dbsync_receiver_deleting_removes_phoenixkit_s_sender(
    sites: tuple[PrefixedSite, Path, ScratchDatabases], fresh_pk: PhoenixKitProcess
) -> None:
    site, pk = sites[0], fresh_pk
    register(pk, site)
    eventually(lambda: pk_field(pk, "status") == "active")
    site.cli("connections", "delete", dbsync_field(site, pk.url, "id"))
    eventually(lambda: pk.connections() == [])
