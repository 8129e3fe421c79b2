"""Finding 4: every pull run and every notice delivery ends in a recorded outcome.

An exception that escaped ``pulls.run`` left its transfer ``running``; the
sweep dispatched it again and again, past its attempts. A notice whose peer
answered with JSON nested 100,000 deep stayed queued with 0 attempts. Each
input the review named is played here by a sender on loopback; the pull runs
as the worker's task runs it (``pulls.run``, in this process, its retries
waited out as the task's countdown would) and must end ``failed`` with the
reason, within its attempts, with nothing left for the sweep and the
receiver's own tables untouched.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shared.control import notices
from shared.data.receiver import writer
from shared.db import utcnow
from shared.state.models import Connection, PeerNotice, Transfer
from tests.helpers import ScratchDatabases
from tests.security.hostile_sender import (
    Answer,
    HostileSender,
    Receiver,
    json_answer,
    nested,
    open_pair,
    raw_answer,
)

MAX_ATTEMPTS = 3  # the Receiver's SYNC_PULL_MAX_ATTEMPTS


@pytest.fixture(scope="module")
def pair(
    module_db_factory: ScratchDatabases,
) -> Iterator[tuple[HostileSender, Receiver]]:
    yield from open_pair(module_db_factory, SYNC_RETRY_HORIZON_SECONDS="3")


@pytest.fixture
def sites(pair: tuple[HostileSender, Receiver]) -> tuple[HostileSender, Receiver]:
    sender, receiver = pair
    receiver.reset()
    sender.json_only = False
    sender.calls.clear()
    return pair


def schema_with(**changes: Any) -> Any:
    """A behaviour: the honest items schema, its columns changed by ``changes``."""

    def behaviour(endpoint: str, body: Any, honest: Any) -> Answer:
        answer = honest()
        if endpoint == "table-schema":
            schema = answer.obj["schema"]
            for column in schema["columns"]:
                column.update(changes.get(column["name"], {}))
            schema["columns"].extend(changes.get("+", []))
            return json_answer(answer.obj)
        return answer

    return behaviour


def listing_with(**changes: Any) -> Any:
    """A behaviour: the honest list-tables, the entry of items changed."""

    def behaviour(endpoint: str, body: Any, honest: Any) -> Answer:
        answer = honest()
        if endpoint == "list-tables":
            for entry in answer.obj["tables"]:
                if entry["name"] == "items":
                    entry.update(changes)
            return json_answer(answer.obj)
        return answer

    return behaviour


def body_for(endpoint_hit: str, body: bytes, status: int = 200) -> Any:
    def behaviour(endpoint: str, request: Any, honest: Any) -> Answer:
        if endpoint == endpoint_hit:
            return raw_answer(body, status)
        return honest()

    return behaviour


def chain(length: int) -> Any:
    """list-tables offers t0000 -> t0001 -> ... each referencing the next;
    table-schema refuses every one."""
    names = [f"t{i:04d}" for i in range(length)]
    tables = [
        {
            "name": name,
            "row_count": 0,
            "size_bytes": 0,
            "primary_key": ["id"],
            "depends_on": names[i + 1 : i + 2],
            "checksum": None,
        }
        for i, name in enumerate(names)
    ]

    def behaviour(endpoint: str, body: Any, honest: Any) -> Answer:
        if endpoint == "list-tables":
            return json_answer({"success": True, "tables": tables})
        return json_answer({"success": False, "error": "Table not found"}, 404)

    return behaviour


DEEP = nested(100_000)
CASES = [
    pytest.param(
        schema_with(price={"type": "numeric", "precision": 2000, "scale": 0}),
        {},
        "Cannot create items: the database refused the table:"
        " NUMERIC precision 2000 must be between 1 and 1000",
        id="numeric(2000)",
    ),
    pytest.param(
        schema_with(id={"type": "json"}),
        {},
        "Cannot create items: the database refused the table: data type json"
        ' has no default operator class for access method "btree"',
        id="schema-postgresql-refuses",
    ),
    pytest.param(
        schema_with(
            **{"+": [{"name": f"c{i}", "type": "integer"} for i in range(1594)]}
        ),
        {},
        "Cannot create items: Schema has 1601 columns; a table holds at most 1600",
        id="1601-columns",
    ),
    pytest.param(
        listing_with(depends_on=5),
        {},
        "list-tables: depends_on of items is not a list of table names",
        id="depends_on-int",
    ),
    pytest.param(
        listing_with(depends_on=[["categories"]]),
        {},
        "list-tables: depends_on of items is not a list of table names",
        id="depends_on-nested-list",
    ),
    pytest.param(
        listing_with(depends_on="categories"),
        {},
        "list-tables: depends_on of items is not a list of table names",
        id="depends_on-string",
    ),
    pytest.param(
        chain(1000),
        {"all_tables": True},
        "Table not found",
        id="dependency-chain-of-1000",
    ),
    pytest.param(
        listing_with(row_count=2**64),
        {},
        "list-tables: row_count of items is not a count (18446744073709551616)",
        id="row_count-over-2^63",
    ),
    pytest.param(
        listing_with(name="it\x00ems"),
        {"all_tables": True},
        "list-tables: the sender offers a table named 'it\\x00ems',"
        " which this site does not take",
        id="NUL-in-a-name",
    ),
    pytest.param(
        body_for("list-tables", DEEP),
        {},
        "list-tables: the sender's answer is not valid",
        id="list-tables-nested-100000",
    ),
    pytest.param(
        body_for("table-schema", DEEP),
        {},
        "table-schema: the sender's answer is not valid",
        id="table-schema-nested-100000",
    ),
    pytest.param(
        body_for("pull-data", b'{"success": true, "data": ' + DEEP + b"}"),
        {},
        "HTTP error 200",
        id="pull-data-nested-100000",
    ),
    pytest.param(
        body_for(
            "pull-data", b'{"success": false, "error": "no\\u0000pe\\ud800"}', 403
        ),
        {},
        "no\\x00pe\\ud800",
        id="NUL-and-surrogate-in-an-error",
    ),
]


@pytest.mark.parametrize(("behaviour", "options", "reason"), CASES)
def test_a_hostile_answer_fails_the_transfer_with_its_reason(
    sites: tuple[HostileSender, Receiver],
    behaviour: Any,
    options: dict[str, Any],
    reason: str,
) -> None:
    sender, receiver = sites
    sender.behaviour = behaviour
    before = receiver.fingerprint(skip={"items"})
    tables = () if options.get("all_tables") else ("items",)
    pulled = receiver.pull(*tables, **options)
    assert (pulled.transfer.status, pulled.transfer.error_message) == (
        "failed",
        reason,
    )
    # A sender's answer that cannot change is not retried.
    assert (pulled.runs, pulled.transfer.attempts) == (1, 1)
    assert all(t.status == "failed" for t in pulled.tables)
    assert str(pulled.transfer.id) not in receiver.swept()
    assert receiver.fingerprint(skip={"items"}) == before


def test_values_nested_deep_fail_their_rows_alone(
    sites: tuple[HostileSender, Receiver],
) -> None:
    """A value nested 990 deep (as deep as the JSON parser reads) in a jsonb
    and in an integer column: each fails its row with a reason, the rest land."""
    sender, receiver = sites
    sender.json_only = True

    def deep_values(endpoint: str, body: Any, honest: Any) -> Answer:
        answer = honest()
        if endpoint == "pull-data" and body.get("after") is None:
            answer.obj["data"][0]["data"] = answer.obj["data"][1]["qty"] = "DEEP"
            text = json.dumps(answer.obj).encode()
            return raw_answer(text.replace(b'"DEEP"', nested(990)))
        return answer

    sender.behaviour = deep_values
    pulled = receiver.pull("items")
    transfer = pulled.transfer
    assert (transfer.status, transfer.error_message) == ("completed", None)
    assert (transfer.records_created, transfer.records_failed) == (3, 2)
    assert pulled.tables[0].errors == [
        {"key": [1], "error": "data: JSON value nested too deep"},
        {"key": [2], "error": "qty: expected an integer, got a list nested too deep"},
    ]
    with receiver.data.connect() as conn:
        ids = conn.exec_driver_sql("SELECT id FROM items ORDER BY id").scalars().all()
    assert ids == [3, 4, 5]


def test_the_dependency_chain_is_ordered_without_recursion(
    sites: tuple[HostileSender, Receiver],
) -> None:
    sender, receiver = sites
    sender.behaviour = chain(1000)
    pulled = receiver.pull(all_tables=True)
    order = pulled.transfer.meta["tables"]
    assert len(order) == 1000 and order[:2] == ["t0999", "t0998"]
    assert order[-1] == "t0000"


def test_an_unexpected_error_spends_the_attempts_then_fails_with_its_reason(
    sites: tuple[HostileSender, Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    sender, receiver = sites
    sender.behaviour = lambda endpoint, body, honest: honest()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the writer broke\non two lines")

    monkeypatch.setattr(writer.Writer, "apply", broken)
    pulled = receiver.pull("items")
    assert pulled.outcomes == ["retrying", "retrying", "failed"]
    assert (pulled.transfer.status, pulled.transfer.attempts) == (
        "failed",
        MAX_ATTEMPTS,
    )
    assert pulled.transfer.error_message == (
        "Pull failed: RuntimeError: the writer broke"
    )
    assert str(pulled.transfer.id) not in receiver.swept()
    assert receiver.count("items") == 0


def test_a_transfer_whose_runs_died_fails_after_its_attempts(
    sites: tuple[HostileSender, Receiver],
) -> None:
    """A run that ended without a word (its worker killed) still spent an attempt:
    the run after the last one fails the transfer instead of pulling again."""
    sender, receiver = sites
    sender.behaviour = lambda endpoint, body, honest: honest()
    tid = receiver.start("items")
    with receiver.site.db.session() as session:
        transfer = session.get_one(Transfer, uuid.UUID(tid))
        transfer.status = "running"
        transfer.attempts = MAX_ATTEMPTS
        transfer.lease_owner = "a-worker-that-died"
        transfer.lease_until = utcnow() - dt.timedelta(seconds=1)
    assert tid in receiver.swept()
    pulled = receiver.drive(tid)
    assert (pulled.transfer.status, pulled.transfer.attempts) == (
        "failed",
        MAX_ATTEMPTS,
    )
    assert pulled.transfer.error_message == (
        f"Gave up after {MAX_ATTEMPTS} attempts: no run finished"
    )
    assert sender.endpoints() == []  # nothing asked of the sender again
    assert tid not in receiver.swept()


def test_a_body_cut_every_time_fails_after_the_attempts(
    sites: tuple[HostileSender, Receiver],
) -> None:
    sender, receiver = sites

    def cut(endpoint: str, body: Any, honest: Any) -> Answer:
        answer = honest()
        if endpoint == "pull-data":
            answer.cut = True
        return answer

    sender.behaviour = cut
    before = receiver.fingerprint(skip={"items"})
    pulled = receiver.pull("items")
    assert pulled.outcomes == ["retrying", "retrying", "failed"]
    assert pulled.transfer.status == "failed"
    assert pulled.transfer.error_message.startswith("Sender unreachable: pull-data")
    assert pulled.transfer.attempts == MAX_ATTEMPTS
    assert receiver.count("items") == 0
    assert receiver.fingerprint(skip={"items"}) == before


# ---------------------------------------------------------------- notices


def owe(receiver: Receiver, url: str, kind: str, payload: dict[str, Any]) -> int:
    with receiver.site.db.session() as session:
        conn = Connection(
            name="noticed",
            direction="sender",
            site_url=f"{url}/{uuid.uuid4().hex}",  # one connection per URL
            auth_token_hash=uuid.uuid4().hex * 2,
            status="active",
            meta={},
        )
        session.add(conn)
        session.flush()
        return notices.owe(session, receiver.site, conn, kind, payload).id


def notice(receiver: Receiver, notice_id: int) -> PeerNotice:
    with receiver.site.db.session() as session:
        found = session.get_one(PeerNotice, notice_id)
        session.expunge(found)
        return found


def test_a_notice_answered_with_deep_json_counts_its_attempts_to_its_horizon(
    sites: tuple[HostileSender, Receiver],
) -> None:
    sender, receiver = sites
    # Deep, yet under the 64 KiB a control answer may take (a bigger one is
    # refused at once by its size, tests/security/test_answer_limits.py).
    sender.behaviour = body_for("update-status", nested(30_000))
    notice_id = owe(receiver, sender.url, "update_status", {"status": "suspended"})
    states = []
    for _ in range(10):
        outcome = notices.deliver(receiver.site, receiver.peer, notice_id)
        states.append(outcome.state)
        if outcome.state != "retrying":
            break
        assert outcome.retry_in is not None
        time.sleep(outcome.retry_in + 0.05)
    found = notice(receiver, notice_id)
    assert states[-1] == "gave_up" and set(states[:-1]) <= {"retrying"}
    assert found.state == "gave_up"
    assert found.attempts == len(states) >= 2
    assert found.last_error == (
        "peer unreachable: update-status: invalid answer (HTTP 200)"
    )
    assert notice_id not in notices.due(receiver.site, grace_seconds=0)


def test_a_notice_answer_that_cannot_be_stored_as_sent_is_recorded_safely(
    sites: tuple[HostileSender, Receiver],
) -> None:
    sender, receiver = sites
    sender.behaviour = lambda endpoint, body, honest: json_answer(
        {"success": True, "status": "act\x00ive", "name": "x"}
    )
    notice_id = owe(receiver, sender.url, "poll_status", {})
    assert notices.deliver(receiver.site, receiver.peer, notice_id).state == "delivered"
    found = notice(receiver, notice_id)
    assert (found.state, found.attempts) == ("delivered", 1)
    with receiver.site.db.session() as session:
        conn = session.get_one(Connection, found.connection_id)
        assert conn.remote_status == "act\\x00ive"
