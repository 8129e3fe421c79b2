"""Finding 11: a name with a trailing newline is not a name.

The identifier check used ``^...$``, and ``$`` also matches before a final
newline: a sender offering ``"users\\n"`` had the receiver create a table
``"users\\n"`` beside its own ``users``. Names are now checked whole
(``fullmatch``), and a name a sender offers must be printable.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine

from shared.data.ddl import UnsafeSchema, create_table
from shared.data.receiver import bulk_in
from tests.helpers import ScratchDatabases
from tests.security.hostile_sender import (
    Answer,
    HostileSender,
    Receiver,
    json_answer,
    open_pair,
)


def payload(column: str = "id", pk: str = "id", ref: str = "t") -> dict[str, Any]:
    return {
        "columns": [
            {"name": column, "type": "integer", "primary_key": True},
            {"name": "parent", "type": "integer"},
        ],
        "primary_key": [pk],
        "foreign_keys": [
            {
                "columns": ["parent"],
                "references_table": ref,
                "references_columns": ["id"],
            }
        ],
        "unique": [],
    }


@pytest.fixture(scope="module")
def engine(module_db_factory: ScratchDatabases) -> Iterator[Engine]:
    engine = create_engine(module_db_factory.create("names"))
    yield engine
    engine.dispose()


@pytest.mark.parametrize(
    ("table", "schema"),
    [
        pytest.param("users\n", payload(), id="table"),
        pytest.param("t", payload(column="id\n", pk="id\n"), id="column"),
        pytest.param("t", payload(pk="id\n"), id="primary-key"),
        pytest.param("t", payload(ref="t\n"), id="referenced-table"),
        pytest.param("users\r\n", payload(), id="crlf"),
    ],
)
def test_create_table_refuses_a_name_with_a_trailing_newline(
    engine: Engine, table: str, schema: dict[str, Any]
) -> None:
    with engine.begin() as conn, pytest.raises(UnsafeSchema, match="Invalid"):
        create_table(conn, table, schema, existing_tables=set())
    with engine.connect() as conn:
        assert (
            conn.exec_driver_sql(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            ).scalar()
            == 0
        )


@pytest.mark.parametrize(
    "name",
    ["id\n", "id\r", "i\x00d", "\x1b]52;c;cHduZWQ=\x07", "u" * 64, "", 7],
    ids=repr,
)
def test_a_copy_page_naming_a_column_that_is_no_name_is_refused(name: Any) -> None:
    headers = {
        "x-sync-format": "pg_copy_text",
        "x-sync-table": "items",
        "x-sync-columns": json.dumps(["id", name]),
        "x-sync-count": "1",
        "x-sync-has-more": "false",
        "x-sync-next-cursor": "null",
    }
    with pytest.raises(bulk_in.BadPage, match="invalid page metadata"):
        bulk_in.read_headers(headers, "text/vnd.dbsync.pgcopy", "items", "pg_copy_text")


@pytest.fixture(scope="module")
def pair(
    module_db_factory: ScratchDatabases,
) -> Iterator[tuple[HostileSender, Receiver]]:
    yield from open_pair(module_db_factory)


def test_a_sender_offering_users_newline_gets_no_table_beside_users(
    pair: tuple[HostileSender, Receiver],
) -> None:
    sender, receiver = pair

    def twin(endpoint: str, body: Any, honest: Any) -> Answer:
        """Offer "users\\n", described and paged like "items"."""
        if isinstance(body, dict) and body.get("table_name") == "users\n":
            answer = honest_as(sender, endpoint, {**body, "table_name": "items"})
            if isinstance(answer.obj, dict) and "table" in answer.obj:
                answer.obj["table"] = "users\n"
            return json_answer(answer.obj)
        answer = honest()
        if endpoint == "list-tables":
            twin = dict(answer.obj["tables"][-1], name="users\n", depends_on=[])
            answer.obj["tables"].append(twin)
            return json_answer(answer.obj)
        return answer

    sender.json_only = True
    sender.behaviour = twin
    before = receiver.fingerprint()
    pulled = receiver.pull(all_tables=True)
    assert pulled.transfer.status == "failed"
    assert pulled.transfer.error_message == (
        "list-tables: the sender offers a table named 'users\\n',"
        " which this site does not take"
    )
    assert pulled.runs == 1
    assert receiver.tables() == ["users", "victim"]
    assert receiver.fingerprint() == before
    assert str(pulled.transfer.id) not in receiver.swept()


def honest_as(sender: HostileSender, endpoint: str, body: dict[str, Any]) -> Answer:
    return sender.honest(endpoint, body)
