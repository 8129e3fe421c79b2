"""Finding 4 with a real worker: a hostile pull ends failed and stays ended.

A receiver site runs as an operator runs it (web, a Celery worker on Redis,
beat with a 3-second sweep; tests/e2e/conftest.py) on a database whose
sessions start with ``standard_conforming_strings = off``. The hostile
sender on loopback registers itself (auto_accept) and then answers
table-schema with ``numeric(2000)``, which PostgreSQL refuses: the error used
to escape the task, leaving the transfer ``running`` for the sweep to
dispatch again and again. Then it answers with defaults that injected SQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.security import new_token
from tests.e2e.conftest import SiteProcesses
from tests.helpers import ScratchDatabases, eventually
from tests.security.hostile_sender import (
    OWN_TABLES,
    Answer,
    HostileSender,
    json_answer,
    set_conforming_strings,
    source_engine,
)

pytestmark = pytest.mark.e2e

SWEEP_SECONDS = 3  # SYNC_OUTBOX_SWEEP_SECONDS of SiteProcesses


@pytest.fixture
def sites(
    tmp_path: Path, scratch_db_factory: ScratchDatabases
) -> Iterator[tuple[HostileSender, SiteProcesses]]:
    source = source_engine(scratch_db_factory.create("hostile_e2e_src"))
    sender = HostileSender(source)
    url = scratch_db_factory.create("hostile_e2e_rcv")
    set_conforming_strings(url, "off")
    receiver = SiteProcesses("receiver", tmp_path, url, 15)
    try:
        receiver.cli("settings", "set", "enabled", "true")
        receiver.cli("settings", "set", "incoming_mode", "auto_accept")
        receiver.sql(";".join(OWN_TABLES))
        receiver.start()
        yield sender, receiver
    finally:
        receiver.close()
        sender.close()
        source.dispose()


def registered(sender: HostileSender, receiver: SiteProcesses) -> str:
    """The hostile sender registers itself; the receiver's connection id."""
    answer = httpx.post(
        f"{receiver.url}/sync/api/register-connection",
        json={
            "sender_url": sender.url,
            "connection_name": "hostile",
            "auth_token": new_token(),
        },
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["connection_status"] == "active"
    return str(receiver.only_connection()["id"])  # type: ignore[index]


def transfer(receiver: SiteProcesses, tid: str) -> dict[str, Any]:
    return receiver.cli_json("transfers", "show", tid)


def test_a_real_worker_fails_the_pull_once_and_the_sweep_leaves_it(
    sites: tuple[HostileSender, SiteProcesses],
) -> None:
    sender, receiver = sites
    assert receiver.sql("SHOW standard_conforming_strings") == [("off",)]

    def hostile(endpoint: str, body: Any, honest: Any) -> Answer:
        if endpoint == "get-connection-status":
            return json_answer({"success": True, "status": "active", "name": "h"})
        answer = honest()
        if endpoint == "table-schema":
            for column in answer.obj["schema"]["columns"]:
                if column["name"] == "price":
                    column.update(type="numeric", precision=2000, scale=0)
            return json_answer(answer.obj)
        return answer

    sender.behaviour = hostile
    connection_id = registered(sender, receiver)
    before = receiver.sql("SELECT * FROM victim ORDER BY id")

    queued = receiver.cli_json("pull", connection_id, "items", "--create-missing")
    done = eventually(
        lambda: (t := transfer(receiver, queued["id"]))["status"] == "failed" and t,
        timeout=60,
    )
    assert done["error"] == (
        "Cannot create items: the database refused the table:"
        " NUMERIC precision 2000 must be between 1 and 1000"
    )
    assert done["attempts"] == 1
    schema_calls = sender.endpoints().count("table-schema")

    # Three sweeps later nothing ran it again.
    time.sleep(3 * SWEEP_SECONDS + 1)
    again = transfer(receiver, queued["id"])
    assert (again["status"], again["attempts"], again["error"]) == (
        "failed",
        1,
        done["error"],
    )
    assert sender.endpoints().count("table-schema") == schema_calls
    assert receiver.sql("SELECT * FROM victim ORDER BY id") == before

    # The same site, the same setting: defaults that injected SQL are values.
    def injecting(endpoint: str, body: Any, honest: Any) -> Answer:
        if endpoint == "get-connection-status":
            return json_answer({"success": True, "status": "active", "name": "h"})
        answer = honest()
        if endpoint == "table-schema":
            answer.obj["schema"]["columns"] += [
                {"name": "a", "type": "text", "default": "'x\\'"},
                {
                    "name": "b",
                    "type": "text",
                    "default": "' ); DROP TABLE victim; CREATE TABLE pwned (id int, --'",
                },
            ]
            return json_answer(answer.obj)
        return answer

    sender.behaviour = injecting
    queued = receiver.cli_json("pull", connection_id, "items", "--create-missing")
    done = eventually(
        lambda: (
            (t := transfer(receiver, queued["id"]))["status"] != "running"
            and t["status"] != "pending"
            and t
        ),
        timeout=60,
    )
    assert (done["status"], done["records_created"]) == ("completed", 5), done
    assert receiver.sql("SELECT * FROM victim ORDER BY id") == before
    assert receiver.sql("SELECT to_regclass('pwned')") == [(None,)]
    assert receiver.sql("SELECT DISTINCT a, b FROM items") == [
        ("x\\", " ); DROP TABLE victim; CREATE TABLE pwned (id int, --")
    ]
