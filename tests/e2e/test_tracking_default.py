"""Change tracking as operators get it: on by default on both sites, off
with ``SYNC_CHANGE_TRACKING=off`` (beat then takes every trace of it off the
data database), and no logging of a full pull into an emptied table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import SiteProcesses, field, pair
from tests.e2e.test_syncs import checksum
from tests.helpers import ScratchDatabases, eventually

pytestmark = pytest.mark.e2e

STOCK = """
CREATE TABLE stock (id bigint PRIMARY KEY, name text, qty integer);
INSERT INTO stock SELECT g, 'item ' || g, g % 89 FROM generate_series(1, 5000) g;
"""
TRIGGERS = (
    "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'stock'::regclass"
    " AND tgname LIKE 'dbsync_track_%' AND tgenabled = 'A'"
)
LEFTOVERS = (
    "SELECT (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'dbsync_track_%'),"
    " (SELECT count(*) FROM pg_proc WHERE proname LIKE 'dbsync_log_change%'),"
    " (SELECT count(*) FROM pg_class WHERE relname LIKE 'dbsync_change_%')"
)


@pytest.fixture(scope="module")
def sites(
    tmp_path_factory: pytest.TempPathFactory, module_db_factory: ScratchDatabases
) -> Iterator[tuple[SiteProcesses, SiteProcesses]]:
    work: Path = tmp_path_factory.mktemp("tracking")
    sender = SiteProcesses("sender", work, module_db_factory.create("e2e_trk_send"), 15)
    receiver = SiteProcesses(
        "receiver", work, module_db_factory.create("e2e_trk_recv"), 15
    )
    try:
        for site in (sender, receiver):
            site.cli("settings", "set", "enabled", "true")
            site.start()
        pair(sender, receiver)
        sender.sql(STOCK)
        yield sender, receiver
    except BaseException:
        print(sender.logs())
        print(receiver.logs())
        raise
    finally:
        sender.close()
        receiver.close()


def pull(receiver: SiteProcesses, *args: str) -> dict[str, Any]:
    result = receiver.cli(
        "pull", field(receiver, "id"), "stock", *args, "--wait", "--json", check=False
    )
    data = json.loads(result.stdout)
    assert data["status"] == "completed", data
    assert data["verification"] == {"stock": {"status": "verified"}}, data
    assert data["error"] is None
    return data


def delta(receiver: SiteProcesses) -> dict[str, Any]:
    data = pull(
        receiver, "--mode", "delta", "--mirror-deletes", "--strategy", "overwrite"
    )
    moved: dict[str, Any] = data["delta"]["stock"]
    return moved


def test_tracking_is_on_by_default_and_off_when_the_operator_says(
    sites: tuple[SiteProcesses, SiteProcesses],
) -> None:
    sender, receiver = sites
    first = pull(receiver, "--create-missing")
    assert first["records_created"] == 5000
    # Both sites track the table after its first pull, with no setting.
    assert sender.sql(TRIGGERS) == [(4,)] and receiver.sql(TRIGGERS) == [(4,)]

    sender.sql("UPDATE stock SET qty = -1 WHERE id IN (10, 4000)")
    sender.sql("DELETE FROM stock WHERE id = 2500")
    sender.sql("INSERT INTO stock VALUES (6000, 'new', 1)")
    moved = delta(receiver)
    assert moved["from"] == "log"
    assert (moved["there"], moved["here"]) == ("log", "log")
    assert moved["changed_there"] == 4
    assert (moved["rows_pulled"], moved["deleted"]) == (3, 1)
    assert checksum(receiver, "stock") == checksum(sender, "stock")

    # A full pull into the emptied table: the triggers come off for the pull
    # (no key of it is logged) and go on again before its verification.
    receiver.sql("TRUNCATE stock")
    again = pull(receiver, "--mode", "full")
    assert again["records_created"] == 5000
    assert receiver.sql(TRIGGERS) == [(4,)]
    assert receiver.sql(
        "SELECT count(*) FROM dbsync_change_log WHERE table_oid = 'stock'::regclass"
    ) == [(0,)]
    sender.sql("UPDATE stock SET qty = -2 WHERE id = 20")
    moved = delta(receiver)
    assert moved["from"] == "log" and moved["rows_pulled"] == 1
    assert checksum(receiver, "stock") == checksum(sender, "stock")

    # The sender's operator turns it off: beat's expire job (every 3 s here)
    # takes the triggers, functions and tables off its data database.
    sender.stop()
    sender.env["SYNC_CHANGE_TRACKING"] = "off"
    sender.start()
    eventually(lambda: sender.sql(LEFTOVERS) == [(0, 0, 0)], timeout=30)
    sender.sql("UPDATE stock SET qty = -3 WHERE id = 30")
    sender.sql("DELETE FROM stock WHERE id = 31")
    moved = delta(receiver)
    assert moved["from"] == "xmin" and "there" not in moved
    assert (moved["rows_pulled"], moved["deleted"]) == (1, 1)
    assert checksum(receiver, "stock") == checksum(sender, "stock")
    assert sender.sql(LEFTOVERS) == [(0, 0, 0)]  # and not put back
    assert receiver.sql(TRIGGERS) == [(4,)]  # the receiver keeps its own

    # What is tracked, and taking it off one table by hand.
    assert sender.cli_json("tracking", "list") == []
    listed = receiver.cli_json("tracking", "list")
    assert [(e["schema"], e["table"]) for e in listed] == [("public", "stock")]
    assert [r.split(":")[0] for r in listed[0]["readers"]] == ["receiver"]
    removed = receiver.cli("tracking", "remove", "stock")
    assert removed.stdout.splitlines() == [
        "change tracking removed from stock",
        "SYNC_CHANGE_TRACKING still names it: the next pull or delta run of it"
        " installs the triggers again",
    ]
    assert receiver.sql(LEFTOVERS) == [(0, 0, 0)]
    assert receiver.cli_json("tracking", "list") == []
    again = receiver.cli("tracking", "remove", "stock", check=False)
    assert again.returncode == 1
    assert "stock is not tracked" in again.stderr
