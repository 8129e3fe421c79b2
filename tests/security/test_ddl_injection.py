"""Finding 3: a sender's column default never runs as SQL on the receiver.

The sender describes a missing table and the receiver creates it. A string
default used to be spliced into CREATE TABLE as the sender wrote it: on a
PostgreSQL running with ``standard_conforming_strings = off`` a backslash
before the closing quote escapes it, so ``'x\\'`` followed by a second
default ``' ); DROP TABLE victim; CREATE TABLE pwned (id int, --'`` dropped
a table of the receiver's and created another. The receivers here run with
the setting off (``ALTER DATABASE ... SET``), as well as on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine

from shared.data.ddl import create_table
from tests.helpers import ScratchDatabases, run
from tests.security.hostile_sender import (
    Answer,
    HostileSender,
    Receiver,
    json_answer,
    open_pair,
    set_conforming_strings,
)

BACKSLASH = "'x\\'"
INJECTION = "' ); DROP TABLE victim; CREATE TABLE pwned (id int, --'"
# What the two defaults are, read as PostgreSQL writes them (standard strings).
BACKSLASH_VALUE = "x\\"
INJECTION_VALUE = " ); DROP TABLE victim; CREATE TABLE pwned (id int, --"


def payload(**defaults: Any) -> dict[str, Any]:
    return {
        "columns": [
            {"name": "id", "type": "integer", "nullable": False, "primary_key": True},
            *(
                {"name": name, "type": "text", "nullable": True, "default": default}
                for name, default in defaults.items()
            ),
        ],
        "primary_key": ["id"],
        "foreign_keys": [],
        "unique": [],
    }


@pytest.fixture(scope="module", params=["off", "on"])
def data_db(
    request: pytest.FixtureRequest, module_db_factory: ScratchDatabases
) -> Iterator[Engine]:
    url = module_db_factory.create(f"ddl_scs_{request.param}")
    set_conforming_strings(url, request.param)
    engine = create_engine(url)
    with engine.connect() as conn:
        setting = conn.exec_driver_sql("SHOW standard_conforming_strings").scalar()
    assert setting == request.param
    yield engine
    engine.dispose()


def tables(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(
            conn.exec_driver_sql(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).scalars()
        )


@pytest.mark.parametrize(
    "defaults",
    [
        pytest.param({"a": BACKSLASH, "b": INJECTION}, id="drop-table"),
        pytest.param({"a": "'x\\'::text", "b": INJECTION + "::text"}, id="with-casts"),
        pytest.param({"a": "('x\\')", "b": f"({INJECTION})"}, id="in-parentheses"),
    ],
)
def test_a_string_default_is_a_value_never_sql(
    data_db: Engine, defaults: dict[str, str]
) -> None:
    run(
        data_db,
        "DROP TABLE IF EXISTS victim, pwned, t",
        "CREATE TABLE victim (id integer PRIMARY KEY)",
        "INSERT INTO victim VALUES (1)",
    )
    with data_db.begin() as conn:
        creation = create_table(conn, "t", payload(**defaults), existing_tables=set())
    assert creation.warnings == []
    assert tables(data_db) == ["t", "victim"]
    run(data_db, "INSERT INTO t (id) VALUES (1)")
    with data_db.connect() as conn:
        stored = conn.exec_driver_sql("SELECT a, b FROM t").one()
        assert conn.exec_driver_sql("SELECT count(*) FROM victim").scalar() == 1
    assert tuple(stored) == (BACKSLASH_VALUE, INJECTION_VALUE)


@pytest.mark.parametrize(
    ("default", "value"),
    [
        ("'a\\b'", "a\\b"),
        ("'\\'", "\\"),
        ("'\\\\'''", "\\\\'"),
        ("'it''s'", "it's"),
        ("'%s %(x)s'", "%s %(x)s"),
        ("'\\x41\\101\\u0041'", "\\x41\\101\\u0041"),
        ("''", ""),
    ],
)
def test_every_string_default_keeps_its_exact_value(
    data_db: Engine, default: str, value: str
) -> None:
    run(data_db, "DROP TABLE IF EXISTS t")
    with data_db.begin() as conn:
        create_table(conn, "t", payload(a=default), existing_tables=set())
    run(data_db, "INSERT INTO t (id) VALUES (1)")
    with data_db.connect() as conn:
        assert conn.exec_driver_sql("SELECT a FROM t").scalar() == value


@pytest.mark.parametrize(
    "sql_type",
    [
        "int); DROP TABLE victim; CREATE TABLE pwned (a int",
        "integer DEFAULT 1); DROP TABLE victim; --",
        "numeric(10,2)\n); DROP TABLE victim; --",
        "text[]; DROP TABLE victim",
    ],
)
def test_a_type_is_a_type_never_sql(data_db: Engine, sql_type: str) -> None:
    run(
        data_db,
        "DROP TABLE IF EXISTS victim, pwned, t",
        "CREATE TABLE victim (id integer PRIMARY KEY)",
    )
    schema = payload(a=None)
    schema["columns"][1]["type"] = sql_type
    with data_db.begin() as conn:
        creation = create_table(conn, "t", schema, existing_tables=set())
    assert creation.warnings == [f"a: type {sql_type!r} stored as text"]
    assert tables(data_db) == ["t", "victim"]


# ---------------------------------------------------------- through a real pull


@pytest.fixture(scope="module")
def pair(
    module_db_factory: ScratchDatabases,
) -> Iterator[tuple[HostileSender, Receiver]]:
    yield from open_pair(module_db_factory)


def test_a_pull_from_a_sender_with_injecting_defaults_creates_only_its_table(
    pair: tuple[HostileSender, Receiver],
) -> None:
    sender, receiver = pair
    assert receiver.conforming_strings() == "off"
    before = receiver.fingerprint(skip={"items"})

    def hostile(endpoint: str, body: Any, honest: Any) -> Answer:
        answer = honest()
        if endpoint != "table-schema":
            return answer
        schema = answer.obj["schema"]
        schema["columns"] += [
            {"name": "a", "type": "text", "nullable": True, "default": BACKSLASH},
            {"name": "b", "type": "text", "nullable": True, "default": INJECTION},
        ]
        return json_answer(answer.obj)

    sender.behaviour = hostile
    pulled = receiver.pull("items")
    assert (pulled.transfer.status, pulled.transfer.error_message) == (
        "completed",
        None,
    )
    assert pulled.transfer.records_created == 5
    assert receiver.tables() == ["dbsync_pull_checkpoints", "items", "users", "victim"]
    assert receiver.fingerprint(skip={"items"}) == before
    with receiver.data.connect() as conn:
        defaults = conn.exec_driver_sql("SELECT DISTINCT a, b FROM items").all()
    assert [tuple(r) for r in defaults] == [(BACKSLASH_VALUE, INJECTION_VALUE)]
