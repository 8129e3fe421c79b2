"""A dbsync site on its default prefix paired with PhoenixKit sites (the stand-in).

dbsync sends: its connection's URL carries PhoenixKit's prefix as a path
(``http://host/phoenix_kit``), which today's dbsync already calls correctly;
the stand-in runs with ``remote_url_prefix: ""`` so that it calls dbsync at
its root (PhoenixKit's ``config :phoenix_kit_sync, remote_url_prefix``).
PhoenixKit pulls with its own client and import path, one shot per table.

Each point of issue 13 that fails today is an xfail(strict=True) whose reason
says what happens now and what has to change.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from tests.e2e.conftest import SiteProcesses
from tests.e2e.phoenixkit_peer import (
    dbsync_conn,
    dbsync_field,
    md5_checksum,
    pk_field,
)
from tests.helpers import ScratchDatabases, as_text, eventually
from tests.peers.phoenixkit.process import PhoenixKitProcess

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sites(
    tmp_path_factory: pytest.TempPathFactory, module_db_factory: ScratchDatabases
) -> Iterator[tuple[SiteProcesses, Path, ScratchDatabases]]:
    workdir = tmp_path_factory.mktemp("pk_pairing")
    site = SiteProcesses(
        "dbsync",
        workdir,
        module_db_factory.create("e2e_pk_site"),
        13,
        SYNC_SEND_IDLE_SECONDS="5",  # beat closes an abandoned send this soon
    )
    site.cli("settings", "set", "enabled", "true")
    site.cli("settings", "set", "incoming_mode", "auto_accept")
    site.start()
    try:
        yield site, workdir, module_db_factory
    finally:
        site.close()


@pytest.fixture
def site(sites: tuple[SiteProcesses, Path, ScratchDatabases]) -> SiteProcesses:
    return sites[0]


@pytest.fixture
def pk(
    sites: tuple[SiteProcesses, Path, ScratchDatabases], request: pytest.FixtureRequest
) -> Iterator[PhoenixKitProcess]:
    """A PhoenixKit site of the test's own, calling dbsync at its root."""
    _site, workdir, dbs = sites
    peer = PhoenixKitProcess(
        workdir / request.node.name[:40], dbs.create("e2e_pk_peer"), remote_prefix=""
    )
    peer.start()
    try:
        yield peer
    finally:
        peer.close()


def create(site: SiteProcesses, pk: PhoenixKitProcess, *extra: str) -> str:
    """A dbsync sender connection to the stand-in; its registration outcome."""
    site.cli_json(
        "connections",
        "create",
        "--name",
        "to-pk",
        "--url",
        f"{pk.url}/phoenix_kit",
        "--offer-new-tables",  # the tests make their tables as they go
        *extra,
    )
    eventually(lambda: dbsync_field(site, pk.url, "registration_status") != "queued")
    conn = dbsync_conn(site, pk.url)
    assert conn is not None
    status = conn["registration_status"]
    return f"{status}: {conn['registration_error']}" if status == "failed" else status


def connect(site: SiteProcesses, pk: PhoenixKitProcess, *extra: str) -> str:
    """Pair and activate (PhoenixKit's Connections page asks the sender's
    status when it opens); the stand-in's connection id."""
    assert create(site, pk, *extra) == "registered"
    page = pk.cli("page-load")
    assert list(page["sender_statuses"].values()) == ["active"]
    eventually(lambda: dbsync_field(site, pk.url, "status") == "active")
    return str(pk_field(pk, "uuid"))


def delete_dbsync_side(site: SiteProcesses, pk: PhoenixKitProcess) -> None:
    site.cli("connections", "delete", dbsync_field(site, pk.url, "id"))
    eventually(lambda: pk.connections() == [])


# ------------------------------------------------------------ control flows, PhoenixKit receiving


def test_dbsync_sender_in_each_phoenixkit_incoming_mode(
    site: SiteProcesses, pk: PhoenixKitProcess
) -> None:
    pk.cli("settings", "set", "sync_incoming_mode", "deny_all")
    assert create(site, pk) == "failed: Incoming connections are not allowed"
    assert pk.connections() == []
    site.cli("connections", "delete", dbsync_field(site, pk.url, "id"))

    pk.cli("settings", "set", "sync_incoming_mode", "require_password")
    assert (
        create(site, pk) == "failed: Password required"
    )  # none configured: fail closed
    site.cli("connections", "delete", dbsync_field(site, pk.url, "id"))
    pk.cli("settings", "set", "sync_incoming_password", "pa55")
    assert create(site, pk, "--password", "wrong") == "failed: Invalid password"
    site.cli("connections", "delete", dbsync_field(site, pk.url, "id"))
    assert create(site, pk, "--password", "pa55") == "registered"
    delete_dbsync_side(site, pk)

    # PhoenixKit's require_approval makes an active connection at once.
    pk.cli("settings", "set", "sync_incoming_mode", "require_approval")
    connect(site, pk)
    (row,) = pk.connections()
    assert (row["name"], row["status"], row["direction"], row["site_url"]) == (
        "From: to-pk",
        "active",
        "receiver",
        site.url,
    )
    assert row["metadata"]["user_agent"] == "dbsync/0.1 (PhoenixKit-Sync compatible)"


def test_lifecycle_between_dbsync_sender_and_phoenixkit_receiver(
    site: SiteProcesses, pk: PhoenixKitProcess
) -> None:
    pk_id = connect(site, pk)
    sid = dbsync_field(site, pk.url, "id")
    site.cli("connections", "suspend", sid, "--reason", "maintenance")
    eventually(lambda: pk_field(pk, "status") == "suspended")
    assert (
        pk_field(pk, "suspended_reason") is None
    )  # PhoenixKit mirrors the status only
    site.cli("connections", "reactivate", sid)
    eventually(lambda: pk_field(pk, "status") == "active")
    site.cli("connections", "revoke", sid)
    eventually(lambda: pk_field(pk, "status") == "revoked")
    assert pk_id == pk_field(pk, "uuid")
    delete_dbsync_side(site, pk)


def test_phoenixkit_receiver_s_revoke_and_delete_reach_dbsync(
    site: SiteProcesses, pk: PhoenixKitProcess
) -> None:
    pk_id = connect(site, pk)
    outcome = pk.cli("connections", "revoke", pk_id)["remote"]
    assert outcome == "updated", outcome
    assert dbsync_field(site, pk.url, "status") == "revoked"
    assert dbsync_field(site, pk.url, "revoked_reason") == "Revoked by the peer site"
    # And severs it: dbsync's row goes too.
    assert pk.cli("connections", "delete", pk_id)["remote"] == "deleted"
    assert dbsync_conn(site, pk.url) is None


def test_dbsync_verify_suspends_a_connection_phoenixkit_lost(
    site: SiteProcesses, pk: PhoenixKitProcess
) -> None:
    connect(site, pk)
    pk.sql("DELETE FROM phoenix_kit_sync_connections")
    eventually(lambda: dbsync_field(site, pk.url, "status") == "suspended", timeout=45)
    assert (
        dbsync_field(site, pk.url, "suspended_reason")
        == "Remote site reports connection not found"
    )


# ------------------------------------------------------------ data, PhoenixKit pulling


def tables_ddl(n: int, rows: int) -> str:
    return ";".join(
        f"CREATE TABLE t{i:02d} (id integer PRIMARY KEY, v text);"
        f"INSERT INTO t{i:02d} SELECT g, 'v' || g FROM generate_series(1, {rows}) g"
        for i in range(n)
    )


def test_phoenixkit_pulls_50_tables_with_default_settings(
    site: SiteProcesses, pk: PhoenixKitProcess
) -> None:
    names = [f"t{i:02d}" for i in range(50)]
    site.sql(tables_ddl(50, 20))
    pk.sql(
        ";".join(f"CREATE TABLE {n} (id integer PRIMARY KEY, v text)" for n in names)
    )
    try:
        pk_id = connect(site, pk)  # a connection created with no options
        result = pk.cli("sync", pk_id, *names)
        assert result["status"] == "completed"
        assert [tuple(c) for c in result["calls"]] == [
            ("get-connection-status", 200),
            ("list-tables", 200),
            *[("pull-data", 200)] * 50,
        ]
        assert result["tables"] == [
            {
                "table": n,
                "imported": 20,
                "skipped": 0,
                "errors": 0,
                "error_message": None,
            }
            for n in names
        ]
        for n in (names[0], names[-1]):
            assert md5_checksum(pk.sql, n) == md5_checksum(site.sql, n)
    finally:
        site.sql(";".join(f"DROP TABLE IF EXISTS {n}" for n in names))


def test_equal_tables_compare_equal_in_phoenixkit_s_sync_view(
    site: SiteProcesses, pk: PhoenixKitProcess
) -> None:
    site.sql(
        "CREATE TABLE same_a (id integer PRIMARY KEY, v text); CREATE TABLE same_b (id integer PRIMARY KEY)"
    )
    site.sql("INSERT INTO same_a SELECT g, 'v' || g FROM generate_series(1, 30) g")
    pk.sql(
        "CREATE TABLE same_a (id integer PRIMARY KEY, v text); CREATE TABLE same_b (id integer PRIMARY KEY)"
    )
    pk.sql("INSERT INTO same_a SELECT g, 'v' || g FROM generate_series(1, 30) g")
    try:
        pk_id = connect(site, pk)
        view = {t["name"]: t for t in pk.cli("tables", pk_id)["tables"]}
        assert (view["same_a"]["row_count"], view["same_b"]["row_count"]) == (30, 0)
        assert (view["same_a"]["differs"], view["same_b"]["differs"]) == (
            False,
            False,
        ), [view["same_a"]["checksum"], view["same_b"]["checksum"]]
        assert view["same_b"]["checksum"] == "empty"
        assert view["same_a"]["checksum"] == md5_checksum(pk.sql, "same_a")
    finally:
        site.sql("DROP TABLE same_a, same_b")


TYPED = """
CREATE TABLE typed (
    id integer PRIMARY KEY, big bigint, amount numeric(10,2), ratio double precision,
    flag boolean, label text, born date, at timestamptz, naive timestamp, clock time,
    ref uuid, blob bytea, doc jsonb, tags text[]
)
"""
TYPED_ROW = """
INSERT INTO typed VALUES (
    1, 9007199254740993, 12.50, 0.25, true, 'plain', '2024-02-29',
    '2024-01-02 03:04:05+02', '2024-01-02 03:04:05', '12:34:56.789',
    '0f8fad5b-d9cb-469f-a165-70867728950e', '\\x00ff', '{"k": [1, 2.5]}', '{x,y}'
)
"""


def test_every_value_type_from_dbsync_lands_in_phoenixkit(
    site: SiteProcesses, pk: PhoenixKitProcess
) -> None:
    site.sql(TYPED + ";" + TYPED_ROW)
    pk.sql(TYPED)
    try:
        pk_id = connect(site, pk)
        result = pk.cli("sync", pk_id, "typed")
        assert result["status"] == "completed"
        assert result["tables"][0]["errors"] == 0, result["tables"]
        got = _typed_text(pk.db_url)
        assert got == _typed_text(site.db_url)
    finally:
        site.sql("DROP TABLE typed")


def _typed_text(url: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        return as_text(engine, "typed", jsonish=["doc"])
    finally:
        engine.dispose()


def test_a_send_transfer_phoenixkit_abandons_is_closed_by_beat(
    site: SiteProcesses, pk: PhoenixKitProcess
) -> None:
    site.sql(
        "CREATE TABLE paged (id integer PRIMARY KEY, v text);"
        "INSERT INTO paged SELECT g, 'v' || g FROM generate_series(1, 150) g"
    )
    pk.sql("CREATE TABLE paged (id integer PRIMARY KEY, v text)")
    try:
        pk_id = connect(site, pk, "--max-records-per-request", "100")
        result = pk.cli("sync", pk_id, "paged")
        assert result["tables"][0]["imported"] == 100  # one page, then it stops

        def send_status() -> str:
            rows = site.sql(
                "SELECT status FROM dbsync_transfers WHERE direction = 'send' "
                "AND table_name = 'paged'"
            )
            return rows[0][0] if len(rows) == 1 else f"{len(rows)} transfers"

        assert send_status() == "in_progress"
        eventually(lambda: send_status() != "in_progress", timeout=20)
    finally:
        site.sql("DROP TABLE paged")


def test_phoenix_s_sensitive_tables_are_not_offered_by_default(
    site: SiteProcesses, pk: PhoenixKitProcess
) -> None:
    sensitive = [
        "phoenix_kit_user_tokens",
        "phoenix_kit_settings",
        "phoenix_kit_sync_connections",
        "oban_jobs",
        "schema_migrations",
    ]
    site.sql(
        ";".join(
            f"CREATE TABLE {n} (id integer PRIMARY KEY)"
            for n in [*sensitive, "plain_one"]
        )
    )
    try:
        pk_id = connect(site, pk)
        offered = {t["name"] for t in pk.cli("tables", pk_id)["tables"]}
        assert "plain_one" in offered
        assert offered.isdisjoint(sensitive), sorted(offered & set(sensitive))
    finally:
        site.sql(";".join(f"DROP TABLE {n}" for n in [*sensitive, "plain_one"]))


# ------------------------------------------------------------ PhoenixKit sending


def test_a_phoenixkit_sender_pairs_with_a_site_on_its_default_prefix(
    site: SiteProcesses, pk: PhoenixKitProcess
) -> None:
    pk.sql(
        "CREATE TABLE offered (id integer PRIMARY KEY, v text);"
        "INSERT INTO offered SELECT g, 'v' || g FROM generate_series(1, 10) g"
    )
    created = pk.cli("connections", "create", "--name", "to dbsync", "--url", site.url)
    assert created["notification"]["status"] == "registered"
    assert dbsync_field(site, pk.url, "status") == "active"
    eventually(lambda: pk_field(pk, "status") == "active", timeout=15)
    assert dbsync_field(site, pk.url, "status") == "active"
    site.sql("CREATE TABLE offered (id integer PRIMARY KEY, v text)")
    try:
        out = site.cli(
            "pull",
            dbsync_field(site, pk.url, "id"),
            "offered",
            "--wait",
            "--json",
            check=False,
        )
        assert '"status": "completed"' in out.stdout, out.stdout[-2000:]
        assert site.sql("SELECT count(*) FROM offered") == [(10,)]
    finally:
        site.sql("DROP TABLE offered")
