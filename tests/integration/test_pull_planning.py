"""What a receiver agrees to pull, and in which order, before any page moves."""

from __future__ import annotations

import uuid

import httpx
import pytest

from shared.context import Site
from shared.control.peer import PeerClient
from shared.data.receiver import pulls
from shared.errors import SyncError
from shared.state.models import Connection, Transfer
from tests.helpers import add_connection


def receiver(site: Site, status: str = "active") -> uuid.UUID:
    return add_connection(
        site,
        status=status,
        url="http://127.0.0.1:9002",
        name="from-a",
        token_hash="f" * 64,
    )[0]


def test_dependency_order_puts_references_first_and_survives_cycles() -> None:
    deps = {"reviews": ["books"], "books": ["authors"], "authors": []}
    assert pulls.dependency_order(["reviews", "books", "authors"], deps) == [
        "authors",
        "books",
        "reviews",
    ]
    cycle = {"a": ["b"], "b": ["a"], "c": ["a"]}
    assert pulls.dependency_order(["c", "a", "b"], cycle) == ["b", "a", "c"]
    # References outside the chosen set do not pull extra tables in.
    assert pulls.dependency_order(["books"], deps) == ["books"]


@pytest.mark.parametrize(
    "table", ["dbsync_connections", "dbsync_pull_checkpoints", "alembic_version"]
)
def test_a_pull_never_targets_the_services_own_tables(site: Site, table: str) -> None:
    rid = receiver(site)
    with site.db.session() as session, pytest.raises(SyncError) as refused:
        pulls.start(session, site, session.get(Connection, rid), [table, "orders"])
    assert refused.value.message == (
        f"Refusing to pull into this service's own tables: {table}"
    )
    with site.db.session() as session:
        assert session.query(Transfer).count() == 0


def test_a_pull_needs_an_active_receiver_connection(site: Site) -> None:
    rid = receiver(site, status="suspended")
    with site.db.session() as session, pytest.raises(SyncError) as refused:
        pulls.start(session, site, session.get(Connection, rid), ["orders"])
    assert (refused.value.kind, refused.value.message) == (
        "conflict",
        "Connection is suspended, not active",
    )


def test_a_sender_offering_own_table_names_cannot_make_us_write_them(
    site: Site,
) -> None:
    """--all takes every offered table except ours, whatever the sender lists."""
    rid = receiver(site)
    offered = [
        {"name": n, "row_count": 0, "depends_on": []}
        for n in ("dbsync_connections", "alembic_version", "orders")
    ]

    def sender(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/sync/api/list-tables"
        return httpx.Response(200, json={"success": True, "tables": offered})

    with site.db.session() as session:
        transfer = pulls.start(
            session, site, session.get(Connection, rid), [], all_tables=True
        )
        tid = str(transfer.id)
    job_client = PeerClient(site.settings, transport=httpx.MockTransport(sender))
    pulls._Job(
        site,
        job_client,
        "test",
        uuid.UUID(tid),
        "http://127.0.0.1:9002",
        None,
        "f" * 64,
        "skip",
        True,
    ).plan()
    with site.db.session() as session:
        assert session.get(Transfer, uuid.UUID(tid)).meta["tables"] == ["orders"]
