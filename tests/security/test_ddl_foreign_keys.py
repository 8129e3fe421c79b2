"""Finding 7: a table a pull creates references only tables of the same pull.

A sender's table-schema may name any table in a foreign key. Kept onto one
of the receiver's own tables (``users``), a pulled row pinned a local row:
``DELETE FROM users`` failed on the foreign key the sender had asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import ScratchDatabases
from tests.security.hostile_sender import (
    Answer,
    HostileSender,
    Receiver,
    json_answer,
    open_pair,
)

TO_USERS = {
    "columns": ["owner_id"],
    "references_table": "users",
    "references_columns": ["id"],
}


@pytest.fixture(scope="module")
def pair(
    module_db_factory: ScratchDatabases,
) -> Iterator[tuple[HostileSender, Receiver]]:
    yield from open_pair(module_db_factory)


@pytest.fixture
def sites(pair: tuple[HostileSender, Receiver]) -> tuple[HostileSender, Receiver]:
    sender, receiver = pair
    receiver.reset()
    sender.json_only = True
    sender.behaviour = owned_by_alice
    return sender, receiver


def owned_by_alice(endpoint: str, body: Any, honest: Any) -> Answer:
    """Items that reference the receiver's user 1, in a column and a foreign key
    the sender added."""
    answer = honest()
    if endpoint == "table-schema" and body["table_name"] == "items":
        schema = answer.obj["schema"]
        schema["columns"].append(
            {"name": "owner_id", "type": "integer", "nullable": True}
        )
        schema["foreign_keys"].append(TO_USERS)
        return json_answer(answer.obj)
    if endpoint == "pull-data" and body["table_name"] == "items":
        for row in answer.obj["data"]:
            row["owner_id"] = 1
        return json_answer(answer.obj)
    return answer


def references(receiver: Receiver, table: str) -> list[str]:
    with receiver.data.connect() as conn:
        return sorted(
            conn.exec_driver_sql(
                "SELECT confrelid::regclass::text FROM pg_constraint"
                " WHERE conrelid = %(t)s::regclass AND contype = 'f'",
                {"t": table},
            ).scalars()
        )


def test_a_created_table_holds_no_key_onto_the_receivers_own_tables(
    sites: tuple[HostileSender, Receiver],
) -> None:
    _sender, receiver = sites
    before = receiver.fingerprint(skip={"items"})
    pulled = receiver.pull("items")
    assert (pulled.transfer.status, pulled.transfer.records_created) == (
        "completed",
        5,
    )
    assert references(receiver, "items") == []
    assert receiver.fingerprint(skip={"items"}) == before
    with receiver.data.connect() as conn:
        assert (
            conn.exec_driver_sql(
                "SELECT count(*) FROM items WHERE owner_id = 1"
            ).scalar()
            == 5
        )
    # The pulled rows pin nothing of the receiver's.
    with receiver.data.begin() as conn:
        deleted = conn.exec_driver_sql("DELETE FROM users WHERE id = 1").rowcount
    assert deleted == 1


def test_a_key_onto_a_table_of_the_same_pull_is_kept(
    sites: tuple[HostileSender, Receiver],
) -> None:
    _sender, receiver = sites
    before = receiver.fingerprint(skip={"items", "categories"})
    pulled = receiver.pull("items", "categories")
    assert pulled.transfer.status == "completed", pulled.transfer.error_message
    assert pulled.transfer.meta["tables"] == ["categories", "items"]
    assert (pulled.transfer.records_created, pulled.transfer.records_failed) == (7, 0)
    assert references(receiver, "items") == ["categories"]
    assert receiver.fingerprint(skip={"items", "categories"}) == before
